"""Resuming from a training-state checkpoint: find the latest, verify it, load it (model,
optimiser, RNG, and the trainer's step and data position).

What a checkpoint holds and how it is written atomically is :mod:`mm15.train.state_save`.
``latest`` is the source of truth (a run resumed from an older checkpoint continues from there);
only when it is missing or broken is the highest complete step used.  A directory without
``COMPLETE`` is never loaded.

Integrity (:mod:`mm15.train.integrity`): the manifest is written before ``COMPLETE`` and checked
before anything is read back; ``.metadata`` and DCP's non-tensor items are unpickled only as
plain data, so a tampered checkpoint is refused instead of running code.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from mm15.train.collective import dist_on, rank_world, single_process_is_intended
from mm15.train.integrity import SafeLoadPlanner, SafeReader, load_metadata, verify_checkpoint
from mm15.train.rng import restore_rng
from mm15.train.state_save import (
    CHECKPOINTS,
    COMPLETE,
    DCP_DIR,
    LATEST,
    TRAINER_STATE,
    complete_checkpoints,
    is_complete,
    state_dicts,
)

log = logging.getLogger(__name__)


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The checkpoint to resume from: the one ``latest`` names if it is complete, else the
    highest complete step, else None.  Half-written directories are never returned."""
    ckpt_dir = Path(run_dir) / CHECKPOINTS
    marker = ckpt_dir / LATEST
    if marker.is_file():
        named = ckpt_dir / marker.read_text().strip()
        if named.name and is_complete(named):
            return named
        log.warning("%s names %s, which is not a complete checkpoint; scanning", marker, named)
    found = complete_checkpoints(ckpt_dir)
    return found[-1] if found else None


def load_training_state(
    path: str | Path,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    rng: bool = True,
    verify: bool = True,
) -> dict[str, Any]:
    """Restore model and optimiser state (and, with ``rng``, this rank's RNG states) from the
    checkpoint directory ``path``; collective.  Returns the trainer state (``"step"`` included,
    plus ``"rank_state"`` when one was saved for this rank).

    The checkpoint's checksums are verified first (``verify=False``: the caller just did, with
    :func:`~mm15.train.integrity.verify_checkpoint`); a failure raises
    :class:`~mm15.train.integrity.CheckpointIntegrityError` naming the file.

    Build ``model``/``optimizer`` exactly as for the saved run (same wrapping/sharding layout is
    not required: DCP reshards).  Optimiser state exists only for parameters that had it when
    saved, as in the uninterrupted run (AdamW's per-parameter step count depends on it).
    """
    path = Path(path)
    if not is_complete(path):
        raise FileNotFoundError(f"{path} is not a complete training checkpoint (no {COMPLETE})")
    if verify:
        verify_checkpoint(path)
    rank, _ = rank_world()
    _load_model_and_optimizer(path, model, optimizer)
    trainer_state = json.loads((path / TRAINER_STATE).read_text())
    rank_file = path / f"rank_{rank:05d}.pt"
    if rank_file.is_file():
        payload = torch.load(rank_file, map_location="cpu", weights_only=True)
        if rng:
            restore_rng(payload["rng"])
        if payload.get("rank_state") is not None:
            trainer_state["rank_state"] = payload["rank_state"]
    else:
        log.warning(
            "%s has no %s (saved with another world size?): RNG not restored", path, rank_file
        )
    return trainer_state


def _load_model_and_optimizer(
    path: Path, model: nn.Module, optimizer: torch.optim.Optimizer | None
) -> None:
    """Collective: read ``path/dcp`` into ``model`` and ``optimizer`` (resharded by DCP)."""
    keys = set(load_metadata(path / DCP_DIR / ".metadata").state_dict_metadata)
    if optimizer is not None and not any(k.startswith("optim.") for k in keys):
        optimizer.state.clear()  # saved before its first step
        optimizer = None
    model_sd, optim_sd = state_dicts(model, optimizer)
    if optimizer is not None:
        # get_state_dict initialised state for every parameter; drop what the checkpoint lacks.
        saved = _optim_fqns(keys)
        optim_sd["state"] = {fqn: s for fqn, s in optim_sd["state"].items() if fqn in saved}
    state = {"model": model_sd, "optim": optim_sd}
    with single_process_is_intended():
        dcp.load(
            state,
            storage_reader=SafeReader(str(path / DCP_DIR)),
            planner=SafeLoadPlanner(),
            no_dist=not dist_on(),
        )
    set_model_state_dict(model, state["model"], options=StateDictOptions(strict=True))
    if optimizer is not None:
        set_optimizer_state_dict(
            model, optimizer, state["optim"], options=StateDictOptions(strict=False)
        )


def _optim_fqns(keys: set[str]) -> set[str]:
    """Every dotted prefix below ``optim.state.`` among DCP keys (parameter FQNs among them)."""
    prefixes: set[str] = set()
    for key in keys:
        if key.startswith("optim.state."):
            parts = key[len("optim.state.") :].split(".")
            prefixes.update(".".join(parts[:i]) for i in range(1, len(parts)))
    return prefixes
