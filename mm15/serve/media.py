"""``image_url`` → a decoded image, safely (reliability notes T7, T13).

Three kinds of URL:

* ``data:image/...;base64,...`` -- always accepted; the size is checked from the base64 length
  before anything is decoded.
* ``http(s)://`` -- refused unless the host is in ``MediaConfig.allow_fetch_hosts`` (exact,
  case-insensitive names or IP literals).  The host is resolved once and **every** address it
  resolves to must be public (not private, loopback, link-local, multicast, reserved or
  unspecified; IPv4-mapped IPv6 is unwrapped first), then the connection goes to that vetted
  address (no second lookup a DNS rebinding could change).  Redirects are followed by hand,
  at most ``max_redirects``, each hop checked like the first (scheme, host, addresses).  The whole
  exchange -- connect, TLS handshake, request, status line and headers, body -- runs under one
  overall deadline (``fetch_timeout_s``); the head is at most ``MAX_RESPONSE_HEAD_BYTES`` and the
  body ``max_image_bytes``, so a slow or huge response is cut off.
* ``file://`` -- refused unless ``MediaConfig.media_root`` is set; then only regular files below
  the root, opened component by component with no symlink followed (:func:`read_local_file`).

Decoding is :func:`mm15.data.image_io.open_image` (allowed formats only, pixels checked from the
header before decoding).  Every refusal is an :class:`APIError` 400 that says why.
"""

from __future__ import annotations

import base64
import binascii
import errno
import http.client
import io
import ipaddress
import os
import re
import socket
import ssl
import stat
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field

from PIL import Image

from mm15.config import ImageConfig
from mm15.data.image_io import ImageDecodeError, open_image
from mm15.serve.config import MediaConfig
from mm15.serve.schemas import APIError

_DATA_URL = re.compile(r"data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(?:;[^,;]*)*),", re.ASCII)
_REDIRECTS = (301, 302, 303, 307, 308)
MAX_FETCH_URL_CHARS = 8192  # an http(s) image URL (common servers refuse request lines near this)
MAX_RESPONSE_HEAD_BYTES = 64 * 1024  # a fetched response's status line and headers
_URL_SAFE = "".join(map(chr, range(0x21, 0x7F)))  # printable ASCII: left as it is by quote()
_WHITESPACE = re.compile(rb"\s+")


def _bad(message: str, code: str = "invalid_image_url") -> APIError:
    return APIError(400, message, code=code)


def decode_data_url(url: str, max_bytes: int, where: str) -> bytes:
    """The bytes of a base64 ``data:image/*`` URL, at most ``max_bytes`` of them."""
    m = _DATA_URL.match(url)
    if m is None:
        raise _bad(f"{where}: malformed data URL (want data:image/<type>;base64,<data>)")
    mime, params = (m.group("mime") or "").lower(), m.group("params").lower().split(";")
    if not mime.startswith("image/"):
        raise _bad(f"{where}: data URL media type {mime or '(none)'!r} is not image/*")
    if "base64" not in params:
        raise _bad(f"{where}: data URL is not base64-encoded (want ';base64,')")
    payload = _WHITESPACE.sub(b"", url[m.end() :].encode("ascii", errors="replace"))
    if len(payload) // 4 * 3 > max_bytes + 2:
        raise _bad(
            f"{where}: image is about {len(payload) // 4 * 3:,} bytes, above the limit "
            f"of {max_bytes:,} (max_image_bytes)",
            "image_too_large",
        )
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as e:
        raise _bad(f"{where}: data URL has invalid base64: {e}") from e
    if len(data) > max_bytes:
        raise _bad(
            f"{where}: image is {len(data):,} bytes, above the limit of {max_bytes:,} "
            "(max_image_bytes)",
            "image_too_large",
        )
    return data


