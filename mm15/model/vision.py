"""The image encoder: a CLIP-style pre-norm ViT (MM1 §3.1; MM1.5 §3.1).

Numerically the same network as HF ``CLIPVisionModel`` and open_clip's ``VisionTransformer``
(checkpoints in both layouts load through :mod:`mm15.model.hf_vision`).  MM1.5 feeds 672×672
tiles to an encoder trained at 378×378 (§3.1), so the learned position embeddings are resized
bicubically to the tile's patch grid.  ``VisionConfig.pos_interp`` picks the kernel of the library
that defines the checkpoint's layout: "bicubic" is HF ``interpolate_pos_encoding`` (run on every
forward), "bicubic_antialias" open_clip's ``resize_pos_embed`` (run once, when a model created at
another image size loads the checkpoint); both are matched to 1e-5 in fp32 by the parity tests.

Hidden-state indexing follows HF ``output_hidden_states``: ``hidden[0]`` is the embedding output
*after* ``ln_pre`` (HF's ``pre_layrnorm``), ``hidden[i]`` the output of block ``i`` (1-based), so
``hidden[-1]`` is the last block's output, before ``ln_post``.  ``VisionConfig.feature_layer``
indexes this list (Honeybee's ``feature_layer_index``; -1 = last block).

Shape legend: N tiles (all tiles of a batch in one call), C=3 colour channels, H×W pixels,
Gh×Gw patch grid, P = Gh·Gw patches, L = 1 + P tokens (CLS first), D width, h heads, d head dim.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mm15.config import VisionConfig


def quick_gelu(x: Tensor) -> Tensor:
    """OpenAI CLIP's GELU approximation x·σ(1.702x) (HF ``quick_gelu``, open_clip ``QuickGELU``)."""
    return x * torch.sigmoid(1.702 * x)


POS_INTERP = ("bicubic", "bicubic_antialias")


def interpolate_pos_embed(
    pos_GGD: Tensor, grid_h: int, grid_w: int, *, method: str = "bicubic"
) -> Tensor:
    """Bicubically resize a (G, G, D) grid of position embeddings to (grid_h·grid_w, D).

    ``method`` "bicubic" matches HF ``CLIPVisionEmbeddings.interpolate_pos_encoding`` (and
    Honeybee): ``F.interpolate(mode="bicubic", align_corners=False)`` with an output ``size``, not
    a scale factor.  "bicubic_antialias" adds ``antialias=True`` as open_clip's
    ``resize_pos_embed`` does; PyTorch then uses PIL's separable a = -0.5 cubic, which differs
    from the a = -0.75 one even when upsampling.  The native grid is returned as is (neither
    library resizes it).  Runs in float32 for accuracy in bf16 models.
    """
    if method not in POS_INTERP:
        raise ValueError(f"pos_interp must be one of {POS_INTERP}, got {method!r}")
    g, _, dim = pos_GGD.shape
    if (grid_h, grid_w) == (g, g):
        return pos_GGD.reshape(g * g, dim)
    x_1DGG = pos_GGD.float().permute(2, 0, 1).unsqueeze(0)
    x_1DGG = F.interpolate(
        x_1DGG,
        size=(grid_h, grid_w),
        mode="bicubic",
        align_corners=False,
        antialias=method == "bicubic_antialias",
    )
    return x_1DGG.squeeze(0).permute(1, 2, 0).reshape(grid_h * grid_w, dim).to(pos_GGD.dtype)


