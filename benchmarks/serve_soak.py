"""Soak test of ``mm15 serve``: a mix of good, malformed and hostile clients for a fixed time.

    .venv/bin/python benchmarks/serve_soak.py                  # 180 s at concurrency 1, 4, 16, 48
    .venv/bin/python benchmarks/serve_soak.py --quick          # 20 s
    .venv/bin/python benchmarks/serve_soak.py --seconds 3 --concurrency 2 --in-process

The server runs as a subprocess (``python -m mm15.cli.serve`` on 127.0.0.1, a free port) with a
random tiny model unless ``--model`` names one; nothing is downloaded.  The time is split evenly
over the concurrency levels; at each, that many client threads pick scenarios at random (seeded)
from the mix in ``SCENARIOS``: good requests through the official ``openai`` client (text or a
small data-URL image, streaming or not; schema-valid extremes of temperature, top_p and seed)
and bad ones over raw sockets (malformed JSON, schema violations, a body above
``--max-body-bytes``, ~900 KB of prompt text, 5000 messages, a seed outside int64, too many
images, bad image bytes, a browser-style cross-origin POST, clients that disconnect mid-request,
streaming or not, and clients that drip their headers).  The last default level has more
clients than the server admits (``max_batch + max_queue``), so it also shows the 429s.  A poller asks
``/health`` throughout.  Every client call has a timeout: a hung request is counted, never
waited for.  Printed: requests, status classes, good-request latency, the worst ``/health``
latency and the server's RSS before and after.  Exit status 1 when any response was a 5xx, the
server died, or ``/health`` failed at the end.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import http.client
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_bench import REPO, free_port, request_body, tiny_checkpoint

MODEL, PATH, HOST = "soak", "/v1/chat/completions", "127.0.0.1"
MAX_BODY = 2**20  # the server's --max-body-bytes: oversized bodies stay cheap to send
TIMEOUT_S = 30.0  # every client call
# scenario -> weight; "good_*" are the requests whose latency is reported
SCENARIOS = {
    "good_text": 3,
    "good_image": 3,
    "good_stream": 3,
    "good_odd_sampling": 1,
    "malformed_json": 1,
    "schema_invalid": 1,
    "oversized_body": 1,
    "huge_prompt": 1,
    "many_messages": 1,
    "bad_seed": 1,
    "too_many_images": 1,
    "bad_image": 1,
    "foreign_origin": 1,
    "disconnect": 1,
    "disconnect_stream": 1,
    "slow_header": 1,
}


class Clients:
    """The scenarios, each one request: returns an HTTP status, or "aborted" (the client left
    on purpose), "timeout" or "error" (the connection failed)."""

    def __init__(self, port: int, stop: threading.Event):
        from openai import OpenAI

        self.port, self.stop = port, stop
        self.api = OpenAI(
            base_url=f"http://{HOST}:{port}/v1", api_key="x", timeout=TIMEOUT_S, max_retries=0
        )
        image = json.loads(request_body(MODEL, (64, 48), 8))["messages"][0]["content"]
        self.image_msgs = [{"role": "user", "content": image}]
        self.text_msgs = [{"role": "user", "content": "Say something short."}]

    def good_text(self, rng: random.Random):
        return self._openai(self.text_msgs, stream=False)

    def good_image(self, rng: random.Random):
        return self._openai(self.image_msgs, stream=False)

    def good_stream(self, rng: random.Random):
        return self._openai(rng.choice([self.text_msgs, self.image_msgs]), stream=True)

    def _openai(self, messages: list, stream: bool):
        import openai

        try:
            r = self.api.chat.completions.create(
                model=MODEL, messages=messages, max_tokens=8, stream=stream
            )
            if stream:
                for _ in r:  # the stream ends with [DONE]; the client's timeout bounds each read
                    pass
            return 200
        except openai.APITimeoutError:
            return "timeout"
        except openai.APIStatusError as e:
            return e.status_code
        except openai.APIConnectionError:
            return "error"
        except openai.APIError:  # an error event inside a 200 stream: a server error
            return 500

    def good_odd_sampling(self, rng: random.Random):
        """Schema-valid extremes: a tiny temperature or top_p, a seed at the int64 bounds."""
        extra = rng.choice(
            [
                {"temperature": 1e-40},
                {"temperature": 0.7, "top_p": 1e-300},
                {"temperature": 0.7, "seed": rng.choice([-(2**63), 2**63 - 1])},
            ]
        )
        body = {"model": MODEL, "messages": self.text_msgs, "max_tokens": 8, **extra}
        return self._post(json.dumps(body).encode())

    def huge_prompt(self, rng: random.Random):
        """~900 KB of text, inside the body limit: refused from its size, never tokenised."""
        text = "many words " * 80_000
        body = {"model": MODEL, "messages": [{"role": "user", "content": text}]}
        return self._post(json.dumps(body).encode())

    def many_messages(self, rng: random.Random):
        msgs = [{"role": "user", "content": ""}] * 5000
        return self._post(json.dumps({"model": MODEL, "messages": msgs}).encode())

    def bad_seed(self, rng: random.Random):
        """A seed outside int64, beside good greedy requests that may share its batch."""
        body = {"model": MODEL, "messages": self.text_msgs, "max_tokens": 8, "seed": 2**70}
        return self._post(json.dumps(body).encode())

    def foreign_origin(self, rng: random.Random):
        """What a web page on another site would send to a server on this machine."""
        body = json.dumps({"model": MODEL, "messages": self.text_msgs, "max_tokens": 8})
        headers = rng.choice(
            [
                {"Content-Type": "text/plain", "Origin": "null"},
                {"Content-Type": "application/json", "Origin": "http://evil.example"},
            ]
        )
        return self._post(body.encode(), headers)

    def malformed_json(self, rng: random.Random):
        return self._post(b'{"model": "soak", "messages": [')

    def schema_invalid(self, rng: random.Random):
        return self._post(json.dumps({"model": MODEL, "messages": "hi", "max_tokens": -3}).encode())

    def too_many_images(self, rng: random.Random):
        content = self.image_msgs[0]["content"]
        msgs = [{"role": "user", "content": [content[0]] * 5 + [content[1]]}]
        return self._post(json.dumps({"model": MODEL, "messages": msgs}).encode())

    def bad_image(self, rng: random.Random):
        url = "data:image/png;base64," + rng.randbytes(600).hex()[:800]
        part = {"type": "image_url", "image_url": {"url": url}}
        msgs = [{"role": "user", "content": [part, {"type": "text", "text": "what?"}]}]
        return self._post(json.dumps({"model": MODEL, "messages": msgs}).encode())

    def oversized_body(self, rng: random.Random):
        """Content-Length above the limit, then part of the body: the answer may come early."""
        head = (
            f"POST {PATH} HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {MAX_BODY + 1}\r\n\r\n"
        ).encode()
        return self._socket(head + b"[" * 65536, read_status=True)

    def disconnect(self, rng: random.Random):
        """A good request, then gone after 0-50 ms (in preparation, the batching wait or
        generation)."""
        return self._socket(self._raw_request(stream=False), wait_s=rng.uniform(0, 0.05))

    def disconnect_stream(self, rng: random.Random):
        """A streaming request, gone after its first bytes of answer (or 0-50 ms)."""
        return self._socket(self._raw_request(stream=True), wait_s=rng.uniform(0, 0.05))

    def slow_header(self, rng: random.Random):
        """Headers dripped a byte every 100 ms for up to 2 s, then gone."""
        try:
            with socket.create_connection((HOST, self.port), timeout=TIMEOUT_S) as s:
                s.sendall(f"POST {PATH} HTTP/1.1\r\nHost: {HOST}\r\n".encode())
                for byte in b"X-Slow: " + b"z" * 12:
                    if self.stop.wait(0.1):
                        break
                    s.sendall(bytes([byte]))
            return "aborted"
        except TimeoutError:
            return "timeout"
        except OSError:
            return "aborted"  # the server closed it first: what a header timeout does

    def _raw_request(self, stream: bool) -> bytes:
        body = json.dumps(
            {"model": MODEL, "messages": self.image_msgs, "max_tokens": 8, "stream": stream}
        ).encode()
        return (
            f"POST {PATH} HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode() + body

    def _post(self, body: bytes, headers: dict | None = None):
        conn = http.client.HTTPConnection(HOST, self.port, timeout=TIMEOUT_S)
        try:
            conn.request("POST", PATH, body, headers or {"Content-Type": "application/json"})
            resp = conn.getresponse()
            resp.read()
            return resp.status
        except TimeoutError:
            return "timeout"
        except (OSError, http.client.HTTPException):
            return "error"
        finally:
            conn.close()

    def _socket(self, data: bytes, *, read_status: bool = False, wait_s: float = 0.0):
        """Send ``data``; then read the status line, or wait up to ``wait_s`` and leave."""
        try:
            with socket.create_connection((HOST, self.port), timeout=TIMEOUT_S) as s:
                with contextlib.suppress(OSError):  # the server may answer early and close
                    s.sendall(data)
                if not read_status:
                    s.settimeout(max(wait_s, 1e-3))
                    with contextlib.suppress(TimeoutError):
                        s.recv(1)
                    return "aborted"
                line = s.makefile("rb").readline(1024)
                return int(line.split()[1]) if line.startswith(b"HTTP/") else "error"
        except TimeoutError:
            return "timeout"
        except (OSError, ValueError, IndexError):
            return "error"


class HealthPoller(threading.Thread):
    """GET /health every 100 ms until stopped; the worst latency and the failures."""

    def __init__(self, port: int, stop: threading.Event):
        super().__init__(daemon=True)
        self.port, self.stop, self.worst_s, self.polls, self.failures = port, stop, 0.0, 0, 0

    def run(self) -> None:
        for _ in range(10**6):  # bounded; stopped by the event
            if self.stop.wait(0.1):
                return
            t0 = time.perf_counter()
            ok = health(self.port, timeout=10.0)
            self.worst_s = max(self.worst_s, time.perf_counter() - t0)
            self.polls += 1
            self.failures += not ok


def health(port: int, timeout: float) -> bool:
    try:
        with urllib.request.urlopen(f"http://{HOST}:{port}/health", timeout=timeout) as r:
            return r.status == 200
    except OSError:
        return False


def run_level(clients: Clients, concurrency: int, seconds: float, seed: int) -> list[tuple]:
    """``concurrency`` threads sending scenarios back to back for ``seconds``: a list of
    (scenario, outcome, latency_s)."""
    results, lock = [], threading.Lock()
    deadline = time.monotonic() + seconds
    names, weights = list(SCENARIOS), list(SCENARIOS.values())

    def client(k: int) -> None:
        rng = random.Random(seed * 1000 + k)
        for _ in range(100_000):  # bounded; the deadline ends it
            if time.monotonic() >= deadline or clients.stop.is_set():
                return
            name = rng.choices(names, weights)[0]
            t0 = time.perf_counter()
            outcome = getattr(clients, name)(rng)
            with lock:
                results.append((name, outcome, time.perf_counter() - t0))

    threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + TIMEOUT_S + 30)  # a client is never stuck longer than its timeouts
    return results


def rss_mib(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            kb = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
        return kb / 1024
    except (OSError, StopIteration):
        return None


def start_server(
    model_dir: Path, args: argparse.Namespace, log
) -> tuple[int, int, Callable[[], None]]:
    """(port, pid, stop) of a server on 127.0.0.1: a subprocess, or a thread with --in-process."""
    if args.in_process:
        from mm15.serve.app import create_app
        from mm15.serve.config import EngineConfig, LimitsConfig, ServeConfig
        from mm15.serve.server import BackgroundServer
        from mm15.services.checkpoint import load_checkpoint

        model, tok = load_checkpoint(model_dir)
        cfg = ServeConfig(
            model_name=MODEL,
            web_ui=False,
            limits=LimitsConfig(max_body_bytes=MAX_BODY),
            engine=EngineConfig(max_batch=args.max_batch, max_queue=args.max_queue),
        )
        server = BackgroundServer(create_app(model, tok, cfg)).start()
        return server.port, os.getpid(), server.stop
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "mm15.cli.serve",
        "--model",
        str(model_dir),
        "--port",
        str(port),
        "--served-model-name",
        MODEL,
        "--max-batch",
        str(args.max_batch),
        "--max-queue",
        str(args.max_queue),
        "--max-body-bytes",
        str(MAX_BODY),
        "--no-web-ui",
    ]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=log)
    for _ in range(600):  # up to 120 s while the server imports torch and loads the model
        if proc.poll() is not None or health(port, timeout=1.0):
            break
        time.sleep(0.2)  # polling a starting subprocess: nothing to wait on
    if proc.poll() is not None or not health(port, timeout=5.0):
        proc.kill()
        raise SystemExit(f"the server did not come up; its log:\n{_tail(log)}")

    def stop() -> None:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)

    return port, proc.pid, stop


def _tail(log, n: int = 3000) -> str:
    log.flush()
    log.seek(0)
    return log.read().decode(errors="replace")[-n:]


def summarize(results: list[tuple], poller: HealthPoller, rss: tuple, wall_s: float) -> list[str]:
    def cls(o) -> str:
        if not isinstance(o, int):
            return o
        return "429" if o == 429 else f"{o // 100}xx"

    classes = collections.Counter(cls(o) for _, o, _ in results)
    good = sorted(dt for name, o, dt in results if name.startswith("good") and o == 200)
    q = statistics.quantiles(good, n=100, method="inclusive") if len(good) > 1 else good * 99
    lines = [f"requests: {len(results)} in {wall_s:.1f} s ({len(good)} good answered)"]
    lines.append(
        "status: "
        + ", ".join(
            f"{k} {classes.get(k, 0)}"
            for k in ("2xx", "4xx", "429", "5xx", "aborted", "timeout", "error")
        )
    )
    lines.append(
        f"good latency: p50 {q[49] * 1000:.0f} ms, p99 {q[98] * 1000:.0f} ms"
        if good
        else "good latency: no good request answered"
    )
    lines.append(
        f"health: worst {poller.worst_s * 1000:.0f} ms over {poller.polls} polls, "
        f"{poller.failures} failed"
    )
    before, after = rss
    growth = f" ({(after / before - 1) * 100:+.1f} %)" if before and after else ""
    lines.append(f"server RSS: {before or 0:.0f} MiB before, {after or 0:.0f} MiB after{growth}")
    by = collections.defaultdict(collections.Counter)
    for name, o, _ in results:
        by[name][cls(o)] += 1
    for name in SCENARIOS:
        lines.append(f"  {name:18s} " + ", ".join(f"{k} {v}" for k, v in sorted(by[name].items())))
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=180.0, help="total soak time")
    p.add_argument("--quick", action="store_true", help="20 s (overrides --seconds)")
    p.add_argument(
        "--concurrency",
        default="1,4,16,48",
        help="client threads per level (above max_batch + max_queue: 429s)",
    )
    p.add_argument("--model", help="mm15 checkpoint dir (default: a random tiny model)")
    p.add_argument("--max-batch", type=int, default=8)
    p.add_argument("--max-queue", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--in-process", action="store_true", help="server in a thread of this process")
    args = p.parse_args(argv)
    seconds = 20.0 if args.quick else args.seconds
    levels = [int(c) for c in args.concurrency.split(",")]
    with tempfile.TemporaryDirectory() as tmp, open(Path(tmp) / "server.log", "w+b") as log:
        model_dir = Path(args.model) if args.model else tiny_checkpoint(Path(tmp))
        port, pid, stop_server = start_server(model_dir, args, log)
        stop = threading.Event()
        try:
            clients, poller = Clients(port, stop), HealthPoller(port, stop)
            clients.good_image(random.Random(0))  # warm-up
            rss_before, t0 = rss_mib(pid), time.perf_counter()
            poller.start()
            results = []
            for i, c in enumerate(levels):
                results += run_level(clients, c, seconds / len(levels), args.seed + i)
            stop.set()
            poller.join(15)
            alive = health(port, timeout=10.0)
            lines = summarize(results, poller, (rss_before, rss_mib(pid)), time.perf_counter() - t0)
        finally:
            stop.set()
            stop_server()
        server = "in-process" if args.in_process else f"subprocess pid {pid}"
        print(
            f"soak: {seconds:.0f} s at concurrency {args.concurrency}; server {server}; "
            f"model {args.model or 'random tiny preset'}; {os.cpu_count()} CPUs"
        )
        print("\n".join(lines))
        n5xx = sum(isinstance(o, int) and o >= 500 for _, o, _ in results)
        ok = n5xx == 0 and alive
        print(
            f"RESULT: {'PASS' if ok else 'FAIL'} ({n5xx} 5xx; /health at the end "
            f"{'ok' if alive else 'FAILED'})"
        )
        if not ok and not args.in_process:
            print(f"server log tail:\n{_tail(log)}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
