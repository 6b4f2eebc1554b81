"""The language model: a Llama-style decoder (MM1 §3.3; MM1.5 §4).

RMSNorm, rotary position embeddings (optionally with Llama-3 frequency scaling), SwiGLU
feed-forward, grouped-query attention, optional QKV bias (Qwen2) and tied embeddings.  Every
``cfg.moe.every``-th feed-forward may be a mixture of experts (§4, :mod:`mm15.model.moe`).

One attention rule covers packed sequences, padding and the KV cache: query t attends to key s
iff s <= t (in sequence order) and both carry the same document id.  Padding has document id -1,
so padded positions attend only to each other (no fully masked rows, no NaNs).  The rule is
applied either as a dense (B, 1, T, S) boolean mask to SDPA, or, with ``Decoder.attention ==
"flex"`` in a training forward (packed documents, no cache), as a flex-attention ``BlockMask``
that skips every (query block, key block) tile the rule masks entirely, so no T×T mask is built.

Shape legend: B batch, T query tokens, S key tokens (cache included), D model width,
H query heads, K key/value heads, Dh head dim, F FFN hidden, V vocab, E experts.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention

from mm15.config import LMConfig, RopeScalingConfig
from mm15.model.moe import MoEAux, MoEFeedForward

# How a training forward applies the attention rule: "sdpa" with a dense mask (runs everywhere),
# "flex" with a block mask (fused kernel on CUDA; forward-only reference on CPU).  Same maths.
AttentionKernel = Literal["sdpa", "flex"]


@dataclass
class MoEStats:
    """Per-MoE-layer router statistics (fp32; padding excluded)."""

    load_balance_loss: Tensor  # (n_moe_layers,)
    z_loss: Tensor  # (n_moe_layers,)
    tokens_per_expert: Tensor  # (n_moe_layers, E) int64


@dataclass
class DecoderOutput:
    logits: Tensor | None  # (B, T, V); None when forward(compute_logits=False)
    hidden: Tensor  # (B, T, D), after the final norm
    aux_loss: Tensor | None  # () fp32: Σ_layers lb_coef·lb + z_coef·z; None for a dense model
    moe_stats: MoEStats | None


# ---------------------------------------------------------------------------------------------
# Rotary position embeddings


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


# ---------------------------------------------------------------------------------------------
# Attention mask and KV cache


def may_attend(q_idx: Tensor, k_idx: Tensor, q_doc: Tensor, k_doc: Tensor) -> Tensor:
    """The attention rule (broadcasting): key position <= query position, same document id.

    The one place the rule lives: the dense mask and the flex-attention block mask both call it.
    """
    return (k_idx <= q_idx) & (q_doc == k_doc)


def document_causal_mask(q_doc_BT: Tensor, k_doc_BS: Tensor, q_start: int) -> Tensor:
    """(B, 1, T, S) bool, True where query t (at index q_start + t) may attend key s."""
    T, S = q_doc_BT.shape[1], k_doc_BS.shape[1]
    q_idx_T = torch.arange(q_start, q_start + T, device=q_doc_BT.device)
    k_idx_S = torch.arange(S, device=q_doc_BT.device)
    allowed_BTS = may_attend(
        q_idx_T[None, :, None], k_idx_S[None, None, :], q_doc_BT[:, :, None], k_doc_BS[:, None, :]
    )
    return allowed_BTS[:, None]


def document_block_mask(doc_BT: Tensor) -> BlockMask:
    """The same rule as a flex-attention ``BlockMask`` over one packed (B, T) batch (no cache).

    Built once per forward and shared by every layer.  On CUDA the mask is built by a compiled
    kernel (``_compile``); elsewhere eagerly (it evaluates the rule on the B×T×T grid).
    """
    B, T = doc_BT.shape

    def mask_mod(b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        return may_attend(q_idx, kv_idx, doc_BT[b, q_idx], doc_BT[b, kv_idx])

    return create_block_mask(mask_mod, B, None, T, T, device=doc_BT.device, _compile=doc_BT.is_cuda)


_compiled_flex: Callable[..., Tensor] | None = None


def flex_attention_for(device: torch.device) -> Callable[..., Tensor]:
    """``flex_attention`` compiled into a fused kernel on CUDA (the uncompiled op materialises
    the scores); elsewhere the uncompiled op, a slow reference used by CPU tests.  A compiled
    decoder block traces through either one."""
    global _compiled_flex
    if device.type != "cuda":
        return flex_attention
    if _compiled_flex is None:
        _compiled_flex = torch.compile(flex_attention, dynamic=False)
    return _compiled_flex


@dataclass
class KVCache:
    """Static per-layer key/value buffers; ``forward`` writes [length : length + T] in place."""

    k: list[Tensor]  # per layer (B, K, max_len, Dh)
    v: list[Tensor]  # per layer (B, K, max_len, Dh)
    doc_ids_BS: Tensor  # (B, max_len) int64, document ids of the cached keys
    length: int = 0

    @classmethod
    def allocate(
        cls, cfg: LMConfig, batch: int, max_len: int, dtype: torch.dtype, device: torch.device | str
    ) -> KVCache:
        shape = (batch, cfg.n_kv_heads, max_len, cfg.resolved_head_dim)
        k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(cfg.n_layers)]
        v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(cfg.n_layers)]
        doc = torch.full((batch, max_len), -1, dtype=torch.long, device=device)
        return cls(k=k, v=v, doc_ids_BS=doc)

    @property
    def max_len(self) -> int:
        return self.doc_ids_BS.shape[1]

    def append_doc_ids(self, doc_BT: Tensor) -> Tensor:
        """Store the new tokens' document ids; return those of every key so far, (B, S)."""
        B, T = doc_BT.shape
        if self.doc_ids_BS.shape[0] != B:
            raise ValueError(f"KVCache holds batch {self.doc_ids_BS.shape[0]}, input has batch {B}")
        if self.length + T > self.max_len:
            raise ValueError(
                f"KVCache overflow: {self.length} cached + {T} new > max_len {self.max_len}"
            )
        self.doc_ids_BS[:, self.length : self.length + T] = doc_BT
        return self.doc_ids_BS[:, : self.length + T]

    def update(self, layer: int, k_BKTDh: Tensor, v_BKTDh: Tensor) -> tuple[Tensor, Tensor]:
        """Write layer ``layer``'s new keys/values; return views of all keys/values so far."""
        end = self.length + k_BKTDh.shape[2]
        self.k[layer][:, :, self.length : end] = k_BKTDh
        self.v[layer][:, :, self.length : end] = v_BKTDh
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]


