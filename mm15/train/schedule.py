"""Learning-rate schedule: linear warmup from 0, then cosine decay to ``min_lr_ratio``·peak.

MM1.5 §3.1 and §4 (MM1.5 §3–4): continual pre-training (peak 1e-5) and SFT (peak 2e-5) use a
cosine decay to 0; pre-training follows MM1's schedule, whose peak is MM1 §4 Eq. 1,
η = exp(−0.4214·ln N − 0.5535) (:func:`mm15.model.params.recipe_peak_lr`).

``step`` counts optimiser updates already taken, so the update with index ``step`` uses
``lr_at(step)``: 0 at step 0, the peak at ``warmup_steps``, ``min_lr_ratio``·peak from
``total_steps`` on.  The schedule's only state is that step, so a resumed run is exact.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.optim.lr_scheduler import LambdaLR


def lr_at(
    step: int, *, peak_lr: float, warmup_steps: int, total_steps: int, min_lr_ratio: float = 0.0
) -> float:
    """The learning rate of update ``step`` (0-based)."""
    if step < 0:
        raise ValueError(f"lr_at: step must be >= 0, got {step}")
    if not 0 <= warmup_steps <= total_steps or total_steps <= 0:
        raise ValueError(
            f"lr_at needs 0 <= warmup_steps <= total_steps and total_steps > 0; "
            f"got warmup_steps={warmup_steps}, total_steps={total_steps}"
        )
    if not 0.0 <= min_lr_ratio <= 1.0:
        raise ValueError(f"lr_at: min_lr_ratio must be in [0, 1], got {min_lr_ratio}")
    floor = min_lr_ratio * peak_lr
    if step >= total_steps:
        return floor
    if step < warmup_steps:
        return peak_lr * step / warmup_steps
    progress = (step - warmup_steps) / (total_steps - warmup_steps)
    return floor + (peak_lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


@dataclass
class WarmupCosine:
    """``lr_at`` as a multiplier of each param group's peak LR (a LambdaLR ``lr_lambda``).  A
    dataclass so LambdaLR's state_dict records its settings along with the step."""

    warmup_steps: int
    total_steps: int
    min_lr_ratio: float = 0.0

    def __call__(self, step: int) -> float:
        return lr_at(
            step,
            peak_lr=1.0,
            warmup_steps=self.warmup_steps,
            total_steps=self.total_steps,
            min_lr_ratio=self.min_lr_ratio,
        )


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    *,
    warmup_steps: int,
    total_steps: int,
    min_lr_ratio: float = 0.0,
) -> LambdaLR:
    """A LambdaLR over ``optimizer`` whose groups' current ``lr`` is the peak.  Call
    ``scheduler.step()`` after each ``optimizer.step()``; save/load its state_dict to resume."""
    WarmupCosine(warmup_steps, total_steps, min_lr_ratio)(0)  # validate the settings now
    return LambdaLR(optimizer, WarmupCosine(warmup_steps, total_steps, min_lr_ratio))
