"""Mixture-of-experts feed-forward (§4; MM1 §3.3; GShard, Switch, ST-MoE).

Top-k token-choice routing as Mixtral and GShard's top-2 gate do it: softmax over all E
experts, the k largest, gates renormalised to sum to 1; dropless (every token reaches its k
experts, no capacity factor).  The router's math runs in fp32 whatever the activation dtype:
bf16 logits would round the softmax and flip top-k choices between otherwise identical runs.

Aux losses, each over the layer call's valid tokens as one group:
load balance E · Σ_e f_e · P_e, P_e the mean router probability of expert e and f_e, by
``MoEConfig.load_balance``, either (default "first_choice") the fraction of tokens whose first
choice is e — GShard Algorithm 1 / Mesh-TF ``_top_2_gating``'s density_1, as ST-MoE uses it — or
("all_choices") the top-k assignments to e per token, Σ_e f_e = K, which is transformers'
Mixtral ``load_balancing_loss_func`` exactly; router z-loss (ST-MoE) mean(logsumexp(logits)²).
Padding tokens are left out of both and of the token counts.  ``tokens_per_expert`` counts all
k assignments whichever form the loss takes (it is a load metric).

Shape legend: N tokens (B·T flattened), D model width, F expert hidden, E experts, K top-k,
A = N·K (token, slot) assignments, P padded rows of the grouped GEMM.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mm15.config import LMConfig, MoEConfig

# The public name arrived in torch 2.10; the private one in 2.8.
_GROUPED_MM = getattr(F, "grouped_mm", None) or getattr(torch, "_grouped_mm", None)
_ALIGN = 8  # rows per grouped-GEMM block: 16 bytes of bf16


@dataclass
class MoEAux:
    """One MoE layer's router statistics (fp32 losses; padding excluded)."""

    load_balance_loss: Tensor  # () in the form MoEConfig.load_balance names
    z_loss: Tensor  # ()
    tokens_per_expert: Tensor  # (E,) int64, routed (token, slot) assignments per expert


def use_grouped_mm(x: Tensor) -> bool:
    """The fused grouped GEMM kernel serves CUDA bf16; everything else uses per-expert matmuls."""
    return _GROUPED_MM is not None and x.is_cuda and x.dtype == torch.bfloat16