# ---------------------------------------------------------------------------------------------
# Layers


class RMSNorm(nn.Module):
    """x / rms(x) · w, normalised in fp32 and cast back before the weight (as Llama does)."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.empty(dim))

    def forward(self, x: Tensor) -> Tensor:
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


class Attention(nn.Module):
    def __init__(self, cfg: LMConfig):
        super().__init__()
        if cfg.n_heads % cfg.n_kv_heads:
            raise ValueError(
                f"n_heads {cfg.n_heads} is not a multiple of n_kv_heads {cfg.n_kv_heads}"
            )
        self.n_heads = cfg.n_heads
        self.n_kv_heads = cfg.n_kv_heads
        self.head_dim = cfg.resolved_head_dim
        self.wq = nn.Linear(cfg.dim, cfg.n_heads * self.head_dim, bias=cfg.qkv_bias)
        self.wk = nn.Linear(cfg.dim, cfg.n_kv_heads * self.head_dim, bias=cfg.qkv_bias)
        self.wv = nn.Linear(cfg.dim, cfg.n_kv_heads * self.head_dim, bias=cfg.qkv_bias)
        self.wo = nn.Linear(cfg.n_heads * self.head_dim, cfg.dim, bias=False)

    def forward(
        self,
        x_BTD: Tensor,
        cos_sin: tuple[Tensor, Tensor],
        mask_B1TS: Tensor | BlockMask | None,
        cache: KVCache | None,
        layer: int,
    ) -> Tensor:
        """``mask_B1TS`` None means plain causal attention over this call's tokens only; a
        ``BlockMask`` (no cache) runs flex attention instead of SDPA."""
        B, T, _ = x_BTD.shape
        q = self.wq(x_BTD).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.wk(x_BTD).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = self.wv(x_BTD).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, *cos_sin), apply_rope(k, *cos_sin)
        if cache is not None:
            k, v = cache.update(layer, k, v)
        gqa = self.n_heads != self.n_kv_heads
        if isinstance(mask_B1TS, BlockMask):
            if q.device.type == "cpu" and q.requires_grad:
                raise NotImplementedError(
                    f"attention='flex' cannot train on the CPU: torch {torch.__version__} has no"
                    " flex-attention backward there; use attention='sdpa' on CPU"
                )
            flex = flex_attention_for(q.device)
            out_BHTDh = flex(q, k, v, block_mask=mask_B1TS, enable_gqa=gqa)
        else:
            out_BHTDh = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask_B1TS, is_causal=mask_B1TS is None, enable_gqa=gqa
            )
        return self.wo(out_BHTDh.transpose(1, 2).reshape(B, T, -1))


class FeedForward(nn.Module):
    """SwiGLU: w2(silu(w1 x) · w3 x)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)

    def forward(self, x_BTD: Tensor) -> Tensor:
        return self.w2(F.silu(self.w1(x_BTD)) * self.w3(x_BTD))


