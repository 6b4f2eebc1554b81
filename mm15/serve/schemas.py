"""The OpenAI chat-completions request, as pydantic models, and the API's error type.

Unknown top-level fields are accepted and ignored (clients send ``user``, ``metadata`` …);
fields whose non-default values mm15 cannot honour (``n > 1``, ``logprobs``, tools) are a 400.
"""

from __future__ import annotations

from typing import Annotated, Literal

import pydantic_core
from pydantic import BaseModel, ConfigDict, Field, ValidationError

# torch.Generator.manual_seed takes -2**63 .. 2**64 - 1; OpenAI's seed is an int64.
SEED_MIN, SEED_MAX = -(2**63), 2**63 - 1


class APIError(Exception):
    """An error answered as ``{"error": {"message", "type", "param", "code"}}`` (OpenAI's shape)."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str = "invalid_request",
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.headers = headers or {}

    def body(self) -> dict:
        kind = {
            401: "authentication_error",
            404: "not_found_error",
            413: "invalid_request_error",
            429: "rate_limit_error",
        }.get(self.status, "invalid_request_error")
        if self.status >= 500:
            kind = "server_error"
        err = {"message": self.message, "type": kind, "param": self.param, "code": self.code}
        return {"error": err}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ImageURL(_Strict):
    url: str
    detail: Literal["auto", "low", "high"] | None = None  # accepted, ignored (one tiling rule)


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class ImagePart(_Strict):
    type: Literal["image_url"]
    image_url: ImageURL


class VideoURL(_Strict):
    url: str


class VideoPart(_Strict):
    """vLLM's OpenAI-server video part (OpenAI's API has none): ``{"type": "video_url",
    "video_url": {"url": ...}}``."""

    type: Literal["video_url"]
    video_url: VideoURL


Part = Annotated[TextPart | ImagePart | VideoPart, Field(discriminator="type")]


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")  # e.g. "name"

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[Part] | None = None


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    top_k: int = Field(default=0, ge=0)  # an extension (vLLM has it too); 0 = off
    seed: int | None = Field(default=None, ge=SEED_MIN, le=SEED_MAX)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = 1
    logprobs: bool | None = None
    tools: list | None = None


def parse_request(
    body: bytes, *, max_messages: int | None = None, max_content_parts: int | None = None
) -> ChatRequest:
    """The request in ``body``, or a 400 that says which field is wrong and why.

    The JSON is parsed first and the messages and content parts are counted before the request
    model is built: building it costs several times the parse with the GIL held
    (benchmarks/serve_parse_bench.py), so a body of many tiny messages is refused at the
    cheaper step."""
    try:
        data = pydantic_core.from_json(body)
    except ValueError as e:
        raise APIError(400, f"request body is not valid JSON: {e}", code="invalid_json") from e
    _check_counts(data, max_messages, max_content_parts)
    try:
        return ChatRequest.model_validate(data)
    except ValidationError as e:
        errors = e.errors()
        # The deepest error is the telling one ("content.0.text: Field required", not "content
        # should be a string"); union branch names and repeated tags are left out of the path.
        worst = max(errors, key=lambda err: len(err["loc"]))
        loc = ".".join(_clean_loc(worst["loc"])) or "body"
        more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
        raise APIError(400, f"invalid request: {loc}: {worst['msg']}{more}", param=loc) from e


def _check_counts(data: object, max_messages: int | None, max_parts: int | None) -> None:
    messages = data.get("messages") if isinstance(data, dict) else None
    if not isinstance(messages, list):
        return  # the model's validation says what is wrong
    if max_messages is not None and len(messages) > max_messages:
        raise APIError(
            400,
            f"{len(messages)} messages in the request; at most {max_messages} "
            "are allowed (max_messages)",
            param="messages",
            code="too_many_messages",
        )
    contents = (m.get("content") for m in messages if isinstance(m, dict))
    parts = sum(len(c) for c in contents if isinstance(c, list))
    if max_parts is not None and parts > max_parts:
        raise APIError(
            400,
            f"{parts} content parts in the request; at most {max_parts} are "
            "allowed (max_content_parts)",
            param="messages",
            code="too_many_parts",
        )


def _clean_loc(loc: tuple) -> list[str]:
    out: list[str] = []
    for part in map(str, loc):
        if part == "str" or "[" in part or (out and out[-1] == part):
            continue
        out.append(part)
    return out