class MoEFeedForward(nn.Module):
    """E SwiGLU experts with stacked weights (so one grouped matmul can run them all)."""

    def __init__(self, dim: int, hidden: int, cfg: MoEConfig):
        super().__init__()
        if not 1 <= cfg.top_k <= cfg.num_experts:
            raise ValueError(f"MoE top_k {cfg.top_k} must be in [1, num_experts={cfg.num_experts}]")
        if cfg.load_balance not in ("first_choice", "all_choices"):
            raise ValueError(f"MoE load_balance {cfg.load_balance!r}: first_choice or all_choices")
        self.cfg = cfg
        E = cfg.num_experts
        self.router = nn.Linear(dim, E, bias=False)
        self.w1 = nn.Parameter(torch.empty(E, hidden, dim))  # gate
        self.w3 = nn.Parameter(torch.empty(E, hidden, dim))  # up
        self.w2 = nn.Parameter(torch.empty(E, dim, hidden))  # down

    @torch.no_grad()
    def init_weights(self, std: float = 0.02, out_std: float = 0.02) -> None:
        for w in (self.router.weight, self.w1, self.w3):
            nn.init.normal_(w, std=std)
        nn.init.normal_(self.w2, std=out_std)

    def route(self, x_ND: Tensor, valid_N: Tensor) -> tuple[Tensor, Tensor, MoEAux]:
        """fp32 gates (N, K) renormalised to sum to 1, expert ids (N, K), and the aux stats."""
        E, K = self.cfg.num_experts, self.cfg.top_k
        with torch.autocast(device_type=x_ND.device.type, enabled=False):
            logits_NE = F.linear(x_ND.float(), self.router.weight.float())
        probs_NE = logits_NE.softmax(dim=-1)
        top_p_NK, experts_NK = probs_NE.topk(K, dim=-1)  # sorted: column 0 is the first choice
        gates_NK = top_p_NK / top_p_NK.sum(dim=-1, keepdim=True)

        w_N = valid_N.float()
        n_valid = w_N.sum().clamp(min=1.0)
        counts_E = torch.zeros(E, device=x_ND.device).scatter_add_(
            0, experts_NK.reshape(-1), w_N.repeat_interleave(K)
        )
        # f_E has no gradient (a count of discrete choices); see MoEConfig.load_balance
        if self.cfg.load_balance == "first_choice":
            first_E = torch.zeros(E, device=x_ND.device).scatter_add_(0, experts_NK[:, 0], w_N)
            f_E = first_E / n_valid  # Σ_e f_e = 1
        else:
            f_E = counts_E / n_valid  # Σ_e f_e = K
        P_E = (probs_NE * w_N[:, None]).sum(0) / n_valid
        z_N = torch.logsumexp(logits_NE, dim=-1).square()
        aux = MoEAux(
            load_balance_loss=E * (f_E * P_E).sum(),
            z_loss=(z_N * w_N).sum() / n_valid,
            tokens_per_expert=counts_E.detach().long(),
        )
        return gates_NK, experts_NK, aux

    def forward(self, x_BTD: Tensor, valid_BT: Tensor | None = None) -> tuple[Tensor, MoEAux]:
        """Output (B, T, D) in x's dtype and the aux stats; ``valid_BT`` False marks padding."""
        D = x_BTD.shape[-1]
        x_ND = x_BTD.reshape(-1, D)
        valid_N = (
            torch.ones(x_ND.shape[0], dtype=torch.bool, device=x_ND.device)
            if valid_BT is None
            else valid_BT.reshape(-1)
        )
        gates_NK, experts_NK, aux = self.route(x_ND, valid_N)
        if self.cfg.impl == "loop":
            y_ND = self._experts_loop(x_ND, gates_NK, experts_NK)
        else:
            y_ND = self._experts_grouped(x_ND, gates_NK, experts_NK)
        return y_ND.view_as(x_BTD), aux

    def _expert(self, e: int, x_MD: Tensor) -> Tensor:
        h = F.silu(x_MD @ self.w1[e].T) * (x_MD @ self.w3[e].T)
        return h @ self.w2[e].T

    def _experts_loop(self, x_ND: Tensor, gates_NK: Tensor, experts_NK: Tensor) -> Tensor:
        """Reference: each token, each of its k slots, one expert call.  Slow, obviously right."""
        rows = []
        for n in range(x_ND.shape[0]):
            acc_D = torch.zeros(x_ND.shape[1], device=x_ND.device)
            for j in range(experts_NK.shape[1]):
                e = int(experts_NK[n, j])
                acc_D = acc_D + gates_NK[n, j] * self._expert(e, x_ND[n : n + 1])[0].float()
            rows.append(acc_D)
        return torch.stack(rows).to(x_ND.dtype)

    def _experts_grouped(self, x_ND: Tensor, gates_NK: Tensor, experts_NK: Tensor) -> Tensor:
        """Sort the A assignments by expert so each expert owns a contiguous slice, run the
        experts on their slices (one grouped GEMM per weight), weight by gate, scatter back."""
        N, D = x_ND.shape
        E, K = self.cfg.num_experts, experts_NK.shape[1]
        flat_A = experts_NK.reshape(-1)
        order_A = torch.argsort(flat_A, stable=True)
        token_A = order_A // K  # which token each sorted assignment belongs to
        # scatter_add, not bincount: a static (E,) shape, so torch.compile keeps one graph
        counts_E = flat_A.new_zeros(E).scatter_add_(0, flat_A, torch.ones_like(flat_A))
        xs_AD = x_ND[token_A]
        if use_grouped_mm(x_ND):
            ys_AD = self._grouped_gemm(xs_AD, flat_A[order_A], counts_E)
        else:
            segments = xs_AD.split(counts_E.tolist())
            ys_AD = torch.cat([self._expert(e, seg) for e, seg in enumerate(segments)])
        weighted_AD = ys_AD.float() * gates_NK.reshape(-1)[order_A, None]
        out_ND = torch.zeros(N, D, device=x_ND.device).index_add_(0, token_A, weighted_AD)
        return out_ND.to(x_ND.dtype)

    def _grouped_gemm(self, xs_AD: Tensor, expert_A: Tensor, counts_E: Tensor) -> Tensor:
        """All experts in three grouped GEMMs over expert-sorted rows ``xs_AD``.

        Each expert's slice is zero-padded to a multiple of _ALIGN rows (at least one block):
        the CUDA kernel's backward contracts over tokens and needs 16-byte aligned groups.
        The padded length has a static bound (A + E·_ALIGN), so there is no host sync.
        """
        A, D = xs_AD.shape
        E = counts_E.shape[0]
        padded_E = (counts_E.clamp(min=1) + _ALIGN - 1) // _ALIGN * _ALIGN
        shift_E = (padded_E.cumsum(0) - padded_E) - (counts_E.cumsum(0) - counts_E)
        dest_A = torch.arange(A, device=xs_AD.device) + shift_E[expert_A]
        xp_PD = xs_AD.new_zeros(A + E * _ALIGN, D).index_copy(0, dest_A, xs_AD)
        offs_E = padded_E.cumsum(0).to(torch.int32)  # end row of each expert's slice
        w1, w3, w2 = (w.transpose(-2, -1) for w in (self.w1, self.w3, self.w2))
        h_PF = F.silu(_GROUPED_MM(xp_PD, w1, offs=offs_E)) * _GROUPED_MM(xp_PD, w3, offs=offs_E)
        return _GROUPED_MM(h_PF, w2, offs=offs_E)[dest_A]


