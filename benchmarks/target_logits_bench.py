"""Training step time with logits only at target positions (``train_step``) against the named
baseline, the full vocabulary projection at every position (how ``train_step`` worked before),
measured in the same run on the same batches (docs/performance.md records the figures).

    nice -n 19 .venv/bin/python benchmarks/target_logits_bench.py                  # tiny, SFT
    nice -n 19 .venv/bin/python benchmarks/target_logits_bench.py --label-share 1  # pre-training

Rows come from :mod:`benchmarks.train_bench` (the SFT mixture's tiles and text, tiny preset:
16 tokens per tile); ``--label-share`` keeps that fraction of each sample's text tokens as
targets, at its end, as SFT's assistant turns are (the demo's SFT supervises about 4 % of a
row: 180 of 4,096 tokens per step on average).  Both variants take the same AdamW steps from the same
weights; the steps alternate, so load on a shared machine hits both alike.  Prints the median
step time of each and their ratio.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_bench import make_batch, synthetic_rows

from mm15.model.mm15 import IGNORE_INDEX, MM15, next_token_loss_sum
from mm15.overrides import apply_overrides
from mm15.presets import get_preset
from mm15.train.optim import OptimConfig, build_optimizer
from mm15.train.step import train_step


def keep_tail_labels(batch: dict, share: float) -> dict:
    """Keep targets only on the last ``share`` of each document's text tokens."""
    labels, doc = batch["labels_BT"].clone(), batch["document_ids_BT"]
    for r in range(labels.shape[0]):
        for d in doc[r].unique().tolist():
            text = ((doc[r] == d) & (labels[r] != IGNORE_INDEX)).nonzero().flatten()
            drop = len(text) - max(1, round(share * len(text)))
            labels[r, text[:drop]] = IGNORE_INDEX
    return {**batch, "labels_BT": labels}


def full_logits_step(model: MM15, batch: dict, optimizer: torch.optim.Optimizer) -> float:
    """The baseline: logits at all B×T positions, then the same summed-and-normalised loss."""
    out = model(
        batch["input_ids_BT"],
        pixels_NCHW=batch.get("pixels_NCHW"),
        position_ids_BT=batch["position_ids_BT"],
        document_ids_BT=batch["document_ids_BT"],
    )
    total, n = next_token_loss_sum(out.logits, batch["labels_BT"], batch["document_ids_BT"])
    (total / n.clamp(min=1)).backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return (total / n).item()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="tiny")
    p.add_argument("--set", action="append", default=[], help="model override key=value")
    p.add_argument("--rows", type=int, default=8)
    p.add_argument("--seq", type=int, default=512)
    p.add_argument("--label-share", type=float, default=0.1)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    args = p.parse_args(argv)
    cfg = apply_overrides(get_preset(args.preset), args.set)
    cfg.image_token_id = cfg.lm.vocab_size - 1
    torch.manual_seed(0)
    targets = MM15(cfg).train()
    baseline = copy.deepcopy(targets)
    opt_t = build_optimizer(targets, OptimConfig(kind="adamw", lr=1e-4))
    opt_b = build_optimizer(baseline, OptimConfig(kind="adamw", lr=1e-4))
    k = cfg.connector.num_tokens
    times: dict[str, list[float]] = {"targets": [], "baseline": []}
    share = []
    for step in range(args.warmup + args.steps):
        rows = synthetic_rows(args.rows, args.seq, k, seed=step)
        batch = keep_tail_labels(make_batch(cfg, rows, args.seq, seed=step), args.label_share)
        share.append(float((batch["labels_BT"] != IGNORE_INDEX).float().mean()))
        for name in ("targets", "baseline") if step % 2 else ("baseline", "targets"):
            t0 = time.perf_counter()
            if name == "targets":
                loss = train_step(
                    targets, [batch], optimizer=opt_t, grad_clip=1.0, world_size=1
                ).loss
            else:
                ref = full_logits_step(baseline, batch, opt_b)
            if step >= args.warmup:
                times[name].append(time.perf_counter() - t0)
        if step == 0 and abs(loss - ref) > 1e-4:
            raise SystemExit(f"the two variants disagree on the first loss: {loss} vs {ref}")
    med = {n: statistics.median(t) for n, t in times.items()}
    print(
        f"preset {args.preset}, {args.rows} rows × {args.seq}, vocab {cfg.lm.vocab_size}, "
        f"targets {100 * statistics.mean(share):.1f} % of positions, {args.steps} steps each"
    )
    print(f"baseline (logits at every position): {1000 * med['baseline']:.1f} ms/step")
    print(f"train_step (logits at targets only):  {1000 * med['targets']:.1f} ms/step")
    print(f"speed-up: {med['baseline'] / med['targets']:.2f}×")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
