"""Training-state checkpoints: save, find the latest, resume (model, optimiser, RNG, data, step).

These are *training* checkpoints, not the exported model directories of :mod:`mm15.services.checkpoint`.
A run directory holds::

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
of a crashed save is removed at the next save.  ``latest`` is the source of truth (a run resumed
from an older checkpoint continues from there); only when it is missing or broken is the highest
complete step used.

Integrity (:mod:`mm15.train.integrity`): the manifest is written before ``COMPLETE`` and checked
before anything is read back; ``.metadata`` and DCP's non-tensor items are unpickled only as
plain data, so a tampered checkpoint is refused instead of running code.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import random
import re
import shutil
import time
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from mm15.config import to_dict
from mm15.train.integrity import (
    SafeLoadPlanner,
    SafeReader,
    hash_checkpoint_files,
    load_metadata,
    verify_checkpoint,
    write_manifest,
)

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
LATEST = "latest"
COMPLETE = "COMPLETE"
TRAINER_STATE = "trainer_state.json"
CONFIG = "config.json"
DCP_DIR = "dcp"
_STEP_RE = re.compile(r"^step_(\d+)$")


# ---- distributed helpers (no-ops in a single process) -----------------------------------------


def _dist_on() -> bool:
    return dist.is_available() and dist.is_initialized()


def _rank_world() -> tuple[int, int]:
    return (dist.get_rank(), dist.get_world_size()) if _dist_on() else (0, 1)


def _from_rank0(obj: Any) -> Any:
    """``obj`` as rank 0 has it, on every rank."""
    if not _dist_on():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _raise_if_any_failed(error: str | None, what: str) -> None:
    """Collective: every rank raises if any rank reported an error (none is left waiting)."""
    errors = [error]
    if _dist_on():
        errors = [None] * dist.get_world_size()
        dist.all_gather_object(errors, error)
    failed = {r: e for r, e in enumerate(errors) if e is not None}
    if failed:
        raise RuntimeError(f"{what} failed on rank(s) {sorted(failed)}: {failed}")


@contextlib.contextmanager
def _single_process_is_intended() -> Iterator[None]:
    """DCP warns on every single-process save/load that it *assumes* one process; we mean it."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


# ---- RNG ---------------------------------------------------------------------------------------


