"""Which device a ``--device`` flag means, checked before any weights are read.

``torch.device("gpu")`` fails with a list of twenty internal device types, and ``cuda`` on a
CPU-only build of torch fails deep inside the first ``.to()``; both become one ValueError here
that says what to pass instead.
"""

from __future__ import annotations

import torch

SUPPORTED = ("cpu", "cuda", "mps")


def resolve_device(name: str | torch.device) -> torch.device:
    """``auto`` → cuda when a GPU is visible, else cpu; other names: :func:`check_device`."""
    if str(name) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return check_device(name)


def check_device(name: str | torch.device) -> torch.device:
    """``name`` as a :class:`torch.device` that this machine and torch build can use."""
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(
            f"device {str(name)!r} is not a device name; use cpu, cuda, cuda:N or mps"
        ) from None
    if device.type not in SUPPORTED:
        raise ValueError(f"device {str(name)!r} is not supported; use cpu, cuda, cuda:N or mps")
    if device.type == "cuda":
        _check_cuda(device, str(name))
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"{name} was asked for but MPS is not available here; use --device cpu")
    return device


def _check_cuda(device: torch.device, name: str) -> None:
    if torch.version.cuda is None and torch.version.hip is None:
        raise ValueError(
            f"{name} was asked for but this torch build has no CUDA "
            f"(torch {torch.__version__}); use --device cpu"
        )
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        raise ValueError(
            f"{name} was asked for but no CUDA device is visible "
            f"(torch {torch.__version__}); use --device cpu"
        )
    if device.index is not None and device.index >= count:
        raise ValueError(
            f"{name} was asked for but only {count} CUDA device(s) are visible "
            f"(cuda:0 … cuda:{count - 1})"
        )
