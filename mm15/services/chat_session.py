"""A multi-turn conversation with an mm15 checkpoint (``mm15 chat``; MM1.5 §3.1, §3.5, Fig. 1, Fig. 3).

**Prompt = the training format.**  Every turn re-renders the whole conversation the way training
formats a conversation sample: the user turns go through the conversation reader's
:func:`~mm15.data.sources.conversation.build_messages` (``<image>`` / ``<video>`` placeholders
become media parts; with no placeholder the media are prepended to the first user turn, and text
next to a media part loses its adjacent whitespace), earlier replies become assistant messages,
and :func:`~mm15.data.pipeline.format_sample` with ``for_generation`` renders the chat template the
model was trained with (``ModelConfig.format`` of its checkpoint, by default
``User: …\\nAssistant:\\n…[EOS]\\n…Assistant:\\n``).  Image tokens and tiles come from the one input
pipeline (:mod:`mm15.data.pipeline`); ``n_min`` / ``n_max`` may be raised at inference without retraining
(Table 2).

**Media** are shown once, in the first user turn: images (numbered ``k`` = 0, 1, … in the order
given) or the frames of one video (§5: sampled per ``VideoConfig``, one tile each, frame ``k`` is
image ``k``).  Later turns may not hold placeholders (that would move the images).  The decoded
media travel in the sample (``Media.decoded``); their tiles are cut once per session and reused
by every turn.

**Visual prompts** (§3.1, Fig. 1): points and boxes in pixels of image ``k`` are rendered into the
first user turn by :func:`~mm15.data.coords.format_point` / ``format_box`` (``<x,y>``,
``<x1,y1,x2,y2>``; ``<k:…>`` when several images are shown, ``FormatConfig.region_image_index``).
The i-th ``<region>`` marker of the prompt receives the i-th visual prompt; without markers they
are appended to the prompt, separated by spaces.

**Replies** are parsed by :func:`~mm15.data.coord_parse.parse_regions` on the original sizes of
the images (or frames) and can be drawn with :func:`~mm15.data.draw.draw_on_images`.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from PIL import Image

from mm15.config import ModelConfig
from mm15.data.coord_parse import ParsedRegion, ParseIssue, parse_regions
from mm15.data.coords import Box, CoordinateError, Point
from mm15.data.draw import draw_on_images
from mm15.data.image_io import open_image
from mm15.data.pipeline import Example, format_sample
from mm15.data.prompt_encoding import EncodedPrompt
from mm15.data.sample_images import materialize_pixels
from mm15.data.schema import Media, Message, Part, Region, Sample, SampleError
from mm15.data.sources.conversation import ConversationFormat, build_messages
from mm15.data.video import load_video_frames
from mm15.model.generate import GenerationResult
from mm15.model.mm15 import MM15
from mm15.services.inference import GenerationSettings, generate_encoded
from mm15.tokenizer import MM15Tokenizer

REGION_MARKER = "<region>"  # where a visual prompt goes in the user's text
_REGION_SLOT = "<region:{}>"  # internal: the i-th visual prompt, a region part of build_messages
_CONV = ConversationFormat(region_pattern=r"<region:(\d+)>")
_MEDIA_TOKENS = re.compile("|".join(re.escape(t) for t in (*_CONV.image_tokens, _CONV.video_token)))


class ChatError(ValueError):
    """A conversation input that cannot be used; the message says what and where."""


# ---------------------------------------------------------------------------------------------
# Inputs: media and visual prompts


@dataclass
class ChatMedia:
    """What the conversation shows: images, or the frames of one video (§5), in ``k`` order."""

    visuals: list[Image.Image]  # image k, or frame k of the video
    names: list[str]  # one per image; [the video's path] for a video
    video: bool = False

    @property
    def sizes(self) -> list[tuple[int, int]]:
        """``(W, H)`` of image ``k`` (the original size: coordinates are relative to it, §3)."""
        return [im.size for im in self.visuals]


def load_media(
    images: Sequence[str | Path] = (), video: str | Path | None = None, *, cfg: ModelConfig
) -> ChatMedia:
    """Decode ``images`` safely (:func:`~mm15.data.image_io.open_image`) or sample the frames of
    ``video`` per ``cfg.video``; errors name the file (ImageDecodeError / VideoDecodeError)."""
    if images and video is not None:
        raise ChatError("give images or one video, not both")
    if video is not None:
        frames = load_video_frames(video, cfg.video, image_cfg=cfg.image)
        return ChatMedia(frames, [str(video)], video=True)
    return ChatMedia([open_image(p, cfg=cfg.image) for p in images], [str(p) for p in images])


@dataclass(frozen=True)
class VisualPrompt:
    """A point or box in pixels of image ``shape.image``; ``spec`` is how the user wrote it."""

    shape: Box | Point
    spec: str


def parse_visual_prompt(spec: str, kind: Literal["point", "box"]) -> VisualPrompt:
    """``"X,Y"`` / ``"X1,Y1,X2,Y2"`` in pixels, optionally ``"k:…"`` for image ``k`` (0-based)."""
    where = f"--{kind} {spec!r}"
    head, sep, body = spec.rpartition(":")
    try:
        k = int(head) if sep else 0
        values = [float(v) for v in body.split(",")]
    except ValueError:
        raise ChatError(
            f"{where}: want {'X,Y' if kind == 'point' else 'X1,Y1,X2,Y2'} in "
            "pixels, optionally prefixed by the image index 'k:'"
        ) from None
    want = 2 if kind == "point" else 4
    if len(values) != want or k < 0:
        raise ChatError(f"{where}: want {want} pixel values and an image index k >= 0")
    try:
        shape = Point(*values, image=k) if kind == "point" else Box(*values, image=k)
    except CoordinateError as e:
        raise ChatError(f"{where}: {e}") from None
    return VisualPrompt(shape, spec)


def _check_visual_prompt(vp: VisualPrompt, media: ChatMedia) -> Region:
    """The prompt as a schema Region, after checking it lies on an image that exists."""
    kind = "point" if isinstance(vp.shape, Point) else "box"
    where = f"--{kind} {vp.spec!r}"
    if media.video:
        raise ChatError(f"{where}: visual prompts point into images (--image), not a video")
    k = vp.shape.image
    if k >= len(media.visuals):
        raise ChatError(
            f"{where} is on image {k} but {len(media.visuals)} image(s) were given "
            "(image indices are 0-based)"
        )
    w, h = media.sizes[k]
    s = vp.shape
    xs, ys = ((s.x,), (s.y,)) if isinstance(s, Point) else ((s.x1, s.x2), (s.y1, s.y2))
    if not all(0 <= x <= w for x in xs) or not all(0 <= y <= h for y in ys):
        raise ChatError(f"{where} lies outside image {k} ({media.names[k]}, {w}x{h} pixels)")
    if isinstance(s, Point):
        return Region(media=k, point=(s.x, s.y))
    return Region(media=k, box=(s.x1, s.y1, s.x2, s.y2))


# ---------------------------------------------------------------------------------------------
# Replies


@dataclass
class ChatReply:
    """The model's answer and the regions it grounds (pixels of the original images)."""

    text: str
    regions: list[ParsedRegion]
    issues: list[ParseIssue]  # malformed coordinate tags, never dropped silently
    finish_reason: str = "stop"

    def to_json(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "regions": [region_json(self.text, r) for r in self.regions],
            "issues": [{"tag": i.text, "reason": i.reason} for i in self.issues],
        }


