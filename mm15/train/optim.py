"""Optimisers: AdaFactor that is correct on FSDP2-sharded parameters, AdamW, gradient clipping.

MM1.5 trains with AdaFactor (MM1.5 §3–4: continual pre-training and SFT, "AdaFactor, peak LR 1e-5 /
2e-5").  :class:`AdaFactor` computes exactly the update ``torch.optim.Adafactor`` documents
(torch 2.13 ``torch/optim/_adafactor.py``: β̂₂ₜ = 1 − t^τ, ρₜ = min(lr, 1/√t),
αₜ = max(ε₂, RMS(θ))·ρₜ, decoupled weight decay θ ← θ(1 − lr·λ), factored second moments over the
last two dims, V̂ = R·C / max(mean(R), ε₁), U = G / max(√V̂, ε₁), Û = U / max(1, RMS(U)/d)) but
keeps working when the parameters are FSDP2 DTensors.  torch's own raises there (MM1.5 §4;
on 2.13 ``aten.pow_`` on a ``_NormPartial`` column norm, ``aten.add_`` on a 3-D shard).

FSDP2 shards every parameter on dim 0 (``Shard(0)`` over a 1-D mesh, ``torch.chunk`` sizes, so
the last ranks may hold fewer rows, or none).  For an (R, C) matrix whose rows are split:

- the row statistic mean_c(G²) is local: every rank holds whole rows;
- the column statistic mean_r(G²) and the normaliser mean_r(R) are Σ over the local rows,
  all-reduced, then divided by the *global* R;
- RMS(θ) and RMS(U) are Σ of squares all-reduced, divided by the global numel.

For ≥3-D parameters (convs, stacked experts, position tables) dim 0 is a batch dim of the
factorisation, so only the two RMS terms need the reduction.  All sums of one phase go in one
all-reduce per process group: two collectives per step, not two per parameter.  Plain tensors
(one process, DDP) take the same code with the reductions skipped.  Math runs in fp32.

State tensors are DTensors laid out like their parameter (``col_var`` of a sharded matrix is
replicated), so distributed checkpointing can save and reshard them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.distributed.tensor import DTensor, Replicate, Shard

# ---------------------------------------------------------------------------------------------
# Configuration


@dataclass(kw_only=True)
class AdafactorConfig:
    """torch.optim.Adafactor's hyper-parameters (its names in comments)."""

    beta2_decay: float = -0.8  # τ: β̂₂ₜ = 1 − t^τ
    eps1: float | None = None  # ε₁; None: machine epsilon of the parameter dtype (torch's)
    eps2: float = 1e-3  # ε₂: floor of RMS(θ) in the relative step size
    clip_threshold: float = 1.0  # d: update clipping, Û = U / max(1, RMS(U)/d)
    # "relative" (torch's): step = max(ε₂, RMS(θ))·min(lr, 1/√t).  "absolute": step = lr, the
    # form of optax/T5X with multiply_by_parameter_scale=False, where lr is an ordinary LR.
    step_size: Literal["relative", "absolute"] = "relative"


@dataclass(kw_only=True)
class AdamWConfig:
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8


@dataclass(kw_only=True)
class OptimConfig:
    """One stage's optimiser.  ``lr`` is the peak; :mod:`mm15.train.schedule` scales it."""

    kind: Literal["adafactor", "adamw"] = "adafactor"
    lr: float = 1e-5
    weight_decay: float = 0.0  # applied to ≥2-D parameters only (not norms, biases, CLS)
    grad_clip: float = 1.0  # max global grad L2 norm; ≤ 0 measures the norm without clipping
    adafactor: AdafactorConfig = field(default_factory=AdafactorConfig)
    adamw: AdamWConfig = field(default_factory=AdamWConfig)

    def __post_init__(self) -> None:
        if not 0 < self.lr < float("inf"):
            raise ValueError(f"optim.lr must be > 0, got {self.lr}")
        if not 0 <= self.weight_decay < float("inf"):
            raise ValueError(f"optim.weight_decay must be >= 0, got {self.weight_decay}")


