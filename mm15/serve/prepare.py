"""A chat request → checked sampling settings, then token ids and tiles for the engine.

:func:`check_request` is cheap (no image touched) and runs before admission;
:func:`prepare_prompt` fetches and decodes images and tokenises, after admission, in a worker
thread.  Text is bounded before it is tokenised (:func:`prompt_bytes_limit`), and decoded
images and video frames server-wide (:class:`PixelBudget`).  The prompt is the chat template the
model was trained with (:mod:`mm15.data.pipeline`, ``for_generation``; the decoded images travel
in the sample as ``Media.decoded``, so they are neither decoded twice nor re-joined): images are
numbered ``k`` in order of appearance over the whole conversation, which is the ``k`` of
``<k:x1,y1,x2,y2>`` and of the ``image`` field of returned regions.  A video is a
``Media(kind="video")`` whose sampled frames (:mod:`mm15.serve.video`) are planned as training
plans them (§5: one tile each); each frame is an image ``k``.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from PIL import Image

from mm15.config import VideoConfig
from mm15.data.coord_parse import parse_regions
from mm15.data.coords import Box
from mm15.data.pipeline import format_sample
from mm15.data.prompt_encoding import EncodedPrompt, encode_example
from mm15.data.schema import Media, Message, Part, Sample, SampleError
from mm15.serve.config import LimitsConfig, ServeConfig
from mm15.serve.engine import SamplingParams
from mm15.serve.fetch import Fetcher
from mm15.serve.media import load_image_url
from mm15.serve.schemas import APIError, ChatRequest, ImagePart, VideoPart
from mm15.serve.video import open_video_url

_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


@dataclass
class PreparedPrompt:
    encoded: EncodedPrompt
    sizes: list[tuple[int, int]]  # (W, H) of image (or frame) k, for parsing regions

    @property
    def prompt_tokens(self) -> int:
        return len(self.encoded.input_ids)


def _bad(message: str, param: str | None = None, code: str = "invalid_request") -> APIError:
    return APIError(400, message, param=param, code=code)


def prompt_token_limit(cfg: ServeConfig, model_cfg) -> int:
    context = model_cfg.lm.max_seq_len
    return min(cfg.limits.max_prompt_tokens or context, context)


def prompt_bytes_limit(cfg: ServeConfig, model_cfg, tokenizer) -> int:
    """UTF-8 bytes of text above which a prompt cannot fit the token limit: no token stands
    for more input bytes than its vocabulary entry's UTF-8 length (byte-level BPE: one
    character per byte; SentencePiece's "▁" and "<0x41>" stand for fewer), added and special
    tokens included since text may spell them.  A normaliser may shorten text before that
    (NFC composes up to 3 characters into one), hence the factor 4.  Computed once per
    tokenizer (the vocabulary is walked)."""
    if cfg.limits.max_prompt_bytes is not None:
        return cfg.limits.max_prompt_bytes
    tok = tokenizer.tok
    longest = max(len(t.encode("utf-8", "surrogatepass")) for t in tok.get_vocab(True))
    return prompt_token_limit(cfg, model_cfg) * longest * (4 if tok.normalizer else 1)


def _text_bytes(req: ChatRequest) -> int:
    n = 0
    for msg in req.messages:
        for part in [msg.content] if isinstance(msg.content, str) else msg.content or []:
            text = part if isinstance(part, str) else getattr(part, "text", "")
            n += len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))
    return n


def check_request(
    req: ChatRequest, cfg: ServeConfig, *, max_prompt_bytes: int | None = None
) -> SamplingParams:
    """Everything that can be checked without images and without tokenising; the sampling
    settings.  ``max_prompt_bytes``: see :func:`prompt_bytes_limit`.  The checks run in this
    order, so a request with several faults always gets the same error."""
    _check_model_and_features(req, cfg)
    max_tokens = _max_tokens(req, cfg.limits)
    stop = _stop_strings(req, cfg.limits)
    _check_media(req, cfg.limits)
    _check_text_bytes(req, max_prompt_bytes)
    temperature = cfg.default_temperature if req.temperature is None else req.temperature
    return SamplingParams(
        max_tokens=max_tokens,
        temperature=temperature,
        top_p=req.top_p,
        top_k=req.top_k,
        seed=req.seed,
        stop=tuple(stop),
    )


def _check_model_and_features(req: ChatRequest, cfg: ServeConfig) -> None:
    """404 for another model's name; 400 for OpenAI features mm15 serve does not have."""
    if req.model != cfg.model_name:
        raise APIError(
            404,
            f"model {req.model!r} does not exist; this server serves {cfg.model_name!r}",
            param="model",
            code="model_not_found",
        )
    for name, bad in (
        ("n", req.n != 1),
        ("logprobs", bool(req.logprobs)),
        ("tools", bool(req.tools)),
    ):
        if bad:
            raise _bad(f"{name} is not supported by mm15 serve (n must be 1)", name, "unsupported")


