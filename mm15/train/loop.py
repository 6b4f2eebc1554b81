"""The training entry point: one code path for one process or many under ``torchrun``.

``train(cfg)`` builds (or loads) the model, wraps it for the process group, and runs the stages
of ``cfg.stages`` in order (MM1.5 §3–4).  Each stage gets a fresh optimiser with its own peak LR
and a warmup + cosine schedule; a checkpoint is written every ``ckpt_every`` steps and at the end
of every stage, and a run that finds a checkpoint in its ``run_dir`` resumes from it exactly
(model, optimiser, RNG, data position).  The final model is exported as an mm15 checkpoint
directory under ``run_dir/final``, its config.json carrying the chat format it was trained with
(the last stage's, :func:`~mm15.train.config.stage_format`; training checkpoints record each
stage's in trainer_state.json).

A run that goes numerically wrong stops instead of exporting garbage: ``max_nonfinite_steps``
consecutive skipped (non-finite) steps end it with :class:`NonFiniteTrainingError`, a model
holding NaN/Inf is neither checkpointed (earlier checkpoints survive) nor exported.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from mm15.config import to_dict
from mm15.data.check import check_tokenizer, preflight
from mm15.data.registry import registry
from mm15.model.mm15 import MM15
from mm15.model.params import recipe_peak_lr
from mm15.services.checkpoint import load_checkpoint, save_checkpoint
from mm15.tokenizer import MM15Tokenizer, byte_tokenizer
from mm15.train.config import StageConfig, TrainConfig, stage_format
from mm15.train.data import (
    DataError,
    StageStream,
    epoch_steps,
    open_datasets,
    rank_batches,
    run_stage,
)
from mm15.train.flops import batch_flops, mfu_line, peak_flops, utilisation
from mm15.train.integrity import verify_checkpoint
from mm15.train.monitor import MetricsLogger, Progress, plot_stage
from mm15.train.optim import build_optimizer
from mm15.train.parallel import DistInfo, autocast_context, init_distributed, parallelize
from mm15.train.resume import latest_checkpoint, load_training_state, save_training_state
from mm15.train.schedule import lr_at
from mm15.train.step import train_step


class NonFiniteTrainingError(RuntimeError):
    """The run went numerically wrong: persistent non-finite steps, or NaN/Inf weights."""


@dataclass
class RunResult:
    run_dir: Path
    losses: dict[str, list[float]] = field(default_factory=dict)  # stage → per-step losses
    skipped_steps: int = 0
    final_model: Path | None = None


def build_model(cfg: TrainConfig) -> tuple[MM15, MM15Tokenizer]:
    """The model to train: loaded from ``init_from`` or freshly initialised (seeded)."""
    if cfg.init_from:
        model, tokenizer = load_checkpoint(cfg.init_from)
        return model.train(), tokenizer
    check_start(cfg)
    tokenizer = MM15Tokenizer.load(cfg.tokenizer) if cfg.tokenizer else byte_tokenizer()
    model_cfg = dataclasses.replace(cfg.model, image_token_id=tokenizer.image_token_id)
    if model_cfg.lm.vocab_size < len(tokenizer):
        raise ValueError(f"model vocab {model_cfg.lm.vocab_size} < tokenizer size {len(tokenizer)}")
    torch.manual_seed(cfg.seed)
    model = MM15(model_cfg)
    model.init_weights()
    return model.train(), tokenizer


def _set_trainable(model: MM15, stage: StageConfig) -> None:
    for part in ("vision", "connector", "lm"):
        for p in getattr(model, part).parameters():
            p.requires_grad_(part not in stage.freeze)


def check_start(cfg: TrainConfig) -> None:
    """A recipe that starts from pre-trained parts refuses random weights unless asked."""
    if not cfg.init_from and not cfg.allow_random_init:
        raise ValueError(
            "this recipe starts from pre-trained parts: set init_from=DIR (a "
            "checkpoint `mm15 init` assembled, or an earlier run's final/), or "
            "allow_random_init=true to train from random weights"
        )


def train(cfg: TrainConfig) -> RunResult:
    check_start(cfg)
    info = init_distributed()
    run_dir = Path(cfg.run_dir)
    resume = latest_checkpoint(run_dir)
    state: dict[str, Any] = {
        "stage": 0,
        "stage_step": 0,
        "step": 0,
        "skipped_steps": 0,
        "nonfinite_streak": 0,
    }
    if resume is not None:
        verify_checkpoint(resume)  # before any of it is read (load_training_state skips it)
        with (resume / "trainer_state.json").open() as f:
            state.update({k: v for k, v in json.load(f).items() if k in state})
    first = state["stage"]
    # Every remaining stage's datasets are opened before the model is built or anything is
    # written: a wrong path or option in the last stage fails now, in seconds, not after the
    # stages before it have trained.
    datasets = {index: open_stage_datasets(cfg, index) for index in range(first, len(cfg.stages))}
    if cfg.preflight_samples:  # `mm15 data check`'s sample check, on the readers just opened
        problems = preflight(cfg, datasets, check_tokenizer(cfg), cfg.preflight_samples)
        if problems:
            raise DataError(
                f"{len(problems)} data problem(s) before step 1: " + "; ".join(problems)
            )
    model, tokenizer = build_model(cfg)
    inner = model
    model = parallelize(model, cfg.parallel, info)
    result = RunResult(run_dir=run_dir, skipped_steps=state["skipped_steps"])
    logger = MetricsLogger(
        run_dir, rank=info.rank, resume_from_step=state["step"] if resume else None
    )
    try:
        for index in range(first, len(cfg.stages)):
            resume_here = resume if index == first else None
            _run_stage(
                cfg,
                index,
                model,
                inner,
                tokenizer,
                info,
                state,
                resume_here,
                logger,
                result,
                datasets.pop(index),
            )
            state.update(stage=index + 1, stage_step=0)
    finally:
        logger.close()
    if info.world_size > 1:
        torch.distributed.barrier()
    result.final_model = export_model(model, inner, tokenizer, run_dir / "final", info)
    return result


def open_stage_datasets(cfg: TrainConfig, index: int) -> dict[str, Any]:
    """The readers of stage ``index``, resolved through the registry and the run's entries."""
    stage = cfg.stages[index]
    if not stage.datasets:
        raise ValueError(
            f"stage {stage.name}: no datasets; name them in "
            f"stages.{index}.datasets (registry names, `mm15 data list`)"
        )
    opened = open_datasets(
        stage.datasets,
        stage=stage.kind,
        stage_name=stage.name,
        data_root=cfg.data_root,
        registry=registry(cfg.registry),
        missing=cfg.missing_datasets,
    )
    if not opened:
        raise ValueError(
            f"stage {stage.name}: none of its datasets has files under data_root {cfg.data_root!r}"
        )
    return opened


