"""The OpenAI-compatible HTTP app: ``/v1/chat/completions``, ``/v1/models``, ``/health``, ``/``.

Order of work for a chat request, cheapest refusal first: ``Host`` (421), ``Origin`` (403) and
``Content-Type`` (415) (:class:`BrowserGuardMiddleware`) → API key (middleware, 401) → body size
(413) → JSON, message and part counts, schema (400) → model name, counts, text size,
``max_tokens`` (400/404) → a live engine (503) → admission (429 at once when the queue is full)
→ images fetched/decoded within the server's pixel budget (503 when it stays full) and the
prompt tokenised in a worker thread (400) → the engine.  A client that disconnects --
streaming or not -- cancels its job, which frees its slot.  Every error body is OpenAI's
``{"error": {...}}``.  Connections that do not finish their request head in time are closed
(:class:`mm15.serve.server.HeadTimeoutProtocol`).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from importlib import resources
from urllib.parse import urlsplit

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from mm15.serve.config import ServeConfig
from mm15.serve.engine import Engine, EngineDead, GenerateFn, Job, QueueFull
from mm15.serve.media import Fetcher
from mm15.serve.prepare import (
    PixelBudget,
    PreparedPrompt,
    check_request,
    prepare_prompt,
    prompt_bytes_limit,
    regions_of,
)
from mm15.serve.schemas import APIError, ChatRequest, parse_request

log = logging.getLogger("mm15.serve")
STATIC = {"/": ("index.html", "text/html"), "/static/app.js": ("app.js", "text/javascript")}


class APIKeyMiddleware:
    """401 for every path but the public ones unless ``Authorization: Bearer <key>`` matches
    (a middleware, so routes added later are covered without thinking about it)."""

    def __init__(self, app, key: str, public: frozenset[str]):
        self.app, self.key, self.public = app, key.encode(), public

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] in self.public:
            return await self.app(scope, receive, send)
        auth = next((v for k, v in scope["headers"] if k == b"authorization"), b"")
        scheme, _, token = auth.partition(b" ")
        if scheme.lower() != b"bearer" or not hmac.compare_digest(token.strip(), self.key):
            err = APIError(
                401,
                "missing or wrong API key (send Authorization: Bearer <key>)",
                code="invalid_api_key",
            )
            resp = JSONResponse(err.body(), 401, headers={"WWW-Authenticate": "Bearer"})
            return await resp(scope, receive, send)
        return await self.app(scope, receive, send)


_DEFAULT_PORT = {"http": 80, "https": 443}


def _origin(scheme: str, netloc: str) -> tuple[str, str, int | None]:
    """(scheme, host, port) with the scheme's default port filled in ("[::1]" → "::1")."""
    try:
        url = urlsplit(f"{scheme}://{netloc}")
        return url.scheme, url.hostname or "", url.port or _DEFAULT_PORT.get(url.scheme)
    except ValueError:  # a malformed IPv6 literal, a bad port
        return scheme, "", None


class BrowserGuardMiddleware:
    """What a web page in the user's browser could otherwise do to a server without an API
    key: POST a ``text/plain`` body without a CORS preflight (CSRF) -- so POST needs
    ``Content-Type: application/json`` (415); reach a loopback server under its own DNS name
    rebound to 127.0.0.1 -- so the ``Host`` must be an allowed name (421); send a request from
    another origin -- so an ``Origin`` header must name this very host (403).  The page at /
    is same-origin and passes."""

    def __init__(self, app, allowed_hosts: tuple[str, ...]):
        self.app = app
        self.any_host = "*" in allowed_hosts
        self.hosts = {h.lower().strip("[]") for h in allowed_hosts}

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        err = self._check(scope, dict(scope["headers"]))
        if err is not None:
            return await _error_response(err)(scope, receive, send)
        return await self.app(scope, receive, send)

    def _check(self, scope, headers: dict[bytes, bytes]) -> APIError | None:
        host = headers.get(b"host", b"").decode("latin-1")
        own = _origin(scope["scheme"], host)
        if not self.any_host and own[1] not in self.hosts:
            return APIError(
                421,
                f"Host {host!r} is not one this server answers to (--allowed-hosts)",
                code="host_not_allowed",
            )
        origin = headers.get(b"origin", b"").decode("latin-1")
        scheme, _, netloc = origin.partition("://")
        if origin and (not host or _origin(scheme.lower(), netloc) != own):
            return APIError(
                403,
                f"cross-origin request from {origin!r} refused; only the "
                "server's own page may call it from a browser",
                code="origin_not_allowed",
            )
        if scope["method"] == "POST":
            kind = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
            if kind != b"application/json":
                return APIError(
                    415,
                    f"Content-Type must be application/json, not "
                    f"{kind.decode('latin-1') or '(none)'!r}",
                    code="unsupported_media_type",
                )
        return None