class Attention(nn.Module):
    """Multi-head self-attention with biased q/k/v/out projections, computed by SDPA."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"vision width {width} is not divisible by heads {heads}")
        self.heads = heads
        self.q_proj = nn.Linear(width, width)
        self.k_proj = nn.Linear(width, width)
        self.v_proj = nn.Linear(width, width)
        self.out_proj = nn.Linear(width, width)

    def forward(self, x_NLD: Tensor) -> Tensor:
        n, length, width = x_NLD.shape

        def split(t: Tensor) -> Tensor:  # (N, L, D) -> (N, h, L, d)
            return t.view(n, length, self.heads, width // self.heads).transpose(1, 2)

        q, k, v = split(self.q_proj(x_NLD)), split(self.k_proj(x_NLD)), split(self.v_proj(x_NLD))
        o_NhLd = F.scaled_dot_product_attention(q, k, v)  # scale 1/sqrt(d), no mask: full attention
        return self.out_proj(o_NhLd.transpose(1, 2).reshape(n, length, width))


class MLP(nn.Module):
    def __init__(self, width: int, hidden: int, act: str) -> None:
        super().__init__()
        if act not in ("gelu", "quick_gelu"):
            raise ValueError(f"vision act must be 'gelu' or 'quick_gelu', got {act!r}")
        self.act = act
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: Tensor) -> Tensor:
        h = self.fc1(x)
        h = (
            quick_gelu(h) if self.act == "quick_gelu" else F.gelu(h)
        )  # exact erf GELU, as HF/open_clip
        return self.fc2(h)


class Block(nn.Module):
    """Pre-norm residual block: x + attn(LN(x)), then x + mlp(LN(x))."""

    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.width, eps=cfg.norm_eps)
        self.attn = Attention(cfg.width, cfg.heads)
        self.norm2 = nn.LayerNorm(cfg.width, eps=cfg.norm_eps)
        self.mlp = MLP(cfg.width, cfg.mlp_dim, cfg.act)

    def forward(self, x_NLD: Tensor) -> Tensor:
        x_NLD = x_NLD + self.attn(self.norm1(x_NLD))
        return x_NLD + self.mlp(self.norm2(x_NLD))


class VisionTransformer(nn.Module):
    """CLIP ViT whose ``forward`` returns the hidden state at ``cfg.feature_layer``.

    Parameter names (the state-dict layout :mod:`mm15.model.hf_vision` converts to):
    ``patch_embed.weight`` (D, 3, p, p), ``class_embedding`` (D,), ``pos_embed`` (1 + G², D),
    ``ln_pre``, ``blocks.{i}.{norm1, attn.{q,k,v,out}_proj, norm2, mlp.fc1, mlp.fc2}``,
    ``ln_post`` (kept so checkpoints round-trip; not applied by ``forward``).
    """

    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.native_grid = cfg.image_size // cfg.patch_size
        if self.native_grid < 1:
            raise ValueError(
                f"image_size {cfg.image_size} is smaller than patch_size {cfg.patch_size}"
            )
        self.feature_index = self._resolve_feature_layer(cfg.feature_layer, cfg.depth)
        if cfg.pos_interp not in POS_INTERP:
            raise ValueError(f"pos_interp must be one of {POS_INTERP}, got {cfg.pos_interp!r}")
        self.patch_embed = nn.Conv2d(
            3, cfg.width, cfg.patch_size, stride=cfg.patch_size, bias=False
        )
        self.class_embedding = nn.Parameter(torch.empty(cfg.width))
        self.pos_embed = nn.Parameter(torch.empty(1 + self.native_grid**2, cfg.width))
        self.ln_pre = nn.LayerNorm(cfg.width, eps=cfg.norm_eps)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.depth))
        self.ln_post = nn.LayerNorm(cfg.width, eps=cfg.norm_eps)
        if self.pos_embed.device.type != "meta":
            self.init_weights()

    @staticmethod
    def _resolve_feature_layer(layer: int, depth: int) -> int:
        """Map an HF ``hidden_states`` index (negative allowed) to 0..depth."""
        if not -(depth + 1) <= layer <= depth:
            raise ValueError(
                f"feature_layer {layer} out of range for a {depth}-block ViT "
                f"(valid: {-(depth + 1)}..{depth}; 0 = embeddings after ln_pre, -1 = last block)"
            )
        return layer % (depth + 1)

    def init_weights(self) -> None:
        """OpenAI CLIP / open_clip init: embeddings N(0, D^-½), residual outputs scaled by (2·depth)^-½."""
        width, depth = self.cfg.width, self.cfg.depth
        attn_std = width**-0.5
        proj_std = attn_std * (2 * depth) ** -0.5
        fc_std = (2 * width) ** -0.5
        self.patch_embed.reset_parameters()
        nn.init.normal_(self.class_embedding, std=attn_std)
        nn.init.normal_(self.pos_embed, std=attn_std)
        for norm in (self.ln_pre, self.ln_post):
            norm.reset_parameters()
        for block in self.blocks:
            block.norm1.reset_parameters()
            block.norm2.reset_parameters()
            for lin, std in (
                (block.attn.q_proj, attn_std),
                (block.attn.k_proj, attn_std),
                (block.attn.v_proj, attn_std),
                (block.attn.out_proj, proj_std),
                (block.mlp.fc1, fc_std),
                (block.mlp.fc2, proj_std),
            ):
                nn.init.normal_(lin.weight, std=std)
                nn.init.zeros_(lin.bias)

    def grid_size(self, resolution: int) -> int:
        """Patches per side for a square ``resolution`` input (378 → 27, 672 → 48 at p=14)."""
        return resolution // self.cfg.patch_size

    def pos_embed_for(self, grid_h: int, grid_w: int) -> Tensor:
        """(1 + grid_h·grid_w, D) position embeddings, CLS first; interpolated off the native grid."""
        g = self.native_grid
        cls_1D, patch_PD = self.pos_embed[:1], self.pos_embed[1:]
        patch_PD = interpolate_pos_embed(
            patch_PD.reshape(g, g, -1), grid_h, grid_w, method=self.cfg.pos_interp
        )
        return torch.cat([cls_1D, patch_PD], dim=0)

    def embed(self, pixels_NCHW: Tensor) -> Tensor:
        """Patch + class + position embeddings, then ``ln_pre``: (N, C, H, W) → (N, L, D)."""
        if pixels_NCHW.ndim != 4 or pixels_NCHW.shape[1] != 3:
            raise ValueError(f"expected pixels (N, 3, H, W), got shape {tuple(pixels_NCHW.shape)}")
        p = self.cfg.patch_size
        if pixels_NCHW.shape[2] < p or pixels_NCHW.shape[3] < p:
            raise ValueError(
                f"image {tuple(pixels_NCHW.shape[2:])} is smaller than one {p}px patch"
            )
        x_NDGG = self.patch_embed(pixels_NCHW.to(self.patch_embed.weight.dtype))
        n, _, grid_h, grid_w = x_NDGG.shape  # trailing pixels that do not fill a patch are dropped
        x_NPD = x_NDGG.flatten(2).transpose(1, 2)
        cls_N1D = self.class_embedding.to(x_NPD.dtype).expand(n, 1, -1)
        x_NLD = torch.cat([cls_N1D, x_NPD], dim=1) + self.pos_embed_for(grid_h, grid_w).to(
            x_NPD.dtype
        )
        return self.ln_pre(x_NLD)

    def forward(self, pixels_NCHW: Tensor, *, all_hidden: bool = False) -> Tensor | list[Tensor]:
        """Encode N tiles.

        Returns the hidden state ``hidden[cfg.feature_layer]`` of shape (N, 1 + P, D), or with
        ``all_hidden=True`` the list of all ``depth + 1`` hidden states in HF order.  Blocks past
        the feature layer are skipped (they get no gradient then).
        """
        x_NLD = self.embed(pixels_NCHW)
        hidden = [x_NLD]
        last = self.cfg.depth if all_hidden else self.feature_index
        for block in self.blocks[:last]:
            x_NLD = block(x_NLD)
            hidden.append(x_NLD)
        return hidden if all_hidden else x_NLD
