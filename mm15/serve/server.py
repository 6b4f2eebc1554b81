"""uvicorn for mm15's app: the header timeout it lacks (:class:`HeadTimeoutProtocol`,
:func:`uvicorn_config`, used by ``mm15 serve``), and :class:`BackgroundServer`, which runs the
app in a background thread on a free port (tests, the benchmarks, notebooks).

The listening socket is bound and listening before the thread starts, so the server is
reachable the moment :meth:`BackgroundServer.start` returns: connections made before uvicorn's
loop runs wait in the socket's backlog -- nothing to poll.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from mm15.serve.config import HTTPConfig, ServeConfig

log = logging.getLogger("mm15.serve")


class HeadTimeoutProtocol(H11Protocol):
    """uvicorn's h11 protocol that closes a connection whose request head (request line and
    headers) is not complete ``header_timeout_s`` after the connection opened or after its
    previous response (nginx's ``client_header_timeout``).  uvicorn 0.54 has none: its
    keep-alive timer starts only after a response and stops at the first byte received, so a
    client sending a byte now and then holds a connection for ever."""

    header_timeout_s = 10.0
    _head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:  # the head is complete
            self._disarm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
            self._arm()  # waiting for the next request's head

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        self._head_timer = self.loop.call_later(self.header_timeout_s, self._head_timeout)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timeout(self) -> None:
        self._head_timer = None
        if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
            log.info(
                "closing a connection that sent no complete request head in %.1f s",
                self.header_timeout_s,
            )
            self.transport.close()


def uvicorn_config(app, cfg: ServeConfig | None = None, **kw) -> uvicorn.Config:
    """uvicorn's settings for ``app``, with the header timeout of ``cfg.http`` (default: the
    config ``create_app`` stored on the app, else :class:`HTTPConfig`'s)."""
    cfg = cfg if cfg is not None else getattr(getattr(app, "state", None), "serve_cfg", None)
    http = cfg.http if cfg is not None else HTTPConfig()
    protocol = type(
        "HeadTimeoutProtocol", (HeadTimeoutProtocol,), {"header_timeout_s": http.header_timeout_s}
    )
    return uvicorn.Config(app, http=protocol, **kw)


class BackgroundServer:
    def __init__(self, app, host: str = "127.0.0.1", port: int = 0):
        self.app = app
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, port))
        self.host, self.port = self._sock.getsockname()[:2]
        config = uvicorn_config(
            app, log_level="warning", log_config=None, lifespan="on", timeout_graceful_shutdown=5
        )
        self._server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> BackgroundServer:
        self._sock.listen(2048)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._sock]}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
        self._sock.close()

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
