"""Prompts to generate from: a sample or plain text → token ids and tiles (:class:`EncodedPrompt`).

The same input pipeline as training (:func:`mm15.data.pipeline.format_sample` with
``for_generation``, :func:`mm15.data.sample_images.materialize_pixels`), for ``mm15 chat``,
``mm15 serve``, the inference API and the lmms-eval plugin: a chat ends with the assistant
prefix, where the model takes over; plain text with ``<image>`` placeholders is a document to
continue (MM1.5 §4 pre-training format, no EOS).  A :class:`~mm15.data.schema.Media` may carry
pixels already decoded (``Media.decoded``): a server or chat session hands them over as they are.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from PIL import Image

from mm15.config import FormatConfig, ModelConfig
from mm15.data.layout import ImagePlan
from mm15.data.pipeline import Example, format_sample
from mm15.data.sample_images import materialize_pixels
from mm15.data.schema import Media, Message, Part, Sample
from mm15.tokenizer import MM15Tokenizer


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
    """``sample`` as a prompt (``format_sample`` with ``for_generation``) and its tiles."""
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


def media_placeholder_parts(text: str, placeholders: Sequence[str]) -> tuple[list[Part], list[int]]:
    """``text`` as parts with medium ``n`` at its n-th placeholder of any kind, empty text
    dropped, and which of ``placeholders`` each medium's was (an image's, a video's)."""
    if not placeholders or not all(placeholders):
        raise ValueError("placeholders must be non-empty strings")
    pattern = "|".join(re.escape(p) for p in sorted(placeholders, key=len, reverse=True))
    parts: list[Part] = []
    kinds: list[int] = []
    start = 0
    for match in re.finditer(pattern, text):
        if match.start() > start:
            parts.append(Part.t(text[start : match.start()]))
        parts.append(Part.m(len(kinds)))
        kinds.append(list(placeholders).index(match.group()))
        start = match.end()
    if start < len(text):
        parts.append(Part.t(text[start:]))
    return parts, kinds


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
