"""Per-stage training time and the bind stage's final loss of a demo run (docs/demo-log.md).

    python dev/demo_stage_times.py OUT        # OUT of `mm15 demo --out OUT`

Reads ``OUT/run/metrics.jsonl``: per stage, the number of steps, the sum of ``step_seconds``
and its mean; for every stage, the mean loss of its last 50 steps (the "bind loss" rows).
"""

import json
import statistics
import sys
from pathlib import Path

text = (Path(sys.argv[1]) / "run" / "metrics.jsonl").read_text()
rows = [json.loads(line) for line in text.splitlines() if line]
stages: dict[str, list[dict]] = {}
for r in rows:
    stages.setdefault(r["stage"], []).append(r)
for name, rs in stages.items():
    seconds = sum(r["step_seconds"] for r in rs)
    last = statistics.mean(r["loss"] for r in rs[-50:])
    print(
        f"{name}: {len(rs)} steps, {seconds:.1f} s ({seconds / len(rs):.3f} s a step), "
        f"loss over the last 50 steps {last:.3f}"
    )
