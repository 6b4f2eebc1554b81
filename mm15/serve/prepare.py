"""A chat request → checked sampling settings, then token ids and tiles for the engine.

:func:`check_request` is cheap (no image touched) and runs before admission;
:func:`prepare_prompt` fetches and decodes images and tokenises, after admission, in a worker
thread.  The prompt is the chat template the model was trained with
(:func:`mm15.data.chat.format_sample` with ``for_generation``): images are numbered ``k`` in
order of appearance over the whole conversation, which is the ``k`` of ``<k:x1,y1,x2,y2>`` and
of the ``image`` field of returned regions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from PIL import Image

from mm15.config import FormatConfig
from mm15.data.chat import format_sample
from mm15.data.coord_parse import parse_regions
from mm15.data.coords import Box
from mm15.data.prompt import EncodedPrompt
from mm15.data.schema import Media, Message, Part, Sample, SampleError
from mm15.data.splitting import tile_image
from mm15.serve.config import ServeConfig
from mm15.serve.engine import SamplingParams
from mm15.serve.media import Fetcher, load_image_url
from mm15.serve.schemas import APIError, ChatRequest, ImagePart

_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


@dataclass
class PreparedPrompt:
    encoded: EncodedPrompt
    sizes: list[tuple[int, int]]  # (W, H) of image k, for parsing regions in the answer

    @property
    def prompt_tokens(self) -> int:
        return len(self.encoded.input_ids)


def _bad(message: str, param: str | None = None, code: str = "invalid_request") -> APIError:
    return APIError(400, message, param=param, code=code)


def check_request(req: ChatRequest, cfg: ServeConfig) -> SamplingParams:
    """Everything that can be checked without images; the sampling settings."""
    lim = cfg.limits
    if req.model != cfg.model_name:
        raise APIError(404, f"model {req.model!r} does not exist; this server serves "
                       f"{cfg.model_name!r}", param="model", code="model_not_found")  # fmt: skip
    for name, bad in (("n", req.n != 1), ("logprobs", bool(req.logprobs)), ("tools", bool(req.tools))):  # fmt: skip
        if bad:
            raise _bad(f"{name} is not supported by mm15 serve (n must be 1)", name, "unsupported")
    if req.max_tokens and req.max_completion_tokens and req.max_tokens != req.max_completion_tokens:
        raise _bad("max_tokens and max_completion_tokens disagree", "max_tokens")
    max_tokens = req.max_completion_tokens or req.max_tokens or lim.default_max_tokens
    if max_tokens > lim.max_tokens:
        raise _bad(f"max_tokens={max_tokens} is above this server's limit of {lim.max_tokens}",
                   "max_tokens", "max_tokens_too_large")  # fmt: skip
    stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
    if len(stop) > lim.max_stop or any(not s for s in stop):
        raise _bad(f"stop: at most {lim.max_stop} non-empty strings, got {stop!r}", "stop")
    n_images = 0
    for i, msg in enumerate(req.messages):
        parts = msg.content if isinstance(msg.content, list) else []
        images = sum(isinstance(p, ImagePart) for p in parts)
        if images and msg.role != "user":
            raise _bad(f"messages[{i}]: only user messages may hold images, not {msg.role}",
                       f"messages.{i}.content")  # fmt: skip
        n_images += images
    if n_images > lim.max_images:
        raise _bad(f"{n_images} images in the request; at most {lim.max_images} are allowed",
                   "messages", "too_many_images")  # fmt: skip
    temperature = cfg.default_temperature if req.temperature is None else req.temperature
    return SamplingParams(max_tokens=max_tokens, temperature=temperature, top_p=req.top_p,
                          top_k=req.top_k, seed=req.seed, stop=tuple(stop))  # fmt: skip


def _sample(
    req: ChatRequest, cfg: ServeConfig, fetcher: Fetcher
) -> tuple[Sample, list[Image.Image]]:
    media, images, messages = [], [], []
    for i, msg in enumerate(req.messages):
        content = msg.content if msg.content is not None else ""
        parts: list[Part] = []
        for j, part in enumerate([content] if isinstance(content, str) else content):
            if isinstance(part, str):
                parts.append(Part.t(part))
            elif isinstance(part, ImagePart):
                where = f"messages[{i}].content[{j}].image_url"
                image = load_image_url(part.image_url.url, cfg.media, fetcher, where)
                parts.append(Part.m(len(media)))
                media.append(Media(kind="image", size=image.size))
                images.append(image)
            else:
                parts.append(Part.t(part.text))
        messages.append(Message(role=_ROLES[msg.role], content=parts))
    sample = Sample(id="request", source="serve", category="eval", stage="eval", media=media,
                    messages=messages)  # fmt: skip
    return sample, images


def prepare_prompt(
    req: ChatRequest, params: SamplingParams, cfg: ServeConfig, model_cfg, tokenizer,
    fetcher: Fetcher,
) -> PreparedPrompt:  # fmt: skip
    """Images fetched and decoded, the template applied, limits on tokens checked, tiles cut."""
    sample, images = _sample(req, cfg, fetcher)
    try:
        ex = format_sample(sample, tokenizer=tokenizer, model_cfg=model_cfg, fmt=FormatConfig(),
                           for_generation=True)  # fmt: skip
    except SampleError as e:
        raise _bad(f"cannot build the prompt: {e}", "messages") from e
    n, context = len(ex.input_ids), model_cfg.lm.max_seq_len
    limit = min(cfg.limits.max_prompt_tokens or context, context)
    if n > limit:
        raise _bad(f"the prompt is {n} tokens (images included), above the limit of {limit}",
                   "messages", "prompt_too_long")  # fmt: skip
    if n + params.max_tokens > context:
        raise _bad(f"the prompt ({n} tokens) plus max_tokens ({params.max_tokens}) exceeds the "
                   f"model's context of {context} tokens", "max_tokens", "context_length_exceeded")  # fmt: skip
    tiles = []
    for ref in ex.images:  # media index == order of appearance (built that way above)
        tiled = tile_image(images[ref.media_index], model_cfg.image, allow_split=ref.allow_split)
        if tiled.geometry != ref.plan.geometry:  # one place counts tokens: it must agree
            raise RuntimeError(f"image {ref.media_index}: tiles {tiled.geometry} disagree with "
                               f"the plan {ref.plan.geometry}")  # fmt: skip
        tiles.append(tiled.tiles)
    pixels = torch.cat(tiles) if tiles else None
    encoded = EncodedPrompt(
        input_ids=ex.input_ids, pixels=pixels, plans=[r.plan for r in ex.images]
    )
    return PreparedPrompt(encoded=encoded, sizes=[im.size for im in images])


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
