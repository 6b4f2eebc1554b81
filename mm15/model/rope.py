"""Rotary position embeddings (RoPE), optionally with Llama-3 frequency scaling (MM1 §3.3).

The decoder (:mod:`mm15.model.lm`) and the static decode step (:mod:`mm15.model.generate`) turn
position ids into cos/sin tables here; attention (:mod:`mm15.model.attention`) rotates queries
and keys with them.

Shape legend: B batch, T tokens, N heads, Dh head dim.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from mm15.config import LMConfig, RopeScalingConfig


def rope_inv_freq(cfg: LMConfig, device: torch.device | str | None = None) -> Tensor:
    """(Dh/2,) fp32 inverse frequencies θ^(-2i/Dh), Llama-3 scaled when ``cfg.rope_scaling``."""
    dh = cfg.resolved_head_dim
    exponent = torch.arange(0, dh, 2, dtype=torch.int64, device=device).float() / dh
    inv_freq = 1.0 / (cfg.rope_theta**exponent)
    if cfg.rope_scaling is not None:
        inv_freq = llama3_scale(inv_freq, cfg.rope_scaling)
    return inv_freq


def llama3_scale(inv_freq: Tensor, s: RopeScalingConfig) -> Tensor:
    """Llama-3.1 frequency scaling (HF rope_type "llama3").

    Wavelengths longer than original_ctx / low_freq_factor are slowed by ``factor`` (they never
    completed a period in pre-training), shorter than original_ctx / high_freq_factor are kept,
    and the band between is interpolated linearly in original_ctx / wavelength.
    """
    ctx = s.original_max_position_embeddings
    wavelen = 2 * math.pi / inv_freq
    low_freq_wavelen = ctx / s.low_freq_factor
    high_freq_wavelen = ctx / s.high_freq_factor
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / s.factor, inv_freq)
    smooth = (ctx / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor)
    smoothed = (1 - smooth) * inv_freq / s.factor + smooth * inv_freq
    in_band = (wavelen >= high_freq_wavelen) & (wavelen <= low_freq_wavelen)
    return torch.where(in_band, smoothed, scaled)


def rope_cos_sin(inv_freq: Tensor, position_ids_BT: Tensor) -> tuple[Tensor, Tensor]:
    """cos, sin of shape (B, T, Dh) in fp32, halves repeated (the HF "rotate_half" layout)."""
    angles_BTh = position_ids_BT.float()[..., None] * inv_freq
    angles_BTDh = torch.cat([angles_BTh, angles_BTh], dim=-1)
    return angles_BTDh.cos(), angles_BTDh.sin()


def apply_rope(x_BNTDh: Tensor, cos_BTDh: Tensor, sin_BTDh: Tensor) -> Tensor:
    cos, sin = cos_BTDh[:, None].to(x_BNTDh.dtype), sin_BTDh[:, None].to(x_BNTDh.dtype)
    x1, x2 = x_BNTDh.chunk(2, dim=-1)
    return x_BNTDh * cos + torch.cat([-x2, x1], dim=-1) * sin