def _run_stage(
    cfg, index, model, inner, tokenizer, info, state, resume, logger, result, datasets
) -> None:
    stage = run_stage(cfg.stages[index], datasets)
    # The chat format this stage trains with becomes the model's: checkpoints record it and
    # the exported config.json carries it (chat, serve and eval prompt with it).
    fmt = stage_format(cfg, index, inner.cfg.format)
    stage = dataclasses.replace(stage, format=fmt)
    inner.cfg = dataclasses.replace(inner.cfg, format=fmt)
    if stage.epochs is not None:
        steps = epoch_steps(stage, datasets, tokenizer=tokenizer, model_cfg=inner.cfg)
        if stage.warmup_steps > steps:
            raise ValueError(
                f"stage {stage.name}: warmup_steps ({stage.warmup_steps}) exceeds "
                f"the {steps} steps of {stage.epochs} epoch(s)"
            )
        stage = dataclasses.replace(stage, steps=steps, epochs=None)
        if info.rank == 0:
            print(
                f"[{stage.name}] {cfg.stages[index].epochs} epoch(s) = {steps} steps of "
                f"{stage.batch_rows} rows",
                flush=True,
            )
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
    autocast = autocast_context(info.device) if cfg.parallel.autocast == "bfloat16" else None
    losses = result.losses.setdefault(stage.name, [])
    failed_pixels = 0
    device_peak = peak_flops(info.device, cfg.parallel.peak_tflops)  # None (CPU): no MFU

    with (
        Progress(
            stage.steps, f"[{stage.name}]", info.rank == 0, initial=start, log_every=cfg.log_every
        ) as progress,
        _Batches(stream, info, use_prefetch(cfg.prefetch, info.device)) as next_batches,
    ):
        for step in range(start, stage.steps):
            lr = lr_at(
                step,
                peak_lr=peak,
                warmup_steps=stage.warmup_steps,
                total_steps=stage.steps,
                min_lr_ratio=stage.min_lr_ratio,
            )
            for group in optimizer.param_groups:
                group["lr"] = lr
            t0 = time.perf_counter()
            batches, bad = next_batches(last=step + 1 == stage.steps)
            failed_pixels += bad
            out = train_step(
                model,
                batches,
                optimizer=optimizer,
                grad_clip=stage.optim.grad_clip,
                world_size=info.world_size,
                autocast=autocast,
            )
            state["step"] += 1
            state["stage_step"] = step + 1
            state["skipped_steps"] += int(out.skipped)
            state["nonfinite_streak"] = state["nonfinite_streak"] + 1 if out.skipped else 0
            result.skipped_steps = state["skipped_steps"]
            losses.append(out.loss)
            seconds = time.perf_counter() - t0  # MFU: this rank's FLOPs over it, data included
            util = utilisation(batch_flops(inner.cfg, batches), seconds, device_peak)
            _log(logger, stage, state, out, lr, seconds, stream, failed_pixels, util)
            progress.update(step + 1, loss=out.loss, lr=lr, tokens=out.tokens)
            line = mfu_line(f"[{stage.name}]", step + 1, util)
            if info.is_main and line and (step + 1) % cfg.log_every == 0:
                tqdm.write(line)
            _check_streak(cfg, stage, state)
            if (step + 1) % cfg.ckpt_every == 0 or step + 1 == stage.steps:
                _save(cfg, model, optimizer, state, stream, index)
    if info.rank == 0:
        run_dir = Path(cfg.run_dir)
        audit = stream.audit() | {"missing": missing}
        (run_dir / f"audit_{stage.name}.json").write_text(json.dumps(audit, indent=2))
        if stage.steps > start:
            plot_stage(run_dir / "metrics.jsonl", stage.name, run_dir / f"loss_{stage.name}.png")


