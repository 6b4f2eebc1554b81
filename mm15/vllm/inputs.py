"""A vLLM prompt's images and videos through mm15's one input pipeline (MM1.5 §3.1, §3.5, §5,
Table 3).

vLLM renders the export's chat template and tokenises the text itself; each image is one
``<image>`` token there and each video one ``<video>`` token (:mod:`mm15.data.chat_template`,
:mod:`mm15.hf.processing`).  vLLM then replaces that token by the medium's *block* and places
its features at the block's image-token positions.  mm15's pipeline
(:func:`mm15.data.pipeline.format_sample`, :func:`mm15.data.sample_images.materialize_pixels`)
decides both, exactly as in training:

* :func:`media_blocks`: per medium, the token ids of its block: for an image its sub-image
  indicators (text, no features) and image-token runs in encoder order, for a video its frames'
  blocks, one tile each;
* :func:`encode_media`: the ``(N, 3, r, r)`` tiles of all media and each medium's tile count;
* :func:`largest_image`: the size whose block has the most image tokens under the checkpoint's
  ``n_max``, vLLM's worst case for sizing its encoder cache and KV cache.

A medium's block depends on the prompt's other media: splitting applies only when the prompt
shows fewer than ``ImageConfig.split_below_images`` images, a video's frames counted (§4), and
the ``index`` indicators write the image's number ``k``.  So all media of one prompt always go
through the pipeline together, as one document sample that shows them in the prompt's order;
the text around them is vLLM's (tokenised whole between special tokens and media, as
:mod:`mm15.data.token_stream` does).

A medium is given as :data:`MediumInput`: an image (PIL), an image's ``(W, H)`` size (to plan
without pixels), or a video's frames as mm15 shows them (:func:`video_frames`: mm15's uniform
sampling of the frames vLLM decoded).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from mm15.config import ModelConfig
from mm15.data.image_io import decoded_rgb
from mm15.data.pipeline import Example, format_sample
from mm15.data.sample_images import materialize_pixels
from mm15.data.schema import Media, Message, Part, Sample
from mm15.data.token_stream import TokenStream
from mm15.data.video import sample_decoded_frames
from mm15.tokenizer import MM15Tokenizer

SizeWH = tuple[int, int]
Frames = list[Image.Image]
MediumInput = Image.Image | SizeWH | Frames  # module docstring


@dataclass(frozen=True)
class PromptPipeline:
    """The pipeline's settings for one checkpoint: its tokenizer and a ModelConfig carrying the
    image, video and chat-format settings (:meth:`mm15.hf.processing.MM15Processor.pipeline_config`)."""

    tokenizer: MM15Tokenizer
    cfg: ModelConfig


@dataclass
class EncodedMedia:
    """Tiles of all media of a prompt, in order, and how many belong to each medium."""

    pixels: torch.Tensor  # (N, 3, r, r) float32
    tiles_per_medium: list[int]


def video_frames(video: object, pipe: PromptPipeline) -> Frames:
    """The frames mm15 shows of a video as vLLM hands it over (a ``(K, H, W, 3)`` array or a
    list of frames, possibly with vLLM's metadata as ``(frames, metadata)``): mm15's uniform
    sampling of ``VideoConfig.num_frames`` of the K (:func:`mm15.data.video.sample_decoded_frames`)."""
    if isinstance(video, tuple) and len(video) == 2 and isinstance(video[1], dict):
        video = video[0]
    if isinstance(video, torch.Tensor):
        video = video.numpy()
    if isinstance(video, np.ndarray) and video.ndim != 4:
        raise ValueError(f"a video must be (frames, H, W, 3), got shape {video.shape}")
    return sample_decoded_frames(video, pipe.cfg.video)  # type: ignore[arg-type]


def _medium(item: MediumInput) -> Media:
    if isinstance(item, list):
        return Media(kind="video", decoded=item)
    if isinstance(item, tuple):
        return Media(size=item)
    return Media(decoded=decoded_rgb(item))


def prompt_sample(media: Sequence[MediumInput]) -> Sample:
    """The media of one prompt as a document sample showing each once, in order."""
    return Sample(
        id="vllm-prompt",
        source="vllm",
        category="eval",
        stage="eval",
        media=[_medium(m) for m in media],
        messages=[Message("document", [Part.m(i) for i in range(len(media))])],
    )


def _format(sample: Sample, pipe: PromptPipeline) -> Example:
    # The prompt's text, BOS included, is vLLM's (rendered by the chat template).
    fmt = dataclasses.replace(pipe.cfg.format, add_bos=False)
    return format_sample(
        sample, tokenizer=pipe.tokenizer, model_cfg=pipe.cfg, fmt=fmt, for_generation=True
    )


def _per_media(ex: Example, n_media: int) -> list[list]:
    """The example's ImageRefs grouped by medium (a video has one per frame)."""
    refs: list[list] = [[] for _ in range(n_media)]
    for ref in ex.images:
        refs[ref.media_index].append(ref)
    return refs


def media_blocks(media: Sequence[MediumInput], pipe: PromptPipeline) -> list[list[int]]:
    """Per medium of a prompt showing ``media`` in order, the token ids that replace its
    placeholder: what :func:`format_sample` writes for it (checked)."""
    ex = _format(prompt_sample(media), pipe)
    blocks = []
    for refs in _per_media(ex, len(media)):
        stream = TokenStream()
        for ref in refs:
            stream.image(ref.plan)
        ids, _ = stream.encode(pipe.tokenizer, "vLLM prompt")
        blocks.append(ids)
    if [i for b in blocks for i in b] != ex.input_ids:
        raise RuntimeError("mm15's pipeline wrote other ids than the images' blocks")
    return blocks


def encode_media(media: Sequence[MediumInput], pipe: PromptPipeline) -> EncodedMedia:
    """The tiles of a prompt's media (all of them: see the module docstring)."""
    ex = _format(prompt_sample(media), pipe)
    pixels = materialize_pixels(ex, pipe.cfg)
    tiles = [sum(r.n_tiles for r in refs) for refs in _per_media(ex, len(media))]
    return EncodedMedia(pixels=pixels, tiles_per_medium=tiles)


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
        block = media_blocks([size], pipe)[0]
        return image_token_count(block, pipe), len(block)

    return max(sizes, key=cost)
