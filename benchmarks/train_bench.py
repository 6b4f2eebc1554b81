"""Training throughput: tokens/s per device, peak memory, decoder-only and total MFU.

Each step is a real :func:`mm15.train.step.train_step` (forward, backward, clip, AdaFactor as in
the paper's SFT stage) on packed rows built from synthetic samples of the final SFT mixture
(MM1.5 §3–4: text-rich 37.2, refer&ground 22.5, general 11.3, math 5.6, code 2.3, science 1.1,
multi-image 10, text-only 10 %), packed in order, next-fit, as :mod:`mm15.data.packing` does.
Tiles per image come from the repo's own planner (:func:`mm15.data.layout.plan_sample`) under
the final image recipe (dynamic (4, 9) at 672 px, overview, 144 tokens per tile, index
indicators).  Image sizes and text lengths per category are assumptions (``_MIX`` below; the
paper does not publish them).  A preset with K ≠ 144 tokens per tile (tiny: 16) keeps the tile
counts and scales text lengths and the default row length (4096) by K/144, so rows have the
recipe's tiles per row, packing fill and image-token share in every preset.  Pixels and token
ids are random: throughput does not depend on them.

    python benchmarks/train_bench.py --preset tiny --steps 3            # CPU, < 1 min
    python benchmarks/train_bench.py --preset 1b --compile all --attention flex --ac all
    torchrun --nproc-per-node 8 benchmarks/train_bench.py --preset 1b-moe --param-dtype bfloat16

Under torchrun the model is FSDP2-sharded over all ranks (``mm15.train.parallel``) and every
rank trains its own rows; the table reports rank 0's figures per device.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from mm15.config import ImageConfig, ModelConfig
from mm15.data.layout import plan_sample
from mm15.model.mm15 import IGNORE_INDEX, MM15
from mm15.overrides import apply_overrides
from mm15.presets import get_preset
from mm15.train.flops import batch_flops, peak_flops, utilisation
from mm15.train.optim import OptimConfig, build_optimizer
from mm15.train.parallel import (
    BLOCK_TYPES,
    BlockPolicy,
    ParallelConfig,
    autocast_context,
    init_distributed,
    parallelize,
)
from mm15.train.step import train_step

RECIPE_TOKENS_PER_TILE = 144
_PHOTO = [(640, 480), (500, 375), (480, 640), (1024, 768)]
_DOC = [(1700, 2200), (850, 1100), (1920, 1080), (1000, 1400)]
_DIAGRAM = [(800, 600), (400, 300), (600, 800)]
# category: (share %, images per sample (lo, hi), image sizes (w, h), text tokens (lo, hi))
_MIX: dict[str, tuple[float, tuple[int, int], list[tuple[int, int]], tuple[int, int]]] = {
    "text_rich": (37.2, (1, 1), _DOC, (60, 400)),
    "refer_ground": (22.5, (1, 1), _PHOTO, (40, 300)),
    "general": (11.3, (1, 1), _PHOTO, (40, 400)),
    "math": (5.6, (1, 1), _DIAGRAM, (100, 600)),
    "code": (2.3, (1, 1), _DOC, (200, 1000)),
    "science": (1.1, (1, 1), _DIAGRAM, (60, 300)),
    "multi_image": (10.0, (2, 4), _PHOTO, (60, 400)),
    "text_only": (10.0, (0, 0), [], (200, 1500)),
}
INDICATOR_TOKENS = 5  # "(k,i,j)" before every tile (final recipe: index indicators, Table 3)


@dataclass
class Row:
    """One packed row: per sample, the (tiles, text tokens) it contributes."""

    samples: list[tuple[int, int]]


def synthetic_rows(n_rows: int, seq_len: int, tokens_per_tile: int, seed: int) -> list[Row]:
    """Greedy-pack samples of the SFT mixture into ``n_rows`` rows of at most ``seq_len``."""
    rng = random.Random(seed)
    recipe = ImageConfig()  # the final recipe: dynamic (4, 9) at 672, overview after
    names = list(_MIX)
    weights = [_MIX[n][0] for n in names]
    scale = tokens_per_tile / RECIPE_TOKENS_PER_TILE
    rows, current, used = [], [], 0
    while len(rows) < n_rows:
        _, (lo, hi), sizes, (t_lo, t_hi) = _MIX[rng.choices(names, weights)[0]]
        images = [rng.choice(sizes) for _ in range(rng.randint(lo, hi))]
        plans = plan_sample(images, recipe, tokens_per_tile=RECIPE_TOKENS_PER_TILE)
        tiles = sum(p.n_tiles for p in plans)
        text = max(1, round((rng.randint(t_lo, t_hi) + INDICATOR_TOKENS * tiles) * scale))
        length = tiles * tokens_per_tile + text
        if length > seq_len:
            continue  # too long for a row: skipped, as the packer does
        if used + length > seq_len:
            rows.append(Row(current))
            current, used = [], 0
        current.append((tiles, text))
        used += length
    return rows


def make_batch(cfg: ModelConfig, rows: list[Row], seq_len: int, seed: int) -> dict:
    """Tensors of :func:`mm15.train.data.rank_batches`' layout for ``rows`` (on the CPU)."""
    g = torch.Generator().manual_seed(seed)
    k, img = cfg.connector.num_tokens, cfg.image_token_id
    ids = torch.randint(0, img, (len(rows), seq_len), generator=g)
    doc = torch.full((len(rows), seq_len), -1, dtype=torch.long)
    pos = torch.zeros(len(rows), seq_len, dtype=torch.long)
    n_tiles = 0
    for r, row in enumerate(rows):
        start = 0
        for d, (tiles, text) in enumerate(row.samples):
            end = start + tiles * k + text
            ids[r, start : start + tiles * k] = img  # image runs first, then the text
            doc[r, start:end], pos[r, start:end] = d, torch.arange(end - start)
            n_tiles += tiles
            start = end
    labels = ids.masked_fill((ids == img) | (doc < 0), IGNORE_INDEX)
    res = cfg.image.resolution
    batch = dict(input_ids_BT=ids, labels_BT=labels, position_ids_BT=pos, document_ids_BT=doc)
    if n_tiles:
        batch["pixels_NCHW"] = torch.randn(n_tiles, 3, res, res, generator=g)
    return batch


