"""Text with ``<image>`` placeholders + images → token ids and encoder tiles.

The expansion of every placeholder (how many image tokens, which indicator texts) comes from
:mod:`mm15.data.layout`; the pixels come from :func:`mm15.data.splitting.tile_image` with the
same geometry, and this module checks the two agree tile for tile.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from PIL import Image

from mm15.config import ModelConfig
from mm15.data.layout import (
    ImagePlan,
    ImageRun,
    expand_placeholders,
    plan_image,
    plan_sample,
    sample_allows_split,
)
from mm15.data.splitting import tile_image
from mm15.tokenizer import MM15Tokenizer


@dataclass
class EncodedPrompt:
    input_ids: list[int]
    pixels: torch.Tensor | None  # (N, 3, r, r) tiles in the order their runs appear, or None
    plans: list[ImagePlan]


def encode_prompt(
    text: str,
    images: Sequence[Image.Image] = (),
    *,
    tokenizer: MM15Tokenizer,
    cfg: ModelConfig,
    video_frames: bool = False,
    add_bos: bool = True,
) -> EncodedPrompt:
    """Tokenise ``text``, expanding its n-th ``<image>`` into the tokens of ``images[n]``.

    With ``video_frames`` the images are frames of one video (§5): one tile each, never split.
    """
    tokens_per_tile = cfg.connector.num_tokens
    sizes = [im.size for im in images]
    if video_frames:
        # Frames are one tile each (§5); planned per frame so odd-sized frames stay exact.
        plans = [
            plan_image(
                s, cfg.image, tokens_per_tile=tokens_per_tile, image_index=n, allow_split=False
            )
            for n, s in enumerate(sizes)
        ]
    else:
        plans = plan_sample(sizes, cfg.image, tokens_per_tile=tokens_per_tile)
    allow_split = not video_frames and sample_allows_split(len(images), cfg.image)
    segments = expand_placeholders(text, plans, placeholder=tokenizer.meta.image_token)
    ids: list[int] = [tokenizer.bos_id] if add_bos and tokenizer.bos_id is not None else []
    image_id = tokenizer.image_token_id
    for seg in segments:
        if isinstance(seg, ImageRun):
            ids.extend([image_id] * seg.num_tokens)
        else:
            ids.extend(tokenizer.encode(seg.text))
    tiles = []
    for im, plan in zip(images, plans, strict=True):
        tiled = tile_image(im, cfg.image, allow_split=allow_split)
        if tiled.geometry != plan.geometry:
            raise RuntimeError(f"tiling {tiled.geometry} disagrees with plan {plan.geometry}")
        tiles.append(tiled.tiles)
    pixels = torch.cat(tiles) if tiles else None
    return EncodedPrompt(input_ids=ids, pixels=pixels, plans=plans)