class Block(nn.Module):
    """Pre-norm residual block: x + attn(norm(x)), then h + ffn(norm(h))."""

    def __init__(self, cfg: LMConfig, layer: int):
        super().__init__()
        self.layer = layer
        self.dropout = cfg.dropout
        self.attn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.attn = Attention(cfg)
        self.ffn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.ffn: FeedForward | MoEFeedForward
        if cfg.moe is not None and (layer + 1) % cfg.moe.every == 0:
            hidden = cfg.moe.expert_hidden or cfg.ffn_hidden
            self.ffn = MoEFeedForward(cfg.dim, hidden, cfg.moe)
        else:
            self.ffn = FeedForward(cfg.dim, cfg.ffn_hidden)

    def forward(
        self,
        x_BTD: Tensor,
        cos_sin: tuple[Tensor, Tensor],
        mask_B1TS: Tensor | BlockMask | None,
        cache: KVCache | None,
        valid_BT: Tensor | None,
    ) -> tuple[Tensor, MoEAux | None]:
        attn_BTD = self.attn(self.attn_norm(x_BTD), cos_sin, mask_B1TS, cache, self.layer)
        h_BTD = x_BTD + F.dropout(attn_BTD, self.dropout, self.training)
        if isinstance(self.ffn, MoEFeedForward):
            y_BTD, aux = self.ffn(self.ffn_norm(h_BTD), valid_BT)
        else:
            y_BTD, aux = self.ffn(self.ffn_norm(h_BTD)), None
        return h_BTD + F.dropout(y_BTD, self.dropout, self.training), aux


# ---------------------------------------------------------------------------------------------
# The decoder


