"""The serving benchmarks run end to end through their own argument parsing (a 3 s soak; the
parse benchmark on a small body)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_soak_quick_path_passes_and_prints_the_summary():
    cmd = [
        sys.executable,
        "benchmarks/serve_soak.py",
        "--seconds",
        "3",
        "--concurrency",
        "2",
        "--in-process",
    ]
    run = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    out = run.stdout
    assert run.returncode == 0, out + run.stderr[-3000:]
    for start in (
        "soak: 3 s at concurrency 2",
        "requests: ",
        "status: 2xx ",
        "good latency: p50 ",
        "health: worst ",
        "server RSS: ",
        "RESULT: PASS (0 5xx",
    ):
        assert any(line.startswith(start) for line in out.splitlines()), (start, out)
    status = next(line for line in out.splitlines() if line.startswith("status: "))
    assert ", 5xx 0," in status and not status.startswith("status: 2xx 0,"), status


def test_parse_bench_runs_and_refuses_the_largest_body():
    cmd = [sys.executable, "benchmarks/serve_parse_bench.py", "--messages", "2000", "--repeat", "1"]
    run = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr[-3000:]
    lines = run.stdout.splitlines()
    assert lines[0].startswith("2,000 empty messages"), lines
    assert any("build the request model" in line and "us per message" in line for line in lines)
    assert lines[-1].startswith("largest body under max_body_bytes") and "refused" in lines[-1]
