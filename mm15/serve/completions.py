"""A running job's engine events → the chat completion the client gets: one JSON body, or
server-sent events (``chat.completion.chunk`` s, then ``[DONE]``).  Either way a client that
leaves cancels its job, which frees its slot."""

from __future__ import annotations

import asyncio
import json
import time
import uuid

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from mm15.serve.engine import Engine, Job
from mm15.serve.prepare import PreparedPrompt, regions_of
from mm15.serve.schemas import APIError, ChatRequest


class Completion:
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


async def stream_completion(
    engine: Engine, job: Job, events: asyncio.Queue, done: Completion, req: ChatRequest
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


async def await_completion(
    engine: Engine, job: Job, events: asyncio.Queue, done: Completion, request: Request
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
