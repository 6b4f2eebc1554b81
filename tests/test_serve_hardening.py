"""Regression tests for the hostile-but-fair probe of mm15 serve (issue 18): one client must
not be able to stop, freeze or fail the server for others, a bad flag is one clear error, and
a browser page cannot drive a local server.  Names follow the probe's numbering.

Names added by the fixes are imported inside the tests, so that on the code before them each
test fails on its own (not the whole file at import)."""

from __future__ import annotations

import math
import socket
import threading
import time

import pytest

import mm15.cli
from mm15.data.prompt_encoding import EncodedPrompt
from mm15.data.token_stream import TokenStream
from mm15.serve.app import create_app
from mm15.serve.config import EngineConfig, LimitsConfig, MediaConfig
from mm15.serve.engine import Engine, SamplingParams
from mm15.serve.server import BackgroundServer
from mm15.services.checkpoint import load_checkpoint
from tests.serve_fixtures import (
    Scripted,
    config,
    data_url,
    get,
    image_message,
    png_bytes,
    post,
    served_with_header_timeout,
)

HI = [{"role": "user", "content": "hi"}]
IMAGE = data_url(png_bytes((64, 48)))


@pytest.fixture(scope="module")
def loaded(tiny_ckpt_dir):
    return load_checkpoint(tiny_ckpt_dir)


def chat(server, body, headers=None):
    return post(f"{server.url}/v1/chat/completions", body, headers)


def request(messages=HI, **kw):
    return {"model": "tiny", "messages": messages, **kw}


# ---------------------------------------------------------------------------------------------
# 1. A disconnect in the gather window must not stop the engine; a dead engine says so.


class _Sink:
    """Collects a job's events; ``wait_end`` blocks (bounded) for its done/error event."""

    def __init__(self):
        self.events, self.ended = [], threading.Event()

    def __call__(self, ev):
        self.events.append(ev)
        if ev[0] in ("done", "error"):
            self.ended.set()

    def wait_end(self, timeout=10.0):
        assert self.ended.wait(timeout), f"no done/error event within {timeout} s"
        return self.events[-1]


