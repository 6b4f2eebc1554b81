"""The vision–language connector: Honeybee's C-Abstractor (MM1 §3.2; Honeybee, Cha et al., CVPR 2024).

Layer by layer (Honeybee ``c-abs`` with timm's RegNet blocks, re-written here without timm):
drop CLS → + learned position embedding → RegStage(depth, C_enc → hidden) →
AdaptiveAvgPool2d(√T × √T) → RegStage(depth, hidden → hidden) → Linear(hidden → out) then
(SiLU, Linear(out → out)) × (mlp_depth − 1).  MM1 uses 144 tokens per image; Table 1 of MM1.5
also ablates 81 and 64.  Unlike Honeybee, the position embedding is resized bicubically when the
encoder grid differs from the table's (MM1.5 §3.1 encodes 672px tiles with a 378px encoder:
27×27 → 48×48), because ViT features at the new grid still carry the same layout; at the table's
own grid the output equals Honeybee's (tests/test_connector_honeybee.py, against timm).

The LayerNorms are timm's ``LayerNormAct2d`` with eps 1e-5: Honeybee passes
``norm_layer=LayerNorm2d`` (whose own eps is 1e-6), but timm's ``ConvNormAct`` swaps it for its
norm+act twin via ``get_norm_act_layer``, which keeps the class, not the eps (timm 0.9.8, as
Honeybee pins, and 1.0.x alike).  Honeybee's weights load with :mod:`mm15.model.honeybee`.

Shape legend: N tiles, L = 1 + G² input tokens (CLS first), G encoder grid side, C channels,
S = √T output grid side, T output tokens, E out_dim (LLM width).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from mm15.config import ConnectorConfig
from mm15.model.vision import interpolate_pos_embed


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an NCHW map, eps 1e-5 as timm's ``LayerNormAct2d``, the
    norm every RegNet ``ConvNormAct`` (and the projection shortcut) really builds."""

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__(channels, eps=eps)

    def forward(self, x_NCHW: Tensor) -> Tensor:
        return super().forward(x_NCHW.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ConvNormAct(nn.Module):
    """Conv (no bias, 'same' padding) → LayerNorm2d → optional SiLU, as timm ``ConvNormAct``."""

    def __init__(
        self, c_in: int, c_out: int, kernel: int, *, groups: int = 1, act: bool = True
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2, groups=groups, bias=False)
        self.norm = LayerNorm2d(c_out)
        self.act = nn.SiLU() if act else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.norm(self.conv(x)))


def se_reduced_channels(in_chs: int, se_ratio: float, channels: int) -> int:
    """SE width: round(se_ratio · block *input* channels), as timm's RegNet ``Bottleneck``.

    When that rounds to 0, timm's ``SEModule`` falls back to make_divisible(channels / 16, 8).
    """
    rd = round(in_chs * se_ratio)  # Python round: half to even, as timm
    if rd:
        return rd
    return max(8, int(channels / 16 + 4) // 8 * 8)


class SqueezeExcite(nn.Module):
    """Global mean → 1×1 conv (bias) → SiLU → 1×1 conv (bias) → sigmoid gate on the channels."""

    def __init__(self, channels: int, reduced: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, reduced, 1)
        self.fc2 = nn.Conv2d(reduced, channels, 1)

    def forward(self, x_NCHW: Tensor) -> Tensor:
        s = x_NCHW.mean((2, 3), keepdim=True)
        s = self.fc2(nn.functional.silu(self.fc1(s)))
        return x_NCHW * torch.sigmoid(s)


class Bottleneck(nn.Module):
    """RegNet-Y bottleneck with timm defaults bottle_ratio=1, group_size=1 (depthwise 3×3).

    1×1 → LN2d → SiLU; depthwise 3×3 → LN2d → SiLU; SE; 1×1 → LN2d; + shortcut; SiLU.  The
    shortcut is identity, or 1×1 conv + LN2d when the channel count changes.
    """

    def __init__(self, c_in: int, c_out: int, se_ratio: float) -> None:
        super().__init__()
        self.conv1 = ConvNormAct(c_in, c_out, 1)
        self.conv2 = ConvNormAct(c_out, c_out, 3, groups=c_out)
        reduced = se_reduced_channels(c_in, se_ratio, c_out) if se_ratio else 0
        self.se = SqueezeExcite(c_out, reduced) if se_ratio else nn.Identity()
        self.conv3 = ConvNormAct(c_out, c_out, 1, act=False)
        self.shortcut = ConvNormAct(c_in, c_out, 1, act=False) if c_in != c_out else nn.Identity()

    def forward(self, x_NCHW: Tensor) -> Tensor:
        y = self.conv3(self.se(self.conv2(self.conv1(x_NCHW))))
        return nn.functional.silu(y + self.shortcut(x_NCHW))


class RegStage(nn.Module):
    """``depth`` bottlenecks; only the first changes channels (timm ``RegStage``, stride 1)."""

    def __init__(self, depth: int, c_in: int, c_out: int, se_ratio: float) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            Bottleneck(c_in if i == 0 else c_out, c_out, se_ratio) for i in range(depth)
        )

    def forward(self, x_NCHW: Tensor) -> Tensor:
        for block in self.blocks:
            x_NCHW = block(x_NCHW)
        return x_NCHW