# ---------------------------------------------------------------------------------------------
# Dense → MoE upcycling (§4: MoE models start from the dense checkpoint)


def upcycle_dense_ffn(w1: Tensor, w2: Tensor, w3: Tensor, num_experts: int) -> dict[str, Tensor]:
    """Stacked expert weights, every expert a copy of the dense SwiGLU FFN.

    w1, w3: (F, D); w2: (D, F) → w1, w3: (E, F, D); w2: (E, D, F).
    """
    return {
        name: w[None].expand(num_experts, *w.shape).clone()
        for name, w in (("w1", w1), ("w2", w2), ("w3", w3))
    }


def upcycle_decoder_state_dict(
    dense_sd: dict[str, Tensor], cfg_moe_lm: LMConfig, seed: int = 0, router_std: float = 0.02
) -> dict[str, Tensor]:
    """A dense :class:`~mm15.model.lm.Decoder` state dict turned into one for ``cfg_moe_lm``.

    Each MoE layer's experts copy the dense ``layers.{i}.ffn.w{1,2,3}.weight``; the router is
    N(0, router_std) from ``seed``.  With identical experts and gates summing to 1 the upcycled
    model computes exactly the dense function, whatever the router says.
    """
    moe = cfg_moe_lm.moe
    if moe is None:
        raise ValueError("upcycle_decoder_state_dict: cfg_moe_lm.moe is None (nothing to upcycle)")
    if moe.expert_hidden not in (None, cfg_moe_lm.ffn_hidden):
        raise ValueError(
            f"cannot upcycle: expert_hidden {moe.expert_hidden} != dense ffn_hidden "
            f"{cfg_moe_lm.ffn_hidden} (experts are copies of the dense FFN)"
        )
    gen = torch.Generator().manual_seed(seed)
    out = dict(dense_sd)
    for i in range(cfg_moe_lm.n_layers):
        if (i + 1) % moe.every:
            continue
        prefix = f"layers.{i}.ffn."
        try:
            dense = [out.pop(f"{prefix}{w}.weight") for w in ("w1", "w2", "w3")]
        except KeyError as err:
            raise ValueError(
                f"dense state dict lacks {err.args[0]} (needed to upcycle layer {i})"
            ) from None
        if dense[0].shape != (cfg_moe_lm.ffn_hidden, cfg_moe_lm.dim):
            raise ValueError(
                f"{prefix}w1.weight has shape {tuple(dense[0].shape)}, config expects "
                f"({cfg_moe_lm.ffn_hidden}, {cfg_moe_lm.dim})"
            )
        for name, w in upcycle_dense_ffn(*dense, moe.num_experts).items():
            out[prefix + name] = w
        router = torch.randn(moe.num_experts, cfg_moe_lm.dim, generator=gen) * router_std
        out[prefix + "router.weight"] = router.to(dtype=dense[0].dtype, device=dense[0].device)
    return out
