"""``http(s)://`` image URLs, fetched under :class:`MediaConfig`'s rules (reliability note T7).

Refused unless the host is in ``MediaConfig.allow_fetch_hosts`` (exact, case-insensitive names or
IP literals).  The host is resolved once and **every** address it resolves to must be public (not
private, loopback, link-local, multicast, reserved or unspecified; IPv4-mapped IPv6 is unwrapped
first), then the connection goes to that vetted address (no second lookup a DNS rebinding could
change).  Redirects are followed by hand, at most ``max_redirects``, each hop checked like the
first (scheme, host, addresses).  The whole exchange -- connect, TLS handshake, request, status
line and headers, body -- runs under one overall deadline (``fetch_timeout_s``); the head is at
most ``MAX_RESPONSE_HEAD_BYTES`` and the body ``max_image_bytes`` (``max_video_bytes`` for a
video), so a slow or huge response is cut off.  Every refusal is an :class:`APIError` 400 that says why.
"""

from __future__ import annotations

import http.client
import io
import ipaddress
import socket
import ssl
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field

from mm15.serve.config import MediaConfig, MediaKind
from mm15.serve.schemas import APIError

_REDIRECTS = (301, 302, 303, 307, 308)
MAX_FETCH_URL_CHARS = 8192  # an http(s) image URL (common servers refuse request lines near this)
MAX_RESPONSE_HEAD_BYTES = 64 * 1024  # a fetched response's status line and headers
_URL_SAFE = "".join(map(chr, range(0x21, 0x7F)))  # printable ASCII: left as it is by quote()


def _bad(message: str, code: str = "invalid_image_url") -> APIError:
    return APIError(400, message, code=code)


def address_refused(ip: str) -> str | None:
    """Why ``ip`` may not be fetched from (None when it is a public unicast address)."""
    addr = ipaddress.ip_address(ip.split("%")[0])  # drop an IPv6 zone id
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    for what in ("loopback", "link_local", "multicast", "unspecified", "private", "reserved"):
        if getattr(addr, f"is_{what}"):
            return what.replace("_", "-")
    return None if addr.is_global else "not globally routable"