class CAbstractor(nn.Module):
    """C-Abstractor: (N, 1 + G², enc_width) ViT features → (N, num_tokens, out_dim).

    ``enc_grid`` is the encoder's native patch grid (27 for ViT-H/14 at 378px); the learned
    position table has ``cfg.pos_grid`` (default: ``enc_grid``) rows per side, and other grids
    interpolate it on the fly (nothing is cached, so gradients reach ``pos_emb`` at every
    resolution).
    """

    def __init__(
        self, cfg: ConnectorConfig, *, enc_width: int, enc_grid: int, out_dim: int
    ) -> None:
        super().__init__()
        side = math.isqrt(cfg.num_tokens)
        if cfg.num_tokens < 1 or side * side != cfg.num_tokens:
            raise ValueError(
                f"connector num_tokens must be a perfect square (pooled S×S grid), got {cfg.num_tokens}"
            )
        if cfg.mlp_depth < 1:
            raise ValueError(f"connector mlp_depth must be >= 1, got {cfg.mlp_depth}")
        if cfg.depth < 0:
            raise ValueError(f"connector depth must be >= 0, got {cfg.depth}")
        pos_grid = enc_grid if cfg.pos_grid is None else cfg.pos_grid
        if type(pos_grid) is not int or pos_grid < 1:
            raise ValueError(f"connector pos_grid must be a positive integer, got {pos_grid!r}")
        self.cfg, self.enc_width, self.enc_grid, self.pos_grid = cfg, enc_width, enc_grid, pos_grid
        self.pos_emb = nn.Parameter(torch.empty(1, pos_grid**2, enc_width)) if cfg.pos_emb else None
        self.s1 = RegStage(cfg.depth, enc_width, cfg.hidden, cfg.se_ratio)
        self.pool = nn.AdaptiveAvgPool2d((side, side))  # uneven, overlapping windows for 27 → 12
        self.s2 = RegStage(cfg.depth, cfg.hidden, cfg.hidden, cfg.se_ratio)
        # depth=0 degenerates to pool + MLP (Honeybee's avg-pool baseline), fed by the encoder width.
        mlp_in = cfg.hidden if cfg.depth > 0 else enc_width
        layers: list[nn.Module] = [nn.Linear(mlp_in, out_dim)]
        for _ in range(cfg.mlp_depth - 1):
            layers += [nn.SiLU(), nn.Linear(out_dim, out_dim)]
        self.readout = nn.Sequential(*layers)
        if self.readout[0].weight.device.type != "meta":
            self.init_weights()

    def init_weights(self) -> None:
        """Honeybee's init: convs and linears N(0, 0.02) with zero bias, LN (1, 0), pos-emb
        trunc-normal std 0.02 (``HoneybeePreTrainedModel._init_weights``, initializer_range 0.02)."""
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                m.reset_parameters()
        if self.pos_emb is not None:
            nn.init.trunc_normal_(self.pos_emb, std=0.02)

    def pos_emb_for(self, grid: int) -> Tensor:
        """(1, grid², enc_width) position embedding, bicubically resized off the table's grid."""
        assert self.pos_emb is not None
        g = self.pos_grid
        pos = interpolate_pos_embed(self.pos_emb.reshape(g, g, self.enc_width), grid, grid)
        return pos.unsqueeze(0)

    def forward(self, feats_NLC: Tensor) -> Tensor:
        """(N, 1 + G², enc_width) encoder hidden states, CLS first → (N, num_tokens, out_dim)."""
        if feats_NLC.ndim != 3 or feats_NLC.shape[-1] != self.enc_width:
            raise ValueError(
                f"connector expects (N, 1 + G², {self.enc_width}) features, got {tuple(feats_NLC.shape)}"
            )
        x_NPC = feats_NLC[:, 1:]  # drop CLS (Honeybee postprocess_for_projector)
        n, num_patches, c = x_NPC.shape
        grid = math.isqrt(num_patches)
        if grid * grid != num_patches or grid == 0:
            raise ValueError(
                f"connector expects CLS + a square patch grid, got {num_patches} patch tokens "
                f"(shape {tuple(feats_NLC.shape)})"
            )
        if self.pos_emb is not None:
            x_NPC = x_NPC + self.pos_emb_for(grid).to(x_NPC.dtype)
        x_NCGG = x_NPC.transpose(1, 2).reshape(n, c, grid, grid)  # row-major, as the ViT flattens
        x_NCSS = self.s2(self.pool(self.s1(x_NCGG)))
        return self.readout(x_NCSS.flatten(2).transpose(1, 2))