async def _read_body(request: Request, limit: int) -> bytes:
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > limit):
        raise APIError(
            413,
            f"request body of {length} bytes is above the limit of {limit:,} (max_body_bytes)",
            code="body_too_large",
        )
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise APIError(
                413,
                f"request body is above the limit of {limit:,} bytes (max_body_bytes)",
                code="body_too_large",
            )
        chunks.append(chunk)
    return b"".join(chunks)


def _error_response(err: APIError) -> JSONResponse:
    return JSONResponse(err.body(), err.status, headers=err.headers)


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def api_error(_: Request, err: APIError):
        return _error_response(err)

    @app.exception_handler(EngineDead)  # from reserve or submit: nobody would answer
    async def engine_dead(_: Request, err: EngineDead):
        return _error_response(
            APIError(503, f"the server cannot generate: {err}", code="engine_dead")
        )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, err: StarletteHTTPException):
        return _error_response(APIError(err.status_code, str(err.detail), code="http_error"))

    @app.exception_handler(Exception)
    async def server_error(_: Request, err: Exception):
        log.exception("internal error")
        return _error_response(
            APIError(500, f"internal error: {type(err).__name__}", code="internal_error")
        )


class _Completion:
    """One request's id, timestamps and the response bodies it turns into."""

    def __init__(self, model: str, prepared: PreparedPrompt):
        self.id, self.created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        self.model, self.prepared = model, prepared

    def _head(self, obj: str) -> dict:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model}

    def usage(self, n_tokens: int) -> dict:
        p = self.prepared.prompt_tokens
        return {"prompt_tokens": p, "completion_tokens": n_tokens, "total_tokens": p + n_tokens}

    def full(self, reason: str, text: str, n_tokens: int) -> dict:
        msg = {
            "role": "assistant",
            "content": text,
            "regions": regions_of(text, self.prepared.sizes),
        }
        choice = {"index": 0, "message": msg, "finish_reason": reason, "logprobs": None}
        return {**self._head("chat.completion"), "choices": [choice], "usage": self.usage(n_tokens)}

    def chunk(self, delta: dict, reason: str | None = None) -> str:
        choice = {"index": 0, "delta": delta, "finish_reason": reason, "logprobs": None}
        return _sse({**self._head("chat.completion.chunk"), "choices": [choice]})

    def usage_chunk(self, n_tokens: int) -> str:
        body = {**self._head("chat.completion.chunk"), "choices": [], "usage": self.usage(n_tokens)}
        return _sse(body)


def _sse(obj: dict | str) -> str:
    return f"data: {obj if isinstance(obj, str) else json.dumps(obj)}\n\n"


