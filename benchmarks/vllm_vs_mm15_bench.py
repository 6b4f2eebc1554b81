"""vLLM's OpenAI server against ``mm15 serve`` on the same checkpoint and the same request:
requests/s and p50/p99 latency at several concurrencies, with vLLM / mm15 ratios from one run
(docs/serving.md, "Serving with vLLM", records the figures).

    .venv/bin/python benchmarks/vllm_vs_mm15_bench.py            # dense, 1/4/16 clients
    .venv/bin/python benchmarks/vllm_vs_mm15_bench.py --moe --requests 32

The checkpoint is tests/vllm_fixtures.py's tiny random fp32 mm15 model (``head_dim`` 64, which
vLLM's CPU attention needs): ``mm15 serve`` loads it, vLLM loads its ``mm15 export --hf``
directory.  Both servers run at the same time, each a subprocess (vLLM in the venv of
scripts/setup-vllm.sh, started as the tests start it but with its prefix cache off), and are
warmed up.  Then, per concurrency level, every round measures both, mm15 first in rounds 1, 3,
… and vLLM first in rounds 2, 4, … (ABBA), waiting between runs until both are idle, so load
from other processes and drift hit both alike.  Compare speeds only within one run: the ratio
rows divide figures of the same round, measured seconds apart.

The load generator is benchmarks/serve_bench.py's ``run_level``: threads with keep-alive
connections sending the same non-streaming request back to back.  The request is serve_bench's
(one 320x240 PNG as a data URL, greedy, ``max_tokens``); vLLM's copy adds ``ignore_eos`` (a
vLLM extension; ``mm15 serve`` has no such field), so vLLM never stops early, and the report
shows that mm15's answers reached ``max_tokens`` too.  "CPU ms/req" is the measured server's
process tree's CPU time per request, from ``/proc``, until it is idle again after the run.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import http.client
import json
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO / "tests"))

from serve_bench import free_port, request_body, run_level, start_subprocess  # noqa: E402
from vllm_fixtures import make_checkpoint, vllm_python, vllm_server  # noqa: E402

from mm15.tokenizer import byte_tokenizer  # noqa: E402

MM15, VLLM = "mm15 serve", "vLLM"
IMAGE_SIZE = (320, 240)  # serve_bench's default


@dataclasses.dataclass
class Server:
    port: int
    body: bytes
    pid: int  # the root of its process tree, for CPU time


def tree_cpu_s(root: int) -> float:
    """User + system CPU seconds of ``root`` and all its descendants (Linux ``/proc``)."""
    parent, ticks = {}, {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process ended while we looked
            continue
        pid = int(entry.name)
        parent[pid], ticks[pid] = int(fields[1]), int(fields[11]) + int(fields[12])
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        total += ticks.get(pid, 0)
        todo += [p for p, pp in parent.items() if pp == pid]
    return total / os.sysconf("SC_CLK_TCK")


def settle(servers: dict[str, Server], step: float = 0.25, limit: float = 5.0) -> None:
    """Wait until every server is idle: after a burst vLLM keeps a core busy for about a second
    (measured), which would land on whichever server is measured next."""
    deadline = time.monotonic() + limit
    last = [tree_cpu_s(s.pid) for s in servers.values()]
    while time.monotonic() < deadline:
        time.sleep(step)
        now = [tree_cpu_s(s.pid) for s in servers.values()]
        if all(b - a < 0.05 * step for a, b in zip(last, now, strict=True)):
            return
        last = now


def vllm_body(max_tokens: int) -> bytes:
    """serve_bench's request, with vLLM's ``ignore_eos``."""
    body = json.loads(request_body("bench", IMAGE_SIZE, max_tokens))
    return json.dumps({**body, "ignore_eos": True}).encode()


def probe(server: Server) -> dict:
    """One request's answer text, token ids (vLLM's ``return_token_ids``; mm15 serve ignores
    the field) and token usage."""
    body = json.dumps({**json.loads(server.body), "return_token_ids": True})
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=600)
    conn.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
    resp = conn.getresponse()
    data = json.loads(resp.read())
    conn.close()
    if resp.status != 200:
        raise RuntimeError(f"probe answered {resp.status}: {data}")
    choice = data["choices"][0]
    return {"text": choice["message"]["content"], "ids": choice.get("token_ids"), **data["usage"]}


def measure(servers: dict[str, Server], args: argparse.Namespace) -> dict:
    """``{(concurrency, server): [row per round]}``; rows are ``run_level``'s plus CPU time."""
    results: dict[tuple[int, str], list[dict]] = {}
    names = list(servers)
    for c in args.levels:
        for r in range(args.rounds):
            for name in names if r % 2 == 0 else names[::-1]:
                cpu0 = {n: tree_cpu_s(s.pid) for n, s in servers.items()}
                s = servers[name]
                row = run_level(s.port, s.body, c, max(args.requests, c))
                settle(servers)  # the CPU time counted includes the server's tail after the run
                cpu = {n: tree_cpu_s(s.pid) - cpu0[n] for n, s in servers.items()}
                row["cpu_ms_per_req"] = 1000 * cpu[name] / max(row["requests"], 1)
                row["idle_cpu_s"] = sum(v for n, v in cpu.items() if n != name)
                results.setdefault((c, name), []).append(row)
                print(
                    f"  concurrency {c:>2} round {r + 1} {name:<10} {row['req_per_s']:>6} req/s "
                    f"p50 {row['p50_ms']:>7} ms p99 {row['p99_ms']:>7} ms",
                    file=sys.stderr,
                    flush=True,
                )
    return results


