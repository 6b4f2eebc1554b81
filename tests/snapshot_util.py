"""Snapshot checks: a config change shows up as a diff; MM15_UPDATE_SNAPSHOTS=1 rewrites."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

SNAPSHOTS = Path(__file__).parent / "snapshots"


def check_snapshot(name: str, current: dict[str, Any]) -> None:
    path = SNAPSHOTS / f"{name}.json"
    if os.environ.get("MM15_UPDATE_SNAPSHOTS"):
        path.write_text(json.dumps(current, indent=1, sort_keys=True) + "\n")
    assert path.exists(), f"{path} is missing; run with MM15_UPDATE_SNAPSHOTS=1 and review it"
    stored = json.loads(path.read_text())
    assert sorted(stored) == sorted(current)
    for key in current:
        assert stored[key] == current[key], f"{name}: {key} changed; review, then update"
