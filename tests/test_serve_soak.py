"""benchmarks/serve_soak.py runs end to end through its own argument parsing (a 3 s soak)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_soak_quick_path_passes_and_prints_the_summary():
    cmd = [sys.executable, "benchmarks/serve_soak.py", "--seconds", "3", "--concurrency", "2",
           "--in-process"]  # fmt: skip
    run = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    out = run.stdout
    assert run.returncode == 0, out + run.stderr[-3000:]
    for start in ("soak: 3 s at concurrency 2", "requests: ", "status: 2xx ", "good latency: p50 ",
                  "health: worst ", "server RSS: ", "RESULT: PASS (0 5xx"):  # fmt: skip
        assert any(line.startswith(start) for line in out.splitlines()), (start, out)
    status = next(line for line in out.splitlines() if line.startswith("status: "))
    assert ", 5xx 0," in status and not status.startswith("status: 2xx 0,"), status