def resolve_host(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to (IP literals, decimal forms included, resolve to
    themselves)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as e:
        raise _bad(f"cannot resolve host {host!r}: {e}", "fetch_failed") from e
    return list(dict.fromkeys(info[4][0] for info in infos))


def dial_tcp(ip: str, port: int, timeout: float) -> socket.socket:
    return socket.create_connection((ip, port), timeout=timeout)


@dataclass
class Fetcher:
    """Fetches images over http(s) under :class:`MediaConfig`'s rules.  ``resolve`` and
    ``dial`` are the DNS lookup and TCP connect (tests replace them to stand in for DNS)."""

    cfg: MediaConfig
    resolve: Callable[[str, int], list[str]] = field(default=resolve_host)
    dial: Callable[[str, int, float], socket.socket] = field(default=dial_tcp)

    def fetch(self, url: str, where: str = "image_url", *, kind: MediaKind = "image") -> bytes:
        """The body of ``url`` (at most ``cfg.max_bytes(kind)``), under the module's rules."""
        if not self.cfg.allow_fetch_hosts:
            raise _bad(
                f"{where}: fetching http(s) URLs is disabled on this server (send a data "
                "URL, or start it with --allow-fetch HOST)",
                "fetch_disabled",
            )
        deadline = time.monotonic() + self.cfg.fetch_timeout_s
        for _ in range(self.cfg.max_redirects + 1):
            scheme, host, port, target = self._check_url(url, where)
            ip = self._vetted_address(host, port, where)
            status, location, body = self._get(
                scheme, host, port, ip, target, deadline, where, kind
            )
            if status in _REDIRECTS:
                if not location:
                    raise _bad(f"{where}: redirect {status} without a Location", "fetch_failed")
                url = urllib.parse.urljoin(url, location)
                continue
            if status != 200:
                raise _bad(f"{where}: {host} answered HTTP {status}", "fetch_failed")
            return body
        raise _bad(f"{where}: more than {self.cfg.max_redirects} redirects", "fetch_failed")

    def _check_url(self, url: str, where: str) -> tuple[str, str, int, str]:
        if len(url) > MAX_FETCH_URL_CHARS:
            raise _bad(
                f"{where}: URL is {len(url):,} characters, above the limit of "
                f"{MAX_FETCH_URL_CHARS:,}"
            )
        try:
            parts = urllib.parse.urlsplit(url)
            port = parts.port
        except ValueError as e:
            raise _bad(f"{where}: malformed URL: {e}") from e
        if parts.scheme not in ("http", "https"):
            raise _bad(
                f"{where}: redirect to a {parts.scheme or 'relative'} URL refused", "fetch_refused"
            )
        host = (parts.hostname or "").lower()
        if parts.username is not None or parts.password is not None:
            raise _bad(f"{where}: URLs with credentials are refused", "fetch_refused")
        allowed = {h.lower() for h in self.cfg.allow_fetch_hosts}
        if host not in allowed:
            raise _bad(f"{where}: host {host!r} is not in the fetch allow-list", "fetch_refused")
        default = 443 if parts.scheme == "https" else 80
        return parts.scheme, host, port or default, _request_target(parts, where)

    def _vetted_address(self, host: str, port: int, where: str) -> str:
        ips = self.resolve(host, port)
        if not ips:
            raise _bad(f"{where}: host {host!r} has no address", "fetch_failed")
        if not self.cfg.allow_private_addresses:
            for ip in ips:
                why = address_refused(ip)
                if why is not None:
                    raise _bad(
                        f"{where}: host {host!r} resolves to {ip}, a {why} address; refused",
                        "fetch_refused",
                    )
        return ips[0]

    def _get(
        self,
        scheme: str,
        host: str,
        port: int,
        ip: str,
        target: str,
        deadline: float,
        where: str,
        kind: MediaKind,
    ) -> tuple[int, str | None, bytes]:
        """One GET to the vetted ``ip``: (status, Location, body ≤ ``cfg.max_bytes(kind)``).  The whole
        exchange -- connect, TLS handshake, request, status line and headers, body -- ends by
        ``deadline``; the status line and headers are at most ``MAX_RESPONSE_HEAD_BYTES``."""
        try:
            sock = self._connect(scheme, host, port, ip, deadline, where)
            conn = http.client.HTTPConnection(host, port, timeout=_remaining(deadline, where))
            conn.sock = sock  # connect to the vetted address, never re-resolve
            try:
                headers = {"Accept": f"{kind}/*", "User-Agent": "mm15"}
                conn.request("GET", target, headers=headers)
                resp = conn.getresponse()
                sock.head_limit = None  # the body is bounded by max_bytes(kind) below
                if resp.status != 200:
                    return resp.status, resp.getheader("Location"), b""
                return 200, None, self._read_body(resp, where, kind)
            finally:
                conn.close()
                sock.sock.close()
        except (OSError, http.client.HTTPException) as e:
            if time.monotonic() >= deadline or isinstance(e, TimeoutError):
                raise _bad(
                    f"{where}: fetching from {host} timed out "
                    f"(fetch_timeout_s={self.cfg.fetch_timeout_s})",
                    "fetch_timeout",
                ) from e
            raise _bad(f"{where}: fetching from {host} failed: {e}", "fetch_failed") from e

    def _connect(
        self, scheme: str, host: str, port: int, ip: str, deadline: float, where: str
    ) -> _DeadlineSocket:
        sock = self.dial(ip, port, _remaining(deadline, where))
        try:
            if scheme == "https":  # the handshake runs under one timeout: the time left
                sock.settimeout(_remaining(deadline, where))
                sock = ssl.create_default_context().wrap_socket(sock, server_hostname=host)
        except BaseException:
            sock.close()
            raise
        return _DeadlineSocket(sock, deadline, where, head_limit=MAX_RESPONSE_HEAD_BYTES)

    def _read_body(self, resp: http.client.HTTPResponse, where: str, kind: MediaKind) -> bytes:
        max_bytes = self.cfg.max_bytes(kind)
        length = resp.getheader("Content-Length")
        if length is not None and length.isdigit() and int(length) > max_bytes:
            raise _bad(
                f"{where}: {kind} is {int(length):,} bytes, above the limit of "
                f"{max_bytes:,} (max_{kind}_bytes)",
                f"{kind}_too_large",
            )
        chunks, size = [], 0
        while chunk := resp.read1(65536):
            chunks.append(chunk)
            size += len(chunk)
            if size > max_bytes:
                raise _bad(
                    f"{where}: {kind} is over the limit of {max_bytes:,} bytes (max_{kind}_bytes)",
                    f"{kind}_too_large",
                )
        return b"".join(chunks)


class _DeadlineSocket(io.RawIOBase):
    """The socket :mod:`http.client` is given (and the raw stream its ``makefile`` reads).
    Before every send and receive the timeout is set to the time left before ``deadline``:
    http.client reads the status line and headers with the socket's timeout per ``recv``, so
    otherwise a server dripping its headers a byte at a time would hold the fetch forever.
    While ``head_limit`` is not None at most that many bytes may be received (the response
    head; the caller lifts it once the head is parsed)."""

    def __init__(self, sock: socket.socket, deadline: float, where: str, *, head_limit: int):
        self.sock, self.deadline, self.where = sock, deadline, where
        self.head_limit: int | None = head_limit

    def sendall(self, data: bytes) -> None:
        self.sock.settimeout(_remaining(self.deadline, self.where))
        self.sock.sendall(data)  # one timeout for the whole send (Python ≥ 3.5)

    def readinto(self, buf) -> int:
        if self.head_limit is not None:
            if self.head_limit <= 0:
                raise _bad(
                    f"{self.where}: the response's status line and headers are over "
                    f"{MAX_RESPONSE_HEAD_BYTES:,} bytes; refused",
                    "fetch_failed",
                )
            buf = memoryview(buf)[: self.head_limit]
        self.sock.settimeout(_remaining(self.deadline, self.where))
        n = self.sock.recv_into(buf)
        if self.head_limit is not None:
            self.head_limit -= n
        return n

    def readable(self) -> bool:
        return True

    def makefile(self, mode: str) -> io.BufferedReader:
        assert mode == "rb", mode  # all http.client asks for
        return io.BufferedReader(self)

    def close(self) -> None:
        pass  # http.client closes it while the response may still read; _get closes self.sock


def _request_target(parts: urllib.parse.SplitResult, where: str) -> str:
    """The request line's path and query: non-ASCII characters percent-encoded as UTF-8 (as
    browsers do); spaces, control characters and lone surrogates refused."""
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    bad = next((c for c in target if c <= " " or c == "\x7f"), None)
    if bad is not None:
        raise _bad(f"{where}: URL has a space or control character ({bad!r}) in its path or query")
    try:
        return urllib.parse.quote(target, safe=_URL_SAFE)
    except UnicodeEncodeError as e:
        raise _bad(f"{where}: URL is not valid Unicode ({e.reason})") from e


def _remaining(deadline: float, where: str) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError(f"{where}: deadline passed")
    return left
