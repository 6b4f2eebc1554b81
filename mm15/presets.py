"""Model presets: functions that return a complete :class:`~mm15.config.ModelConfig`.

The paper family (§4, Table 4–6) is 1B, 3B, 7B and 30B dense plus 1B/3B/7B mixture-of-experts.
MM1 and MM1.5 do not publish their in-house decoders' shapes, so the decoder dimensions here are
ours, chosen to match the stated sizes; what the papers do state is kept exactly: the encoder
(DFN5B CLIP ViT-H/14 at 378 px, or ViT-L/14-336), the C-Abstractor with 144 tokens, and the MoE
layouts (64 experts in every 2nd layer for 1B/3B, 32 experts in every 4th layer for 7B; MM1
§3.3 states 3B-MoE ≈ 64B and 7B-MoE ≈ 47B parameters, which ``mm15 info`` reproduces within 15%).
Real runs replace the decoder shape with the checkpoint's own when ``mm15 init`` loads it.

Show any preset's sizes without allocating weights::

    mm15 info --preset 3b-moe
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Literal

from mm15.config import (
    ConnectorConfig,
    ImageConfig,
    LMConfig,
    ModelConfig,
    MoEConfig,
    VideoConfig,
    VisionConfig,
)

Encoder = Literal["vit-h14-378", "vit-l14-336"]


def vit_h14_378() -> VisionConfig:
    """DFN5B-CLIP-ViT-H-14-378 (open_clip ``ViT-H-14-378-quickgelu``): 632M parameters.

    Published for open_clip, so its position table is resized the way open_clip resizes it
    (antialiased bicubic), as ``mm15 init`` sets it when loading that checkpoint.
    """
    return VisionConfig(
        image_size=378,
        patch_size=14,
        width=1280,
        depth=32,
        heads=16,
        mlp_dim=5120,
        act="quick_gelu",
        pos_interp="bicubic_antialias",
    )


def vit_l14_336() -> VisionConfig:
    """OpenAI CLIP ViT-L/14-336 (MM1 §3.1 encoder ablations): 304M parameters.

    Its HF release (``openai/clip-vit-large-patch14-336``) resizes positions with plain bicubic.
    """
    return VisionConfig(
        image_size=336,
        patch_size=14,
        width=1024,
        depth=24,
        heads=16,
        mlp_dim=4096,
        act="quick_gelu",
    )


ENCODERS: dict[str, Callable[[], VisionConfig]] = {
    "vit-h14-378": vit_h14_378,
    "vit-l14-336": vit_l14_336,
}

# Decoder shapes (ours; see the module docstring).  vocab 100_352 = a 100k BPE vocabulary padded
# to a multiple of 128.
_VOCAB = 100_352
_LM_SHAPES: dict[str, dict[str, int | bool]] = {
    "1b": dict(
        dim=2048, n_layers=18, n_heads=16, n_kv_heads=8, ffn_hidden=5632, tie_embeddings=True
    ),
    "3b": dict(
        dim=3072, n_layers=26, n_heads=24, n_kv_heads=8, ffn_hidden=8192, tie_embeddings=True
    ),
    "7b": dict(dim=4096, n_layers=32, n_heads=32, n_kv_heads=8, ffn_hidden=12288),
    "30b": dict(dim=6656, n_layers=60, n_heads=52, n_kv_heads=4, ffn_hidden=17920),
}
# MoE layouts stated by MM1 §3.3 / MM1.5 §4.
_MOE: dict[str, MoEConfig] = {
    "1b": MoEConfig(num_experts=64, top_k=2, every=2),
    "3b": MoEConfig(num_experts=64, top_k=2, every=2),
    "7b": MoEConfig(num_experts=32, top_k=2, every=4),
}


def paper_model(size: str, *, moe: bool = False, encoder: Encoder = "vit-h14-378") -> ModelConfig:
    """An MM1.5 model of the paper's family with the final recipe's image settings (§3.5)."""
    if size not in _LM_SHAPES:
        raise ValueError(f"unknown size {size!r}; choose from {sorted(_LM_SHAPES)}")
    if moe and size not in _MOE:
        raise ValueError(f"the paper has no {size} MoE model; MoE sizes: {sorted(_MOE)}")
    lm = LMConfig(
        vocab_size=_VOCAB,
        rope_theta=500_000.0,
        max_seq_len=4096,
        moe=dataclasses.replace(_MOE[size]) if moe else None,
        **_LM_SHAPES[size],
    )
    return ModelConfig(
        vision=ENCODERS[encoder](),
        connector=ConnectorConfig(num_tokens=144),
        lm=lm,
        image=ImageConfig(),
        video=VideoConfig(),
    )


def tiny(*, moe: bool = False, vocab_size: int = 512) -> ModelConfig:
    """A CPU-sized model with the paper's structure, for tests and the demo.

    Tiles are 112 px with the encoder trained at 56 px, so position-embedding interpolation is
    exercised exactly as 378 → 672 is in the real model; 16 tokens per tile.
    """
    return ModelConfig(
        vision=VisionConfig(
            image_size=56, patch_size=14, width=64, depth=2, heads=4, mlp_dim=128, act="gelu"
        ),
        connector=ConnectorConfig(num_tokens=16, hidden=64, depth=1),
        lm=LMConfig(
            vocab_size=vocab_size,
            dim=64,
            n_layers=4,
            n_heads=4,
            n_kv_heads=2,
            ffn_hidden=128,
            max_seq_len=2048,
            moe=MoEConfig(num_experts=4, top_k=2, every=2) if moe else None,
        ),
        image=ImageConfig(resolution=112, n_min=1, n_max=4),
        video=VideoConfig(num_frames=8),
    )


PRESETS: dict[str, Callable[..., ModelConfig]] = {
    "tiny": tiny,
    "tiny-moe": lambda **kw: tiny(moe=True, **kw),
    **{size: (lambda s: lambda **kw: paper_model(s, **kw))(size) for size in _LM_SHAPES},
    **{
        f"{size}-moe": (lambda s: lambda **kw: paper_model(s, moe=True, **kw))(size)
        for size in _MOE
    },
}


def get_preset(name: str, *, encoder: Encoder | None = None) -> ModelConfig:
    """The config of preset ``name``; ``encoder`` swaps the vision tower of a paper preset."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}")
    if encoder is None:
        return PRESETS[name]()
    if name.startswith("tiny"):
        raise ValueError(
            "the tiny presets have their own encoder; --encoder applies to paper presets"
        )
    return PRESETS[name](encoder=encoder)