class _Batches:
    """The stage's next step: its rows from the stream and this rank's tensors of them.  With
    ``prefetch`` the following step's rows are peeked (they stay in the resume state) and their
    pixels are decoded in a background thread while this step trains."""

    def __init__(self, stream: StageStream, info: DistInfo, prefetch: bool):
        self.stream, self.info, self.prefetch = stream, info, prefetch
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="mm15-pixels")
        self.ahead: tuple[list, Future] | None = None  # the next rows, their pixels in progress

    def __enter__(self) -> _Batches:
        return self

    def __exit__(self, *exc) -> None:
        self.pool.shutdown(wait=True)

    def _pixels(self, rows: list) -> tuple[list[dict[str, torch.Tensor]], int]:
        stage, info = self.stream.stage, self.info
        return rank_batches(
            rows,
            rank=info.rank,
            world_size=info.world_size,
            micro_rows=stage.micro_rows,
            model_cfg=self.stream.model_cfg,
            device=info.device,
        )

    def __call__(self, *, last: bool) -> tuple[list[dict[str, torch.Tensor]], int]:
        n = self.stream.stage.batch_rows
        rows = self.stream.next_rows(n)
        if self.ahead is not None:
            if not all(a is b for a, b in zip(self.ahead[0], rows, strict=True)):
                raise RuntimeError("prefetched rows are not the stream's next rows")
            out = self.ahead[1].result()
        else:
            out = self._pixels(rows)
        self.ahead = None
        if self.prefetch and not last:
            upcoming = self.stream.peek_rows(n)
            self.ahead = (upcoming, self.pool.submit(self._pixels, upcoming))
        return out


def use_prefetch(setting: str, device: torch.device) -> bool:
    """Whether to decode the next step's pixels in a background thread (``TrainConfig.prefetch``):
    under "auto", when the step does not run on the CPU or leaves one of its cores free."""
    if setting != "auto":
        return setting == "on"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return device.type != "cpu" or torch.get_num_threads() < (cores or 1)


def _log(logger, stage, state, out, lr, seconds, stream, failed_pixels, util) -> None:
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


def _check_streak(cfg: TrainConfig, stage: StageConfig, state: dict[str, Any]) -> None:
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


def _assert_finite_model(model: nn.Module, what: str) -> None:
    """Collective: raise on every rank if any rank's parameters or buffers hold NaN/Inf."""
    bad = nonfinite_tensors([*model.named_parameters(), *model.named_buffers()])
    flag = torch.tensor(float(bool(bad)))
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        flag = flag.to(next(model.parameters()).device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
    if flag.item():
        where = f"{bad[0]} ({len(bad)} tensor(s))" if bad else "another rank's shard"
        raise NonFiniteTrainingError(f"refusing to {what}: the model holds NaN/Inf in {where}")


def _save(cfg, model, optimizer, state, stream, index) -> None:
    # A non-finite model must not replace (and, through keep_last, delete) good checkpoints.
    _assert_finite_model(model, f"save a checkpoint at step {state['step']}")
    # "format": the chat format the model is trained with (what the exported config.json gets).
    trainer_state = {
        **state,
        "stage": index,
        "data": stream.state_dict(),
        "format": to_dict(stream.stage.format),
    }
    save_training_state(
        cfg.run_dir,
        step=state["step"],
        model=model,
        optimizer=optimizer,
        trainer_state=trainer_state,
        config=to_dict(cfg),
        keep_last=cfg.keep_last,
    )


def export_model(
    model: nn.Module, inner: MM15, tokenizer: MM15Tokenizer, out: Path, info: DistInfo
) -> Path | None:
    """Gather full weights and write an mm15 checkpoint directory (rank 0)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    full = get_model_state_dict(model, options=options)
    if info.rank != 0:
        return None
    if bad := nonfinite_tensors(full.items()):
        raise NonFiniteTrainingError(
            f"refusing to export {out}: tensor {bad[0]} holds NaN/Inf ({len(bad)} tensor(s) do)"
        )
    plain = MM15(inner.cfg)
    plain.load_state_dict({k.removeprefix("module."): v for k, v in full.items()})
    return save_checkpoint(plain.eval(), tokenizer, out)