def _max_tokens(req: ChatRequest, lim: LimitsConfig) -> int:
    if req.max_tokens and req.max_completion_tokens and req.max_tokens != req.max_completion_tokens:
        raise _bad("max_tokens and max_completion_tokens disagree", "max_tokens")
    max_tokens = req.max_completion_tokens or req.max_tokens or lim.default_max_tokens
    if max_tokens > lim.max_tokens:
        raise _bad(
            f"max_tokens={max_tokens} is above this server's limit of {lim.max_tokens}",
            "max_tokens",
            "max_tokens_too_large",
        )
    return max_tokens


def _stop_strings(req: ChatRequest, lim: LimitsConfig) -> list[str]:
    stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
    if len(stop) > lim.max_stop or any(not s for s in stop):
        raise _bad(f"stop: at most {lim.max_stop} non-empty strings, got {stop!r}", "stop")
    return stop


def _check_media(req: ChatRequest, lim: LimitsConfig) -> None:
    """Images and videos only in user messages, at most ``max_images`` and ``max_videos`` in
    the whole conversation."""
    limits = {"image": lim.max_images, "video": lim.max_videos}
    counts = dict.fromkeys(limits, 0)
    for i, msg in enumerate(req.messages):
        parts = msg.content if isinstance(msg.content, list) else []
        for kind, what in ((ImagePart, "image"), (VideoPart, "video")):
            n = sum(isinstance(p, kind) for p in parts)
            if n and msg.role != "user":
                raise _bad(
                    f"messages[{i}]: only user messages may hold {what}s, not {msg.role}",
                    f"messages.{i}.content",
                )
            counts[what] += n
    for what, n in counts.items():
        if n > limits[what]:
            raise _bad(
                f"{n} {what}s in the request; at most {limits[what]} are allowed (max_{what}s)",
                "messages",
                f"too_many_{what}s",
            )


def _check_text_bytes(req: ChatRequest, max_prompt_bytes: int | None) -> None:
    n_bytes = _text_bytes(req)
    if max_prompt_bytes is not None and n_bytes > max_prompt_bytes:
        raise _bad(
            f"the prompt's text is {n_bytes:,} bytes, more than a prompt within the "
            f"token limit can hold ({max_prompt_bytes:,} bytes)",
            "messages",
            "prompt_too_long",
        )


class PixelBudget:
    """Decoded pixels that requests being prepared may hold at once, server-wide
    (``MediaConfig.max_pixels_in_flight``): a 250 KB upload can decode to 16 MP.  Each
    decode first reserves ``max_image_pixels`` (the most it can produce), then gives back
    what the image did not use; a request gives back all it holds once it is prepared."""

    def __init__(self, total: int, wait_s: float):
        self.total, self.free, self.wait_s = total, total, wait_s
        self._cv = threading.Condition()

    def take(self, n: int, where: str) -> None:
        with self._cv:
            if not self._cv.wait_for(lambda: self.free >= n, self.wait_s):
                raise APIError(
                    503,
                    f"{where}: other requests hold {self.total - self.free:,} of "
                    f"the {self.total:,} decoded pixels allowed in flight "
                    "(max_pixels_in_flight); retry later",
                    code="image_budget_full",
                    headers={"Retry-After": "1"},
                )
            self.free -= n

    def give(self, n: int) -> None:
        with self._cv:
            self.free += n
            self._cv.notify_all()


@dataclass
class _Images:
    """One request's image and video loading, within the budget; :meth:`close` gives back what
    it holds."""

    cfg: ServeConfig
    fetcher: Fetcher
    budget: PixelBudget | None
    held: int = 0

    def _take(self, n: int, where: str) -> None:
        if self.budget is not None and n > 0:
            self.budget.take(n, where)
            self.held += n

    def _give(self, n: int) -> None:
        if self.budget is not None and n > 0:
            self.budget.give(n)
            self.held -= n

    def load(self, url: str, where: str) -> Image.Image:
        most = self.cfg.media.max_image_pixels
        self._take(most, where)
        image = load_image_url(url, self.cfg.media, self.fetcher, where)
        self._give(most - image.width * image.height)
        return image

    def load_video(self, url: str, where: str, video_cfg: VideoConfig) -> list[Image.Image]:
        """The sampled frames; the budget holds their pixels (from the headers) before any is
        decoded, so a video larger than the whole budget is a 400, not a 503 after waiting."""
        media = self.cfg.media
        video = open_video_url(url, media, video_cfg, self.fetcher, where)
        if video.pixels > media.max_pixels_in_flight:
            raise _bad(
                f"{where}: the video's {video.frames} sampled frames hold {video.pixels:,} "
                f"pixels, above the {media.max_pixels_in_flight:,} decoded pixels allowed in "
                "flight (max_pixels_in_flight)",
                "messages",
                "video_too_large",
            )
        self._take(video.pixels, where)
        frames = video.decode()
        used = sum(f.width * f.height for f in frames)
        self._take(used - video.pixels, where)  # frames larger than the header said
        self._give(video.pixels - used)
        return frames

    def close(self) -> None:
        self._give(self.held)


