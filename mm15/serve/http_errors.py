"""Every error the app answers, as OpenAI's ``{"error": {...}}`` body with its status."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from mm15.serve.engine import EngineDead
from mm15.serve.schemas import APIError

log = logging.getLogger("mm15.serve")


def error_response(err: APIError) -> JSONResponse:
    return JSONResponse(err.body(), err.status, headers=err.headers)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def api_error(_: Request, err: APIError):
        return error_response(err)

    @app.exception_handler(EngineDead)  # from reserve or submit: nobody would answer
    async def engine_dead(_: Request, err: EngineDead):
        return error_response(
            APIError(503, f"the server cannot generate: {err}", code="engine_dead")
        )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, err: StarletteHTTPException):
        return error_response(APIError(err.status_code, str(err.detail), code="http_error"))

    @app.exception_handler(Exception)
    async def server_error(_: Request, err: Exception):
        log.exception("internal error")
        return error_response(
            APIError(500, f"internal error: {type(err).__name__}", code="internal_error")
        )
