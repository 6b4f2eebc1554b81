"""Imports flow one way (STYLE.md): model/ → torch + config; data/ never imports model/."""

import ast
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "mm15"
THIRD_PARTY_MODEL = {"torch", "safetensors"}


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("path", sorted((PKG / "model").rglob("*.py")), ids=lambda p: p.name)
def test_model_imports_only_torch_and_config(path):
    for name in _imports(path):
        top = name.split(".")[0]
        if top == "mm15":
            assert name == "mm15.config" or name.startswith("mm15.model"), f"{path.name}: {name}"
        else:
            assert top in THIRD_PARTY_MODEL or top in sys.stdlib_module_names, (
                f"{path.name}: {name}"
            )


@pytest.mark.parametrize("path", sorted((PKG / "data").rglob("*.py")), ids=lambda p: p.name)
def test_data_never_imports_model(path):
    bad = [n for n in _imports(path) if n.startswith("mm15.model")]
    assert not bad, f"{path.name} imports {bad}"


def test_checker_sees_a_violation(tmp_path):
    f = tmp_path / "x.py"
    f.write_text("from mm15.model.lm import Decoder\nimport numpy\n")
    assert {"mm15.model.lm", "numpy"} <= _imports(f)
