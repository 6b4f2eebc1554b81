"""Multimodal generation: prompts with images in, text out.

Each prompt is encoded by the input pipeline (:mod:`mm15.data.prompt_encoding`: :func:`encode_prompt` for
text with ``<image>`` placeholders, :func:`encode_sample` for schema samples); all tiles of the batch are
encoded in one encoder call; image features are placed at the image-token positions; the decoder
then generates with its KV cache (:func:`mm15.model.generate.generate`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from PIL import Image

from mm15.data.prompt_encoding import EncodedPrompt, encode_prompt, encode_sample
from mm15.data.schema import Sample
from mm15.model.generate import GenerationResult, TokenCallback, generate
from mm15.model.mm15 import MM15
from mm15.tokenizer import MM15Tokenizer


@dataclass
class Prompt:
    text: str  # with one <image> placeholder per image
    images: Sequence[Image.Image] = ()
    video_frames: bool = False  # the images are the frames of one video (§5)


@dataclass
class GenerationSettings:
    max_new_tokens: int = 64
    temperature: float = 0.0  # 0 = greedy, the evaluation setting (MM1.5 §4.1, Tables 4–14)
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop_strings: list[str] = field(default_factory=list)
    use_cache: bool = True
    # "eager" | "static" | "compile" (mm15.model.generate.generate; docs/performance-inference.md)
    decode_mode: str = "eager"


@torch.inference_mode()
def generate_text(
    model: MM15,
    tokenizer: MM15Tokenizer,
    prompts: Sequence[Prompt],
    settings: GenerationSettings | None = None,
) -> list[GenerationResult]:
    """Generate a continuation for each prompt, batched."""
    encoded = [
        encode_prompt(
            p.text, p.images, tokenizer=tokenizer, cfg=model.cfg, video_frames=p.video_frames
        )
        for p in prompts
    ]
    return _generate(model, tokenizer, encoded, settings or GenerationSettings())


@torch.inference_mode()
def generate_for_samples(
    model: MM15,
    tokenizer: MM15Tokenizer,
    samples: Sequence[Sample],
    settings: GenerationSettings | None = None,
) -> list[GenerationResult]:
    """Answer schema samples (their user turns) with the chat template the model was trained
    with, ``model.cfg.format`` from its checkpoint (:func:`mm15.data.prompt_encoding.encode_sample`)."""
    encoded = [encode_sample(s, tokenizer=tokenizer, model_cfg=model.cfg) for s in samples]
    return _generate(model, tokenizer, encoded, settings or GenerationSettings())


def generate_encoded(
    model: MM15,
    tokenizer: MM15Tokenizer,
    encoded: Sequence[EncodedPrompt],
    settings: GenerationSettings | None = None,
    *,
    on_token: TokenCallback | None = None,
) -> list[GenerationResult]:
    """Generate for prompts already encoded (token ids + tiles), batched; ``on_token(row,
    token)`` streams every sampled token (:func:`mm15.model.generate.generate`)."""
    return _generate(model, tokenizer, encoded, settings or GenerationSettings(), on_token)


def _generate(
    model: MM15,
    tokenizer: MM15Tokenizer,
    encoded: Sequence[EncodedPrompt],
    settings: GenerationSettings,
    on_token: TokenCallback | None = None,
) -> list[GenerationResult]:
    embeds = prompt_embeddings(model, encoded)
    generator = None
    if settings.seed is not None:
        generator = torch.Generator(device=embeds[0].device).manual_seed(settings.seed)
    return generate(
        model.lm,
        [e.input_ids for e in encoded],
        prompt_embeds=embeds,
        max_new_tokens=settings.max_new_tokens,
        temperature=settings.temperature,
        top_p=settings.top_p,
        top_k=settings.top_k,
        generator=generator,
        eos_token_ids=tokenizer.eos_ids,
        stop_strings=settings.stop_strings,
        decode=tokenizer.decode,
        use_cache=settings.use_cache,
        on_token=on_token,
        decode_mode=settings.decode_mode,
    )


def prompt_embeddings(model: MM15, encoded: Sequence[EncodedPrompt]) -> list[torch.Tensor]:
    """(T_i, D) input embeddings per prompt; the tiles of all prompts go through one encoder call."""
    device = next(model.parameters()).device
    dtype = model.lm.embed.weight.dtype
    ids = [torch.tensor(e.input_ids, dtype=torch.long, device=device) for e in encoded]
    tiles = [e.pixels for e in encoded if e.pixels is not None]
    flat_ids = torch.cat(ids).unsqueeze(0)
    pixels = torch.cat(tiles).to(device=device, dtype=dtype) if tiles else None
    flat = model.embed(flat_ids, pixels)[0]
    return list(flat.split([len(i) for i in ids]))