# ---------------------------------------------------------------------------------------------
# Sharding helpers


def _local(t: Tensor) -> Tensor:
    """The tensor this rank holds (a DTensor's local shard, sharing its storage)."""
    return t.to_local() if isinstance(t, DTensor) else t


def _shard_group(p: Tensor) -> dist.ProcessGroup | None:
    """The group whose ranks each hold a dim-0 slice of ``p``; None when ``p`` is whole here."""
    if not isinstance(p, DTensor) or all(isinstance(pl, Replicate) for pl in p.placements):
        return None
    if p.device_mesh.ndim != 1 or p.placements[0] != Shard(0):
        raise NotImplementedError(
            f"AdaFactor handles parameters sharded as Shard(0) over a 1-D mesh (FSDP2) or "
            f"replicated; got a {tuple(p.shape)} parameter with placements {p.placements} "
            f"on a {p.device_mesh.ndim}-D mesh"
        )
    return p.device_mesh.get_group()


def _new_state(p: Tensor, local_shape: list[int], global_shape: list[int]) -> Tensor:
    """fp32 zeros; a DTensor laid out like ``p`` when ``p`` is one.  A state that keeps dim 0 of
    ``p`` is sharded like it, one that reduced dim 0 away is replicated."""
    local = torch.zeros(local_shape, dtype=torch.float32, device=_local(p).device)
    if not isinstance(p, DTensor):
        return local
    keeps_dim0 = len(global_shape) == p.ndim and global_shape[0] == p.shape[0]
    placements = p.placements if keeps_dim0 else tuple(Replicate() for _ in p.placements)
    shape = torch.Size(global_shape)
    stride = torch.empty(shape, device="meta").stride()
    return DTensor.from_local(
        local, p.device_mesh, placements, run_check=False, shape=shape, stride=stride
    )


class _SumReducer:
    """Collects tensors to be summed over their shard group; :meth:`run` does one all-reduce per
    group.  Every rank adds the same tensors in the same order (same parameters, same phase)."""

    def __init__(self) -> None:
        self.pending: dict[dist.ProcessGroup, list[Tensor]] = {}

    def add(self, group: dist.ProcessGroup | None, *tensors: Tensor) -> None:
        if group is not None:
            self.pending.setdefault(group, []).extend(tensors)

    def run(self) -> None:
        for group, tensors in self.pending.items():
            flat = torch.cat([t.reshape(-1) for t in tensors])
            dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group)
            for t, summed in zip(tensors, flat.split([t.numel() for t in tensors]), strict=True):
                t.copy_(summed.view_as(t))
        self.pending.clear()


# ---------------------------------------------------------------------------------------------
# AdaFactor


@dataclass
class _Work:
    """One parameter's step in flight between the two reductions (all local tensors, fp32)."""

    param: Tensor  # the DTensor or plain parameter
    grad: Tensor  # local shard, fp32, sign-flipped when maximising
    state: dict[str, Any]
    group: dict[str, Any]
    shard_group: dist.ProcessGroup | None
    t: float  # step number, 1-based
    param_sq: Tensor  # (1,) Σθ² (global after the first reduction)
    col_sum: Tensor | None = None  # (…, 1, C) Σ_r G² over rows
    row_var_sum: Tensor | None = None  # (…, 1, 1) Σ_r R
    update_sq: Tensor | None = None  # (1,) ΣU²


