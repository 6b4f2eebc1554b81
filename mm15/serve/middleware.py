"""The guards every request passes before a route sees it: ``Host`` (421), ``Origin`` (403) and
``Content-Type`` (415) (:class:`BrowserGuardMiddleware`, outermost), then the API key (401,
:class:`APIKeyMiddleware`).  Both are ASGI middlewares, so routes added later are covered."""

from __future__ import annotations

import hmac
from urllib.parse import urlsplit

from fastapi.responses import JSONResponse

from mm15.serve.http_errors import error_response
from mm15.serve.schemas import APIError


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
            return await error_response(err)(scope, receive, send)
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