@contextlib.contextmanager
def _environ(values: dict[str, str]) -> Iterator[None]:
    """``os.environ`` with ``values`` set, restored afterwards."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k)
            else:
                os.environ[k] = v


def run(args: argparse.Namespace, python: Path, tmp: Path) -> tuple[dict, dict]:
    """Both servers up, probed and warmed up; then :func:`measure`."""
    ckpt, hf = make_checkpoint(tmp, moe=args.moe, seed=0)
    port = free_port()
    with _environ({"OMP_NUM_THREADS": str(args.mm15_threads)} if args.mm15_threads else {}):
        mm15_proc = start_subprocess(ckpt, port, args)  # inherits this process's environment
    # Every request here is the same: with vLLM's prefix cache on it would skip the vision tower
    # and most of the prefill that mm15 serve does each time.
    extra = ["--served-model-name", "bench"]
    extra += [] if args.vllm_prefix_caching else ["--no-enable-prefix-caching"]
    vllm = vllm_server(python, hf, tmp / "vllm.log", extra_args=extra)
    try:
        with vllm as srv:
            vllm_pid, vllm_port = srv.pid, srv.port
            servers = {
                MM15: Server(
                    port, request_body("bench", IMAGE_SIZE, args.max_tokens), mm15_proc.pid
                ),
                VLLM: Server(vllm_port, vllm_body(args.max_tokens), vllm_pid),
            }
            probes = {name: probe(s) for name, s in servers.items()}
            for s in servers.values():  # warm-up: one client, then the most clients
                run_level(s.port, s.body, 1, 3)
                run_level(s.port, s.body, max(args.levels), max(args.levels))
            settle(servers)
            return measure(servers, args), probes
    finally:
        mm15_proc.terminate()
        mm15_proc.wait(30)


def _runs(ids: list[int]) -> str:
    """``[184 x32]`` for the repetitive answers of a random model."""
    out: list[list[int]] = []
    for i in ids:
        if out and out[-1][0] == i:
            out[-1][1] += 1
        else:
            out.append([i, 1])
    return "[" + ", ".join(f"{i} x{n}" if n > 1 else str(i) for i, n in out) + "]"


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def _cell(values: list[float], digits: int) -> str:
    """The mean over rounds, then each round's value."""
    each = ", ".join(f"{v:.{digits}f}" for v in values)
    return f"{_mean(values):.{digits}f} ({each})" if len(values) > 1 else f"{values[0]:.{digits}f}"


