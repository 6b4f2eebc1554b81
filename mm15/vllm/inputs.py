"""A vLLM prompt's images through mm15's one input pipeline (MM1.5 §3.1, §3.5, Table 3).

vLLM renders the checkpoint's chat template and tokenises the text itself; each image is one
``<image>`` token there (:mod:`mm15.data.chat_template`).  vLLM then replaces that token by the
image's *block* and places the image's features at the block's image-token positions.  mm15's
pipeline (:func:`mm15.data.pipeline.format_sample`, :func:`mm15.data.sample_images.materialize_pixels`)
decides both, exactly as in training:

* :func:`image_blocks`: per image, the token ids of its block, sub-image indicators (text, no
  features) and image-token runs in encoder order, from the images' sizes alone;
* :func:`encode_images`: the ``(N, 3, r, r)`` tiles of all images and each image's tile count;
* :func:`largest_image`: the size whose block has the most image tokens under the checkpoint's
  ``n_max``, vLLM's worst case for sizing its encoder cache and KV cache.

An image's block depends on the prompt's other images: splitting applies only when the prompt
shows fewer than ``ImageConfig.split_below_images`` images (§4), and the ``index`` indicators
write the image's number ``k``.  So all images of one prompt always go through the pipeline
together, as one document sample that shows them in order; the text around them is vLLM's
(tokenised whole between special tokens and images, as :mod:`mm15.data.token_stream` does).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from mm15.config import ModelConfig
from mm15.data.pipeline import Example, format_sample
from mm15.data.sample_images import materialize_pixels
from mm15.data.schema import Media, Message, Part, Sample
from mm15.data.token_stream import TokenStream
from mm15.tokenizer import MM15Tokenizer

SizeWH = tuple[int, int]


@dataclass(frozen=True)
class PromptPipeline:
    """The pipeline's settings for one checkpoint: its tokenizer and a ModelConfig carrying the
    image, video and chat-format settings (:meth:`mm15.hf.processing.MM15Processor.pipeline_config`)."""

    tokenizer: MM15Tokenizer
    cfg: ModelConfig


@dataclass
class EncodedImages:
    """Tiles of all images of a prompt, in order, and how many belong to each image."""

    pixels: torch.Tensor  # (N, 3, r, r) float32
    tiles_per_image: list[int]


def as_rgb(image: Image.Image | np.ndarray | torch.Tensor) -> Image.Image:
    """An image as vLLM hands it over (PIL, or an HWC uint8 array) as the RGB PIL image the
    pipeline takes (``Media.decoded``)."""
    if isinstance(image, torch.Tensor):
        image = image.numpy()
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    return image if image.mode == "RGB" else image.convert("RGB")


def prompt_sample(images: Sequence[Image.Image | SizeWH]) -> Sample:
    """The images of one prompt as a document sample showing each once, in order: PIL images
    with their pixels, or ``(W, H)`` sizes to plan without pixels."""
    media = [
        Media(decoded=as_rgb(im)) if not isinstance(im, tuple) else Media(size=im) for im in images
    ]
    return Sample(
        id="vllm-prompt",
        source="vllm",
        category="eval",
        stage="eval",
        media=media,
        messages=[Message("document", [Part.m(i) for i in range(len(media))])],
    )


def _format(sample: Sample, pipe: PromptPipeline) -> Example:
    # The prompt's text, BOS included, is vLLM's (rendered by the chat template).
    fmt = dataclasses.replace(pipe.cfg.format, add_bos=False)
    return format_sample(
        sample, tokenizer=pipe.tokenizer, model_cfg=pipe.cfg, fmt=fmt, for_generation=True
    )


def _per_media(ex: Example, n_media: int) -> list[list]:
    """The example's ImageRefs grouped by medium (a video would have one per frame)."""
    refs: list[list] = [[] for _ in range(n_media)]
    for ref in ex.images:
        refs[ref.media_index].append(ref)
    return refs


def image_blocks(sizes_wh: Sequence[SizeWH], pipe: PromptPipeline) -> list[list[int]]:
    """Per image of a prompt showing images of ``sizes_wh`` in order, the token ids that replace
    its ``<image>`` token: what :func:`format_sample` writes for it (checked)."""
    ex = _format(prompt_sample(list(sizes_wh)), pipe)
    blocks = []
    for refs in _per_media(ex, len(sizes_wh)):
        stream = TokenStream()
        for ref in refs:
            stream.image(ref.plan)
        ids, _ = stream.encode(pipe.tokenizer, "vLLM prompt")
        blocks.append(ids)
    if [i for b in blocks for i in b] != ex.input_ids:
        raise RuntimeError("mm15's pipeline wrote other ids than the images' blocks")
    return blocks


def encode_images(images: Sequence[Image.Image], pipe: PromptPipeline) -> EncodedImages:
    """The tiles of a prompt's images (all of them: see the module docstring)."""
    ex = _format(prompt_sample(images), pipe)
    pixels = materialize_pixels(ex, pipe.cfg)
    tiles = [sum(r.n_tiles for r in refs) for refs in _per_media(ex, len(images))]
    return EncodedImages(pixels=pixels, tiles_per_image=tiles)


def image_token_count(block: Sequence[int], pipe: PromptPipeline) -> int:
    """Positions of a block that receive image features."""
    image_id = pipe.tokenizer.image_token_id
    return sum(1 for i in block if i == image_id)


def largest_image(pipe: PromptPipeline) -> SizeWH:
    """The size with the most image tokens (then the longest block) when it is a prompt's only
    image: a canvas of every grid the splitter may choose, ``n_max`` sub-images at most."""
    img = pipe.cfg.image
    r, n_max = img.resolution, img.n_max
    sizes = [(c * r, rows * r) for rows in range(1, n_max + 1) for c in range(1, n_max // rows + 1)]

    def cost(size: SizeWH) -> tuple[int, int]:
        block = image_blocks([size], pipe)[0]
        return image_token_count(block, pipe), len(block)

    return max(sizes, key=cost)
