"""The language model: a Llama-style decoder (MM1 §3.3; MM1.5 §4).

RMSNorm, rotary position embeddings (optionally with Llama-3 frequency scaling,
:mod:`mm15.model.rope`), grouped-query attention with optional QKV bias (Qwen2) and a KV cache
(:mod:`mm15.model.attention`), SwiGLU feed-forward and tied embeddings.  Every
``cfg.moe.every``-th feed-forward may be a mixture of experts (§4, :mod:`mm15.model.moe`).

One attention rule covers packed sequences, padding and the KV cache: query t attends to key s
iff s <= t (in sequence order) and both carry the same document id; padding has document id -1
(:mod:`mm15.model.attention` applies it as a dense mask or a flex-attention block mask).

Shape legend: B batch, T query tokens, S key tokens (cache included), D model width,
H query heads, K key/value heads, Dh head dim, F FFN hidden, V vocab, E experts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.attention.flex_attention import BlockMask

from mm15.config import LMConfig
from mm15.model.attention import Attention, AttentionKernel, KVCache, attention_mask
from mm15.model.moe import MoEAux, MoEFeedForward
from mm15.model.rope import rope_cos_sin, rope_inv_freq


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
        mask_B1TS = attention_mask(x_BTD, document_ids_BT, cache, self.attention)
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
        aux_loss, stats = self._moe_losses(auxes)
        return DecoderOutput(logits=logits, hidden=hidden_BTD, aux_loss=aux_loss, moe_stats=stats)

    def _moe_losses(self, auxes: list[MoEAux]) -> tuple[Tensor | None, MoEStats | None]:
        """The MoE layers' statistics stacked, and the auxiliary loss Σ lb_coef·lb + z_coef·z
        (MM1.5 §4); (None, None) for a dense decoder."""
        if not auxes:
            return None, None
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
        return aux_loss, stats
