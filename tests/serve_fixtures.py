"""Helpers shared by the tests/test_serve_*.py files: images, a scripted generator, raw HTTP."""

from __future__ import annotations

import base64
import contextlib
import http.client
import io
import json
import threading

from PIL import Image

from mm15.serve.config import EngineConfig, LimitsConfig, MediaConfig, ServeConfig


def png_bytes(size=(64, 48), color=(200, 30, 30), fmt="PNG") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, fmt)
    return buf.getvalue()


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def image_message(text: str, *urls: str) -> list[dict]:
    parts = [{"type": "image_url", "image_url": {"url": u}} for u in urls]
    return [{"role": "user", "content": [*parts, {"type": "text", "text": text}]}]


def config(**kw) -> ServeConfig:
    """A ServeConfig named "tiny"; ``media``/``limits``/``engine`` take dicts of overrides."""
    return ServeConfig(
        model_name="tiny",
        api_key=kw.pop("api_key", None),
        media=MediaConfig(**kw.pop("media", {})),
        limits=LimitsConfig(**kw.pop("limits", {})),
        engine=EngineConfig(**kw.pop("engine", {})),
        **kw,
    )


class Scripted:
    """A ``generate_fn`` that answers every prompt with ``answer`` (then eos), without a model.

    ``gate`` (when given) holds every call until it is set, so tests can fill the queue.
    ``calls`` records batch sizes; ``kept[i]`` how many tokens row i of the last call kept
    going after (the callback returned True).
    """

    def __init__(self, tokenizer, answer: str, gate: threading.Event | None = None):
        self.ids = tokenizer.encode(answer)
        self.eos = tokenizer.eos_ids[0]
        self.gate = gate
        self.calls: list[int] = []
        self.kept: list[int] = []

    def __call__(self, prompts, settings, on_token) -> None:
        self.calls.append(len(prompts))
        if self.gate is not None and not self.gate.wait(timeout=10):
            raise TimeoutError("the test never opened the gate")
        live, self.kept = set(range(len(prompts))), [0] * len(prompts)
        for step in range(settings.max_new_tokens):
            tok = self.ids[step] if step < len(self.ids) else self.eos
            for i in sorted(live):
                if on_token(i, tok) is False or tok == self.eos:
                    live.discard(i)
                else:
                    self.kept[i] += 1
            if not live:
                return


def post(url: str, body: bytes | dict, headers: dict | None = None, timeout: float = 30.0):
    """(status, headers, parsed JSON or raw text) of one POST, with the stdlib client."""
    host, port = url.split("//")[1].split("/")[0].split(":")
    path = "/" + url.split("//")[1].split("/", 1)[1]
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        conn.request(
            "POST", path, body=data, headers={"Content-Type": "application/json", **(headers or {})}
        )
        resp = conn.getresponse()
        raw = resp.read().decode()
        try:
            parsed = json.loads(raw)
        except ValueError:
            parsed = raw
        return resp.status, dict(resp.getheaders()), parsed
    finally:
        conn.close()


def get(url: str, headers: dict | None = None) -> tuple[int, object]:
    host, port = url.split("//")[1].split("/")[0].split(":")
    path = "/" + url.split("//")[1].split("/", 1)[1]
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        raw = resp.read().decode()
        try:
            return resp.status, json.loads(raw)
        except ValueError:
            return resp.status, raw
    finally:
        conn.close()


@contextlib.contextmanager
def served_with_header_timeout(app, cfg: ServeConfig):
    """A running BackgroundServer whose uvicorn closes connections that do not finish their
    request head within ``cfg.http.header_timeout_s`` (mm15.serve.server.uvicorn_config; the
    app of ``create_app`` carries its config, so this checks that wiring)."""
    from mm15.serve.server import BackgroundServer

    assert app.state.serve_cfg is cfg
    with BackgroundServer(app) as server:
        yield server