def _setup_line(args: argparse.Namespace, load: tuple) -> str:
    model = "MoE (Qwen2-MoE)" if args.moe else "dense (Llama)"
    rounds = f"{args.rounds} round{'s' * (args.rounds != 1)}"
    cache = "on" if args.vllm_prefix_caching else "off"
    return (
        f"tiny random mm15 checkpoint, {model}, fp32, CPU; one {IMAGE_SIZE[0]}x{IMAGE_SIZE[1]} "
        f"PNG data URL, greedy, max_tokens {args.max_tokens}; {args.requests} requests per "
        f"level and round, {rounds}; vLLM prefix cache {cache}; mm15 --max-batch "
        f"{args.max_batch} --batch-wait-ms {args.batch_wait_ms}, OMP_NUM_THREADS "
        f"{args.mm15_threads or 'unset'}; {os.cpu_count()} CPUs, load average {load[0]:.1f} -> "
        f"{load[1]:.1f}"
    )


def report(results: dict, probes: dict, args: argparse.Namespace, load: tuple) -> None:
    p = {n: probes[n]["prompt_tokens"] for n in (MM15, VLLM)}
    ids = probes[VLLM]["ids"] or []
    same = byte_tokenizer().decode(ids) == probes[MM15]["text"]
    print(_setup_line(args, load))
    print(
        f"prompt tokens: mm15 serve {p[MM15]}, vLLM {p[VLLM]} "
        f"({'equal' if p[MM15] == p[VLLM] else 'NOT EQUAL'}); vLLM's answer ids "
        f"{_runs(ids)} decode to mm15 serve's text: {'yes' if same else 'NO'}"
    )
    print("cells: mean over rounds (each round); ratio rows: vLLM / mm15 of the same round")
    print("| concurrency | server | req/s | p50 ms | p99 ms | CPU ms/req |")
    print("|---|---|---|---|---|---|")
    keys = ("req_per_s", "p50_ms", "p99_ms", "cpu_ms_per_req")
    for c in args.levels:
        rows = {n: results[(c, n)] for n in (MM15, VLLM)}
        for name, rs in rows.items():
            cells = [_cell([r[k] for r in rs], 1) for k in keys]
            print(f"| {c} | {name} | " + " | ".join(cells) + " |")
        ratios = [
            _cell([v[k] / m[k] for v, m in zip(rows[VLLM], rows[MM15], strict=True)], 2)
            for k in keys
        ]
        print(f"| {c} | **vLLM / mm15** | " + " | ".join(ratios) + " |")
    _notes(results)


def _notes(results: dict) -> None:
    for name in (MM15, VLLM):
        rows = [r for (_, n), rs in results.items() if n == name for r in rs]
        tokens = sorted({r["mean_completion_tokens"] for r in rows})
        idle = sum(r["idle_cpu_s"] for r in rows)
        wall = sum(r["wall_s"] for r in rows)
        errors = sum(r["errors"] for r in rows)
        first = next((r["first_error"] for r in rows if r["first_error"]), None)
        print(
            f"{name}: completion tokens per request {tokens}; errors {errors}"
            + (f" (first: {first})" if first else "")
            + f"; the other server used {idle:.1f} CPU s while its {wall:.0f} s of runs went on"
        )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--concurrency", default="1,4,16")
    ap.add_argument("--requests", type=int, default=96, help="requests per level and round")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--moe", action="store_true", help="the Qwen2-MoE checkpoint, not the dense")
    ap.add_argument("--max-batch", type=int, default=8, help="mm15 serve's (serve_bench's)")
    ap.add_argument("--max-queue", type=int, default=32, help="mm15 serve's (serve_bench's)")
    ap.add_argument("--batch-wait-ms", type=float, default=20.0, help="mm15 serve's")
    ap.add_argument(
        "--mm15-threads",
        type=int,
        help="OMP_NUM_THREADS for mm15 serve only (default: torch's, one per core)",
    )
    ap.add_argument(
        "--vllm-prefix-caching",
        action="store_true",
        help="leave vLLM's prefix cache on (it then reuses the identical requests' prompt)",
    )
    args = ap.parse_args()
    args.levels = [int(c) for c in args.concurrency.split(",")]
    python, why = vllm_python()
    if python is None:
        raise SystemExit(why)
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        results, probes = run(args, python, Path(tmp))
    report(results, probes, args, (load0, os.getloadavg()[0]))
    print(f"wall time {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
