"""The README's Layout section matches the tree (issue 21): every package and module of mm15/ is
named in its package's part of the drawing, and nothing is named there that does not exist."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "mm15"


def _layout() -> list[str]:
    """The drawing of mm15/ (up to the repo's other top-level folders)."""
    text = (ROOT / "README.md").read_text()
    block = text.split("## Layout", 1)[1].split("```", 2)[1]
    return block.split("\nbenchmarks/", 1)[0].splitlines()


def _section(lines: list[str], parts: tuple[str, ...]) -> str:
    """The lines of package ``mm15/<parts>``: from its header to the next name at its depth or
    above (continuation lines are indented past every name)."""
    start, depth = 0, 0
    for part in parts:
        want = f"{part}/"
        for i in range(start, len(lines)):
            line = lines[i]
            indent = len(line) - len(line.lstrip())
            if line.strip().startswith(want) and indent == 2 * depth:
                start, depth = i + 1, depth + 1
                break
        else:
            raise AssertionError(f"README layout: no entry for {'/'.join(parts)}/")
    out = [lines[start - 1]]  # the header's own description
    for line in lines[start:]:
        indent = len(line) - len(line.lstrip())
        if line.strip() and indent < 2 * depth:
            break
        out.append(line)
    return "\n".join(out)


def test_every_module_is_named_in_its_package():
    lines = _layout()
    missing = []
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG)
        if path.name == "__init__.py" and len(rel.parts) == 1:
            continue
        parts = ("mm15", *rel.parts[:-1])
        try:
            section = _section(lines, parts)
        except AssertionError:  # a small sub-package described inside its parent's entry
            section = _section(lines, parts[:-1])
        name = rel.parts[-2] + "/" if path.name == "__init__.py" else path.name
        if path.name != "__init__.py" and not re.search(rf"(?<![\w/]){re.escape(name)}", section):
            missing.append(str(rel))
    assert not missing, f"README's Layout does not name: {missing}"


def test_every_name_in_the_layout_exists():
    names = set(re.findall(r"(?<![\w/.])([a-z_0-9]+\.(?:py|toml))\b", "\n".join(_layout())))
    present = {p.name for p in PKG.rglob("*") if p.is_file()}
    assert not names - present, f"README's Layout names files that are gone: {names - present}"
