"""Data-pipeline benchmark: tiles/s per worker core at the final recipe's image settings, and the
cores one GPU needs (docs/performance-inference.md records the figures).

    nice -n 19 .venv/bin/python benchmarks/data_bench.py --quick          # smoke test, ~20 s
    nice -n 19 .venv/bin/python benchmarks/data_bench.py --workers 1,2    # the recorded run
    python benchmarks/data_bench.py --workers 1,2,4,8,16                  # a 16-core GPU host

Images (synthetic, made in memory): document-like — text pages rendered as PNG (letter at
200 dpi) and as a 300-dpi JPEG scan — and photo-like — gradient + blob + pixel-noise JPEGs at
12 MP and 1 MP.  Settings: ``ImageConfig()`` (dynamic splitting n_min=4, n_max=9, r=672, overview
after).  Every pipeline starts from the encoded file's bytes and ends with float32 tiles:

* ``exact``: ``tile_image(open_image(bytes))``, the default path (PIL bicubic);
* ``fast``: ``load_tiles(bytes)`` (JPEG DCT-scaled decode, torch uint8 bicubic, one normalise);
* ``hf``: transformers' LLaVA-NeXT image processor (pinned 5.23.0, built locally: no download)
  with MM1.5's grids as pinpoints (every rows×cols with 4 ≤ rows·cols ≤ 9, times 672), 672-px
  crops and base image, on ``PIL.Image.open(bytes).convert("RGB")``.

Every worker process runs one torch thread (as DataLoader workers do).  Table 1 times each image
alone in one process (best of ``--repeats``); table 2 runs the whole set in 1..N processes at
once.  Cores needed = tiles/s one GPU consumes ÷ tiles/s per core; the default consumption is
estimated from training FLOPs per tile (printed with its assumptions; ``--gpu-tiles-per-s``
overrides it with a measured figure).
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import multiprocessing as mp
import os
import time
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageDraw, ImageFont

WORDS = [
    "the",
    "of",
    "and",
    "model",
    "image",
    "tokens",
    "table",
    "figure",
    "results",
    "splitting",
    "resolution",
    "encoder",
]


def text_page(w: int, h: int, seed: int) -> Image.Image:
    """A white page of black 12-word lines with a ruled table: a document-like image."""
    rng = np.random.default_rng(seed)
    im = Image.new("RGB", (w, h), "white")
    draw = ImageDraw.Draw(im)
    size = max(8, w // 60)
    font = ImageFont.load_default(size=size)
    y = h // 20
    while y < h * 0.7:
        draw.text((w // 20, y), " ".join(rng.choice(WORDS, 12)), fill=(15, 15, 15), font=font)
        y += int(size * 1.5)
    for k in range(6):  # a ruled table below the text
        yk = int(h * 0.72) + k * int(size * 2)
        draw.line((w // 20, yk, w - w // 20, yk), fill=(0, 0, 0), width=2)
        draw.text(
            (w // 20 + 4, yk + 4), f"{rng.integers(1000)}  {rng.integers(1000)}", fill=0, font=font
        )
    return im


def photo(w: int, h: int, seed: int) -> Image.Image:
    """Gradients + smooth colour blobs + pixel noise: a photo-like image (hard for JPEG)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.stack([xx / w * 255, yy / h * 255, (xx + yy) / (w + h) * 255], -1)
    low = rng.normal(128, 40, (h // 64 + 2, w // 64 + 2, 3)).clip(0, 255).astype(np.uint8)
    low = np.asarray(Image.fromarray(low).resize((w, h), Image.Resampling.BICUBIC), np.float32)
    x = 0.6 * base + 0.4 * low + rng.normal(0, 10, (h, w, 3)).astype(np.float32)
    return Image.fromarray(x.clip(0, 255).astype(np.uint8))


def encode(im: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buf.getvalue()


def make_images(quick: bool) -> dict[str, bytes]:
    s = 4 if quick else 1  # --quick: a quarter of each side
    return {
        "doc page 1700x2200 PNG": encode(text_page(1700 // s, 2200 // s, 0), "PNG"),
        "doc scan 2550x3300 JPEG": encode(text_page(2550 // s, 3300 // s, 1), "JPEG"),
        "photo 4032x3024 JPEG": encode(photo(4032 // s, 3024 // s, 2), "JPEG"),
        "photo 1024x768 JPEG": encode(photo(1024 // s, 768 // s, 3), "JPEG"),
    }


# ---------------------------------------------------------------------------------------------
# Pipelines: bytes -> number of tiles produced (the tiles themselves are built and dropped)


def hf_processor():
    """(LLaVA-NeXT image processor configured for MM1.5's grids at 672, its class name)."""
    from transformers.models.llava_next import image_processing_pil_llava_next as pil_mod

    from mm15.data.splitting import candidate_grids

    kw = dict(
        size={"shortest_edge": 672},
        crop_size={"height": 672, "width": 672},
        image_grid_pinpoints=[[672 * rows, 672 * cols] for rows, cols in candidate_grids(4, 9)],
    )
    if importlib.util.find_spec("torchvision") is not None:  # the default (torchvision) class
        from transformers import LlavaNextImageProcessor

        proc = LlavaNextImageProcessor(**kw)
    else:  # without torchvision transformers falls back to this, the same algorithm in PIL
        proc = pil_mod.LlavaNextImageProcessorPil(**kw)
    return proc, type(proc).__name__


PIPELINES = ("exact", "fast", "hf")


def pipelines() -> dict[str, Callable[[bytes], int]]:
    from mm15.config import ImageConfig
    from mm15.data.image_io import open_image
    from mm15.data.splitting import load_tiles, tile_image

    cfg = ImageConfig()
    proc, _ = hf_processor()

    def hf(data: bytes) -> int:
        out = proc(Image.open(io.BytesIO(data)).convert("RGB"), return_tensors=None)
        return int(out["pixel_values"][0].shape[0])

    return {
        "exact": lambda data: tile_image(open_image(data, cfg=cfg), cfg).tiles.shape[0],
        "fast": lambda data: load_tiles(data, cfg).tiles.shape[0],
        "hf": hf,
    }


def _init_worker(thp: bool) -> None:
    if thp:
        os.environ["THP_MEM_ALLOC_ENABLE"] = "1"  # read by torch's CPU allocator at first use
    import torch

    torch.set_num_threads(1)


def time_each(job: tuple[dict[str, bytes], list[str], int]) -> dict[tuple[str, str], tuple]:
    """Best-of-``repeats`` seconds and tiles for every (image, pipeline), in this process; the
    pipelines take turns, so load from other processes hits them alike."""
    images, names, repeats = job
    runs = pipelines()
    out = {}
    for img, data in images.items():
        tiles = {name: runs[name](data) for name in names}  # warm-up
        best = dict.fromkeys(names, float("inf"))
        for _ in range(repeats):
            for name in names:
                t0 = time.perf_counter()
                runs[name](data)
                best[name] = min(best[name], time.perf_counter() - t0)
        out.update({(img, name): (best[name], tiles[name]) for name in names})
    return out


def run_set(job: tuple[list[bytes], str, int, float]) -> tuple[int, float]:
    """(tiles, seconds) for ``rounds`` passes over ``images``, started at wall time ``start``."""
    images, name, rounds, start = job
    run = pipelines()[name]
    run(images[0])  # warm-up (imports, first allocations)
    time.sleep(max(0.0, start - time.time()))  # all workers begin together
    t0, tiles = time.perf_counter(), 0
    for _ in range(rounds):
        for data in images:
            tiles += run(data)
    return tiles, time.perf_counter() - t0


# ---------------------------------------------------------------------------------------------
# GPU consumption estimate


def gpu_tiles_per_s(preset: str, peak_tflops: float, mfu: float, text_per_tile: int) -> tuple:
    """Training tiles/s of one GPU: peak·MFU ÷ 6·(vision params·encoder tokens per tile +
    decoder params·(image tokens + text tokens) per tile).  Attention FLOPs are left out, so
    this errs high (more tiles/s needed, more cores): the safe side for provisioning."""
    from mm15.model.params import count_params
    from mm15.presets import get_preset

    cfg = get_preset(preset)
    counts = count_params(cfg)
    grid = cfg.image.resolution // cfg.vision.patch_size
    enc_tokens = grid * grid + 1  # patches + CLS at r = 672
    dec_tokens = cfg.connector.num_tokens + text_per_tile
    flops = 6 * (
        (counts.vision + counts.connector) * enc_tokens + counts.lm_active_per_token * dec_tokens
    )
    return peak_tflops * 1e12 * mfu / flops, flops, counts, enc_tokens, dec_tokens


def table1(images: dict[str, bytes], args: argparse.Namespace, ctx) -> None:
    with ctx.Pool(1, initializer=_init_worker, initargs=(args.thp,)) as pool:
        each = pool.map(time_each, [(images, list(PIPELINES), args.repeats)])[0]
    print(f"\nTable 1. One image at a time, one core (best of {args.repeats} runs)")
    print(
        "| image | tiles (ours / hf) | exact ms | fast ms | hf ms | tiles/s/core exact | fast | hf | fast ÷ hf | exact ÷ hf |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for img in images:
        (te, n), (tf, _), (th, nh) = (each[(img, k)] for k in PIPELINES)
        rates = [n / te, n / tf, nh / th]
        print(
            f"| {img} | {n} / {nh} | {te * 1e3:.0f} | {tf * 1e3:.0f} | {th * 1e3:.0f} | "
            f"{rates[0]:.1f} | {rates[1]:.1f} | {rates[2]:.1f} | {rates[1] / rates[2]:.2f} | "
            f"{rates[0] / rates[2]:.2f} |"
        )


def table2(images: dict[str, bytes], workers: list[int], args: argparse.Namespace, ctx) -> dict:
    """{(pipeline, workers): total tiles/s}, best of ``--trials``."""
    print(
        f"\nTable 2. The {len(images)}-image set × {args.rounds} rounds in N worker processes at once"
    )
    print("| pipeline | workers | tiles/s total | tiles/s per worker |")
    print("|---|---|---|---|")
    best: dict[tuple[str, int], float] = {}
    for _ in range(args.trials):  # pipelines and worker counts take turns; best trial kept
        for n in workers:
            for name in PIPELINES:
                start = time.time() + 2.0 + 0.5 * n
                jobs = [(list(images.values()), name, args.rounds, start)] * n
                with ctx.Pool(n, initializer=_init_worker, initargs=(args.thp,)) as pool:
                    res = pool.map(run_set, jobs)
                rate = sum(t for t, _ in res) / max(s for _, s in res)
                best[(name, n)] = max(rate, best.get((name, n), 0.0))
    for name in PIPELINES:
        for n in workers:
            print(f"| {name} | {n} | {best[(name, n)]:.1f} | {best[(name, n)] / n:.1f} |")
    return best


def gpu_need(args: argparse.Namespace) -> tuple[float, str]:
    if args.gpu_tiles_per_s:
        return args.gpu_tiles_per_s, "--gpu-tiles-per-s (measured)"
    need, flops, counts, enc, dec = gpu_tiles_per_s(
        args.preset, args.gpu_peak_tflops, args.mfu, args.text_tokens_per_tile
    )
    how = (
        f"estimate: preset {args.preset} (vision+connector {(counts.vision + counts.connector) / 1e9:.2f} B "
        f"params × {enc} encoder tokens, decoder {counts.lm_active_per_token / 1e9:.2f} B × {dec} "
        f"tokens) = {flops / 1e12:.1f} TFLOP per tile at 6·N·tokens; "
        f"{args.gpu_peak_tflops:.0f} TFLOP/s × MFU {args.mfu}"
    )
    return need, how


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workers", default="1,2", help="worker-process counts for table 2")
    p.add_argument("--repeats", type=int, default=3, help="timings per image in table 1 (best)")
    p.add_argument("--rounds", type=int, default=2, help="passes over the set per worker, table 2")
    p.add_argument("--trials", type=int, default=2, help="table 2 runs per setting (best)")
    p.add_argument("--quick", action="store_true", help="images at 1/4 side (a smoke test)")
    p.add_argument("--thp", action="store_true", help="THP_MEM_ALLOC_ENABLE=1 in the workers")
    p.add_argument("--gpu-tiles-per-s", type=float, help="measured training tiles/s of one GPU")
    p.add_argument("--preset", default="3b", help="model for the default GPU estimate")
    p.add_argument("--gpu-peak-tflops", type=float, default=989.0, help="H100 SXM dense bf16")
    p.add_argument("--mfu", type=float, default=0.4)
    p.add_argument("--text-tokens-per-tile", type=int, default=30)
    args = p.parse_args()
    workers = [int(w) for w in args.workers.split(",")]
    images = make_images(args.quick)
    ctx = mp.get_context("spawn")
    print(
        f"{os.cpu_count()} CPUs (load average {os.getloadavg()[0]:.1f} at start); 1 torch "
        f"thread per worker; THP alloc {'on' if args.thp else 'off'}; ImageConfig() = dynamic "
        f"(4, 9), r = 672, overview after; hf = transformers {hf_processor()[1]} (5.23.0)"
        f"{'; QUICK (1/4-side images)' if args.quick else ''}"
    )
    table1(images, args, ctx)
    best = table2(images, workers, args, ctx)
    need, how = gpu_need(args)
    n_max = max(workers)
    print(f"\nOne GPU consumes {need:.1f} tiles/s ({how}).")
    print(
        f"| pipeline | tiles/s per core, 1 worker | cores to feed one GPU | tiles/s per core, "
        f"{n_max} workers | cores to feed one GPU |"
    )
    print("|---|---|---|---|---|")
    for name in PIPELINES:
        one, many = best[(name, 1)] if 1 in workers else float("nan"), best[(name, n_max)] / n_max
        print(f"| {name} | {one:.1f} | {need / one:.1f} | {many:.1f} | {need / many:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
