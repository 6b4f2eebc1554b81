"""Training FLOPs and model FLOPs utilisation (MFU), counted two ways.

*Decoder only*, the convention of nanoGPT and torchtitan: per token of a packed row of length T,

    6·N_active + 12·L·H·Dh·T

(forward 2 FLOPs per multiply-add, backward twice the forward).  N_active counts the decoder's
matmul weights one token passes through: every block's q/k/v/o projections, its dense SwiGLU
FFN or its MoE router plus ``top_k`` of its experts, and the output head d·V, counted also when it
is tied to the embedding (the head is a real matmul), at every position as the references count
it, although :func:`mm15.train.step.train_step` projects only positions that have a target (in
SFT a few percent), so SFT does less work than counted.  The input embedding is a lookup and is left
out, as torchtitan leaves ``tok_embeddings`` out and nanoGPT its position table; norm weights and
biases are not matmuls and are left out too (< 0.1% of N).  The attention term counts the full
T×T score and value matmuls of every layer, ignoring causality and document masking, as both
references do, so MFU compares across attention kernels.

*Total* adds, for every image tile of the step, the ViT and C-Abstractor forward + backward
(3 × forward): patch-embedding conv, per used ViT block 4·W² + 2·W·M multiply-adds per token
plus 2·L²·W for the bidirectional attention over its L = 1 + P tokens, and the connector's 1×1
and depthwise 3×3 convs, squeeze-excite and readout MLP.  Both assume every part is trained (the
paper's default, §4); a frozen encoder does less work than counted.

Shape legend as in mm15.model: L decoder layers, H heads, Dh head dim, T packed row length,
W ViT width, M ViT MLP width, P patches per tile, G encoder grid side, S connector grid side.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from mm15.config import ConnectorConfig, LMConfig, ModelConfig, VisionConfig
from mm15.model.connector import se_reduced_channels

# Dense (no sparsity) bf16 tensor-core peaks from NVIDIA's data sheets, FLOP/s per GPU; matched
# in order against torch.cuda.get_device_name() (so "H100 PCIe" before "H100").
PEAK_BF16_FLOPS: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756e12),
    ("H100", 989e12),  # SXM: 989.4 TFLOP/s
    ("H200", 989e12),
    ("A100", 312e12),
)


@dataclass(frozen=True)
class StepFlops:
    """Training FLOPs (forward + backward) of one step, by part."""

    decoder: float
    vision: float
    connector: float

    @property
    def total(self) -> float:
        return self.decoder + self.vision + self.connector


# ---- decoder ---------------------------------------------------------------------------------


def decoder_active_params(cfg: LMConfig) -> int:
    """N_active: matmul weights one token passes through (see the module docstring)."""
    d, dh = cfg.dim, cfg.resolved_head_dim
    attn = d * dh * (2 * cfg.n_heads + 2 * cfg.n_kv_heads)  # wq, wo; wk, wv
    dense_ffn = 3 * d * cfg.ffn_hidden
    moe = cfg.moe
    n_moe = 0 if moe is None else sum((i + 1) % moe.every == 0 for i in range(cfg.n_layers))
    ffn = (cfg.n_layers - n_moe) * dense_ffn
    if moe is not None:
        expert = 3 * d * (moe.expert_hidden or cfg.ffn_hidden)
        ffn += n_moe * (d * moe.num_experts + moe.top_k * expert)  # router + k experts
    return cfg.n_layers * attn + ffn + d * cfg.vocab_size


def decoder_flops_per_token(cfg: LMConfig, seq_len: int) -> float:
    """6·N_active + 12·L·H·Dh·T: training FLOPs per token of a row of ``seq_len`` tokens."""
    attention = 12 * cfg.n_layers * cfg.n_heads * cfg.resolved_head_dim * seq_len
    return 6 * decoder_active_params(cfg) + attention


# ---- image tower -----------------------------------------------------------------------------


def vision_flops_per_tile(cfg: VisionConfig, height: int, width: int | None = None) -> float:
    """ViT training FLOPs for one tile of ``height × width`` pixels (blocks past the feature
    layer are skipped by the model, so they are not counted)."""
    width = height if width is None else width
    p, w = cfg.patch_size, cfg.width
    patches = (height // p) * (width // p)
    tokens = 1 + patches
    used_blocks = cfg.feature_layer % (cfg.depth + 1)
    per_block = tokens * (4 * w * w + 2 * w * cfg.mlp_dim) + 2 * tokens * tokens * w
    macs = patches * 3 * p * p * w + used_blocks * per_block
    return 3 * 2 * macs


def _bottleneck_macs(c_in: int, c_out: int, pixels: int, se_ratio: float) -> int:
    """One RegNet-Y bottleneck (mm15.model.connector.Bottleneck) on a map of ``pixels``."""
    per_pixel = c_in * c_out + 9 * c_out + c_out * c_out  # conv1 1×1, depthwise 3×3, conv3 1×1
    if c_in != c_out:
        per_pixel += c_in * c_out  # 1×1 shortcut
    se = 2 * c_out * se_reduced_channels(c_in, se_ratio, c_out) if se_ratio else 0
    return pixels * per_pixel + se


def connector_flops_per_tile(
    cfg: ConnectorConfig, *, enc_width: int, grid: int, out_dim: int
) -> float:
    """C-Abstractor training FLOPs for one tile whose encoder grid is ``grid × grid``."""
    side = math.isqrt(cfg.num_tokens)
    macs = 0
    for i in range(cfg.depth):  # RegStage 1 at G×G, then RegStage 2 at S×S
        macs += _bottleneck_macs(
            enc_width if i == 0 else cfg.hidden, cfg.hidden, grid * grid, cfg.se_ratio
        )
        macs += _bottleneck_macs(cfg.hidden, cfg.hidden, side * side, cfg.se_ratio)
    mlp_in = cfg.hidden if cfg.depth > 0 else enc_width
    macs += cfg.num_tokens * (mlp_in * out_dim + (cfg.mlp_depth - 1) * out_dim * out_dim)
    return 3 * 2 * macs


# ---- a step ----------------------------------------------------------------------------------


def training_flops(
    cfg: ModelConfig, *, tokens: int, seq_len: int, tiles: int, tile_hw: tuple[int, int]
) -> StepFlops:
    """FLOPs of training on ``tokens`` positions (rows of ``seq_len``) and ``tiles`` tiles."""
    h, w = tile_hw
    grid = math.isqrt((h // cfg.vision.patch_size) * (w // cfg.vision.patch_size))
    connector = connector_flops_per_tile(
        cfg.connector, enc_width=cfg.vision.width, grid=grid, out_dim=cfg.lm.dim
    )
    return StepFlops(
        decoder=tokens * decoder_flops_per_token(cfg.lm, seq_len),
        vision=tiles * vision_flops_per_tile(cfg.vision, h, w),
        connector=tiles * connector,
    )


def batch_flops(cfg: ModelConfig, micro_batches: list[dict[str, Tensor]]) -> StepFlops:
    """Training FLOPs of one rank's micro-batches (every position of every packed row counts)."""
    parts = []
    for mb in micro_batches:
        rows, seq_len = mb["input_ids_BT"].shape
        pixels = mb.get("pixels_NCHW")
        tiles = 0 if pixels is None else pixels.shape[0]
        hw = (cfg.image.resolution,) * 2 if pixels is None else tuple(pixels.shape[-2:])
        parts.append(
            training_flops(cfg, tokens=rows * seq_len, seq_len=seq_len, tiles=tiles, tile_hw=hw)
        )
    return StepFlops(
        decoder=sum(p.decoder for p in parts),
        vision=sum(p.vision for p in parts),
        connector=sum(p.connector for p in parts),
    )