def parse_blocks(value: str) -> list[str]:
    if value in ("none", ""):
        return []
    blocks = list(BLOCK_TYPES) if value == "all" else value.split(",")
    bad = [b for b in blocks if b not in BLOCK_TYPES]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown block types {bad}; choose from {BLOCK_TYPES}")
    return blocks


def parallel_config(args: argparse.Namespace, cuda: bool) -> ParallelConfig:
    policies = {
        b: BlockPolicy(
            checkpoint="full" if b in args.ac else "none",
            compile=args.compile_mode if b in args.compile else "none",
        )
        for b in BLOCK_TYPES
    }
    return ParallelConfig(
        strategy="fsdp2",
        attention=args.attention,
        param_dtype=args.param_dtype,
        forward_prefetch=args.prefetch,
        backward_prefetch=args.prefetch,
        autocast="bfloat16" if cuda else "none",
        peak_tflops=args.peak_tflops,
        **policies,
    )


def peak_memory_gib(device: torch.device) -> tuple[float, str]:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30, "cuda max allocated"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, "peak RSS"  # KiB → GiB


def timed_steps(model, batches: list[dict], *, warmup: int, device, world: int, autocast) -> list:
    """Seconds of every step after ``warmup``; each batch moves to ``device`` before the clock."""
    optimizer = build_optimizer(model, OptimConfig(kind="adafactor", lr=2e-5))
    seconds = []
    for step, cpu_batch in enumerate(batches):
        batch = {k: v.to(device) for k, v in cpu_batch.items()}
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        train_step(
            model, [batch], optimizer=optimizer, grad_clip=1.0, world_size=world, autocast=autocast
        )
        if device.type == "cuda":
            torch.cuda.synchronize()
        if step >= warmup:
            seconds.append(time.perf_counter() - t0)
    return seconds


