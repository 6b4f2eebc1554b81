"""One training stage (MM1.5 §3–4): what :func:`mm15.train.loop.train` runs for each entry of
``cfg.stages``.

A stage trains the parts its config leaves unfrozen with a fresh optimiser at its own peak LR
and a warmup + cosine schedule, writes a checkpoint every ``ckpt_every`` steps and at its end,
and, resumed, continues from the checkpoint's step and data position exactly.  Its chat format
becomes the model's (:func:`~mm15.train.config.stage_format`): checkpoints record it and the
exported config.json carries it.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from mm15.config_json import to_dict
from mm15.model.mm15 import MM15
from mm15.model.params import recipe_peak_lr
from mm15.tokenizer import MM15Tokenizer
from mm15.train.batches import StepBatches, use_prefetch
from mm15.train.config import StageConfig, TrainConfig, stage_format
from mm15.train.data import StageStream, epoch_steps, run_stage
from mm15.train.flops import batch_flops, peak_flops, utilisation
from mm15.train.monitor import MetricsLogger, Progress
from mm15.train.nonfinite import assert_finite_model, check_streak
from mm15.train.optim import build_optimizer
from mm15.train.parallel import DistInfo, autocast_context
from mm15.train.resume import load_training_state
from mm15.train.schedule import lr_at
from mm15.train.stage_log import log_step, print_mfu, write_stage_audit
from mm15.train.state_save import save_training_state
from mm15.train.step import StepResult, train_step

if TYPE_CHECKING:
    from mm15.train.loop import RunResult


@dataclass
class StageRun:
    """What one stage's steps share.  ``state`` is the run's trainer state (global step, step
    in stage, skip counters), updated in place and saved with every checkpoint; ``result`` is
    what :func:`mm15.train.loop.train` returns (losses, skipped steps)."""

    cfg: TrainConfig
    index: int  # position of the stage in cfg.stages
    stage: StageConfig  # as it runs: steps resolved, chat format set
    model: nn.Module  # wrapped for the process group
    inner: MM15  # the plain model inside it
    info: DistInfo
    optimizer: torch.optim.Optimizer
    stream: StageStream
    peak_lr: float
    state: dict[str, Any]
    logger: MetricsLogger
    result: RunResult


def train_stage(
    cfg: TrainConfig,
    index: int,
    model: nn.Module,
    inner: MM15,
    tokenizer: MM15Tokenizer,
    info: DistInfo,
    state: dict[str, Any],
    resume: Path | None,
    logger: MetricsLogger,
    result: RunResult,
    datasets: dict[str, Any],
) -> None:
    """Train stage ``index`` of ``cfg`` on its opened ``datasets`` (from the checkpoint
    ``resume`` when given), then write its audit and loss plot (rank 0)."""
    stage, missing = _resolve_stage(cfg, index, inner, tokenizer, info, datasets)
    _set_trainable(inner, stage)
    peak = stage.lr if stage.lr is not None else recipe_peak_lr(inner.cfg)
    optimizer = build_optimizer(model, dataclasses.replace(stage.optim, lr=peak))
    stream = StageStream(
        stage,
        datasets,
        tokenizer=tokenizer,
        model_cfg=inner.cfg,
        seed=cfg.seed + index,
        max_skipped_fraction=cfg.max_skipped_fraction,
    )
    start = 0
    if resume is not None:
        saved = load_training_state(resume, model=model, optimizer=optimizer, verify=False)
        stream.load_state_dict(saved["data"])
        start = saved["stage_step"]
    run = StageRun(
        cfg=cfg,
        index=index,
        stage=stage,
        model=model,
        inner=inner,
        info=info,
        optimizer=optimizer,
        stream=stream,
        peak_lr=peak,
        state=state,
        logger=logger,
        result=result,
    )
    _train_steps(run, start)
    if info.rank == 0:
        audit = stream.audit() | {"missing": missing}
        write_stage_audit(Path(cfg.run_dir), stage.name, audit, plot=stage.steps > start)


def _resolve_stage(
    cfg: TrainConfig,
    index: int,
    inner: MM15,
    tokenizer: MM15Tokenizer,
    info: DistInfo,
    datasets: dict[str, Any],
) -> tuple[StageConfig, list[str]]:
    """Stage ``index`` as it runs (sources of the opened datasets, its chat format, epochs as
    steps), and the names of its datasets left out for having no files."""
    stage = run_stage(cfg.stages[index], datasets)
    # The chat format this stage trains with becomes the model's: checkpoints record it and
    # the exported config.json carries it (chat, serve and eval prompt with it).
    fmt = stage_format(cfg, index, inner.cfg.format)
    stage = dataclasses.replace(stage, format=fmt)
    inner.cfg = dataclasses.replace(inner.cfg, format=fmt)
    if stage.epochs is not None:
        stage = _epochs_as_steps(stage, datasets, tokenizer, inner, info)
    missing = [d.name for d in cfg.stages[index].datasets if d.name not in datasets]
    if missing and info.rank == 0:
        print(
            f"[{stage.name}] training without datasets that have no files (missing_datasets="
            f"skip): {', '.join(missing)}",
            flush=True,
        )
    if stage.batch_rows % info.world_size:
        raise ValueError(
            f"stage {stage.name}: batch_rows {stage.batch_rows} is not divisible by "
            f"the world size {info.world_size}"
        )
    return stage, missing


def _epochs_as_steps(
    stage: StageConfig,
    datasets: dict[str, Any],
    tokenizer: MM15Tokenizer,
    inner: MM15,
    info: DistInfo,
) -> StageConfig:
    """A stage given in epochs (the paper's SFT is one) as the steps they take."""
    steps = epoch_steps(stage, datasets, tokenizer=tokenizer, model_cfg=inner.cfg)
    if stage.warmup_steps > steps:
        raise ValueError(
            f"stage {stage.name}: warmup_steps ({stage.warmup_steps}) exceeds "
            f"the {steps} steps of {stage.epochs} epoch(s)"
        )
    if info.rank == 0:
        print(
            f"[{stage.name}] {stage.epochs} epoch(s) = {steps} steps of {stage.batch_rows} rows",
            flush=True,
        )
    return dataclasses.replace(stage, steps=steps, epochs=None)


def _set_trainable(model: MM15, stage: StageConfig) -> None:
    for part in ("vision", "connector", "lm"):
        for p in getattr(model, part).parameters():
            p.requires_grad_(part not in stage.freeze)


def _train_steps(run: StageRun, start: int) -> None:
    """Steps ``start`` … ``stage.steps - 1``: LR, batches, one optimiser step, bookkeeping,
    logs, the non-finite guard, checkpoints."""
    cfg, stage, info = run.cfg, run.stage, run.info
    autocast = autocast_context(info.device) if cfg.parallel.autocast == "bfloat16" else None
    losses = run.result.losses.setdefault(stage.name, [])
    failed_pixels = 0
    device_peak = peak_flops(info.device, cfg.parallel.peak_tflops)  # None (CPU): no MFU

    with (
        Progress(
            stage.steps, f"[{stage.name}]", info.rank == 0, initial=start, log_every=cfg.log_every
        ) as progress,
        StepBatches(run.stream, info, use_prefetch(cfg.prefetch, info.device)) as next_batches,
    ):
        for step in range(start, stage.steps):
            lr = _set_lr(run, step)
            t0 = time.perf_counter()
            batches, bad = next_batches(last=step + 1 == stage.steps)
            failed_pixels += bad
            out = train_step(
                run.model,
                batches,
                optimizer=run.optimizer,
                grad_clip=stage.optim.grad_clip,
                world_size=info.world_size,
                autocast=autocast,
            )
            _count(run, step, out)
            losses.append(out.loss)
            seconds = time.perf_counter() - t0  # MFU: this rank's FLOPs over it, data included
            util = utilisation(batch_flops(run.inner.cfg, batches), seconds, device_peak)
            log_step(
                run.logger, stage, run.state, out, lr, seconds, run.stream, failed_pixels, util
            )
            progress.update(step + 1, loss=out.loss, lr=lr, tokens=out.tokens)
            show = info.is_main and (step + 1) % cfg.log_every == 0
            print_mfu(stage.name, step + 1, util, show=show)
            check_streak(cfg, stage, run.state)
            if (step + 1) % cfg.ckpt_every == 0 or step + 1 == stage.steps:
                _save(run)


def _set_lr(run: StageRun, step: int) -> float:
    """Warmup + cosine (:func:`~mm15.train.schedule.lr_at`) at ``step`` of the stage, set on
    every parameter group."""
    stage = run.stage
    lr = lr_at(
        step,
        peak_lr=run.peak_lr,
        warmup_steps=stage.warmup_steps,
        total_steps=stage.steps,
        min_lr_ratio=stage.min_lr_ratio,
    )
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    return lr


def _count(run: StageRun, step: int, out: StepResult) -> None:
    """The trainer state after step ``step`` (0-based in the stage) and its skip counters."""
    state = run.state
    state["step"] += 1
    state["stage_step"] = step + 1
    state["skipped_steps"] += int(out.skipped)
    state["nonfinite_streak"] = state["nonfinite_streak"] + 1 if out.skipped else 0
    run.result.skipped_steps = state["skipped_steps"]


def _save(run: StageRun) -> None:
    state = run.state
    # A non-finite model must not replace (and, through keep_last, delete) good checkpoints.
    assert_finite_model(run.model, f"save a checkpoint at step {state['step']}")
    # "format": the chat format the model is trained with (what the exported config.json gets).
    trainer_state = {
        **state,
        "stage": run.index,
        "data": run.stream.state_dict(),
        "format": to_dict(run.stream.stage.format),
    }
    save_training_state(
        run.cfg.run_dir,
        step=state["step"],
        model=run.model,
        optimizer=run.optimizer,
        trainer_state=trainer_state,
        config=to_dict(run.cfg),
        keep_last=run.cfg.keep_last,
    )
