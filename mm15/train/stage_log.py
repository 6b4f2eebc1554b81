"""What a training stage records: every step's scalars (metrics.jsonl, and TensorBoard when
installed, through :class:`mm15.train.monitor.MetricsLogger`) with an MFU line on the console
every ``log_every`` steps; at the stage's end its data audit and loss plot."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tqdm import tqdm

from mm15.train.config import StageConfig
from mm15.train.data import StageStream
from mm15.train.flops import mfu_line
from mm15.train.monitor import MetricsLogger, plot_stage
from mm15.train.step import StepResult


def log_step(
    logger: MetricsLogger,
    stage: StageConfig,
    state: dict[str, Any],
    out: StepResult,
    lr: float,
    seconds: float,
    stream: StageStream,
    failed_pixels: int,
    util: dict[str, float],
) -> None:
    """One step's scalars: loss, LR, gradient norm, tokens, time, skips, MFU, and for MoE the
    aux loss and the largest and smallest expert share (MM1.5 §4)."""
    scalars = {
        "loss": out.loss,
        "lr": lr,
        "grad_norm": out.grad_norm,
        "tokens": out.tokens,
        "step_seconds": seconds,
        "skipped_step": int(out.skipped),
        "skipped_steps": state["skipped_steps"],
        "corrupt_pixels": failed_pixels,
        **util,
        **{f"skipped_{k}": v for k, v in stream.skipped.items()},
    }
    if out.tokens_per_expert is not None:
        scalars["aux_loss"] = out.aux_loss
        counts = out.tokens_per_expert.float()
        share = counts / counts.sum(-1, keepdim=True).clamp(min=1)
        scalars["expert_share_max"] = float(share.max())  # 1/E is perfectly balanced
        scalars["expert_share_min"] = float(share.min())
    logger.log(step=state["step"], stage=stage.name, **scalars)


def print_mfu(stage_name: str, step: int, util: dict[str, float], *, show: bool) -> None:
    """The console's MFU line of ``step`` (nothing without a known peak, e.g. on the CPU)."""
    line = mfu_line(f"[{stage_name}]", step, util)
    if show and line:
        tqdm.write(line)


def write_stage_audit(run_dir: Path, stage_name: str, audit: dict[str, Any], *, plot: bool) -> None:
    """Rank 0, at a stage's end: ``audit_<stage>.json`` (what the mixture drew and skipped) and,
    when the stage trained steps in this process, ``loss_<stage>.png``."""
    (run_dir / f"audit_{stage_name}.json").write_text(json.dumps(audit, indent=2))
    if plot:
        plot_stage(run_dir / "metrics.jsonl", stage_name, run_dir / f"loss_{stage_name}.png")
