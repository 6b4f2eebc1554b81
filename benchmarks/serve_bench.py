"""Serving benchmark: requests/s and latency percentiles of ``mm15 serve`` at several
concurrencies (docs/serving.md records the figures).

    .venv/bin/python benchmarks/serve_bench.py                       # random tiny model
    .venv/bin/python benchmarks/serve_bench.py --model out/demo/model --concurrency 1,4,16

The server runs as a subprocess (``python -m mm15.cli.serve``) so the load generator does not
share its interpreter; ``--in-process`` runs it in a thread instead and also prints how many
requests each generate call batched.  Every client is a thread with one keep-alive connection
that sends the same non-streaming request (one image as a data URL, greedy, ``max_tokens``)
back to back; latency is from sending the request to having read the whole response.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parents[1]


def tiny_checkpoint(out: Path) -> Path:
    """A random ``tiny`` preset model with the byte tokenizer (what the tests serve)."""
    import torch

    from mm15.model.mm15 import MM15
    from mm15.presets import tiny
    from mm15.services.checkpoint import save_checkpoint
    from mm15.tokenizer import byte_tokenizer

    tok = byte_tokenizer()
    cfg = tiny(vocab_size=len(tok))
    cfg.image_token_id = tok.image_token_id
    torch.manual_seed(0)
    return save_checkpoint(MM15(cfg).eval(), tok, out / "tiny")


def request_body(model: str, size: tuple[int, int], max_tokens: int) -> bytes:
    image = Image.new("RGB", size, (235, 235, 235))
    ImageDraw.Draw(image).rectangle(
        (size[0] // 4, size[1] // 4, size[0] // 2, size[1] // 2), fill=(220, 30, 30)
    )
    buf = io.BytesIO()
    image.save(buf, "PNG")
    url = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    content = [
        {"type": "image_url", "image_url": {"url": url}},
        {"type": "text", "text": "Where is the red square?"},
    ]
    return json.dumps(
        {
            "model": model,
            "messages": [{"role": "user", "content": content}],
            "max_tokens": max_tokens,
            "temperature": 0,
        }
    ).encode()


def start_subprocess(model_dir: Path, port: int, args: argparse.Namespace) -> subprocess.Popen:
    cmd = [
        sys.executable,
        "-m",
        "mm15.cli.serve",
        "--model",
        str(model_dir),
        "--port",
        str(port),
        "--served-model-name",
        "bench",
        "--max-batch",
        str(args.max_batch),
        "--max-queue",
        str(args.max_queue),
        "--batch-wait-ms",
        str(args.batch_wait_ms),
        "--no-web-ui",
    ]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited: {proc.stderr.read().decode()[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1):
                return proc
        except OSError:
            time.sleep(0.2)  # a benchmark may poll; the server is loading the model
    proc.kill()
    raise SystemExit("server did not come up within 120 s")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_level(port: int, body: bytes, concurrency: int, total: int) -> dict:
    """``total`` requests from ``concurrency`` clients; latencies and completion tokens."""
    latencies: list[float] = []
    tokens: list[int] = []
    errors: list[str] = []
    lock, counter = threading.Lock(), iter(range(total))

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
        while True:
            with lock:
                if next(counter, None) is None:
                    break
            t0 = time.perf_counter()
            conn.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
            resp = conn.getresponse()
            data = resp.read()
            dt = time.perf_counter() - t0
            with lock:
                if resp.status == 200:
                    latencies.append(dt)
                    tokens.append(json.loads(data)["usage"]["completion_tokens"])
                else:
                    errors.append(f"{resp.status}: {data[:200]!r}")
        conn.close()

    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    q = (
        statistics.quantiles(latencies, n=100, method="inclusive")
        if len(latencies) > 1
        else latencies * 99
    )
    return {
        "concurrency": concurrency,
        "requests": len(latencies),
        "errors": len(errors),
        "wall_s": round(wall, 2),
        "req_per_s": round(len(latencies) / wall, 2),
        "p50_ms": round(q[49] * 1000, 1),
        "p90_ms": round(q[89] * 1000, 1),
        "p99_ms": round(q[98] * 1000, 1),
        "mean_completion_tokens": round(statistics.mean(tokens), 1) if tokens else 0,
        "completion_tok_per_s": round(sum(tokens) / wall, 1),
        "first_error": errors[0] if errors else None,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="mm15 checkpoint dir (default: a random tiny model)")
    p.add_argument("--concurrency", default="1,4,16")
    p.add_argument("--requests", type=int, default=48, help="requests per concurrency level")
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--image-size", default="320x240", help="WxH of the request's image")
    p.add_argument("--max-batch", type=int, default=8)
    p.add_argument("--max-queue", type=int, default=32)
    p.add_argument("--batch-wait-ms", type=float, default=20.0)
    p.add_argument("--in-process", action="store_true", help="server in a thread of this process")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    size = tuple(int(v) for v in args.image_size.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(args.model) if args.model else tiny_checkpoint(Path(tmp))
        body = request_body("bench", size, args.max_tokens)
        if args.in_process:
            server, engine = _in_process(model_dir, args)
            port, stop = server.port, server.stop
        else:
            port = free_port()
            proc = start_subprocess(model_dir, port, args)
            engine, stop = None, lambda: (proc.terminate(), proc.wait(30))
        try:
            run_level(port, body, 1, 3)  # warm-up
            rows = []
            for c in levels:
                before = dict(engine.batch_sizes) if engine else {}
                row = run_level(port, body, c, max(args.requests, c))
                if engine:
                    row["batch_sizes"] = {
                        k: v - before.get(k, 0)
                        for k, v in sorted(engine.batch_sizes.items())
                        if v - before.get(k, 0)
                    }
                rows.append(row)
        finally:
            stop()
    _report(rows, args, model_dir, size)
    return 0


def _in_process(model_dir: Path, args: argparse.Namespace):
    from mm15.serve.app import create_app
    from mm15.serve.config import EngineConfig, ServeConfig
    from mm15.serve.server import BackgroundServer
    from mm15.services.checkpoint import load_checkpoint

    model, tok = load_checkpoint(model_dir)
    cfg = ServeConfig(
        model_name="bench",
        web_ui=False,
        engine=EngineConfig(
            max_batch=args.max_batch, max_queue=args.max_queue, batch_wait_ms=args.batch_wait_ms
        ),
    )
    app = create_app(model, tok, cfg)
    return BackgroundServer(app).start(), app.state.engine


def _report(rows: list[dict], args: argparse.Namespace, model_dir: Path, size) -> None:
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(
        f"model {args.model or 'random tiny preset'}; image {size[0]}x{size[1]}; "
        f"max_tokens {args.max_tokens}; max_batch {args.max_batch}; "
        f"batch_wait_ms {args.batch_wait_ms}; "
        f"server {'in-process' if args.in_process else 'subprocess'}; "
        f"{os.cpu_count()} CPUs"
    )
    print("| concurrency | requests | req/s | p50 ms | p90 ms | p99 ms | tokens/req | tokens/s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['concurrency']} | {r['requests']} | {r['req_per_s']} | {r['p50_ms']} | "
            f"{r['p90_ms']} | {r['p99_ms']} | {r['mean_completion_tokens']} | "
            f"{r['completion_tok_per_s']} |"
        )
    for r in rows:
        if r["errors"]:
            print(
                f"concurrency {r['concurrency']}: {r['errors']} errors, first: {r['first_error']}"
            )
        if "batch_sizes" in r:
            print(f"concurrency {r['concurrency']}: requests per generate call {r['batch_sizes']}")


if __name__ == "__main__":
    sys.exit(main())
