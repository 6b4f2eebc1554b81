"""One optimiser step over a rank's micro-batches, with the guards a long run needs.

Loss normalisation: the step minimises the mean next-token loss over every target token of the
GLOBAL batch (all ranks, all micro-batches).  Each micro-batch contributes its summed loss
divided by the global token count; since data-parallel gradient reduction averages over ranks,
the per-rank loss is multiplied by the world size.  This makes one process with a batch of B rows
and two processes with B/2 rows each compute the same update.

Guards: a non-finite loss or gradient on any rank skips the step on every rank (the decision is
all-reduced), gradients are zeroed, and the skip is counted by the caller.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from mm15.model.mm15 import IGNORE_INDEX, MM15, next_token_targets
from mm15.train.optim import clip_grad_norm_
from mm15.train.parallel import skip_grad_sync


@dataclass
class StepResult:
    loss: float  # global mean next-token loss of the batch
    aux_loss: float  # MoE aux loss (mean over micro-batches and ranks), 0 for dense
    tokens: int  # global target tokens
    grad_norm: float
    skipped: bool  # non-finite loss or gradient: no update was applied
    tokens_per_expert: Tensor | None  # (n_moe_layers, E) summed over micro-batches, this rank


def _all_reduce(t: Tensor, op=dist.ReduceOp.SUM) -> Tensor:
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t, op=op)
    return t


def train_step(
    model: MM15,
    micro_batches: list[dict[str, Tensor]],
    *,
    optimizer: torch.optim.Optimizer,
    grad_clip: float,
    world_size: int,
    autocast: contextlib.AbstractContextManager | None = None,
) -> StepResult:
    """Forward/backward every micro-batch, then clip and step (or skip, on every rank)."""
    device = micro_batches[0]["input_ids_BT"].device
    local_tokens = sum(_count_targets(mb) for mb in micro_batches)
    global_tokens = int(_all_reduce(torch.tensor(float(local_tokens), device=device)).item())
    scale = world_size / max(global_tokens, 1)
    loss_sum = torch.zeros((), device=device)
    aux_sum = torch.zeros((), device=device)
    experts = None
    for i, mb in enumerate(micro_batches):
        # Gradients of all micro-batches but the last accumulate locally (no collective).
        sync = contextlib.nullcontext() if i == len(micro_batches) - 1 else skip_grad_sync(model)
        total, aux, stats = _forward_backward(
            model,
            mb,
            context=(sync, autocast or contextlib.nullcontext()),
            scale=scale,
            n_micro=len(micro_batches),
            always_encode=world_size > 1,
        )
        if aux is not None:
            aux_sum += aux
            experts = stats if experts is None else experts + stats
        loss_sum += total
    grad_norm = _clip(model, grad_clip)
    bad = torch.tensor(
        float(not (math.isfinite(grad_norm) and torch.isfinite(loss_sum).item())), device=device
    )
    skipped = bool(_all_reduce(bad, dist.ReduceOp.MAX).item())
    if not skipped:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    loss_global = _all_reduce(loss_sum.clone()).item() / max(global_tokens, 1)
    aux_global = _all_reduce(aux_sum.clone()).item() / world_size
    return StepResult(
        loss=loss_global,
        aux_loss=aux_global,
        tokens=global_tokens,
        grad_norm=grad_norm,
        skipped=skipped,
        tokens_per_expert=experts,
    )


def _forward_backward(
    model: MM15,
    mb: dict[str, Tensor],
    *,
    context: tuple[contextlib.AbstractContextManager, contextlib.AbstractContextManager],
    scale: float,
    n_micro: int,
    always_encode: bool,
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """Forward and backward one micro-batch under ``context`` (gradient sync, autocast);
    returns its summed next-token loss, its share of the MoE aux loss and its tokens per expert
    (detached; None for a dense model)."""
    targets_BT = next_token_targets(mb["labels_BT"], mb["document_ids_BT"])
    has_target_BT = F.pad(targets_BT != IGNORE_INDEX, (0, 1))  # position t predicts t + 1
    sync, autocast = context
    aux = stats = None
    with sync, autocast:
        out = model(
            mb["input_ids_BT"],
            pixels_NCHW=mb.get("pixels_NCHW"),
            position_ids_BT=mb["position_ids_BT"],
            document_ids_BT=mb["document_ids_BT"],
            always_encode=always_encode,
            logits_at_BT=has_target_BT,
        )
        # Logits only where there is a target (same loss and gradients as all positions).
        total = F.cross_entropy(
            out.logits.float(), targets_BT[targets_BT != IGNORE_INDEX], reduction="sum"
        )
        loss = total * scale
        if out.aux_loss is not None:
            loss = loss + out.aux_loss / n_micro
            aux = out.aux_loss.detach() / n_micro
            stats = out.decoder.moe_stats.tokens_per_expert
        loss.backward()
    return total.detach(), aux, stats


def _count_targets(mb: dict[str, Tensor]) -> int:
    return int((next_token_targets(mb["labels_BT"], mb["document_ids_BT"]) != IGNORE_INDEX).sum())


def _clip(model: torch.nn.Module, max_norm: float) -> float:
    """Total gradient norm before clipping, the same on every rank (FSDP2 shards included)."""
    params = [p for p in model.parameters() if p.grad is not None]
    return float(clip_grad_norm_(params, max_norm)) if params else 0.0
