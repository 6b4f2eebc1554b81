"""Training step time with the next step's pixels prefetched in a background thread
(``TrainConfig.prefetch="on"``) against the named baseline, decoding them in the step
(``"off"``), measured in the same run on the demo's SFT stage (docs/performance.md
records the figures).

    .venv/bin/python benchmarks/prefetch_bench.py [--steps 80] [--repeats 2] [--threads 1]

The real trainer runs the demo's SFT stage (its 8 tasks, PNG files on disk, dynamic splitting,
encoder and connector frozen as in the demo) from the same seeded weights, once per variant per
repeat after an uncounted warm-up, the variants alternating so load on a shared machine hits both alike.  Both variants
train the same batches (``tests/test_train_loop.py`` checks the losses are identical).  Prints
the median step time of each (``step_seconds`` in ``metrics.jsonl``: data + step, the first
5 steps dropped) and their ratio.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from mm15.demo.config import CorpusSizes, DemoConfig, SftStage
from mm15.demo.data.corpus import generate_corpus
from mm15.demo.recipe import _texts, corpus_sizes, demo_train_config
from mm15.tokenizer import train_bpe_tokenizer
from mm15.train.loop import train


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=80)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--per-task", type=int, default=100, help="training samples per SFT task")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = DemoConfig(
        corpus=CorpusSizes(train_per_task=args.per_task, test_per_task=0),
        sft=SftStage(steps=args.steps),
    )
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        corpus = generate_corpus(root / "corpus", seed=0, sizes=corpus_sizes(cfg))
        tok = train_bpe_tokenizer(
            _texts(corpus), vocab_size=cfg.tokenizer.vocab_size, max_digits=cfg.tokenizer.max_digits
        )
        tok.save(root / "tok")
        times: dict[bool, list[float]] = {False: [], True: []}
        walls: dict[bool, list[float]] = {False: [], True: []}
        losses: dict[bool, list[float]] = {}
        for r in range(-1, args.repeats):  # repeat -1 warms up (imports, allocator); not counted
            for prefetch in (False, True):
                run = root / f"run-{r}-{prefetch}"
                tc = demo_train_config(cfg, corpus, root / "tok", run, len(tok))
                tc.stages = [s for s in tc.stages if s.name == "sft"]
                tc.prefetch = "on" if prefetch else "off"
                tc.log_every, tc.ckpt_every = 10**9, 10**9
                torch.manual_seed(0)
                if r < 0:
                    tc.stages[0].steps, tc.stages[0].warmup_steps = 6, 2
                t0 = time.perf_counter()
                result = train(tc)
                if r < 0:
                    continue
                walls[prefetch].append(time.perf_counter() - t0)
                losses[prefetch] = result.losses["sft"]
                rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
                times[prefetch] += [x["step_seconds"] for x in rows[5:]]
                print(f"repeat {r} prefetch={prefetch}: {walls[prefetch][-1]:.1f} s", flush=True)
    base, new = statistics.median(times[False]), statistics.median(times[True])
    same = losses[False] == losses[True]
    print(
        f"\n{args.steps} SFT steps of {cfg.batch_rows}×{cfg.seq_len} tokens, "
        f"{args.threads} threads, {args.repeats} repeats; identical losses: {same}"
    )
    print("| variant | median step (s) | median run (s) |\n|---|---|---|")
    for name, k in (("decode in the step (baseline)", False), ("prefetch", True)):
        print(f"| {name} | {statistics.median(times[k]):.3f} | {statistics.median(walls[k]):.1f} |")
    print(
        f"speed-up: {base / new:.2f}× per step, "
        f"{statistics.median(walls[False]) / statistics.median(walls[True]):.2f}× per run"
    )


if __name__ == "__main__":
    main()