def region_json(text: str, r: ParsedRegion) -> dict[str, Any]:
    """``{"label", "image", "tag", "box": [x1, y1, x2, y2] | "point": [x, y]}`` in pixels."""
    s = r.shape
    out: dict[str, Any] = {"label": r.label, "image": r.image, "tag": text[r.span[0] : r.span[1]]}
    if isinstance(s, Box):
        out["box"] = [round(v, 2) for v in (s.x1, s.y1, s.x2, s.y2)]
    else:
        out["point"] = [round(s.x, 2), round(s.y, 2)]
    return out


def inference_config(cfg: ModelConfig, n_min: int | None, n_max: int | None) -> ModelConfig:
    """``cfg`` with the dynamic-splitting bounds replaced (Table 2: n_max may be raised at
    inference without retraining); the model's own config is left alone."""
    image = dataclasses.replace(
        cfg.image,
        n_min=cfg.image.n_min if n_min is None else n_min,
        n_max=cfg.image.n_max if n_max is None else n_max,
    )
    if not 1 <= image.n_min <= image.n_max:
        raise ChatError(
            f"need 1 <= n_min <= n_max, got ({image.n_min}, {image.n_max}) "
            f"(the model's are ({cfg.image.n_min}, {cfg.image.n_max}))"
        )
    return dataclasses.replace(cfg, image=image)


