"""How long ``mm15 data check`` takes on a realistic config: 15 sources of a few thousand samples.

    .venv/bin/python benchmarks/data_check_bench.py                    # 15 × 3,000 samples
    .venv/bin/python benchmarks/data_check_bench.py --samples-per-source 200 --keep /tmp/bench

Writes 15 datasets in their real on-disk layouts (tests/registry_fixtures.py's builders, scaled
up): Cauldron and Mantis parquet, LLaVA JSON with an image folder, DocOwl JSONL with ``<bbox>``,
Ferret GRIT JSON with boxes, text-only tables, a FineWeb-style text corpus, COCO captions, a
caption webdataset shard, Synthdog parquet. Then runs ``mm15 data check`` on them through the
CLI (a ``finetune`` preset whose datasets are 15 registry entries of the config's own) and
prints the wall time of the whole verb, split into opening the readers (index building) and
formatting the sampled samples, against the issue's target of one minute on 2 cores.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

import registry_fixtures as fx  # noqa: E402
from registry_fixtures import BUILDERS  # noqa: E402

from mm15.data.registry import builtin_entries  # noqa: E402

TARGET_S = 60.0
PICKS = [  # 15 registry entries of different layouts
    "cauldron/chartqa",
    "cauldron/docvqa",
    "cauldron/ai2d",
    "cauldron/raven",
    "mantis/nlvr2",
    "mantis/coinstruct",
    "llava_v1_5_mix665k",
    "docdownstream",
    "grit_flickr30k",
    "openorca",
    "dolly",
    "fineweb-edu",
    "coco_captions",
    "cc12m",
    "synthdog_en",
]


def write_data(root: Path, per_source: int) -> list:
    fx.GOOD = per_source  # the builders write GOOD usable samples each
    entries = {e.name: e for e in builtin_entries()}
    chosen = []
    for name in PICKS:
        e = dataclasses.replace(entries[name], stage="sft")
        BUILDERS[e.kind](e, root / e.dir)
        chosen.append(e)
    return chosen


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--samples-per-source", type=int, default=3000)
    p.add_argument("--check-samples", type=int, default=16, help="data check --samples")
    p.add_argument("--keep", type=Path, help="write the data here (kept) instead of a temp dir")
    args = p.parse_args()

    from mm15.cli import main as mm15_main
    from mm15.config_json import to_dict
    from mm15.data import check as check_mod

    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or Path(tmp)
        t0 = time.perf_counter()
        entries = write_data(root, args.samples_per_source)
        written = time.perf_counter() - t0
        spec = root / "registry.json"
        spec.write_text(json.dumps([to_dict(e) for e in entries]))
        names = root / "datasets.json"
        names.write_text(json.dumps([{"name": e.name} for e in entries]))
        timings = {"open": 0.0, "format": 0.0}

        def timed(fn, key):
            def wrapper(*a, **k):
                t = time.perf_counter()
                try:
                    return fn(*a, **k)
                finally:
                    timings[key] += time.perf_counter() - t

            return wrapper

        check_mod.open_datasets = timed(check_mod.open_datasets, "open")
        check_mod._read = timed(check_mod._read, "format")
        argv = [
            "data",
            "check",
            "--preset",
            "finetune",
            "--set",
            f"data_root={root}",
            "--set",
            f"registry=@{spec}",
            "--set",
            f"stages.0.datasets=@{names}",
            "--set",
            "allow_random_init=true",
            "--samples",
            str(args.check_samples),
            "--json",
        ]
        t0 = time.perf_counter()
        code = mm15_main(argv)
        total = time.perf_counter() - t0
    n = len(entries) * args.samples_per_source
    print(
        f"wrote {len(entries)} sources × {args.samples_per_source:,} samples ({n:,}) in "
        f"{written:.1f} s",
        file=sys.stderr,
    )
    print(
        f"mm15 data check: {total:.2f} s (exit {code}); opening readers {timings['open']:.2f} s, "
        f"formatting {len(entries)} × {args.check_samples} samples {timings['format']:.2f} s",
        file=sys.stderr,
    )
    print(f"ratio to the {TARGET_S:.0f} s target: {total / TARGET_S:.3f}", file=sys.stderr)
    if code != 0:
        raise SystemExit(code)


if __name__ == "__main__":
    main()