def _sample(req: ChatRequest, loader: _Images, video_cfg: VideoConfig) -> Sample:
    media, messages = [], []
    for i, msg in enumerate(req.messages):
        content = msg.content if msg.content is not None else ""
        parts: list[Part] = []
        for j, part in enumerate([content] if isinstance(content, str) else content):
            if isinstance(part, str):
                parts.append(Part.t(part))
            elif isinstance(part, ImagePart):
                where = f"messages[{i}].content[{j}].image_url"
                image = loader.load(part.image_url.url, where)
                parts.append(Part.m(len(media)))
                media.append(Media(kind="image", decoded=image))
            elif isinstance(part, VideoPart):
                where = f"messages[{i}].content[{j}].video_url"
                frames = loader.load_video(part.video_url.url, where, video_cfg)
                parts.append(Part.m(len(media)))
                media.append(Media(kind="video", decoded=frames))
            else:
                parts.append(Part.t(part.text))
        messages.append(Message(role=_ROLES[msg.role], content=parts))
    return Sample(
        id="request", source="serve", category="eval", stage="eval", media=media, messages=messages
    )


def _sizes(sample: Sample) -> list[tuple[int, int]]:
    """(W, H) of image k: an image's own, or each frame of a video (frames count as images)."""
    out = []
    for m in sample.media:
        out.extend(f.size for f in (m.decoded if m.kind == "video" else [m.decoded]))
    return out


def prepare_prompt(
    req: ChatRequest,
    params: SamplingParams,
    cfg: ServeConfig,
    model_cfg,
    tokenizer,
    fetcher: Fetcher,
    budget: PixelBudget | None = None,
) -> PreparedPrompt:
    """Images fetched and decoded (within ``budget``), the template applied, limits on tokens
    checked, tiles cut."""
    loader = _Images(cfg, fetcher, budget)
    try:
        return _prepare(req, params, cfg, model_cfg, tokenizer, loader)
    finally:
        loader.close()  # the tiles are cut: the decoded images are dropped


def _prepare(req, params, cfg, model_cfg, tokenizer, loader: _Images) -> PreparedPrompt:
    sample = _sample(req, loader, model_cfg.video)
    try:
        # The chat format the model was trained with (model_cfg.format, from its checkpoint).
        ex = format_sample(sample, tokenizer=tokenizer, model_cfg=model_cfg, for_generation=True)
    except SampleError as e:
        raise _bad(f"cannot build the prompt: {e}", "messages") from e
    n, context = len(ex.input_ids), model_cfg.lm.max_seq_len
    limit = prompt_token_limit(cfg, model_cfg)
    if n > limit:
        raise _bad(
            f"the prompt is {n} tokens (images included), above the limit of {limit}",
            "messages",
            "prompt_too_long",
        )
    if n + params.max_tokens > context:
        raise _bad(
            f"the prompt ({n} tokens) plus max_tokens ({params.max_tokens}) exceeds the "
            f"model's context of {context} tokens",
            "max_tokens",
            "context_length_exceeded",
        )
    # media are built in order of appearance above; tiles are cut once the limits pass
    return PreparedPrompt(encode_example(ex, model_cfg), _sizes(sample))


def regions_of(text: str, sizes: list[tuple[int, int]]) -> list[dict]:
    """The answer's grounded boxes and points in pixels of their image (structured output)."""
    out = []
    for r in parse_regions(text, sizes).regions:
        shape = r.shape
        if isinstance(shape, Box):
            geo = {"box": [round(v, 2) for v in (shape.x1, shape.y1, shape.x2, shape.y2)]}
        else:
            geo = {"point": [round(shape.x, 2), round(shape.y, 2)]}
        out.append({"label": r.label, "image": r.image, **geo})
    return out
