"""The RNG states a training-state checkpoint saves per rank (``rank_<r>.pt``), so a resumed
run draws the same dropout masks and samples as the uninterrupted one (docs/training.md)."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


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