async def _wait_disconnect(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


@dataclass
class _Routes:
    """The API's endpoints over one engine (bound methods become the routes)."""

    cfg: ServeConfig
    engine: Engine
    model_cfg: object
    tokenizer: object
    fetcher: Fetcher
    budget: PixelBudget
    max_prompt_bytes: int
    started: int = field(default_factory=lambda: int(time.time()))

    async def health(self, detail: bool = False) -> Response:
        """200 ``{"status": "ok"}`` (with ``?detail=true`` the engine's counters too) while the
        engine runs; 503 ``{"status": "error", "error": why, "engine": ...}`` once it died."""
        state = self.engine.state()
        if not state["alive"]:
            why = state["error"] or "the generation thread is not running"
            return JSONResponse({"status": "error", "error": why, "engine": state}, 503)
        return JSONResponse({"status": "ok", "engine": state} if detail else {"status": "ok"})

    async def models(self) -> dict:
        card = {
            "id": self.cfg.model_name,
            "object": "model",
            "created": self.started,
            "owned_by": "mm15",
            "max_model_len": self.model_cfg.lm.max_seq_len,
        }
        return {"object": "list", "data": [card]}

    async def model_card(self, name: str) -> dict:
        if name != self.cfg.model_name:
            raise APIError(404, f"model {name!r} does not exist", code="model_not_found")
        return {"id": name, "object": "model", "created": self.started, "owned_by": "mm15"}

    async def chat(self, request: Request) -> Response:
        cfg, engine = self.cfg, self.engine
        lim = cfg.limits
        body = await _read_body(request, lim.max_body_bytes)
        req = parse_request(
            body, max_messages=lim.max_messages, max_content_parts=lim.max_content_parts
        )
        params = check_request(req, cfg, max_prompt_bytes=self.max_prompt_bytes)
        try:
            job = engine.reserve()
        except QueueFull as e:
            raise APIError(
                429,
                f"server busy: {e}; retry later",
                code="queue_full",
                headers={"Retry-After": "1"},
            ) from e
        try:
            prepared = await run_in_threadpool(
                prepare_prompt,
                req,
                params,
                cfg,
                self.model_cfg,
                self.tokenizer,
                self.fetcher,
                self.budget,
            )
            loop, events = asyncio.get_running_loop(), asyncio.Queue()
            engine.submit(
                job,
                prepared.encoded,
                params,
                lambda ev: loop.call_soon_threadsafe(events.put_nowait, ev),
            )
        except BaseException:
            engine.release(job)
            raise
        done = _Completion(cfg.model_name, prepared)
        if req.stream:
            return StreamingResponse(
                _stream(engine, job, events, done, req),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache"},
            )
        return await _complete(engine, job, events, done, request)


def create_app(
    model,
    tokenizer,
    cfg: ServeConfig,
    *,
    generate_fn: GenerateFn | None = None,
    fetcher: Fetcher | None = None,
) -> FastAPI:
    """The app for a loaded ``model`` and ``tokenizer``; its engine runs while the app does
    (``app.state.engine``).  ``generate_fn`` and ``fetcher``: see :class:`Engine`, :class:`Fetcher`."""
    engine = Engine(model, tokenizer, cfg.engine, generate_fn=generate_fn)
    budget = PixelBudget(cfg.media.max_pixels_in_flight, cfg.media.pixels_wait_s)
    routes = _Routes(
        cfg,
        engine,
        model.cfg,
        tokenizer,
        fetcher or Fetcher(cfg.media),
        budget,
        prompt_bytes_limit(cfg, model.cfg, tokenizer),
    )

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        engine.start()
        try:
            yield
        finally:
            engine.stop()

    app = FastAPI(title="mm15", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.engine, app.state.pixel_budget, app.state.serve_cfg = engine, budget, cfg
    if cfg.api_key is not None:
        public = {"/health"} | (set(STATIC) if cfg.web_ui else set())
        app.add_middleware(APIKeyMiddleware, key=cfg.api_key, public=frozenset(public))
    app.add_middleware(BrowserGuardMiddleware, allowed_hosts=cfg.http.allowed_hosts)  # outermost
    _install_error_handlers(app)
    app.get("/health")(routes.health)
    app.get("/v1/models")(routes.models)
    app.get("/v1/models/{name}")(routes.model_card)
    app.post("/v1/chat/completions")(routes.chat)
    for path, (name, media_type) in STATIC.items() if cfg.web_ui else ():
        app.add_api_route(
            path, _static_page(name, media_type), methods=["GET"], include_in_schema=False
        )
    return app


def _static_page(name: str, media_type: str):
    """An endpoint serving the packaged file ``static/<name>`` (read once)."""
    text = (resources.files("mm15.serve") / "static" / name).read_text(encoding="utf-8")
    cls = HTMLResponse if name.endswith(".html") else Response

    async def page() -> Response:
        return cls(text, media_type=media_type)

    return page


async def _stream(
    engine: Engine, job: Job, events: asyncio.Queue, done: _Completion, req: ChatRequest
):
    """SSE: a role chunk, content deltas, a last chunk with finish_reason and the regions,
    usage when asked, ``[DONE]``.  Starlette cancels this generator when the client leaves."""
    try:
        yield done.chunk({"role": "assistant", "content": ""})
        while True:
            ev = await events.get()
            if ev[0] == "delta":
                yield done.chunk({"content": ev[1]})
                continue
            if ev[0] == "error":
                yield _sse(APIError(500, ev[1], code="generation_failed").body())
            else:
                _, reason, text, n_tokens = ev
                yield done.chunk({"regions": regions_of(text, done.prepared.sizes)}, reason)
                if req.stream_options is not None and req.stream_options.include_usage:
                    yield done.usage_chunk(n_tokens)
            yield _sse("[DONE]")
            return
    finally:
        engine.cancel(job)  # no-op when it finished; frees the slot when the client left


async def _complete(
    engine: Engine, job: Job, events: asyncio.Queue, done: _Completion, request: Request
) -> Response:
    async def result():
        while (ev := await events.get())[0] == "delta":
            pass
        return ev

    waiter = asyncio.ensure_future(result())
    gone = asyncio.ensure_future(_wait_disconnect(request))
    try:
        await asyncio.wait({waiter, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not waiter.done():
            waiter.cancel()
            engine.cancel(job)
    if not waiter.done() or waiter.cancelled():
        return Response(status_code=499)  # nobody is listening any more
    ev = waiter.result()
    if ev[0] == "error":
        raise APIError(500, ev[1], code="generation_failed")
    return JSONResponse(done.full(*ev[1:]))