class AdaFactor(torch.optim.Optimizer):
    """torch.optim.Adafactor's algorithm and arguments, correct on FSDP2 (see the module doc).

    ``step_size="absolute"`` replaces the relative step max(ε₂, RMS(θ))·min(lr, 1/√t) by lr.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-2,
        beta2_decay: float = -0.8,
        eps: tuple[float | None, float] = (None, 1e-3),
        d: float = 1.0,
        weight_decay: float = 0.0,
        *,
        maximize: bool = False,
        step_size: Literal["relative", "absolute"] = "relative",
    ) -> None:
        if float(lr) < 0.0:
            raise ValueError(f"AdaFactor lr must be >= 0, got {lr}")
        if beta2_decay > 0.0:
            raise ValueError(f"AdaFactor beta2_decay must be <= 0, got {beta2_decay}")
        if d < 1.0:
            raise ValueError(f"AdaFactor clipping threshold d must be >= 1, got {d}")
        if weight_decay < 0.0:
            raise ValueError(f"AdaFactor weight_decay must be >= 0, got {weight_decay}")
        if step_size not in ("relative", "absolute"):
            raise ValueError(
                f"AdaFactor step_size must be 'relative' or 'absolute', got {step_size!r}"
            )
        defaults = dict(
            lr=lr,
            beta2_decay=beta2_decay,
            eps=eps,
            d=d,
            weight_decay=weight_decay,
            maximize=maximize,
            step_size=step_size,
        )
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        work = [
            self._accumulate(p, group)
            for group in self.param_groups
            for p in group["params"]
            if p.grad is not None and p.numel() > 0
        ]
        reducer = _SumReducer()
        for w in work:
            reducer.add(w.shard_group, w.param_sq)
            if w.param.ndim == 2:  # dim 0 is the row dim: column statistics span the shards
                reducer.add(w.shard_group, w.col_sum, w.row_var_sum)  # type: ignore[arg-type]
        reducer.run()
        for w in work:
            update = self._finish_second_moment(w)
            w.update_sq = update.square().sum().reshape(1)
            reducer.add(w.shard_group, w.update_sq)
        reducer.run()
        for w in work:
            self._apply(w)
        return loss

    def _accumulate(self, p: Tensor, group: dict[str, Any]) -> _Work:
        """Phase 1: step count, Σθ², the local (row / vector) second-moment statistics."""
        if torch.is_complex(p) or p.grad.is_sparse:  # type: ignore[union-attr]
            raise RuntimeError("AdaFactor supports dense real parameters only")
        grad = _local(p.grad).float()  # type: ignore[arg-type]
        grad = -grad if group["maximize"] else grad
        state = self.state[p]
        if not state:
            self._init_state(p, state)
        state["step"] += 1
        t = float(state["step"].item())
        weight = t ** group["beta2_decay"]  # 1 − β̂₂ₜ
        param_sq = _local(p).float().square().sum().reshape(1)
        w = _Work(p, grad, state, group, _shard_group(p), t, param_sq)
        if p.ndim >= 2:
            row_var = _local(state["row_var"])
            row_mean = torch.linalg.vector_norm(grad, dim=-1, keepdim=True).square_() / p.shape[-1]
            row_var.lerp_(row_mean, weight)
            w.col_sum = torch.linalg.vector_norm(grad, dim=-2, keepdim=True).square_()
            w.row_var_sum = row_var.sum(dim=-2, keepdim=True)
        else:
            _local(state["variance"]).lerp_(grad.square(), weight)
        return w

    @staticmethod
    def _init_state(p: Tensor, state: dict[str, Any]) -> None:
        state["step"] = torch.tensor(0.0, dtype=torch.float32)  # on CPU, as torch keeps it
        local, shape = list(_local(p).shape), list(p.shape)
        if p.ndim >= 2:
            state["row_var"] = _new_state(p, [*local[:-1], 1], [*shape[:-1], 1])
            state["col_var"] = _new_state(
                p, [*local[:-2], 1, local[-1]], [*shape[:-2], 1, shape[-1]]
            )
        else:
            state["variance"] = _new_state(p, local, shape)

    def _finish_second_moment(self, w: _Work) -> Tensor:
        """Phase 2 (global sums known): the column statistic, then the unclipped update U."""
        if w.param.ndim >= 2:
            rows = w.param.shape[-2]
            weight = w.t ** w.group["beta2_decay"]
            _local(w.state["col_var"]).lerp_(w.col_sum / rows, weight)  # type: ignore[operator]
            w.row_var_sum = w.row_var_sum / rows  # type: ignore[operator]  (now mean_r R)
        return self._update(w)

    def _update(self, w: _Work) -> Tensor:
        """U = G / max(√V̂, ε₁) in fp32, V̂ = R·C / max(mean_r R, ε₁) or the vector's V."""
        eps1 = w.group["eps"][0]
        if eps1 is None:
            eps1 = torch.finfo(w.param.dtype).eps
        if w.param.ndim >= 2:
            # an outer product (inner dim 1): elementwise, so no TF32 rounding on GPU
            var = _local(w.state["row_var"]) * _local(w.state["col_var"])
            var.div_(w.row_var_sum.clamp(min=eps1))  # type: ignore[union-attr]
        else:
            var = _local(w.state["variance"]).clone()
        return var.clamp_(min=eps1 * eps1).rsqrt_().mul_(w.grad)

    def _apply(self, w: _Work) -> None:
        """Phase 3: θ ← θ(1 − lr·λ) − α·U / max(1, RMS(U)/d), with global RMS terms."""
        g = w.group
        lr = float(g["lr"])
        numel = w.param.numel()
        if g["step_size"] == "relative":
            rms_param = (w.param_sq / numel).sqrt_().clamp_(min=g["eps"][1])
            alpha = rms_param * min(lr, w.t**-0.5)
        else:
            alpha = torch.full_like(w.param_sq, lr)
        rms_update = (w.update_sq / numel).sqrt_()  # type: ignore[operator]
        scale = (-alpha / (rms_update / g["d"]).clamp_(min=1.0)).reshape(())
        param = _local(w.param)
        if g["weight_decay"] != 0:
            param.mul_(1 - lr * g["weight_decay"])
        update = self._update(w).mul_(scale)  # recomputed: cheaper than holding every U
        param.add_(update.to(param.dtype))