def capture_rng() -> dict[str, Any]:
    """This process's RNG states (python, numpy's legacy global, torch CPU, torch CUDA of the
    current device) as tensors/lists/numbers that ``torch.load(weights_only=True)`` reads back.

    Generators the data pipeline owns (``torch.Generator``, ``np.random.Generator``) are part of
    its own state, saved through ``trainer_state``/``rank_state``."""
    version, internal, gauss = random.getstate()
    algo, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": [version, list(internal), gauss],
        "numpy": {
            "algo": algo,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch_cpu": torch.get_rng_state(),
    }
    # Only this rank's current device, and only once CUDA is in use: touching every visible GPU
    # would create a CUDA context on each of them from every rank.
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["torch_cuda"] = torch.cuda.get_rng_state()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng`."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    npst = state["numpy"]
    keys = npst["keys"].numpy().astype(np.uint32)
    np.random.set_state(
        (npst["algo"], keys, npst["pos"], npst["has_gauss"], npst["cached_gaussian"])
    )
    torch.set_rng_state(state["torch_cpu"])
    if state.get("torch_cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["torch_cuda"])  # the current device, as captured


# ---- finding checkpoints ----------------------------------------------------------------------


def _step_of(path: Path) -> int | None:
    m = _STEP_RE.match(path.name)
    return int(m.group(1)) if m else None


def _is_complete(path: Path) -> bool:
    return _step_of(path) is not None and (path / COMPLETE).is_file()


def _complete_checkpoints(ckpt_dir: Path) -> list[Path]:
    """Complete checkpoints in ``ckpt_dir``, oldest step first."""
    if not ckpt_dir.is_dir():
        return []
    found = [p for p in ckpt_dir.iterdir() if p.is_dir() and _is_complete(p)]
    return sorted(found, key=lambda p: _step_of(p) or 0)


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The checkpoint to resume from: the one ``latest`` names if it is complete, else the
    highest complete step, else None.  Half-written directories are never returned."""
    ckpt_dir = Path(run_dir) / CHECKPOINTS
    marker = ckpt_dir / LATEST
    if marker.is_file():
        named = ckpt_dir / marker.read_text().strip()
        if named.name and _is_complete(named):
            return named
        log.warning("%s names %s, which is not a complete checkpoint; scanning", marker, named)
    found = _complete_checkpoints(ckpt_dir)
    return found[-1] if found else None


# ---- saving -----------------------------------------------------------------------------------


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


def _check_json(obj: Any, name: str) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        obj = to_dict(obj)
    try:
        json.dumps(obj)
    except (TypeError, ValueError) as e:
        raise TypeError(f"{name} must be JSON-serialisable (plain dicts/lists/numbers): {e}") from e
    return obj


def _clean_debris(ckpt_dir: Path) -> None:
    """Remove what crashed saves/deletions left: ``*.tmp-*`` and ``*.old-*`` entries."""
    for p in ckpt_dir.iterdir():
        if ".tmp-" in p.name or ".old-" in p.name:
            log.info("removing leftover %s", p)
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)


def _write_rank_file(tmp: Path, rank: int, rank_state: dict | None) -> str | None:
    try:
        payload = {"rng": capture_rng(), "rank_state": rank_state}
        torch.save(payload, tmp / f"rank_{rank:05d}.pt")
        return None
    except Exception as e:  # reported to every rank by _raise_if_any_failed
        return f"{type(e).__name__}: {e}"


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
    if keep_last < 1:
        raise ValueError(f"keep_last must be >= 1, got {keep_last}")
    if "rank_state" in trainer_state:
        raise ValueError("trainer_state['rank_state'] is reserved; pass rank_state=... instead")
    if "step" in trainer_state and trainer_state["step"] != step:
        raise ValueError(f"trainer_state['step']={trainer_state['step']} but step={step}")
    trainer_state = _check_json({**trainer_state, "step": step}, "trainer_state")
    config = _check_json(config, "config")
    rank, world = _rank_world()
    ckpt_dir = Path(run_dir) / CHECKPOINTS
    final = ckpt_dir / f"step_{step:06d}"
    tmp = Path(_from_rank0(str(final.with_name(f"{final.name}.tmp-{uuid.uuid4().hex[:8]}"))))
    error = None
    if rank == 0:
        try:
            ckpt_dir.mkdir(parents=True, exist_ok=True)
            _clean_debris(ckpt_dir)
            tmp.mkdir()
        except OSError as e:
            error = f"{type(e).__name__}: {e}"
    _raise_if_any_failed(error, f"creating {tmp}")  # also the barrier before anyone writes
    _raise_if_any_failed(_write_rank_file(tmp, rank, rank_state), f"saving RNG into {tmp}")

    # An optimiser that has not stepped has no state, and is saved so: get_state_dict would
    # otherwise initialise it (a zero-lr step) and change the run being saved.
    model_sd, optim_sd = _get_state(model, optimizer if optimizer and optimizer.state else None)
    with _single_process_is_intended():
        dcp.save(
            {"model": model_sd, "optim": optim_sd},
            checkpoint_id=str(tmp / DCP_DIR),
            no_dist=not _dist_on(),
        )
    # dcp.save returns on every rank only after every shard and .metadata are written (rank 0
    # gathers the ranks' results, writes .metadata, then broadcasts).
    hashes = hash_checkpoint_files(tmp)
    if rank == 0:
        try:
            _finalize(tmp, final, trainer_state, config, hashes, step=step, world=world)
        except Exception as e:
            error = f"{type(e).__name__}: {e}"
    _raise_if_any_failed(error, f"finalising checkpoint {final}")
    if rank == 0:
        try:  # the new checkpoint is complete: a failed deletion is only worth a warning
            _prune(ckpt_dir, keep_last=keep_last, newest=final)
        except OSError as e:
            log.warning("could not delete old checkpoints in %s: %s", ckpt_dir, e)
    return final


def _get_state(model: nn.Module, optimizer: torch.optim.Optimizer | None) -> tuple[dict, dict]:
    if optimizer is None:
        return get_model_state_dict(model), {}
    return get_state_dict(model, optimizer)


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


def _prune(ckpt_dir: Path, *, keep_last: int, newest: Path) -> None:
    """Keep the ``keep_last`` highest complete steps up to ``newest``.  Steps above it are left
    from a run that was resumed from an earlier checkpoint; they are kept (never loaded while
    ``latest`` names ``newest``) and reported."""
    newest_step = _step_of(newest) or 0
    found = _complete_checkpoints(ckpt_dir)
    later = [p.name for p in found if (_step_of(p) or 0) > newest_step]
    if later:
        log.warning("keeping checkpoints later than %s from an abandoned run: %s", newest, later)
    older = [p for p in found if (_step_of(p) or 0) <= newest_step]
    for p in older[:-keep_last]:
        # Rename first: a crash mid-delete leaves *.old-* debris, never a broken COMPLETE dir.
        doomed = p.with_name(f"{p.name}.old-{uuid.uuid4().hex[:8]}")
        p.rename(doomed)
        shutil.rmtree(doomed)


# ---- loading ----------------------------------------------------------------------------------


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
    if not _is_complete(path):
        raise FileNotFoundError(f"{path} is not a complete training checkpoint (no {COMPLETE})")
    if verify:
        verify_checkpoint(path)
    rank, _ = _rank_world()
    keys = set(load_metadata(path / DCP_DIR / ".metadata").state_dict_metadata)
    if optimizer is not None and not any(k.startswith("optim.") for k in keys):
        optimizer.state.clear()  # saved before its first step
        optimizer = None
    model_sd, optim_sd = _get_state(model, optimizer)
    if optimizer is not None:
        # get_state_dict initialised state for every parameter; drop what the checkpoint lacks.
        saved = _optim_fqns(keys)
        optim_sd["state"] = {fqn: s for fqn, s in optim_sd["state"].items() if fqn in saved}
    state = {"model": model_sd, "optim": optim_sd}
    with _single_process_is_intended():
        dcp.load(
            state,
            storage_reader=SafeReader(str(path / DCP_DIR)),
            planner=SafeLoadPlanner(),
            no_dist=not _dist_on(),
        )
    set_model_state_dict(model, state["model"], options=StateDictOptions(strict=True))
    if optimizer is not None:
        set_optimizer_state_dict(
            model, optimizer, state["optim"], options=StateDictOptions(strict=False)
        )
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


def _optim_fqns(keys: set[str]) -> set[str]:
    """Every dotted prefix below ``optim.state.`` among DCP keys (parameter FQNs among them)."""
    prefixes: set[str] = set()
    for key in keys:
        if key.startswith("optim.state."):
            parts = key[len("optim.state.") :].split(".")
            prefixes.update(".".join(parts[:i]) for i in range(1, len(parts)))
    return prefixes
