"""The judge of the judged benchmarks (MathVista, LLaVA-Bench, MM-Vet, Ferret-Bench, open-ended
video QA; :mod:`mm15.eval.judged_tasks`): any OpenAI-compatible chat endpoint, asked through the
official ``openai`` client, with every reply cached on disk.

* :class:`JudgeConfig`: the ``judge`` section of ``mm15 eval``'s config (URL, model, the name of
  the environment variable holding the API key, cache file, retries, timeout, concurrency).
* :class:`JudgeCache`: a JSONL file of ``{"key", "model", "reply"}`` lines.  The key is the
  SHA-256 of the judge model, the full message list and the sampling parameters
  (:func:`cache_key`), so a re-run asks nothing it asked before and any change of prompt, model
  or parameters asks again.  Each entry is appended by one ``write`` on an ``O_APPEND``
  descriptor under a lock: concurrent judges never interleave lines, and a crash can leave at
  most a torn last line, which the next load skips and counts (``corrupt``) and the next append
  starts after a newline.  Failed calls are not cached, so a re-run retries them.
* :class:`Judge`: ``ask(messages, temperature=, max_tokens=)`` → :class:`Reply` (the text, or
  why there is none).  Transient HTTP failures (connection errors, timeouts, 408/409/429/5xx) are
  retried ``max_retries`` times by the client with its backoff, then reported, never raised.

``openai`` is imported when the first call is made, so the CLI's parsers stay light.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

Messages = list[dict[str, str]]


@dataclass(kw_only=True)
class JudgeConfig:
    """Where the judge is (``mm15 eval --set judge.url=... --set judge.model=...``)."""

    url: str | None = None  # base URL of an OpenAI-compatible API, e.g. https://api.openai.com/v1
    model: str | None = None  # the judge model, e.g. gpt-4-0613 (MM-Vet's grader)
    api_key_env: str | None = "OPENAI_API_KEY"  # variable holding the key; None: send no key
    cache: str | None = None  # JSONL reply cache; None: <out>/judge_cache.jsonl
    max_retries: int = 3  # per call, on transient HTTP failures (the client's backoff)
    timeout_s: float = 120.0  # per HTTP request
    concurrency: int = 4  # judge calls in flight at once

    def __post_init__(self) -> None:
        for name, least in (("max_retries", 0), ("timeout_s", 0.001), ("concurrency", 1)):
            if getattr(self, name) < least:
                raise ValueError(f"judge.{name} must be >= {least}, got {getattr(self, name)}")


@dataclass
class Reply:
    """A judge's reply: ``text``, or ``error`` ("http: ..." / "empty: ...") when there is none."""

    text: str | None
    error: str | None = None
    cached: bool = False


def cache_key(model: str, messages: Messages, params: dict[str, Any]) -> str:
    """SHA-256 of the judge model, the full prompt and the sampling parameters."""
    body = json.dumps(
        {"model": model, "messages": messages, "params": params},
        sort_keys=True,
        ensure_ascii=False,
    )
    return hashlib.sha256(body.encode("utf-8")).hexdigest()


class JudgeCache:
    """The replies of earlier runs (module docstring); ``corrupt`` counts unreadable lines."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.entries: dict[str, str] = {}
        self.corrupt = 0
        self._torn_tail = False
        self._lock = threading.Lock()
        if self.path.is_file():
            self._load(self.path.read_bytes())

    def _load(self, data: bytes) -> None:
        for line in data.split(b"\n"):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
                key, reply = entry["key"], entry["reply"]
                if not isinstance(key, str) or not isinstance(reply, str):
                    raise TypeError("key and reply must be strings")
            except (ValueError, KeyError, TypeError):  # UnicodeDecodeError is a ValueError
                self.corrupt += 1
                continue
            self.entries[key] = reply
        self._torn_tail = bool(data) and not data.endswith(b"\n")

    def get(self, key: str) -> str | None:
        return self.entries.get(key)

    def put(self, key: str, model: str, reply: str) -> None:
        line = json.dumps({"key": key, "model": model, "reply": reply}, ensure_ascii=False) + "\n"
        with self._lock:
            if self._torn_tail:  # never glue a new entry onto a line a crash cut short
                line, self._torn_tail = "\n" + line, False
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                view = memoryview(line.encode("utf-8"))
                while view:  # one write for any line a regular file takes whole
                    view = view[os.write(fd, view) :]
            finally:
                os.close(fd)
            self.entries[key] = reply


class Judge:
    """Asks the endpoint of ``cfg`` (cached in ``cache_path``); counts ``calls`` (requests
    sent, the client's retries not counted) and ``hits`` (replies from the cache)."""

    def __init__(self, cfg: JudgeConfig, cache_path: str | Path) -> None:
        if not cfg.url or not cfg.model:
            raise ValueError(
                "judged tasks need a judge: --set judge.url=URL --set judge.model=NAME "
                "(any OpenAI-compatible endpoint, e.g. https://api.openai.com/v1 and gpt-4-0613)"
            )
        if cfg.api_key_env and not os.environ.get(cfg.api_key_env):
            raise ValueError(
                f"judge.api_key_env names ${cfg.api_key_env}, which is not set; set it, or "
                "--set judge.api_key_env=null for an endpoint that takes no key"
            )
        self.cfg = cfg
        self.cache = JudgeCache(cache_path)
        self.calls = 0
        self.hits = 0
        self._count = threading.Lock()
        self._client: Any = None

    def _openai(self) -> Any:
        import openai

        with self._count:
            if self._client is None:
                key = os.environ[self.cfg.api_key_env] if self.cfg.api_key_env else "none"
                self._client = openai.OpenAI(
                    base_url=self.cfg.url,
                    api_key=key,
                    max_retries=self.cfg.max_retries,
                    timeout=self.cfg.timeout_s,
                )
        return self._client

    def ask(self, messages: Messages, *, temperature: float, max_tokens: int) -> Reply:
        import openai

        model = str(self.cfg.model)
        params = {"temperature": temperature, "max_tokens": max_tokens}
        key = cache_key(model, messages, params)
        hit = self.cache.get(key)
        if hit is not None:
            with self._count:
                self.hits += 1
            return Reply(hit, cached=True)
        client = self._openai()
        with self._count:
            self.calls += 1
        try:
            resp = client.chat.completions.create(model=model, messages=messages, **params)
        except openai.APIError as e:
            return Reply(None, f"http: {type(e).__name__}: {e}")
        text = resp.choices[0].message.content if resp.choices else None
        if not text:
            return Reply(None, "empty: the judge's reply has no text")
        self.cache.put(key, model, text)
        return Reply(text)
