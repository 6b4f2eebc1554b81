"""Grouped-query attention (MM1 §3.3) under one rule for packed rows, padding and the KV cache.

Query t attends to key s iff s <= t (in sequence order) and both carry the same document id.
Padding has document id -1, so padded positions attend only to each other (no fully masked rows,
no NaNs).  The rule is applied either as a dense (B, 1, T, S) boolean mask to SDPA, or, with
``Decoder.attention == "flex"`` in a training forward (packed documents, no cache), as a
flex-attention ``BlockMask`` that skips every (query block, key block) tile the rule masks
entirely, so no T×T mask is built.

Shape legend: B batch, T query tokens, S key tokens (cache included), D model width,
H query heads, K key/value heads, Dh head dim.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention

from mm15.config import LMConfig
from mm15.model.rope import apply_rope

# How a training forward applies the attention rule: "sdpa" with a dense mask (runs everywhere),
# "flex" with a block mask (fused kernel on CUDA; forward-only reference on CPU).  Same maths.
AttentionKernel = Literal["sdpa", "flex"]


# ---------------------------------------------------------------------------------------------
# The attention rule, as a dense mask or a flex-attention block mask


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


def attention_mask(
    x_BTD: Tensor,
    document_ids_BT: Tensor | None,
    cache: KVCache | None,
    kernel: AttentionKernel,
) -> Tensor | BlockMask | None:
    """The rule for one decoder forward over the (B, T) tokens of ``x_BTD``, shared by every
    layer.  With a cache, the new tokens' document ids (0 when not given) are stored in it and
    the dense mask covers every cached key; without one, a flex ``kernel`` gets the block mask.
    None (no document ids, no cache) means plain causal attention."""
    if cache is not None:
        doc_BT = document_ids_BT
        if doc_BT is None:
            B, T, _ = x_BTD.shape
            doc_BT = torch.zeros(B, T, dtype=torch.long, device=x_BTD.device)
        return document_causal_mask(doc_BT, cache.append_doc_ids(doc_BT), cache.length)
    if document_ids_BT is None:
        return None
    if kernel == "flex":
        return document_block_mask(document_ids_BT)
    return document_causal_mask(document_ids_BT, document_ids_BT, 0)


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


# ---------------------------------------------------------------------------------------------
# KV cache


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
# The attention layer


class Attention(nn.Module):
    """Grouped-query attention with rotary embeddings and optional QKV bias (Qwen2)."""

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
