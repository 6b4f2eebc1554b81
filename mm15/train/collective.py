"""Collectives the training-state checkpoint needs (:mod:`mm15.train.state_save`,
:mod:`mm15.train.resume`); each is a no-op in a single process without a process group."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from typing import Any

import torch.distributed as dist


def dist_on() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank_world() -> tuple[int, int]:
    return (dist.get_rank(), dist.get_world_size()) if dist_on() else (0, 1)


def from_rank0(obj: Any) -> Any:
    """``obj`` as rank 0 has it, on every rank."""
    if not dist_on():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def raise_if_any_failed(error: str | None, what: str) -> None:
    """Collective: every rank raises if any rank reported an error (none is left waiting)."""
    errors = [error]
    if dist_on():
        errors = [None] * dist.get_world_size()
        dist.all_gather_object(errors, error)
    failed = {r: e for r, e in enumerate(errors) if e is not None}
    if failed:
        raise RuntimeError(f"{what} failed on rank(s) {sorted(failed)}: {failed}")


@contextlib.contextmanager
def single_process_is_intended() -> Iterator[None]:
    """DCP warns on every single-process save/load that it *assumes* one process; we mean it."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield
