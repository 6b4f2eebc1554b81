"""The demo's data preparation outside the training loop: the encoder warm-up's scene batches
(``draw_batch``) and the synthetic corpus written by one process against the named baseline,
``DemoConfig.threads`` processes, in the same run (docs/demo.md records the figures).

    .venv/bin/python benchmarks/demo_prep_bench.py [--batches 100] [--corpus-share 0.25]

Prints seconds per warm-up batch (64 scenes, as the demo draws them) with a SHA-256 of every
tile and target, and the corpus's seconds with each number of workers with a SHA-256 of its
files (the two must be equal).  The hashes let a run in another checkout show that a faster
version draws the same bits (the demo's numbers follow from them).  Python puts a script's own
folder, not the working directory, first on its path, so point it at the checkout::

    git worktree add /tmp/base 4a2b6b6 && cp benchmarks/demo_prep_bench.py /tmp/base/benchmarks/
    cd /tmp/base && PYTHONPATH=/tmp/base /path/to/.venv/bin/python benchmarks/demo_prep_bench.py
"""

from __future__ import annotations

import argparse
import hashlib
import random
import tempfile
import time
from pathlib import Path

import torch

from mm15.demo.config import DemoConfig
from mm15.demo.data.corpus import generate_corpus
from mm15.demo.encoder import EncoderPretrainConfig, draw_batch
from mm15.demo.recipe import corpus_sizes


def _tree_hash(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()[:16]


def scenes(batches: int) -> None:
    cfg = EncoderPretrainConfig()
    h, t0 = hashlib.sha256(), time.perf_counter()
    for step in range(1, batches + 1):
        b = draw_batch(random.Random(f"0/encoder/{step}"), cfg.batch, 4, cfg.text_share)
        for x in (b.tiles_NCHW, b.colour_NK, b.shape_NK, b.box_NK4, b.word_NK):
            h.update(str(x.dtype).encode())
            h.update(x.contiguous().numpy().tobytes())
    seconds = time.perf_counter() - t0
    print(
        f"warm-up scenes: {batches} batches of {cfg.batch} in {seconds:.2f} s "
        f"({1000 * seconds / batches:.1f} ms a batch); sha256 {h.hexdigest()[:16]}"
    )


def corpus(share: float, threads: int) -> None:
    sizes = {k: max(1, round(n * share)) for k, n in corpus_sizes(DemoConfig()).items()}
    seconds, hashes = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for workers in (1, threads):
            out = Path(tmp) / f"w{workers}"
            t0 = time.perf_counter()
            generate_corpus(out, seed=0, sizes=sizes, workers=workers)
            seconds[workers], hashes[workers] = time.perf_counter() - t0, _tree_hash(out)
    print(
        f"corpus ({share:g} of the demo's, {sum(sizes.values())} samples): "
        f"1 process (baseline) {seconds[1]:.1f} s, {threads} processes {seconds[threads]:.1f} s, "
        f"ratio {seconds[threads] / seconds[1]:.2f}; sha256 {hashes[1]} / {hashes[threads]} "
        f"({'equal' if hashes[1] == hashes[threads] else 'DIFFERENT'})"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batches", type=int, default=100)
    ap.add_argument("--corpus-share", type=float, default=0.25)
    args = ap.parse_args()
    threads = DemoConfig().threads
    torch.set_num_threads(threads)
    scenes(args.batches)
    corpus(args.corpus_share, threads)


if __name__ == "__main__":
    main()
