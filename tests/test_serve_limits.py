"""Every bad input gets a 4xx and the server stays healthy; the API key guards every route;
overload gets 429 fast; a client that goes away frees its slot."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from starlette.routing import Route

from mm15.serve.app import create_app
from mm15.serve.server import BackgroundServer
from mm15.services.checkpoint import load_checkpoint
from tests.serve_fixtures import Scripted, config, data_url, get, image_message, png_bytes, post

KEY = "test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
GOOD = data_url(png_bytes((64, 48)))


@pytest.fixture(scope="module")
def loaded(tiny_ckpt_dir):
    return load_checkpoint(tiny_ckpt_dir)


@pytest.fixture(scope="module")
def guarded(loaded):
    """Small limits and an API key; a scripted answer (no model time)."""
    model, tok = loaded
    cfg = config(
        api_key=KEY,
        media={"max_image_bytes": 20_000, "max_image_pixels": 100_000},
        limits={
            "max_images": 2,
            "max_body_bytes": 100_000,
            "max_prompt_tokens": 300,
            "max_tokens": 64,
            "default_max_tokens": 8,
        },
    )
    app = create_app(model, tok, cfg, generate_fn=Scripted(tok, "fine."))
    with BackgroundServer(app) as server:
        yield server


def chat(server, body, headers=AUTH):
    return post(f"{server.url}/v1/chat/completions", body, headers)


def request(messages, **kw):
    return {"model": "tiny", "messages": messages, **kw}


def _truncated_png() -> bytes:
    return png_bytes((200, 150), (10, 200, 90))[:300]


def _gif() -> bytes:
    return png_bytes((16, 16), fmt="GIF")


BAD = {
    "not json": (b"{this is not json", 400),
    "not an object": (b"[1, 2, 3]", 400),
    "no messages": ({"model": "tiny"}, 400),
    "empty messages": (request([]), 400),
    "unknown role": (request([{"role": "robot", "content": "hi"}]), 400),
    "unknown part type": (request([{"role": "user", "content": [{"type": "audio", "x": 1}]}]), 400),
    "image_url without url": (
        request([{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]),
        400,
    ),
    "wrong model": ({"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}]}, 404),
    "n > 1": (request([{"role": "user", "content": "hi"}], n=2), 400),
    "max_tokens above the cap": (request([{"role": "user", "content": "hi"}], max_tokens=65), 400),
    "max_tokens zero": (request([{"role": "user", "content": "hi"}], max_tokens=0), 400),
    "temperature out of range": (request([{"role": "user", "content": "hi"}], temperature=5), 400),
    "too many stop strings": (
        request([{"role": "user", "content": "hi"}], stop=list("abcde")),
        400,
    ),
    "too many images": (request(image_message("x", GOOD, GOOD, GOOD)), 400),
    "image in an assistant message": (
        request(
            [{"role": "assistant", "content": [{"type": "image_url", "image_url": {"url": GOOD}}]}]
        ),
        400,
    ),
    "image bytes above the limit": (request(image_message("x", data_url(bytes(30_000)))), 400),
    "pixels above the limit": (request(image_message("x", data_url(png_bytes((400, 400))))), 400),
    "format not allowed (GIF)": (request(image_message("x", data_url(_gif(), "image/gif"))), 400),
    "truncated PNG": (request(image_message("x", data_url(_truncated_png()))), 400),
    "random bytes": (request(image_message("x", data_url(b"\x89PNG not really" * 10))), 400),
    "not base64": (request(image_message("x", "data:image/png;base64,@@@@")), 400),
    "not an image media type": (request(image_message("x", data_url(b"hello", "text/plain"))), 400),
    "data URL without base64": (request(image_message("x", "data:image/png,abcd")), 400),
    "http fetch is off": (request(image_message("x", "http://127.0.0.1:1/x.png")), 400),
    "file URL without media root": (request(image_message("x", "file:///etc/passwd")), 400),
    "unknown scheme": (request(image_message("x", "ftp://example.org/x.png")), 400),
    "image token in text": (request([{"role": "user", "content": "look <image> here"}]), 400),
    "prompt above max_prompt_tokens": (request([{"role": "user", "content": "word " * 200}]), 400),
    "body above max_body_bytes": (request([{"role": "user", "content": "x" * 120_000}]), 413),
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_input_gets_a_clear_4xx(guarded, name):
    body, status = BAD[name]
    got, _, reply = chat(guarded, body)
    assert got == status, reply
    err = reply["error"]
    assert err["message"] and err["type"] and err["code"]


def test_server_is_healthy_after_bad_inputs(guarded):
    for body, _ in BAD.values():
        chat(guarded, body)
    assert get(f"{guarded.url}/health") == (200, {"status": "ok"})
    status, _, reply = chat(guarded, request(image_message("ok?", GOOD)))
    assert status == 200 and reply["choices"][0]["message"]["content"] == "fine."
    assert guarded.app.state.engine.pending == 0  # every refusal gave its slot back


def test_every_route_but_health_and_page_needs_the_key(guarded):
    routes = [r for r in guarded.app.routes if isinstance(r, Route)]
    public = {"/health", "/", "/static/app.js"}
    protected = [r for r in routes if r.path not in public]
    assert {r.path for r in protected} >= {"/v1/models", "/v1/chat/completions"}
    for route in protected:
        path = route.path.replace("{name}", "tiny")
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
            if "POST" in route.methods:
                status, resp_headers, _ = post(guarded.url + path, request([]), headers)
                assert resp_headers.get("www-authenticate") == "Bearer"
            else:
                status, _ = get(guarded.url + path, headers)
            assert status == 401, (path, headers)
    assert get(f"{guarded.url}/v1/models", AUTH)[0] == 200
    for path in public:
        assert get(guarded.url + path)[0] == 200


# ---------------------------------------------------------------------------------------------
# Overload and disconnects: one running slot, one queued slot, generation held by a gate.


@pytest.fixture
def held(loaded):
    model, tok = loaded
    gate = threading.Event()
    scripted = Scripted(tok, "x" * 50, gate)
    app = create_app(
        model, tok, config(engine={"max_batch": 1, "max_queue": 1}), generate_fn=scripted
    )
    server = BackgroundServer(app).start()
    server.gate, server.scripted, server.engine = gate, scripted, app.state.engine
    yield server
    gate.set()
    server.stop()


def _timed_post(server, body):
    t0 = time.perf_counter()
    status, headers, _ = chat(server, body, {})
    return status, headers, time.perf_counter() - t0


def test_burst_beyond_the_queue_gets_429_within_100ms(held):
    body = request(image_message("hi", GOOD), max_tokens=4)
    with ThreadPoolExecutor(12) as pool:
        running = pool.submit(chat, held, body, {})
        assert held.engine.wait_until(lambda e: e.running == 1, timeout=30)
        queued = pool.submit(chat, held, body, {})
        assert held.engine.wait_until(lambda e: e.pending == 2, timeout=30)
        burst = [pool.submit(_timed_post, held, body) for _ in range(10)]
        results = [f.result() for f in burst]
        assert all(status == 429 for status, _, _ in results), results
        assert all(h.get("retry-after") == "1" for _, h, _ in results)
        assert max(t for _, _, t in results) < 0.1, [round(t, 3) for _, _, t in results]
        assert not running.done() and not queued.done()  # the held work was not disturbed
        held.gate.set()
        assert running.result()[0] == 200 and queued.result()[0] == 200
    assert held.engine.wait_until(lambda e: e.pending == 0, timeout=30)
    assert chat(held, body, {})[0] == 200  # and it serves normally afterwards


def _open_stream(server, body) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
    conn = http.client.HTTPConnection(server.host, server.port, timeout=30)
    conn.request(
        "POST",
        "/v1/chat/completions",
        json.dumps({**body, "stream": True}),
        {"Content-Type": "application/json"},
    )
    resp = conn.getresponse()
    assert resp.status == 200
    first = resp.readline()
    assert first.startswith(b"data: ") and '"role"' in first.decode()
    return conn, resp


def test_disconnected_clients_free_their_slots(held):
    body = request(image_message("hi", GOOD), max_tokens=40)
    engine = held.engine
    with ThreadPoolExecutor(2) as pool:
        running = pool.submit(chat, held, body, {})
        assert engine.wait_until(lambda e: e.running == 1, timeout=30)
        # a queued streaming client goes away: its slot is free at once
        conn, _ = _open_stream(held, body)
        assert engine.pending == 2
        conn.sock.shutdown(socket.SHUT_RDWR)
        conn.close()
        assert engine.wait_until(lambda e: e.pending == 1 and e.cancelled == 1, timeout=10)
        # a queued non-streaming client goes away, likewise
        sock = socket.create_connection((held.host, held.port))
        data = json.dumps(body).encode()
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: "
            b"application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(data), data)
        )
        assert engine.wait_until(lambda e: e.pending == 2, timeout=10)
        sock.shutdown(socket.SHUT_RDWR)
        sock.close()
        assert engine.wait_until(lambda e: e.pending == 1 and e.cancelled == 2, timeout=10)
        held.gate.set()
        assert running.result()[0] == 200
    assert engine.wait_until(lambda e: e.pending == 0, timeout=10)
    assert held.scripted.calls == [1]  # the cancelled jobs never reached the generator


def test_disconnect_while_generating_stops_the_row(held):
    body = request(image_message("hi", GOOD), max_tokens=40)
    engine = held.engine
    conn, _ = _open_stream(held, body)
    assert engine.wait_until(lambda e: e.running == 1, timeout=10)
    conn.sock.shutdown(socket.SHUT_RDWR)
    conn.close()
    assert engine.wait_until(lambda e: e.cancelled == 1, timeout=10)
    held.gate.set()
    assert engine.wait_until(lambda e: e.pending == 0 and e.running == 0, timeout=10)
    assert held.scripted.kept == [0]  # ended at its first token, not after 40
    assert chat(held, body, {})[0] == 200