# ---- utilisation -----------------------------------------------------------------------------


def peak_flops(device: torch.device | str, override_tflops: float | None = None) -> float | None:
    """Peak FLOP/s of one device: ``override_tflops`` × 1e12 when given, else the bf16 dense
    peak of a known GPU (:data:`PEAK_BF16_FLOPS`); None when unknown (CPU: give a value)."""
    if override_tflops is not None:
        return override_tflops * 1e12
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_BF16_FLOPS if key in name), None)


def mfu(flops: float, seconds: float, peak: float) -> float:
    """Model FLOPs utilisation: achieved FLOP/s over the device's peak (a fraction)."""
    if seconds <= 0 or peak <= 0:
        raise ValueError(f"mfu needs positive seconds and peak, got {seconds} and {peak}")
    return flops / seconds / peak


def utilisation(flops: StepFlops, seconds: float, peak: float | None) -> dict[str, float]:
    """Per-device achieved TFLOP/s of both counts, and both MFUs when ``peak`` is known."""
    out = {
        "tflops_decoder": flops.decoder / seconds / 1e12,
        "tflops_total": flops.total / seconds / 1e12,
    }
    if peak:
        out["mfu_decoder"] = mfu(flops.decoder, seconds, peak)
        out["mfu_total"] = mfu(flops.total, seconds, peak)
    return out


def mfu_line(prefix: str, step: int, scalars: dict[str, float]) -> str | None:
    """The training log's MFU line, or None without a peak (CPU without ``peak_tflops``)."""
    if "mfu_total" not in scalars:
        return None
    decoder, total, rate = scalars["mfu_decoder"], scalars["mfu_total"], scalars["tflops_total"]
    return f"{prefix} step {step} mfu decoder {decoder:.1%} total {total:.1%} ({rate:.3g} TFLOP/s)"
