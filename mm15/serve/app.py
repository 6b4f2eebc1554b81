"""The OpenAI-compatible HTTP app: ``/v1/chat/completions``, ``/v1/models``, ``/health``, ``/``.

Order of work for a chat request, cheapest refusal first: API key (middleware) → body size
(413) → JSON and schema (400) → model name, counts, ``max_tokens`` (400/404) → admission
(429 at once when the queue is full) → images fetched/decoded and the prompt tokenised in a
worker thread (400) → the engine.  A client that disconnects -- streaming or not -- cancels
its job, which frees its slot.  Every error body is OpenAI's ``{"error": {...}}``.
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

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from mm15.serve.config import ServeConfig
from mm15.serve.engine import Engine, GenerateFn, Job, QueueFull
from mm15.serve.media import Fetcher
from mm15.serve.prepare import PreparedPrompt, check_request, prepare_prompt, regions_of
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
            err = APIError(401, "missing or wrong API key (send Authorization: Bearer <key>)",
                           code="invalid_api_key")  # fmt: skip
            resp = JSONResponse(err.body(), 401, headers={"WWW-Authenticate": "Bearer"})
            return await resp(scope, receive, send)
        return await self.app(scope, receive, send)


async def _read_body(request: Request, limit: int) -> bytes:
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > limit):
        raise APIError(413, f"request body of {length} bytes is above the limit of {limit:,} "
                       "(max_body_bytes)", code="body_too_large")  # fmt: skip
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise APIError(413, f"request body is above the limit of {limit:,} bytes "
                           "(max_body_bytes)", code="body_too_large")  # fmt: skip
        chunks.append(chunk)
    return b"".join(chunks)


def _error_response(err: APIError) -> JSONResponse:
    return JSONResponse(err.body(), err.status, headers=err.headers)


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def api_error(_: Request, err: APIError):
        return _error_response(err)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, err: StarletteHTTPException):
        return _error_response(APIError(err.status_code, str(err.detail), code="http_error"))

    @app.exception_handler(Exception)
    async def server_error(_: Request, err: Exception):
        log.exception("internal error")
        return _error_response(APIError(500, f"internal error: {type(err).__name__}",
                                        code="internal_error"))  # fmt: skip


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
        msg = {"role": "assistant", "content": text,
               "regions": regions_of(text, self.prepared.sizes)}  # fmt: skip
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
    started: int = field(default_factory=lambda: int(time.time()))

    async def health(self) -> dict:
        return {"status": "ok"}

    async def models(self) -> dict:
        card = {"id": self.cfg.model_name, "object": "model", "created": self.started,
                "owned_by": "mm15", "max_model_len": self.model_cfg.lm.max_seq_len}  # fmt: skip
        return {"object": "list", "data": [card]}

    async def model_card(self, name: str) -> dict:
        if name != self.cfg.model_name:
            raise APIError(404, f"model {name!r} does not exist", code="model_not_found")
        return {"id": name, "object": "model", "created": self.started, "owned_by": "mm15"}

    async def chat(self, request: Request) -> Response:
        cfg, engine = self.cfg, self.engine
        req = parse_request(await _read_body(request, cfg.limits.max_body_bytes))
        params = check_request(req, cfg)
        try:
            job = engine.reserve()
        except QueueFull as e:
            raise APIError(429, f"server busy: {e}; retry later", code="queue_full",
                           headers={"Retry-After": "1"}) from e  # fmt: skip
        try:
            prepared = await run_in_threadpool(
                prepare_prompt, req, params, cfg, self.model_cfg, self.tokenizer, self.fetcher
            )
            loop, events = asyncio.get_running_loop(), asyncio.Queue()
            engine.submit(job, prepared.encoded, params,
                          lambda ev: loop.call_soon_threadsafe(events.put_nowait, ev))  # fmt: skip
        except BaseException:
            engine.release(job)
            raise
        done = _Completion(cfg.model_name, prepared)
        if req.stream:
            return StreamingResponse(_stream(engine, job, events, done, req),
                                     media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"})  # fmt: skip
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
    routes = _Routes(cfg, engine, model.cfg, tokenizer, fetcher or Fetcher(cfg.media))

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        engine.start()
        try:
            yield
        finally:
            engine.stop()

    app = FastAPI(title="mm15", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.engine = engine
    if cfg.api_key is not None:
        public = {"/health"} | (set(STATIC) if cfg.web_ui else set())
        app.add_middleware(APIKeyMiddleware, key=cfg.api_key, public=frozenset(public))
    _install_error_handlers(app)
    app.get("/health")(routes.health)
    app.get("/v1/models")(routes.models)
    app.get("/v1/models/{name}")(routes.model_card)
    app.post("/v1/chat/completions")(routes.chat)
    for path, (name, media_type) in STATIC.items() if cfg.web_ui else ():
        app.add_api_route(path, _static_page(name, media_type), methods=["GET"],
                          include_in_schema=False)  # fmt: skip
    return app


def _static_page(name: str, media_type: str):
    """An endpoint serving the packaged file ``static/<name>`` (read once)."""
    text = (resources.files("mm15.serve") / "static" / name).read_text(encoding="utf-8")
    cls = HTMLResponse if name.endswith(".html") else Response

    async def page() -> Response:
        return cls(text, media_type=media_type)

    return page


async def _stream(engine: Engine, job: Job, events: asyncio.Queue, done: _Completion,
                  req: ChatRequest):  # fmt: skip
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


async def _complete(engine: Engine, job: Job, events: asyncio.Queue, done: _Completion,
                    request: Request) -> Response:  # fmt: skip
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
