"""Training-state checkpoints: what one holds and how it is written (atomically, on every rank).

These are *training* checkpoints, not the exported model directories of
:mod:`mm15.services.checkpoint`.  A run directory holds::

    run_dir/checkpoints/
        latest                      text: the name of the newest complete checkpoint
        step_000123/
            COMPLETE                completion marker (JSON: step, world_size, saved_at)
            MANIFEST.json           SHA-256 of every other file, checked before a resume reads any
            trainer_state.json      {"step": 123, ...what the trainer passed: stage index, step in
                                    stage, scheduler and data-pipeline state, counters}
            config.json             the resolved training config
            dcp/                    model + optimiser state, torch.distributed.checkpoint format
            rank_00000.pt           per-rank RNG states (+ optional per-rank state), plain tensors

Model and optimiser state go through ``torch.distributed.checkpoint`` (DCP) with the
``get_state_dict``/``set_state_dict`` helpers, so one code path serves a plain module, DDP and
FSDP2-sharded models (each rank writes its own shards; resharding on load is DCP's job).  DCP
also works in a single process without a process group (``no_dist=True``): verified by
``tests/test_train_resume.py``.  With several ranks, ``run_dir`` must be on a file system
every rank sees.

Atomicity: everything is written to ``step_000123.tmp-<nonce>``; after every rank has finished,
rank 0 writes ``COMPLETE``, renames the directory into place and replaces ``latest`` (temp file +
``os.replace``).  A directory without ``COMPLETE`` is never loaded; ``*.tmp-*``/``*.old-*`` debris
of a crashed save is removed at the next save.  Finding and loading a checkpoint is
:mod:`mm15.train.resume`; the manifest is :mod:`mm15.train.integrity`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_state_dict

from mm15.config_json import to_dict
from mm15.train.collective import (
    dist_on,
    from_rank0,
    raise_if_any_failed,
    rank_world,
    single_process_is_intended,
)
from mm15.train.integrity import hash_checkpoint_files, write_manifest
from mm15.train.rng import capture_rng

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
LATEST = "latest"
COMPLETE = "COMPLETE"
TRAINER_STATE = "trainer_state.json"
CONFIG = "config.json"
DCP_DIR = "dcp"
_STEP_RE = re.compile(r"^step_(\d+)$")


# ---- what a checkpoint holds ------------------------------------------------------------------


def step_of(path: Path) -> int | None:
    m = _STEP_RE.match(path.name)
    return int(m.group(1)) if m else None


def is_complete(path: Path) -> bool:
    return step_of(path) is not None and (path / COMPLETE).is_file()


def complete_checkpoints(ckpt_dir: Path) -> list[Path]:
    """Complete checkpoints in ``ckpt_dir``, oldest step first."""
    if not ckpt_dir.is_dir():
        return []
    found = [p for p in ckpt_dir.iterdir() if p.is_dir() and is_complete(p)]
    return sorted(found, key=lambda p: step_of(p) or 0)


def state_dicts(model: nn.Module, optimizer: torch.optim.Optimizer | None) -> tuple[dict, dict]:
    """The model's and optimiser's DCP state dicts (an empty one without an optimiser)."""
    if optimizer is None:
        return get_model_state_dict(model), {}
    return get_state_dict(model, optimizer)


# ---- saving -----------------------------------------------------------------------------------


def save_training_state(
    run_dir: str | Path,
    *,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    trainer_state: dict[str, Any],
    config: dict[str, Any] | Any,
    keep_last: int,
    rank_state: dict[str, Any] | None = None,
) -> Path:
    """Save a resumable checkpoint of step ``step``; collective (call on every rank).

    ``trainer_state`` (JSON) is rank 0's view of the loop: stage index, step within stage,
    scheduler and data-pipeline state, counters; ``"step"`` is added.  ``rank_state`` (optional,
    JSON-like) is saved per rank, for state that differs between ranks (e.g. a loader position).
    ``config`` is a dict or config dataclass, written as ``config.json``.  After a successful
    save only the ``keep_last`` newest complete checkpoints are kept.  Returns the final path.
    """
    trainer_state, config = _checked_inputs(trainer_state, config, step=step, keep_last=keep_last)
    rank, world = rank_world()
    ckpt_dir = Path(run_dir) / CHECKPOINTS
    final = ckpt_dir / f"step_{step:06d}"
    tmp = _make_tmp(ckpt_dir, final, rank)  # also the barrier before anyone writes
    raise_if_any_failed(_write_rank_file(tmp, rank, rank_state), f"saving RNG into {tmp}")

    # An optimiser that has not stepped has no state, and is saved so: get_state_dict would
    # otherwise initialise it (a zero-lr step) and change the run being saved.
    model_sd, optim_sd = state_dicts(model, optimizer if optimizer and optimizer.state else None)
    with single_process_is_intended():
        dcp.save(
            {"model": model_sd, "optim": optim_sd},
            checkpoint_id=str(tmp / DCP_DIR),
            no_dist=not dist_on(),
        )
    # dcp.save returns on every rank only after every shard and .metadata are written (rank 0
    # gathers the ranks' results, writes .metadata, then broadcasts).
    hashes = hash_checkpoint_files(tmp)
    error = None
    if rank == 0:
        try:
            _finalize(tmp, final, trainer_state, config, hashes, step=step, world=world)
        except Exception as e:
            error = f"{type(e).__name__}: {e}"
    raise_if_any_failed(error, f"finalising checkpoint {final}")
    if rank == 0:
        try:  # the new checkpoint is complete: a failed deletion is only worth a warning
            _prune(ckpt_dir, keep_last=keep_last, newest=final)
        except OSError as e:
            log.warning("could not delete old checkpoints in %s: %s", ckpt_dir, e)
    return final


def _checked_inputs(
    trainer_state: dict[str, Any], config: Any, *, step: int, keep_last: int
) -> tuple[dict[str, Any], Any]:
    """``trainer_state`` with ``"step"`` added and ``config`` as plain JSON, or a ValueError /
    TypeError naming what is wrong."""
    if keep_last < 1:
        raise ValueError(f"keep_last must be >= 1, got {keep_last}")
    if "rank_state" in trainer_state:
        raise ValueError("trainer_state['rank_state'] is reserved; pass rank_state=... instead")
    if "step" in trainer_state and trainer_state["step"] != step:
        raise ValueError(f"trainer_state['step']={trainer_state['step']} but step={step}")
    trainer_state = _check_json({**trainer_state, "step": step}, "trainer_state")
    return trainer_state, _check_json(config, "config")


def _check_json(obj: Any, name: str) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        obj = to_dict(obj)
    try:
        json.dumps(obj)
    except (TypeError, ValueError) as e:
        raise TypeError(f"{name} must be JSON-serialisable (plain dicts/lists/numbers): {e}") from e
    return obj


def _make_tmp(ckpt_dir: Path, final: Path, rank: int) -> Path:
    """Collective: rank 0 creates the temp directory every rank writes into (its name broadcast),
    after removing debris of crashed saves."""
    tmp = Path(from_rank0(str(final.with_name(f"{final.name}.tmp-{uuid.uuid4().hex[:8]}"))))
    error = None
    if rank == 0:
        try:
            ckpt_dir.mkdir(parents=True, exist_ok=True)
            _clean_debris(ckpt_dir)
            tmp.mkdir()
        except OSError as e:
            error = f"{type(e).__name__}: {e}"
    raise_if_any_failed(error, f"creating {tmp}")
    return tmp


def _write_rank_file(tmp: Path, rank: int, rank_state: dict | None) -> str | None:
    try:
        payload = {"rng": capture_rng(), "rank_state": rank_state}
        torch.save(payload, tmp / f"rank_{rank:05d}.pt")
        return None
    except Exception as e:  # reported to every rank by raise_if_any_failed
        return f"{type(e).__name__}: {e}"


def _write_json_durable(path: Path, obj: Any) -> None:
    with open(path, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _finalize(
    tmp: Path,
    final: Path,
    trainer_state: dict,
    config: dict,
    hashes: dict[str, str],
    *,
    step: int,
    world: int,
) -> None:
    """Rank 0, after all ranks wrote: metadata, manifest, marker, rename into place, update
    ``latest``."""
    _write_json_durable(tmp / TRAINER_STATE, trainer_state)
    _write_json_durable(tmp / CONFIG, config)
    write_manifest(tmp, hashes)
    marker = {"step": step, "world_size": world, "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    _write_json_durable(tmp / COMPLETE, marker)
    _fsync_dir(tmp)
    if final.exists():  # a step saved again (e.g. after a crash before ``latest`` moved)
        final.rename(final.with_name(f"{final.name}.old-{uuid.uuid4().hex[:8]}"))
    tmp.rename(final)
    latest_tmp = final.parent / f"{LATEST}.tmp-{uuid.uuid4().hex[:8]}"
    latest_tmp.write_text(final.name + "\n")
    os.replace(latest_tmp, final.parent / LATEST)
    _fsync_dir(final.parent)
    _clean_debris(final.parent)


def _clean_debris(ckpt_dir: Path) -> None:
    """Remove what crashed saves/deletions left: ``*.tmp-*`` and ``*.old-*`` entries."""
    for p in ckpt_dir.iterdir():
        if ".tmp-" in p.name or ".old-" in p.name:
            log.info("removing leftover %s", p)
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)


def _prune(ckpt_dir: Path, *, keep_last: int, newest: Path) -> None:
    """Keep the ``keep_last`` highest complete steps up to ``newest``.  Steps above it are left
    from a run that was resumed from an earlier checkpoint; they are kept (never loaded while
    ``latest`` names ``newest``) and reported."""
    newest_step = step_of(newest) or 0
    found = complete_checkpoints(ckpt_dir)
    later = [p.name for p in found if (step_of(p) or 0) > newest_step]
    if later:
        log.warning("keeping checkpoints later than %s from an abandoned run: %s", newest, later)
    older = [p for p in found if (step_of(p) or 0) <= newest_step]
    for p in older[:-keep_last]:
        # Rename first: a crash mid-delete leaves *.old-* debris, never a broken COMPLETE dir.
        doomed = p.with_name(f"{p.name}.old-{uuid.uuid4().hex[:8]}")
        p.rename(doomed)
        shutil.rmtree(doomed)