class _GatherProbe(Engine):
    """An engine that tells the test when its worker enters the gather window and when it
    has picked a batch (or failed to)."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.gathering, self.picked = threading.Event(), threading.Event()

    def _gather(self):
        self.gathering.set()
        super()._gather()

    def _take_batch(self):
        try:
            return super()._take_batch()
        finally:
            self.picked.set()


def _prompt(tok):
    return EncodedPrompt(input_ids=tok.encode("hi"), pixels=None, plans=[])


def test_1_cancel_during_gather_window_keeps_engine_serving(loaded):
    model, tok = loaded
    cfg = EngineConfig(max_batch=4, max_queue=4, batch_wait_ms=200)
    engine = _GatherProbe(model, tok, cfg, generate_fn=Scripted(tok, "ok"))
    engine.start()
    try:
        a, b = engine.reserve(), engine.reserve()  # b is "still preparing": the worker waits
        engine.submit(a, _prompt(tok), SamplingParams(max_tokens=4), _Sink())
        assert engine.gathering.wait(10)
        engine.cancel(a)  # the client went away while the worker waits in cv.wait
        engine.release(b)  # and b failed to prepare: at its deadline the worker finds nothing
        assert engine.picked.wait(10)
        c, sink = engine.reserve(), _Sink()
        engine.submit(c, _prompt(tok), SamplingParams(max_tokens=4), sink)
        assert sink.wait_end(5) == ("done", "stop", "ok", 2)
        assert engine.alive and engine.error is None
    finally:
        engine.stop()


class _ExplodingParams(SamplingParams):
    def batch_key(self, job_id):
        raise RuntimeError("a bug while picking a batch")


def test_1_loop_error_fails_only_its_job_and_engine_serves_on(loaded):
    model, tok = loaded
    engine = Engine(model, tok, EngineConfig(batch_wait_ms=0), generate_fn=Scripted(tok, "ok"))
    engine.start()
    try:
        bad, bad_sink = engine.reserve(), _Sink()
        engine.submit(bad, _prompt(tok), _ExplodingParams(max_tokens=4), bad_sink)
        kind, message = bad_sink.wait_end()
        assert kind == "error" and "a bug while picking a batch" in message
        good, sink = engine.reserve(), _Sink()
        engine.submit(good, _prompt(tok), SamplingParams(max_tokens=4), sink)
        assert sink.wait_end()[0] == "done"
        assert engine.alive and engine.pending == 0 and engine.loop_errors == 1
    finally:
        engine.stop()


class _ThreadKiller(BaseException):
    """Not an Exception: gets past the per-batch ``except Exception`` and ends the thread."""


def test_1_dead_engine_health_503_and_requests_refused_at_once(loaded):
    model, tok = loaded

    def dies(prompts, settings, on_token):
        raise _ThreadKiller("the worker was killed")

    app = create_app(model, tok, config(), generate_fn=dies)
    with BackgroundServer(app) as server:
        status, _, reply = chat(server, request(max_tokens=4), {})  # kills the engine thread
        assert status == 500 and "the worker was killed" in reply["error"]["message"]
        status, health = get(f"{server.url}/health")
        assert status == 503 and health["status"] == "error", health
        assert "_ThreadKiller: the worker was killed" in health["error"]
        assert health["engine"]["alive"] is False
        t0 = time.perf_counter()
        status, _, reply = chat(server, request(max_tokens=4), {})
        assert status == 503 and reply["error"]["code"] == "engine_dead", reply
        assert time.perf_counter() - t0 < 2.0
        assert app.state.engine.pending == 0


def test_1_health_detail_reports_engine_state(plain):
    assert get(f"{plain.url}/health") == (200, {"status": "ok"})
    status, body = get(f"{plain.url}/health?detail=true")
    assert status == 200 and body["status"] == "ok"
    state = body["engine"]
    assert state["alive"] is True and state["error"] is None
    assert (state["pending"], state["running"], state["capacity"]) == (0, 0, 24)


# ---------------------------------------------------------------------------------------------
# 2. One client's seed must not fail (or steer) anyone else's request.


@pytest.fixture(scope="module")
def real(loaded):
    """The tiny model behind a server (real sampling code)."""
    model, tok = loaded
    with BackgroundServer(create_app(model, tok, config())) as server:
        yield server


@pytest.mark.parametrize("seed", [2**63, -(2**63) - 1, 2**64])
def test_2_seed_outside_int64_is_400(real, seed):
    status, _, reply = chat(real, request(max_tokens=2, temperature=1.0, seed=seed))
    assert status == 400 and reply["error"]["param"] == "seed", reply


def test_2_seed_at_int64_bounds_is_served(real):
    for seed in (2**63 - 1, -(2**63)):
        status, _, reply = chat(real, request(max_tokens=2, temperature=1.0, seed=seed))
        assert status == 200, reply


def test_2_greedy_batch_takes_no_seed_from_a_member(loaded):
    model, tok = loaded
    gate, seen = threading.Event(), []
    scripted = Scripted(tok, "ok", gate)

    def recording(prompts, settings, on_token):
        seen.append((len(prompts), settings.seed, settings.temperature))
        return scripted(prompts, settings, on_token)

    engine = Engine(model, tok, EngineConfig(max_batch=4, batch_wait_ms=0), generate_fn=recording)
    engine.start()
    try:
        first, sinks = engine.reserve(), [_Sink() for _ in range(4)]
        engine.submit(first, _prompt(tok), SamplingParams(max_tokens=4), sinks[0])
        assert engine.wait_until(lambda e: e.running == 1, timeout=10)
        for seed, sink in zip((-(2**63), None, 2**63 - 1), sinks[1:], strict=True):
            params = SamplingParams(max_tokens=4, temperature=0.0, seed=seed)
            engine.submit(engine.reserve(), _prompt(tok), params, sink)
        assert engine.wait_until(lambda e: len(e._waiting) == 3, timeout=10)
        gate.set()
        assert all(s.wait_end()[0] == "done" for s in sinks)
    finally:
        gate.set()
        engine.stop()
    assert seen[1] == (3, None, 0.0), seen  # one batch, and no member's seed in its settings


# ---------------------------------------------------------------------------------------------
# 3. A huge prompt is refused before it is tokenised.  4. Many messages likewise, and linear.


class _CountingTokenizer:
    """The tokenizer, counting encode calls."""

    def __init__(self, tok):
        self._tok, self.encodes = tok, 0

    def encode(self, text):
        self.encodes += 1
        return self._tok.encode(text)

    def __getattr__(self, name):
        return getattr(self._tok, name)


@pytest.fixture
def full(loaded):
    """One admission slot, taken by a held request: a request that reached admission would
    get 429, so a 400 proves it was refused before."""
    model, tok = loaded
    counting, gate = _CountingTokenizer(tok), threading.Event()
    cfg = config(engine={"max_batch": 1, "max_queue": 0})
    app = create_app(model, counting, cfg, generate_fn=Scripted(tok, "ok", gate))
    server = BackgroundServer(app).start()
    holder = threading.Thread(target=chat, args=(server, request(max_tokens=2)))
    holder.start()
    assert app.state.engine.wait_until(lambda e: e.running == 1, timeout=10)
    server.tokenizer, server.engine = counting, app.state.engine
    yield server
    gate.set()
    holder.join(10)
    server.stop()


def test_3_huge_prompt_refused_before_tokenising(loaded):
    model, tok = loaded
    counting = _CountingTokenizer(tok)
    app = create_app(model, counting, config(), generate_fn=Scripted(tok, "ok"))
    with BackgroundServer(app) as server:
        t0 = time.perf_counter()
        status, _, reply = chat(server, request([{"role": "user", "content": "x" * 10_000_000}]))
        assert status == 400 and reply["error"]["code"] == "prompt_too_long", reply
        assert counting.encodes == 0  # the tokenizer never saw it
        assert time.perf_counter() - t0 < 3.0
        assert app.state.engine.pending == 0


def test_3_prompt_bytes_limit_is_a_true_bound(loaded):
    """No prompt within the token limit is refused by the byte bound (byte tokenizer: its
    longest vocabulary entries are the 7-byte specials, which text may spell)."""
    from mm15.serve.prepare import prompt_bytes_limit

    model, tok = loaded
    cfg = config(limits={"max_prompt_tokens": 100})
    limit = prompt_bytes_limit(cfg, model.cfg, tok)
    assert limit == 100 * 7
    assert len(tok.encode("<|eos|>" * 100)) == 100  # 700 bytes, 100 tokens: at the bound


def test_4_too_many_messages_refused_before_admission(full):
    status, _, reply = chat(full, request(HI * 1025))  # the default max_messages is 1024
    assert status == 400 and reply["error"]["code"] == "too_many_messages", reply
    parts = [{"type": "text", "text": "a"}] * 1025
    status, _, reply = chat(full, request([{"role": "user", "content": parts}]))
    assert status == 400 and reply["error"]["code"] == "too_many_parts", reply
    assert full.engine.pending == 1  # only the held request was ever admitted


class _CountingStr(str):
    """A string that counts ``+`` with it on either side (the quadratic pattern)."""

    adds = 0

    def __add__(self, other):
        _CountingStr.adds += 1
        return str.__add__(self, other)

    def __radd__(self, other):
        _CountingStr.adds += 1
        return str.__add__(other, self)


def test_4_stream_text_is_joined_once_not_added_per_message():
    stream, _CountingStr.adds = TokenStream(), 0
    for i in range(1000):
        stream.text(_CountingStr(f"m{i} "), train=False)
    assert _CountingStr.adds == 0  # no string rebuilt per message: O(n), not O(n²)
    assert len(stream.pieces) == 1  # still one span, tokenised once


# ---------------------------------------------------------------------------------------------
# 9. Any temperature and top_p the schema admits is served.


@pytest.mark.parametrize(
    "sampling",
    [
        {"temperature": 1e-40},
        {"temperature": 1.0, "top_p": 1e-300},
        {"temperature": 1e-40, "top_p": 1e-300, "top_k": 1},
    ],
)
def test_9_tiny_temperature_and_top_p_are_served(real, sampling):
    status, _, reply = chat(real, request(image_message("hi", IMAGE), max_tokens=3, **sampling))
    assert status == 200, reply
    greedy = chat(real, request(image_message("hi", IMAGE), max_tokens=3, temperature=0))[2]
    assert reply["choices"][0]["message"]["content"] == greedy["choices"][0]["message"]["content"]


# ---------------------------------------------------------------------------------------------
# 12, 13. A bad flag is one clear line and exit status 2, before any model or server.


BAD_FLAGS = [
    ["--max-images", "-1"],
    ["--max-body-bytes", "0"],
    ["--max-prompt-tokens", "0"],
    ["--max-tokens-limit", "0"],
    ["--max-image-bytes", "0"],
    ["--max-image-pixels", "0"],
    ["--fetch-timeout", "0"],
    ["--fetch-timeout", "nan"],
    ["--fetch-timeout", "inf"],
    ["--batch-wait-ms", "-1"],
    ["--batch-wait-ms", "inf"],
    ["--max-batch", "0"],
    ["--max-queue", "-1"],
    ["--max-messages", "0"],
    ["--max-content-parts", "0"],
    ["--max-prompt-bytes", "0"],
    ["--max-pixels-in-flight", "10"],
    ["--header-timeout", "0"],
    ["--port", "99999"],
    ["--port", "-1"],
    ["--host", "no such host!"],
    ["--host", "999.1.1.1"],
]


@pytest.mark.parametrize("flags", BAD_FLAGS, ids=" ".join)
def test_12_13_bad_serve_flags_exit_2_with_one_line(tiny_ckpt_dir, monkeypatch, capsys, flags):
    import uvicorn

    def never(*a, **kw):
        raise AssertionError("a server was started")

    monkeypatch.setattr(uvicorn, "run", never)
    monkeypatch.setattr(uvicorn.Server, "run", never)
    assert mm15.cli.main(["serve", "--model", str(tiny_ckpt_dir), *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err


@pytest.mark.parametrize(
    ("cls", "field", "value"),
    [
        (LimitsConfig, "max_stop", -1),
        (MediaConfig, "max_redirects", -1),
        (MediaConfig, "fetch_timeout_s", math.inf),
        (EngineConfig, "batch_wait_ms", math.nan),
    ],
)
def test_12_limits_without_a_flag_are_checked_too(cls, field, value):
    with pytest.raises(ValueError, match=field):
        cls(**{field: value})


def _with_http(cfg, **http):
    from mm15.serve.config import HTTPConfig

    cfg.http = HTTPConfig(**http)
    return cfg


# ---------------------------------------------------------------------------------------------
# Risk: decoded-image memory is bounded server-wide.


def test_image_pixel_budget_full_gets_503_then_serves(loaded):
    model, tok = loaded
    cfg = config(
        media={"max_image_pixels": 10_000, "max_pixels_in_flight": 10_000, "pixels_wait_s": 0.2}
    )
    app = create_app(model, tok, cfg, generate_fn=Scripted(tok, "ok"))
    with BackgroundServer(app) as server:
        budget = app.state.pixel_budget
        budget.take(10_000, "another request")
        status, headers, reply = chat(server, request(image_message("hi", IMAGE), max_tokens=2))
        assert status == 503 and reply["error"]["code"] == "image_budget_full", reply
        assert headers.get("retry-after") == "1"
        budget.give(10_000)
        status, _, reply = chat(server, request(image_message("hi", IMAGE), max_tokens=2))
        assert status == 200, reply
        assert budget.free == budget.total  # every reservation was given back
        assert app.state.engine.pending == 0


# ---------------------------------------------------------------------------------------------
# Risk: CSRF and DNS rebinding against a server without an API key.


@pytest.fixture(scope="module")
def plain(loaded):
    """Default settings: no API key, any Host."""
    model, tok = loaded
    with BackgroundServer(create_app(model, tok, config(), generate_fn=Scripted(tok, "ok"))) as s:
        yield s


@pytest.fixture(scope="module")
def loopback(loaded):
    model, tok = loaded
    cfg = _with_http(config(), allowed_hosts=("localhost", "127.0.0.1", "::1"))
    with BackgroundServer(create_app(model, tok, cfg, generate_fn=Scripted(tok, "ok"))) as srv:
        yield srv


def test_post_needs_json_content_type(plain):
    body = request(max_tokens=2)
    for kind in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data"):
        status, _, reply = chat(plain, body, {"Content-Type": kind})
        assert status == 415 and reply["error"]["code"] == "unsupported_media_type", kind
    assert chat(plain, body, {"Content-Type": "application/json; charset=utf-8"})[0] == 200


def test_foreign_host_refused(loopback):
    for host in ("evil.example", f"evil.example:{loopback.port}", "127.0.0.1.nip.io"):
        status, _, reply = chat(loopback, request(max_tokens=2), {"Host": host})
        assert status == 421 and reply["error"]["code"] == "host_not_allowed", host
        assert get(f"{loopback.url}/", {"Host": host})[0] == 421
    for host in (f"localhost:{loopback.port}", f"127.0.0.1:{loopback.port}", "[::1]"):
        assert chat(loopback, request(max_tokens=2), {"Host": host})[0] == 200, host


def test_foreign_origin_refused_own_page_allowed(plain):
    for origin in ("http://evil.example", "null", f"http://127.0.0.1:{plain.port + 1}"):
        status, _, reply = chat(plain, request(max_tokens=2), {"Origin": origin})
        assert status == 403 and reply["error"]["code"] == "origin_not_allowed", origin
    own = {"Origin": plain.url}  # what the page at / sends: same origin
    assert chat(plain, request(max_tokens=2), own)[0] == 200
    assert get(f"{plain.url}/", own)[0] == 200


def test_cli_default_allowed_hosts_follow_the_bind_address(tiny_ckpt_dir):
    from mm15.cli.serve import config_from_args

    parser = mm15.cli.build_parser()
    local = config_from_args(parser.parse_args(["serve", "--model", str(tiny_ckpt_dir)]))
    assert set(local.http.allowed_hosts) == {"localhost", "127.0.0.1", "::1"}
    exposed = parser.parse_args(["serve", "--model", str(tiny_ckpt_dir), "--host", "0.0.0.0"])
    assert config_from_args(exposed).http.allowed_hosts == ("*",)


# ---------------------------------------------------------------------------------------------
# Risk: a half-open connection that drips its request head is closed.


def test_header_timeout_closes_a_dripping_connection(loaded):
    model, tok = loaded
    cfg = _with_http(config(), header_timeout_s=0.5)
    app = create_app(model, tok, cfg, generate_fn=Scripted(tok, "ok"))
    with served_with_header_timeout(app, cfg) as server:
        sock = socket.create_connection((server.host, server.port))
        sock.settimeout(0.1)  # the pace of the drip, and each bounded wait for the close
        t0, closed = time.perf_counter(), False
        sock.sendall(b"GET /health HTTP/1.1\r\n")
        while not closed and time.perf_counter() - t0 < 5.0:
            try:
                closed = sock.recv(1024) == b""
            except TimeoutError:
                try:
                    sock.sendall(b"X")  # one more byte of a header that never ends
                except OSError:
                    closed = True
            except OSError:
                closed = True
        elapsed = time.perf_counter() - t0
        sock.close()
        assert closed and 0.4 < elapsed < 3.0, elapsed
        assert get(f"{server.url}/health")[0] == 200  # complete requests are served