def read_local_file(url: str, cfg: MediaConfig, where: str) -> bytes:
    """A ``file://`` URL's bytes, only for regular files inside ``cfg.media_root``.

    There is no check-then-open: the root is opened as a directory and every component below it
    is opened relative to its parent's descriptor with ``O_NOFOLLOW`` (openat), so a path swapped
    while it is being read cannot lead outside the root.  **No symbolic link is followed below
    the root** (one inside pointing inside is refused too); the root itself may be or pass
    through a symlink, the operator's choice.  ``..`` is refused; the file's type and size come
    from ``fstat`` on the opened descriptor, and the final open is non-blocking, so a FIFO or a
    device is refused without blocking.
    """
    if cfg.media_root is None:
        raise _bad(
            f"{where}: file:// URLs are disabled (the server has no --media-root)",
            "local_files_disabled",
        )
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError as e:
        raise _bad(f"{where}: malformed file URL: {e}") from e
    if parts.netloc not in ("", "localhost") or parts.query or parts.fragment:
        raise _bad(f"{where}: a file URL must be file:///absolute/path (no host, query, fragment)")
    names = _names_below_root(parts.path, cfg.media_root, where)
    fd = _open_below_root(cfg.media_root, names, parts.path, where)
    try:
        st = os.fstat(fd)  # the opened file's type and size, not the path's
        if not stat.S_ISREG(st.st_mode):
            raise _bad(f"{where}: {parts.path!r} is not a regular file")
        if st.st_size > cfg.max_image_bytes:
            raise _bad(
                f"{where}: file is {st.st_size:,} bytes, above the limit of "
                f"{cfg.max_image_bytes:,} (max_image_bytes)",
                "image_too_large",
            )
        chunks, size = [], 0
        while size <= cfg.max_image_bytes:  # bounded even if the file grows after fstat()
            chunk = os.read(fd, min(2**20, cfg.max_image_bytes + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as e:
        raise _bad(f"{where}: cannot read {parts.path!r}: {e.strerror}", "image_missing") from e
    finally:
        os.close(fd)
    if size > cfg.max_image_bytes:
        raise _bad(
            f"{where}: file is over the limit of {cfg.max_image_bytes:,} bytes", "image_too_large"
        )
    return b"".join(chunks)


def _names_below_root(path: str, media_root: str, where: str) -> list[bytes]:
    """The components of a file URL's ``path`` below the media root (raw bytes, unquoted)."""
    try:
        raw = urllib.parse.unquote_to_bytes(path)
    except UnicodeEncodeError as e:  # a lone surrogate from a JSON "\udXXX" escape
        raise _bad(f"{where}: the file URL's path is not valid Unicode: {e.reason}") from e
    if b"\0" in raw:
        raise _bad(f"{where}: the file URL's path has a NUL byte (%00); no file is named that")
    if not raw.startswith(b"/"):
        raise _bad(f"{where}: a file URL must be file:///absolute/path, not {path!r}")
    comps = [c for c in raw.split(b"/") if c not in (b"", b".")]
    if b".." in comps:
        raise _bad(
            f"{where}: {path!r} has a '..' component; refused, as it could lead outside "
            "the media root",
            "path_outside_root",
        )
    for root in (os.path.abspath(media_root), os.path.realpath(media_root)):
        prefix = [c for c in os.fsencode(root).split(b"/") if c]
        if comps[: len(prefix)] == prefix:
            return comps[len(prefix) :]
    raise _bad(f"{where}: {path!r} is outside the media root", "path_outside_root")


def _open_below_root(media_root: str, names: list[bytes], path: str, where: str) -> int:
    """A read-only descriptor of ``media_root/names...``, opened component by component."""
    if os.open not in os.supports_dir_fd or not hasattr(os, "O_NOFOLLOW"):
        raise _bad(
            f"{where}: file:// URLs need openat() and O_NOFOLLOW, which this OS lacks",
            "local_files_disabled",
        )
    walk = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    last = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(media_root, os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        raise _bad(
            f"{where}: the media root cannot be opened: {e.strerror}", "image_missing"
        ) from e
    names = names or [b"."]  # the root itself: refused below as not a regular file
    for i, name in enumerate(names):
        try:
            child = os.open(name, last if i == len(names) - 1 else walk, dir_fd=fd)
        except OSError as e:
            raise _walk_error(e, fd, name, path, where) from e
        finally:
            os.close(fd)
        fd = child
    return fd


def _walk_error(e: OSError, dir_fd: int, name: bytes, path: str, where: str) -> APIError:
    """The 400 for a failed open below the root (``dir_fd`` still open)."""
    if e.errno in (errno.ELOOP, errno.ENOTDIR):
        try:
            link = stat.S_ISLNK(os.lstat(name, dir_fd=dir_fd).st_mode)
        except OSError:
            link = False
        if link or e.errno == errno.ELOOP:
            return _bad(
                f"{where}: {path!r} is or passes through a symbolic link; no symlink is "
                "followed below the media root (it could lead outside the media root)",
                "path_outside_root",
            )
    return _bad(f"{where}: cannot read {path!r}: {e.strerror}", "image_missing")


# ---------------------------------------------------------------------------------------------
# http(s)


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

    def fetch(self, url: str, where: str = "image_url") -> bytes:
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
            status, location, body = self._get(scheme, host, port, ip, target, deadline, where)
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
        self, scheme: str, host: str, port: int, ip: str, target: str, deadline: float, where: str
    ) -> tuple[int, str | None, bytes]:
        """One GET to the vetted ``ip``: (status, Location, body ≤ max_image_bytes).  The whole
        exchange -- connect, TLS handshake, request, status line and headers, body -- ends by
        ``deadline``; the status line and headers are at most ``MAX_RESPONSE_HEAD_BYTES``."""
        try:
            sock = self._connect(scheme, host, port, ip, deadline, where)
            conn = http.client.HTTPConnection(host, port, timeout=_remaining(deadline, where))
            conn.sock = sock  # connect to the vetted address, never re-resolve
            try:
                conn.request("GET", target, headers={"Accept": "image/*", "User-Agent": "mm15"})
                resp = conn.getresponse()
                sock.head_limit = None  # the body is bounded by max_image_bytes below
                if resp.status != 200:
                    return resp.status, resp.getheader("Location"), b""
                return 200, None, self._read_body(resp, where)
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

    def _read_body(self, resp: http.client.HTTPResponse, where: str) -> bytes:
        max_bytes = self.cfg.max_image_bytes
        length = resp.getheader("Content-Length")
        if length is not None and length.isdigit() and int(length) > max_bytes:
            raise _bad(
                f"{where}: image is {int(length):,} bytes, above the limit of "
                f"{max_bytes:,} (max_image_bytes)",
                "image_too_large",
            )
        chunks, size = [], 0
        while chunk := resp.read1(65536):
            chunks.append(chunk)
            size += len(chunk)
            if size > max_bytes:
                raise _bad(
                    f"{where}: image is over the limit of {max_bytes:,} bytes (max_image_bytes)",
                    "image_too_large",
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


# ---------------------------------------------------------------------------------------------


def load_image_url(url: str, cfg: MediaConfig, fetcher: Fetcher, where: str) -> Image.Image:
    """The decoded RGB image an ``image_url`` names (see the module docstring)."""
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme == "data":
        data = decode_data_url(url, cfg.max_image_bytes, where)
    elif scheme in ("http", "https"):
        data = fetcher.fetch(url, where)
    elif scheme == "file":
        data = read_local_file(url, cfg, where)
    else:
        raise _bad(f"{where}: unsupported URL scheme {scheme or '(none)'!r} (use a data URL)")
    image_cfg = ImageConfig(max_pixels=cfg.max_image_pixels, formats=cfg.formats)
    try:
        return open_image(data, cfg=image_cfg, name=where)
    except ImageDecodeError as e:
        raise _bad(str(e), f"image_{e.reason}") from e