# ---------------------------------------------------------------------------------------------
# Building and clipping


def build_optimizer(
    model: nn.Module | Iterable[nn.Parameter], cfg: OptimConfig
) -> torch.optim.Optimizer:
    """The optimiser ``cfg`` names over the trainable parameters (``requires_grad``).

    Two groups: weight decay on ≥2-D parameters only; norms, biases and the CLS vector are
    exempt (as nanoGPT and most LLM recipes do).  Call after FSDP2/DDP wrapping, so the
    optimiser holds the parameters the wrapper trains (DTensors under FSDP2).
    """
    params = model.parameters() if isinstance(model, nn.Module) else model
    trainable = [p for p in params if p.requires_grad]
    if not trainable:
        raise ValueError("build_optimizer: no trainable parameters (every requires_grad is False)")
    groups = [
        {"params": [p for p in trainable if p.ndim >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in trainable if p.ndim < 2], "weight_decay": 0.0},
    ]
    groups = [g for g in groups if g["params"]]
    if cfg.kind == "adafactor":
        a = cfg.adafactor
        return AdaFactor(
            groups,
            lr=cfg.lr,
            beta2_decay=a.beta2_decay,
            eps=(a.eps1, a.eps2),
            d=a.clip_threshold,
            step_size=a.step_size,
        )
    if cfg.kind == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.adamw.betas, eps=cfg.adamw.eps)
    raise ValueError(f"OptimConfig.kind must be 'adafactor' or 'adamw', got {cfg.kind!r}")


def clip_grad_norm_(params: Iterable[Tensor], max_norm: float) -> Tensor:
    """Scale gradients in place so their global L2 norm is at most ``max_norm``; return the norm
    before clipping as a plain fp32 scalar, the same on every rank.

    ``max_norm <= 0`` only measures.  torch's ``clip_grad_norm_`` already reduces DTensor (FSDP2)
    gradients across shards (checked on 2.13: its result is a replicated DTensor); plain
    gradients (one process, DDP after all-reduce) are whole on every rank.
    """
    grads_of = [p for p in params if p.grad is not None]
    if not grads_of:
        return torch.zeros(())
    limit = max_norm if max_norm > 0 else math.inf
    total = torch.nn.utils.clip_grad_norm_(grads_of, limit)
    if isinstance(total, DTensor):
        total = total.full_tensor()
    return total.float()