# ---------------------------------------------------------------------------------------------
# The session


class ChatSession:
    """Model, tokenizer, media and the conversation so far; :meth:`answer` takes a turn."""

    def __init__(
        self,
        model: MM15,
        tokenizer: MM15Tokenizer,
        media: ChatMedia | None = None,
        *,
        visual_prompts: Sequence[VisualPrompt] = (),
        settings: GenerationSettings | None = None,
        n_min: int | None = None,
        n_max: int | None = None,
    ):
        self.model, self.tokenizer = model, tokenizer
        self.cfg = inference_config(model.cfg, n_min, n_max)
        self.media = media or ChatMedia([], [])
        self.fmt = self.cfg.format  # the format the model was trained with (its checkpoint's)
        self.regions = [_check_visual_prompt(vp, self.media) for vp in visual_prompts]
        settings = dataclasses.replace(settings or GenerationSettings())
        # A model that forgets its EOS must not write the user's next turn.
        stop = self.fmt.turn_end + self.fmt.user_prefix.rstrip()
        if stop.strip():
            settings.stop_strings = [*settings.stop_strings, stop]
        self.settings = settings
        self.history: list[tuple[str, str]] = []  # (user text, reply text) per finished turn
        self._pixels: tuple[tuple, torch.Tensor | None] | None = None

    def reset(self) -> None:
        """Forget the conversation; the media and visual prompts stay for the next first turn."""
        self.history.clear()

    # ---- prompt ---------------------------------------------------------------------------------
    def _first_turn_text(self, text: str) -> str:
        n, markers = len(self.regions), text.count(REGION_MARKER)
        if n == 0:
            return text
        if markers == 0:
            return " ".join([text, *(_REGION_SLOT.format(i) for i in range(n))])
        if markers != n:
            raise ChatError(
                f"the prompt has {markers} {REGION_MARKER} marker(s) but {n} visual "
                "prompt(s) (--point/--box) were given"
            )
        for i in range(n):
            text = text.replace(REGION_MARKER, _REGION_SLOT.format(i), 1)
        return text

    def _region(self, turn: int, n: int) -> int:
        if turn != 0 or not 0 <= n < len(self.regions):
            raise ChatError(
                f"user turn {turn + 1}: {_REGION_SLOT.format(n)} names no visual "
                "prompt of the first turn"
            )
        return n

    def _check_placeholders(self, users: Sequence[str]) -> None:
        n_img = 0 if self.media.video else len(self.media.visuals)
        found = [len(_MEDIA_TOKENS.findall(u)) for u in users]
        for t, count in enumerate(found[1:], start=2):
            if count:
                raise ChatError(
                    f"user turn {t} has an image/video placeholder; media are shown "
                    "in the first turn only (/reset to start over)"
                )
        videos = users[0].count(_CONV.video_token)
        images = found[0] - videos
        if images not in (0, n_img):
            raise ChatError(
                f"the prompt has {images} <image> placeholder(s) but {n_img} image(s) were given"
            )
        if videos not in (0, int(self.media.video)):
            raise ChatError(
                f"the prompt has {videos} {_CONV.video_token} placeholder(s) but "
                f"{int(self.media.video)} video(s) were given"
            )

    def sample(self, user_text: str) -> Sample:
        """The conversation so far plus ``user_text`` as a schema Sample (training's format)."""
        users = [u for u, _ in self.history] + [user_text]
        self._check_placeholders(users)
        turns = [{"from": "human", "value": u} for u in users]
        turns[0]["value"] = self._first_turn_text(users[0])
        video = self.media.video
        msgs = build_messages(
            turns,
            num_images=0 if video else len(self.media.visuals),
            num_videos=int(video),
            fmt=_CONV,
            where="chat",
            regions=self._region,
        )
        if len(msgs) != len(turns):
            raise ChatError("empty message: a user turn needs text (or the images)")
        messages: list[Message] = []
        for msg, (_, reply) in zip(msgs, [*self.history, (None, None)], strict=True):
            messages.append(msg)
            if reply is not None:
                messages.append(Message("assistant", [Part.t(reply)]))
        if video:
            media = [Media(kind="video", path=self.media.names[0], decoded=self.media.visuals)]
        else:
            media = [
                Media(kind="image", path=name, decoded=im)
                for name, im in zip(self.media.names, self.media.visuals, strict=True)
            ]
        return Sample(
            id="chat",
            source="chat",
            category="eval",
            stage="eval",
            media=media,
            messages=messages,
            regions=list(self.regions),
        )

    def example(self, user_text: str) -> Example:
        """Token ids of the prompt for ``user_text``, ending with the assistant marker."""
        try:
            return format_sample(
                self.sample(user_text),
                tokenizer=self.tokenizer,
                model_cfg=self.cfg,
                fmt=self.fmt,
                for_generation=True,
            )
        except SampleError as e:
            raise ChatError(e.detail) from None

    def prompt_text(self, user_text: str) -> str:
        """The prompt as text (image tokens written as the image token), for inspection."""
        return self.tokenizer.decode(self.example(user_text).input_ids, skip_special=False)

    # ---- generation -----------------------------------------------------------------------------
    def pixels(self, ex: Example) -> torch.Tensor | None:
        """``(N, 3, r, r)`` tiles of ``ex.images``, cut once from the decoded media and reused
        while the plans stay the same (media live in the first turn, so they do)."""
        key = tuple((r.media_index, r.frame, r.plan.n_tiles, r.allow_split) for r in ex.images)
        if self._pixels is not None and self._pixels[0] == key:
            return self._pixels[1]
        self._pixels = (key, materialize_pixels(ex, self.cfg) if ex.images else None)
        return self._pixels[1]

    def generate(self, ex: Example) -> GenerationResult:
        """One continuation of the prompt ``ex`` (the model call; tests replace it)."""
        limit = self.cfg.lm.max_seq_len
        if len(ex.input_ids) + self.settings.max_new_tokens > limit:
            raise ChatError(
                f"the prompt is {len(ex.input_ids)} tokens; with max_new_tokens="
                f"{self.settings.max_new_tokens} it exceeds the model's max_seq_len="
                f"{limit} (/reset, fewer images or a lower --n-max)"
            )
        plans = [r.plan for r in ex.images]
        encoded = EncodedPrompt(input_ids=ex.input_ids, pixels=self.pixels(ex), plans=plans)
        return generate_encoded(self.model, self.tokenizer, [encoded], self.settings)[0]

    def answer(self, user_text: str) -> ChatReply:
        """Take one turn: prompt with the history, generate, parse, remember the exchange."""
        result = self.generate(self.example(user_text))
        return self.record(user_text, result.text or "", finish_reason=result.finish_reason)

    def record(self, user_text: str, reply_text: str, *, finish_reason: str = "stop") -> ChatReply:
        """Append an exchange to the history and parse the reply's regions."""
        self.history.append((user_text, reply_text))
        return self.parse(reply_text, finish_reason=finish_reason)

    def parse(self, reply_text: str, *, finish_reason: str = "stop") -> ChatReply:
        """Regions of ``reply_text`` in pixels of the original images (MM1.5 §3.1, Fig. 1, Fig. 3)."""
        parsed = parse_regions(reply_text, self.media.sizes)
        return ChatReply(reply_text, parsed.regions, parsed.errors, finish_reason)

    # ---- drawing --------------------------------------------------------------------------------
    def draw(self, reply: ChatReply, out: str | Path) -> list[Path]:
        """Draw ``reply``'s regions with their labels; returns the files written.

        One image shown: ``out`` itself.  Several images (or video frames): one file per image
        that has a region, ``out`` with ``-k`` before the suffix (``boxes-1.png`` for image 1).
        Nothing is written when the reply has no region.
        """
        if not reply.regions:
            return []
        out = Path(out)
        drawn = draw_on_images(self.media.visuals, reply.regions)
        ks = sorted({r.image for r in reply.regions})
        single = len(self.media.visuals) == 1
        paths = [out if single else out.with_name(f"{out.stem}-{k}{out.suffix}") for k in ks]
        for k, path in zip(ks, paths, strict=True):
            path.parent.mkdir(parents=True, exist_ok=True)
            drawn[k].save(path)
        return paths
