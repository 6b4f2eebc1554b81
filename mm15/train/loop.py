"""The training entry point: one code path for one process or many under ``torchrun``.

``train(cfg)`` builds (or loads) the model, wraps it for the process group, and runs the stages
of ``cfg.stages`` in order (MM1.5 §3–4; each one by :func:`mm15.train.stage.train_stage`, with
a fresh optimiser at its own peak LR and a warmup + cosine schedule).  A checkpoint is written
every ``ckpt_every`` steps and at the end of every stage, and a run that finds a checkpoint in
its ``run_dir`` resumes from it exactly (model, optimiser, RNG, data position).  The final model
is exported as an mm15 checkpoint directory under ``run_dir/final``, its config.json carrying
the chat format it was trained with (the last stage's, :func:`~mm15.train.config.stage_format`;
training checkpoints record each stage's in trainer_state.json).

A run that goes numerically wrong stops instead of exporting garbage
(:mod:`mm15.train.nonfinite`): ``max_nonfinite_steps`` consecutive skipped (non-finite) steps end
it with :class:`~mm15.train.nonfinite.NonFiniteTrainingError`, a model holding NaN/Inf is
neither checkpointed (earlier checkpoints survive) nor exported.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mm15.data.check import check_tokenizer, preflight
from mm15.data.registry import registry
from mm15.model.mm15 import MM15
from mm15.services.checkpoint import load_checkpoint, save_checkpoint
from mm15.tokenizer import MM15Tokenizer, byte_tokenizer
from mm15.train.config import TrainConfig
from mm15.train.data import DataError, open_datasets
from mm15.train.integrity import verify_checkpoint
from mm15.train.monitor import MetricsLogger
from mm15.train.nonfinite import NonFiniteTrainingError, nonfinite_tensors
from mm15.train.parallel import DistInfo, init_distributed, parallelize
from mm15.train.resume import latest_checkpoint
from mm15.train.stage import train_stage


@dataclass
class RunResult:
    run_dir: Path
    losses: dict[str, list[float]] = field(default_factory=dict)  # stage → per-step losses
    skipped_steps: int = 0
    final_model: Path | None = None


def build_model(cfg: TrainConfig) -> tuple[MM15, MM15Tokenizer]:
    """The model to train: loaded from ``init_from`` or freshly initialised (seeded)."""
    if cfg.init_from:
        model, tokenizer = load_checkpoint(cfg.init_from, grid_coords=True)
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
    state = _start_state(resume)
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
            train_stage(
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


def _start_state(resume: Path | None) -> dict[str, Any]:
    """The trainer state a run starts from: zeros, or the checkpoint ``resume``'s (verified
    before any of it is read; :func:`~mm15.train.resume.load_training_state` then skips it)."""
    state: dict[str, Any] = {
        "stage": 0,
        "stage_step": 0,
        "step": 0,
        "skipped_steps": 0,
        "nonfinite_streak": 0,
    }
    if resume is not None:
        verify_checkpoint(resume)
        with (resume / "trainer_state.json").open() as f:
            state.update({k: v for k, v in json.load(f).items() if k in state})
    return state


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