def run(args: argparse.Namespace) -> dict:
    """Every step trains on fresh rows (tile counts vary as in training; a compiled encoder
    sees that in warm-up); figures are totals over the timed steps."""
    info = init_distributed()
    cfg = apply_overrides(get_preset(args.preset), args.set)
    cfg.image_token_id = cfg.lm.vocab_size - 1
    k = cfg.connector.num_tokens
    seq = args.seq or round(4096 * k / RECIPE_TOKENS_PER_TILE)
    torch.manual_seed(0)
    with torch.device(info.device):
        model = MM15(cfg).train()
    pcfg = parallel_config(args, info.device.type == "cuda")
    model = parallelize(model, pcfg, info, compile_backend=args.compile_backend)
    seeds = [1000 * info.rank + s for s in range(args.warmup + args.steps)]
    batches = [make_batch(cfg, synthetic_rows(args.rows, seq, k, seed=s), seq, s) for s in seeds]
    autocast = autocast_context(info.device, pcfg.autocast_dtype)
    times = timed_steps(
        model,
        batches,
        warmup=args.warmup,
        device=info.device,
        world=info.world_size,
        autocast=autocast,
    )
    seconds, timed = sum(times), batches[args.warmup :]
    flops = batch_flops(cfg, timed)
    util = utilisation(flops, seconds, peak_flops(info.device, args.peak_tflops))
    mem, mem_kind = peak_memory_gib(info.device)
    ids = torch.cat([b["input_ids_BT"] for b in timed])
    docs = torch.cat([b["document_ids_BT"] for b in timed])
    tiles = sum(b["pixels_NCHW"].shape[0] for b in timed if "pixels_NCHW" in b)
    return dict(
        preset=args.preset,
        device=str(info.device),
        rank=info.rank,
        world=info.world_size,
        attention=args.attention,
        compile=",".join(args.compile) or "none",
        ac=",".join(args.ac) or "none",
        rows=args.rows,
        seq=seq,
        steps=len(timed),
        tiles=tiles / len(timed),
        image_token_share=float((ids == cfg.image_token_id).float().mean()),
        padding_share=float((docs < 0).float().mean()),
        step_s=seconds / len(timed),
        tokens_per_s=ids.numel() / seconds,
        peak_mem_gib=mem,
        mem_kind=mem_kind,
        flops_per_step=flops.total / len(timed),
        **util,
    )


def table(r: dict) -> str:
    mfu = "n/a (no peak)" if "mfu_total" not in r else None
    cells = [
        ("preset", r["preset"]),
        ("device", f"{r['device']} ×{r['world']}"),
        ("attention", r["attention"]),
        ("compile", r["compile"]),
        ("AC", r["ac"]),
        ("rows × seq", f"{r['rows']} × {r['seq']}"),
        ("timed steps", r["steps"]),
        ("tiles / step (mean)", f"{r['tiles']:.1f}"),
        ("image tokens / padding", f"{r['image_token_share']:.1%} / {r['padding_share']:.1%}"),
        ("step (mean)", f"{r['step_s']:.3f} s"),
        ("tokens/s/device", f"{r['tokens_per_s']:,.0f}"),
        (f"peak memory ({r['mem_kind']})", f"{r['peak_mem_gib']:.2f} GiB"),
        ("TFLOP/s decoder / total", f"{r['tflops_decoder']:.3g} / {r['tflops_total']:.3g}"),
        ("MFU decoder", mfu or f"{r['mfu_decoder']:.1%}"),
        ("MFU total", mfu or f"{r['mfu_total']:.1%}"),
    ]
    width = max(len(k) for k, _ in cells)
    lines = [f"| {'metric'.ljust(width)} | value |", f"|{'-' * (width + 2)}|-------|"]
    return "\n".join([*lines, *(f"| {k.ljust(width)} | {v} |" for k, v in cells)])


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="tiny", help="model preset (tiny, 1b, 3b, 1b-moe, ...)")
    p.add_argument("--steps", type=int, default=3, help="timed steps (after --warmup)")
    p.add_argument(
        "--warmup",
        type=int,
        default=2,
        help="untimed steps (compilation, and recompilation for a new tile count)",
    )
    p.add_argument("--rows", type=int, default=1, help="packed rows per device per step")
    p.add_argument("--seq", type=int, default=0, help="row length (0: 4096 × K/144)")
    p.add_argument("--attention", choices=["sdpa", "flex"], default="sdpa")
    p.add_argument(
        "--compile",
        type=parse_blocks,
        default=[],
        help="block types to torch.compile: none, all, or e.g. decoder,vision",
    )
    p.add_argument(
        "--compile-mode", default="default", choices=["default", "max-autotune-no-cudagraphs"]
    )
    p.add_argument("--compile-backend", default="inductor", help="inductor, aot_eager, eager")
    p.add_argument(
        "--ac",
        type=parse_blocks,
        default=[],
        help="block types with full activation checkpointing: none, all, decoder,...",
    )
    p.add_argument(
        "--param-dtype",
        choices=["float32", "bfloat16"],
        default="float32",
        help="FSDP2 gathered-parameter dtype (torchrun only)",
    )
    p.add_argument("--prefetch", type=int, default=0, help="FSDP2 explicit prefetch depth")
    p.add_argument(
        "--peak-tflops",
        type=float,
        default=None,
        help="peak TFLOP/s per device for MFU (default: known GPUs; CPU: none)",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="model config override, e.g. lm.moe.num_experts=8",
    )
    p.add_argument("--json", type=Path, help="also write the result here")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result = run(args)
    if result["rank"] == 0:
        print(table(result), flush=True)
        if args.json:
            args.json.write_text(json.dumps(result, indent=2) + "\n")
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