class Decoder(nn.Module):
    def __init__(self, cfg: LMConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.layers = nn.ModuleList([Block(cfg, i) for i in range(cfg.n_layers)])
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.output = None if cfg.tie_embeddings else nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        # An execution choice, not architecture (same maths): set from outside for training
        # (mm15.train.parallel.apply_attention), so checkpoints and configs do not carry it.
        self.attention: AttentionKernel = "sdpa"
        if self.embed.weight.device.type != "meta":
            self.init_weights()

    @torch.no_grad()
    def init_weights(self, std: float | None = None) -> None:
        """N(0, std) weights (``cfg.init_std`` by default), zero biases, unit norms; residual
        outputs (wo, w2) get std / sqrt(2·n_layers) so the residual stream's variance does not
        grow with depth."""
        std = self.cfg.init_std if std is None else std
        out_std = std / math.sqrt(2 * self.cfg.n_layers)
        for name, m in self.named_modules():
            if isinstance(m, nn.Linear):
                residual_out = name.endswith(("attn.wo", "ffn.w2"))
                nn.init.normal_(m.weight, std=out_std if residual_out else std)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Embedding):
                nn.init.normal_(m.weight, std=std)
            elif isinstance(m, RMSNorm):
                nn.init.ones_(m.weight)
            elif isinstance(m, MoEFeedForward):
                m.init_weights(std=std, out_std=out_std)

    def logits(self, hidden_BTD: Tensor) -> Tensor:
        """(…, V) logits of final-norm hidden states (tied: through the embedding matrix)."""
        weight = self.embed.weight if self.output is None else self.output.weight
        return F.linear(hidden_BTD, weight)

    def forward(
        self,
        input_ids_BT: Tensor | None = None,
        *,
        embeds_BTD: Tensor | None = None,
        position_ids_BT: Tensor | None = None,
        document_ids_BT: Tensor | None = None,
        cache: KVCache | None = None,
        compute_logits: bool = True,
    ) -> DecoderOutput:
        """Run the decoder on token ids (B, T) or input embeddings (B, T, D), exactly one.

        position_ids default to start + arange(T), start = cached length.  document_ids (B, T):
        attention stays within equal ids; -1 marks padding (also excluded from MoE statistics).
        ``self.attention == "flex"`` applies that rule through a flex-attention block mask when
        there is no cache; with a cache (generation) the dense mask is always used.
        """
        if (input_ids_BT is None) == (embeds_BTD is None):
            raise ValueError("Decoder.forward takes exactly one of input_ids_BT and embeds_BTD")
        x_BTD = self.embed(input_ids_BT) if embeds_BTD is None else embeds_BTD
        B, T, _ = x_BTD.shape
        start = cache.length if cache is not None else 0
        if position_ids_BT is None:
            position_ids_BT = torch.arange(start, start + T, device=x_BTD.device).expand(B, T)
        cos_sin = rope_cos_sin(rope_inv_freq(self.cfg, x_BTD.device), position_ids_BT)

        mask_B1TS: Tensor | BlockMask | None = None
        if cache is not None:
            doc_BT = document_ids_BT
            if doc_BT is None:
                doc_BT = torch.zeros(B, T, dtype=torch.long, device=x_BTD.device)
            mask_B1TS = document_causal_mask(doc_BT, cache.append_doc_ids(doc_BT), start)
        elif document_ids_BT is not None and self.attention == "flex":
            mask_B1TS = document_block_mask(document_ids_BT)
        elif document_ids_BT is not None:
            mask_B1TS = document_causal_mask(document_ids_BT, document_ids_BT, 0)
        valid_BT = None if document_ids_BT is None else document_ids_BT >= 0

        auxes = []
        for block in self.layers:
            x_BTD, aux = block(x_BTD, cos_sin, mask_B1TS, cache, valid_BT)
            if aux is not None:
                auxes.append(aux)
        if cache is not None:
            cache.length = start + T
        hidden_BTD = self.norm(x_BTD)
        logits = self.logits(hidden_BTD) if compute_logits else None
        if not auxes:
            return DecoderOutput(logits=logits, hidden=hidden_BTD, aux_loss=None, moe_stats=None)
        stats = MoEStats(
            load_balance_loss=torch.stack([a.load_balance_loss for a in auxes]),
            z_loss=torch.stack([a.z_loss for a in auxes]),
            tokens_per_expert=torch.stack([a.tokens_per_expert for a in auxes]),
        )
        moe = self.cfg.moe
        assert moe is not None
        aux_loss = (
            moe.load_balance_coef * stats.load_balance_loss.sum()
            + moe.z_loss_coef * stats.z_loss.sum()
        )
        return DecoderOutput(logits=logits, hidden=hidden_BTD, aux_loss=aux_loss, moe_stats=stats)
