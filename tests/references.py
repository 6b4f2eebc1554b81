"""The reference libraries of the parity tests: timm, open_clip and the torchvision they import.

scripts/setup.sh installs them into ``.venv/references``, apart from site-packages
(scripts/reference-requirements.txt says why). :func:`import_references` puts that folder on
``sys.path`` and makes PyPI's CUDA torchvision importable beside a CPU torch: its ``_C``
operators cannot load there, and its import registers fake kernels for two of them
(``torchvision::nms``, ``torchvision::qnms``), which fails unless their schemas exist. We declare
those two schemas, with no kernel, so calling them still fails loudly; nothing in the parity tests
calls a torchvision operator.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

REFERENCE_DIR = Path(sys.prefix) / "references"
_SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor qdets, Tensor scores, float iou_threshold) -> Tensor",
)
_declared: list[torch.library.Library] = []  # kept alive: a Library's definitions die with it


def _torchvision_ops_load(tv_dir: Path) -> bool:
    try:
        torch.ops.load_library(str(tv_dir / "_C.so"))
    except (OSError, RuntimeError):
        return False
    return True


def import_references() -> None:
    """Make ``timm``, ``open_clip`` and ``torchvision`` importable (fails if not installed)."""
    if "torchvision" in sys.modules:
        return
    if not (REFERENCE_DIR / "timm").is_dir():
        pytest.fail(
            f"reference libraries not installed in {REFERENCE_DIR}: run `bash scripts/setup.sh`"
        )
    if str(REFERENCE_DIR) not in sys.path:
        sys.path.insert(0, str(REFERENCE_DIR))
    if not _torchvision_ops_load(REFERENCE_DIR / "torchvision"):
        lib = torch.library.Library("torchvision", "DEF")  # schemas only, no kernels
        for schema in _SCHEMAS:
            lib.define(schema)
        _declared.append(lib)
    import torchvision  # noqa: F401
