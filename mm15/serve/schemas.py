"""The OpenAI chat-completions request, as pydantic models, and the API's error type.

Unknown top-level fields are accepted and ignored (clients send ``user``, ``metadata`` …);
fields whose non-default values mm15 cannot honour (``n > 1``, ``logprobs``, tools) are a 400.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError


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
        kind = {401: "authentication_error", 404: "not_found_error", 413: "invalid_request_error",
                429: "rate_limit_error"}.get(self.status, "invalid_request_error")  # fmt: skip
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


Part = Annotated[TextPart | ImagePart, Field(discriminator="type")]


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
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = 1
    logprobs: bool | None = None
    tools: list | None = None


def parse_request(body: bytes) -> ChatRequest:
    """The request in ``body``, or a 400 that says which field is wrong and why."""
    try:
        return ChatRequest.model_validate_json(body)
    except ValidationError as e:
        errors = e.errors()
        if errors[0]["type"] == "json_invalid":
            raise APIError(400, f"request body is not valid JSON: {errors[0]['msg']}",
                           code="invalid_json") from e  # fmt: skip
        # The deepest error is the telling one ("content.0.text: Field required", not "content
        # should be a string"); union branch names and repeated tags are left out of the path.
        worst = max(errors, key=lambda err: len(err["loc"]))
        loc = ".".join(_clean_loc(worst["loc"])) or "body"
        more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
        raise APIError(400, f"invalid request: {loc}: {worst['msg']}{more}", param=loc) from e


def _clean_loc(loc: tuple) -> list[str]:
    out: list[str] = []
    for part in map(str, loc):
        if part == "str" or "[" in part or (out and out[-1] == part):
            continue
        out.append(part)
    return out
