"""The one input pipeline: a :class:`~mm15.data.schema.Sample` → token ids, loss labels, the
image plans and the tiles (MM1.5 §3.1, §3.5).  Training, evaluation, the lmms-eval plugin, ``mm15 chat``,
``mm15 serve`` and the inference API all come here; nothing else formats, plans or tiles.

API: :func:`format_sample` (ids, labels, :class:`ImageRef` plans; no pixels decoded),
:func:`materialize_pixels` (the tiles of those plans), :func:`encode_sample` (both, for a
prompt to generate from: an :class:`EncodedPrompt`), :func:`encode_prompt` (plain text with
``<image>`` placeholders + images, the same path).  A :class:`~mm15.data.schema.Media` may carry
pixels already decoded (``Media.decoded``): a server or chat session hands them over as they are.

**Pre-training** (every message has role ``document``; captions, interleaved documents, text,
OCR pages): ``[BOS] text… [EOS]`` with loss on all text and the EOS (§4, MM1 §3).

**Chat** (SFT, evaluation): role markers are ordinary text (:class:`~mm15.config.FormatConfig`;
the model's is ``ModelConfig.format``, saved in its checkpoint, and
:mod:`mm15.data.chat_template` writes the same template as Jinja for Hugging Face tools)::

    [BOS]System: {system}\\n
    User: {user}\\n
    Assistant: {answer}[EOS]\\n
    User: {user}\\n
    Assistant: {answer}[EOS]

Loss on assistant content and its EOS only (MM1.5 §4: loss on assistant turns); role markers,
system and user turns carry none.  ``Message.train`` overrides a message's default.  With
``for_generation`` the text ends with the assistant marker, where the model takes over (a
document then ends without EOS: the model continues it, :func:`encode_prompt`).

Labels are aligned with ``input_ids`` (``labels[t]`` is ``input_ids[t]`` where the loss applies,
else ``IGNORE_INDEX``); the model predicts ``t+1`` from ``t``.  Image tokens and the sub-image
position indicators (Table 3) never carry loss.

**Images.** Every media part expands to the segments of :func:`mm15.data.layout.plan_image`
(sizes from :func:`mm15.data.media.media_size`, no pixels decoded).  Images are numbered ``k``
in order of appearance; a video is its frames (§5), one tile each, never split, and counts as
that many images.  Splitting applies only when the sample shows fewer than
``ImageConfig.split_below_images`` images (§4).  Each medium must be shown exactly once, so
that a region's image index ``k`` is well defined.  Regions render through
:func:`mm15.data.coords.format_box` / ``format_point`` on the original media size.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from PIL import Image

from mm15.config import FormatConfig, ModelConfig
from mm15.data.coords import Box, CoordinateError, Point, format_box, format_point
from mm15.data.layout import (
    ImagePlan,
    ImageRun,
    TextPiece,
    plan_image,
    plan_video,
    sample_allows_split,
)
from mm15.data.media import load_image, load_video, media_size, video_frame_count
from mm15.data.schema import (
    Media,
    Message,
    Part,
    Sample,
    SampleError,
    check_references,
    media_order,
)
from mm15.data.splitting import tile_image
from mm15.tokenizer import MM15Tokenizer

IGNORE_INDEX = -100  # equals mm15.model.mm15.IGNORE_INDEX (data never imports the model)


@dataclass(frozen=True, eq=False)
class ImageRef:
    """One image shown in an example, in order of appearance: what to load and how to tile it."""

    sample_id: str
    media: Media
    media_index: int  # index into the sample's media
    frame: int | None  # index into load_video's frames; None for an image
    video_frames: int | None  # frames planned for the whole video; None for an image
    plan: ImagePlan
    allow_split: bool

    @property
    def n_tiles(self) -> int:
        return self.plan.n_tiles


@dataclass
class Example:
    """A formatted sample: ``input_ids`` and ``labels`` have equal length; ``images`` in order."""

    input_ids: list[int]
    labels: list[int]
    images: list[ImageRef]
    sample_id: str
    source: str
    category: str

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def num_tiles(self) -> int:
        return sum(r.n_tiles for r in self.images)

    @property
    def num_trainable(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE_INDEX)


# ---------------------------------------------------------------------------------------------
# Planning the images


def _plan_media(sample: Sample, cfg: ModelConfig) -> dict[int, list[ImageRef]]:
    """ImageRefs per media index: one for an image, one per frame for a video."""
    order = media_order(sample)
    counts = {
        i: video_frame_count(sample.media[i], cfg.video, cfg.image)
        if sample.media[i].kind == "video"
        else 1
        for i in order
    }
    allow = sample_allows_split(sum(counts.values()), cfg.image)
    tpt, k, refs = cfg.connector.num_tokens, 0, {}
    for i in order:
        media = sample.media[i]
        if media.kind == "video":
            plans = plan_video(counts[i], cfg.image, tokens_per_tile=tpt, image_index_start=k)
            refs[i] = [
                ImageRef(sample.id, media, i, f, counts[i], p, False) for f, p in enumerate(plans)
            ]
        else:
            size = media_size(media, cfg.image)
            plan = plan_image(
                size, cfg.image, tokens_per_tile=tpt, image_index=k, allow_split=allow
            )
            refs[i] = [ImageRef(sample.id, media, i, None, None, plan, allow)]
        k += counts[i]
    return refs


# ---------------------------------------------------------------------------------------------
# The token stream


class _Stream:
    """Pieces in order: ("text", [str, ...], train), ("indicator", str), ("token", id, train),
    images.  Adjacent text of equal ``train`` is one span, tokenised once; its strings are
    kept in a list and joined at encoding, so building a prompt of n messages costs O(n)
    (adding to one string each time cost O(n²): 15 s for 200k empty messages)."""

    def __init__(self) -> None:
        self.pieces: list[tuple] = []
        self.images: list[ImageRef] = []

    def text(self, text: str, train: bool) -> None:
        if not text:
            return
        last = self.pieces[-1] if self.pieces else None
        if last is not None and last[0] == "text" and last[2] == train:
            last[1].append(text)  # one tokenisation per span
        else:
            self.pieces.append(("text", [text], train))

    def token(self, token_id: int | None, train: bool) -> None:
        if token_id is not None:
            self.pieces.append(("token", token_id, train))

    def image(self, ref: ImageRef) -> None:
        self.images.append(ref)
        for seg in ref.plan.segments:
            if isinstance(seg, TextPiece):
                self.pieces.append(("indicator", seg.text))
            else:
                self.pieces.append(("run", seg))

    def encode(self, tok: MM15Tokenizer, where: str) -> tuple[list[int], list[int]]:
        ids: list[int] = []
        labels: list[int] = []
        image_id = tok.image_token_id
        for piece in self.pieces:
            kind = piece[0]
            if kind == "run":
                run: ImageRun = piece[1]
                ids += [image_id] * run.num_tokens
                labels += [IGNORE_INDEX] * run.num_tokens
                continue
            if kind == "token":
                new, train = [piece[1]], piece[2]
            else:
                text = "".join(piece[1]) if kind == "text" else piece[1]
                new, train = tok.encode(text), kind == "text" and piece[2]
                if image_id in new:
                    raise SampleError(
                        "malformed",
                        f"{where}: text {text[:60]!r} contains "
                        "the image token; images must be media parts",
                    )
            ids += new
            labels += new if train else [IGNORE_INDEX] * len(new)
        return ids, labels


def _region_text(
    sample: Sample, part: Part, refs: dict[int, list[ImageRef]], n_images: int, fmt: FormatConfig
) -> str:
    region = sample.regions[part.region]
    if sample.media[region.media].kind != "image":
        raise SampleError("malformed", f"sample {sample.id}: region {part.region} is on a video")
    k = refs[region.media][0].plan.image_index
    mode = fmt.region_image_index
    if mode == "multi_image":
        mode = "always" if n_images > 1 else "never"
    size = refs[region.media][0].plan.size_wh
    try:
        if region.box is not None:
            return format_box(Box(*region.box, image=k), size, image_index=mode)
        return format_point(Point(*region.point, image=k), size, image_index=mode)
    except CoordinateError as e:
        raise SampleError("malformed", f"sample {sample.id}: region {part.region}: {e}") from e


def _content(
    stream: _Stream,
    sample: Sample,
    msg: Message,
    train: bool,
    refs: dict[int, list[ImageRef]],
    fmt: FormatConfig,
) -> None:
    n_images = sum(len(r) for r in refs.values())
    for part in msg.content:
        if part.type == "text":
            stream.text(part.text, train)
        elif part.type == "media":
            for ref in refs[part.media]:
                stream.image(ref)
        else:
            stream.text(_region_text(sample, part, refs, n_images, fmt), train)


def _check_roles(sample: Sample, for_generation: bool) -> bool:
    """True for a pre-training document sample, False for a chat; raises when mixed."""
    if not sample.messages:
        raise SampleError("empty", f"sample {sample.id} has no messages")
    docs = [m.role == "document" for m in sample.messages]
    if any(docs) and not all(docs):
        raise SampleError("malformed", f"sample {sample.id} mixes document and chat messages")
    return all(docs)


def format_sample(
    sample: Sample,
    *,
    tokenizer: MM15Tokenizer,
    model_cfg: ModelConfig,
    fmt: FormatConfig | None = None,
    for_generation: bool = False,
) -> Example:
    """Token ids, labels and images of ``sample`` (template in the module docstring), in
    ``fmt`` or, by default, the model's own format (``model_cfg.format``, from its checkpoint).

    Raises :class:`SampleError`: ``malformed`` (bad references, the image token in text,
    mixed roles), ``missing``/``corrupt`` (media headers), ``empty`` (no trainable token unless
    ``for_generation``).  Length limits are the packer's job (``too_long``).
    """
    if 0 <= model_cfg.image_token_id != tokenizer.image_token_id:
        raise ValueError(
            f"ModelConfig.image_token_id={model_cfg.image_token_id} but the "
            f"tokenizer's image token id is {tokenizer.image_token_id}"
        )
    if not tokenizer.eos_ids:
        raise ValueError("the tokenizer has no EOS token; the chat template needs one")
    fmt = model_cfg.format if fmt is None else fmt
    check_references(sample)
    is_doc = _check_roles(sample, for_generation)
    refs = _plan_media(sample, model_cfg)
    eos = tokenizer.eos_ids[0]
    stream = _Stream()
    stream.token(tokenizer.bos_id if fmt.add_bos else None, False)
    if is_doc:
        for msg in sample.messages:
            _content(stream, sample, msg, msg.train is not False, refs, fmt)
        if not for_generation:  # a document to continue ends where the text does
            stream.token(eos, True)
    else:
        prefix = {
            "system": fmt.system_prefix,
            "user": fmt.user_prefix,
            "assistant": fmt.assistant_prefix,
        }
        for i, msg in enumerate(sample.messages):
            train = msg.train if msg.train is not None else msg.role == "assistant"
            stream.text(prefix[msg.role], False)
            _content(stream, sample, msg, train, refs, fmt)
            if msg.role == "assistant":
                stream.token(eos, train)
                if i + 1 < len(sample.messages) or for_generation:
                    stream.text(fmt.turn_end, False)
            else:
                stream.text(fmt.turn_end, False)
        if for_generation:
            stream.text(fmt.assistant_prefix, False)
    ids, labels = stream.encode(tokenizer, f"sample {sample.id}")
    ex = Example(ids, labels, stream.images, sample.id, sample.source, sample.category)
    if not for_generation and ex.num_trainable == 0:
        raise SampleError("empty", f"sample {sample.id} has no token with loss")
    return ex


# ---------------------------------------------------------------------------------------------
# Pixels


def materialize_pixels(
    images: Example | Sequence[ImageRef], model_cfg: ModelConfig
) -> torch.Tensor:
    """``(N, 3, r, r)`` float32 tiles of ``images`` in order (N = Σ plan.n_tiles), each image
    decoded and cut by :func:`~mm15.data.splitting.tile_image` with its plan's ``allow_split``.

    Raises ``SampleError`` when the pixels disagree with the plan (a declared ``Media.size``
    that is not the decoded size: ``malformed``; a video that decodes to other frames than its
    header promised: ``corrupt``).
    """
    refs = images.images if isinstance(images, Example) else list(images)
    r = model_cfg.image.resolution
    videos: dict[int, list[Image.Image]] = {}
    tiles = []
    for ref in refs:
        where = f"sample {ref.sample_id} media {ref.media_index}"
        if ref.frame is None:
            tiled = tile_image(
                load_image(ref.media, model_cfg.image), model_cfg.image, allow_split=ref.allow_split
            )
            if tiled.geometry != ref.plan.geometry:
                raise SampleError(
                    "malformed",
                    f"{where}: planned "
                    f"{ref.plan.geometry} but decoded {tiled.geometry} (is "
                    "Media.size the decoded size?)",
                )
        else:
            if id(ref.media) not in videos:
                videos[id(ref.media)] = load_video(ref.media, model_cfg.video, model_cfg.image)
            frames = videos[id(ref.media)]
            if len(frames) != ref.video_frames:
                raise SampleError(
                    "corrupt",
                    f"{where}: video decoded to "
                    f"{len(frames)} frames but {ref.video_frames} were planned",
                )
            tiled = tile_image(frames[ref.frame], model_cfg.image, allow_split=False)
            if tiled.geometry.n_tiles != ref.plan.n_tiles:
                raise SampleError(
                    "corrupt",
                    f"{where} frame {ref.frame}: "
                    f"{tiled.geometry.n_tiles} tiles, planned {ref.plan.n_tiles}",
                )
        tiles.append(tiled.tiles)
    return torch.cat(tiles) if tiles else torch.zeros(0, 3, r, r)


# ---------------------------------------------------------------------------------------------
# Prompts to generate from


@dataclass
class EncodedPrompt:
    """What generation needs: token ids, the ``(N, 3, r, r)`` tiles in the order their runs
    appear (None without images), and the plans of the images shown."""

    input_ids: list[int]
    pixels: torch.Tensor | None
    plans: list[ImagePlan]


def encode_example(ex: Example, model_cfg: ModelConfig) -> EncodedPrompt:
    """The tiles of a formatted prompt (:func:`materialize_pixels`) next to its ids."""
    pixels = materialize_pixels(ex, model_cfg) if ex.images else None
    return EncodedPrompt(ex.input_ids, pixels, [r.plan for r in ex.images])


def encode_sample(
    sample: Sample,
    *,
    tokenizer: MM15Tokenizer,
    model_cfg: ModelConfig,
    fmt: FormatConfig | None = None,
) -> EncodedPrompt:
    """``sample`` as a prompt (:func:`format_sample` with ``for_generation``) and its tiles."""
    ex = format_sample(
        sample, tokenizer=tokenizer, model_cfg=model_cfg, fmt=fmt, for_generation=True
    )
    return encode_example(ex, model_cfg)


def placeholder_parts(text: str, n_media: int, placeholder: str) -> list[Part] | None:
    """``text`` as parts with media ``n`` at its n-th ``placeholder``, empty text dropped; None
    when the text does not hold exactly ``n_media`` placeholders."""
    if not placeholder:
        raise ValueError("placeholder must be a non-empty string")
    chunks = text.split(placeholder)
    if len(chunks) - 1 != n_media:
        return None
    parts = []
    for n, chunk in enumerate(chunks):
        parts += [Part.t(chunk)] if chunk else []
        parts += [Part.m(n)] if n < n_media else []
    return parts


def encode_prompt(
    text: str,
    images: Sequence[Image.Image] = (),
    *,
    tokenizer: MM15Tokenizer,
    cfg: ModelConfig,
    video_frames: bool = False,
    add_bos: bool = True,
) -> EncodedPrompt:
    """Plain text (no chat template) with its n-th ``<image>`` placeholder showing ``images[n]``:
    a document to continue.  With ``video_frames`` the images are frames of one video (§5): one
    tile each, never split.  Raises ``ValueError`` when placeholders and images differ in number.
    """
    placeholder = tokenizer.meta.image_token
    parts = placeholder_parts(text, len(images), placeholder)
    if parts is None:
        raise ValueError(
            f"text has {text.count(placeholder)} {placeholder} placeholders but "
            f"{len(images)} images were given"
        )
    kind = "video" if video_frames else "image"  # a frame: a one-frame video, shown as it is
    media = [Media(kind=kind, decoded=[im] if video_frames else im) for im in images]
    sample = Sample(
        id="prompt",
        source="prompt",
        category="eval",
        stage="eval",
        media=media,
        messages=[Message("document", parts)],
    )
    fmt = dataclasses.replace(cfg.format, add_bos=add_bos)
    return encode_sample(sample, tokenizer=tokenizer, model_cfg=cfg, fmt=fmt)
