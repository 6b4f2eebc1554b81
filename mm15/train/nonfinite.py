"""A run that goes numerically wrong stops instead of saving or exporting garbage.

``max_nonfinite_steps`` consecutive skipped (non-finite) steps end it with
:class:`NonFiniteTrainingError` (:func:`check_streak`); a model holding NaN/Inf is neither
checkpointed, so earlier checkpoints survive ``keep_last`` (:func:`assert_finite_model`), nor
exported (:func:`mm15.train.loop.export_model`).  docs/training.md lists the guarantees.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from mm15.train.config import StageConfig, TrainConfig


class NonFiniteTrainingError(RuntimeError):
    """The run went numerically wrong: persistent non-finite steps, or NaN/Inf weights."""


def check_streak(cfg: TrainConfig, stage: StageConfig, state: dict[str, Any]) -> None:
    """Stop after ``max_nonfinite_steps`` consecutive skipped steps: a model or data that keeps
    producing NaN/Inf does not recover by skipping (the streak is rank-identical: the skip
    decision is all-reduced)."""
    if state["nonfinite_streak"] >= cfg.max_nonfinite_steps:
        raise NonFiniteTrainingError(
            f"stage {stage.name}: {state['nonfinite_streak']} consecutive steps (up to step "
            f"{state['step']}) had a non-finite loss or gradient (max_nonfinite_steps="
            f"{cfg.max_nonfinite_steps}); stopping without saving or exporting. Earlier "
            f"checkpoints in {cfg.run_dir} are kept; look at metrics.jsonl"
        )


def nonfinite_tensors(named: Any) -> list[str]:
    """Names of the tensors in ``named`` ((name, tensor) pairs) holding NaN or Inf; a sharded
    DTensor is checked on this rank's shard."""
    bad = []
    for name, t in named:
        local = t.to_local() if hasattr(t, "to_local") else t
        if local.is_floating_point() and not bool(torch.isfinite(local).all()):
            bad.append(name)
    return bad


def assert_finite_model(model: nn.Module, what: str) -> None:
    """Collective: raise on every rank if any rank's parameters or buffers hold NaN/Inf."""
    bad = nonfinite_tensors([*model.named_parameters(), *model.named_buffers()])
    flag = torch.tensor(float(bool(bad)))
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        flag = flag.to(next(model.parameters()).device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
    if flag.item():
        where = f"{bad[0]} ({len(bad)} tensor(s))" if bad else "another rank's shard"
        raise NonFiniteTrainingError(f"refusing to {what}: the model holds NaN/Inf in {where}")
