"""The OpenAI-compatible HTTP app: ``/v1/chat/completions``, ``/v1/models``, ``/health``, ``/``.

Order of work for a chat request, cheapest refusal first: ``Host`` (421), ``Origin`` (403) and
``Content-Type`` (415) → API key (401) (both :mod:`mm15.serve.middleware`) → body size (413) →
JSON, message and part counts, schema (400) → model name, counts, text size, ``max_tokens``
(400/404) → a live engine (503) → admission (429 at once when the queue is full) → images
fetched/decoded within the server's pixel budget (503 when it stays full) and the prompt
tokenised in a worker thread (400) → the engine → the answer as JSON or server-sent events
(:mod:`mm15.serve.completions`).  A client that disconnects -- streaming or not -- cancels its
job, which frees its slot.  Every error body is OpenAI's ``{"error": {...}}``
(:mod:`mm15.serve.http_errors`).  Connections that do not finish their request head in time are
closed (:class:`mm15.serve.server.HeadTimeoutProtocol`).
"""

from __future__ import annotations

import asyncio
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from importlib import resources

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from mm15.serve.completions import Completion, await_completion, stream_completion
from mm15.serve.config import ServeConfig
from mm15.serve.engine import Engine, GenerateFn, Job, QueueFull, SamplingParams
from mm15.serve.fetch import Fetcher
from mm15.serve.http_errors import install_error_handlers
from mm15.serve.middleware import APIKeyMiddleware, BrowserGuardMiddleware
from mm15.serve.prepare import (
    PixelBudget,
    PreparedPrompt,
    check_request,
    prepare_prompt,
    prompt_bytes_limit,
)
from mm15.serve.schemas import APIError, ChatRequest, parse_request

STATIC = {"/": ("index.html", "text/html"), "/static/app.js": ("app.js", "text/javascript")}


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
        lim = self.cfg.limits
        body = await _read_body(request, lim.max_body_bytes)
        req = parse_request(
            body, max_messages=lim.max_messages, max_content_parts=lim.max_content_parts
        )
        params = check_request(req, self.cfg, max_prompt_bytes=self.max_prompt_bytes)
        job, events, prepared = await self._start(req, params)
        done = Completion(self.cfg.model_name, prepared)
        if req.stream:
            return StreamingResponse(
                stream_completion(self.engine, job, events, done, req),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache"},
            )
        return await await_completion(self.engine, job, events, done, request)

    async def _start(
        self, req: ChatRequest, params: SamplingParams
    ) -> tuple[Job, asyncio.Queue, PreparedPrompt]:
        """Admission (429 at once when the queue is full), then the prompt prepared in a worker
        thread and the job submitted; its events arrive on the returned queue."""
        cfg, engine = self.cfg, self.engine
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
        return job, events, prepared


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
    install_error_handlers(app)
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
