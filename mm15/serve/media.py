"""``image_url`` → a decoded image, safely (reliability notes T7, T13).

Three kinds of URL:

* ``data:image/...;base64,...`` -- always accepted; the size is checked from the base64 length
  before anything is decoded.
* ``http(s)://`` -- refused unless the host is in ``MediaConfig.allow_fetch_hosts`` (exact,
  case-insensitive names or IP literals).  The host is resolved once and **every** address it
  resolves to must be public (not private, loopback, link-local, multicast, reserved or
  unspecified; IPv4-mapped IPv6 is unwrapped first), then the connection goes to that vetted
  address (no second lookup a DNS rebinding could change).  Redirects are followed by hand,
  at most ``max_redirects``, each hop checked like the first (scheme, host, addresses).  The body
  is read in pieces up to ``max_image_bytes`` under one overall deadline, so a slow or huge
  response is cut off.
* ``file://`` -- refused unless ``MediaConfig.media_root`` is set; then only regular files whose
  real path (symlinks resolved) lies inside the root.

Decoding is :func:`mm15.data.image_io.open_image` (allowed formats only, pixels checked from the
header before decoding).  Every refusal is an :class:`APIError` 400 that says why.
"""

from __future__ import annotations

import base64
import binascii
import http.client
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
        raise _bad(f"{where}: image is about {len(payload) // 4 * 3:,} bytes, above the limit "
                   f"of {max_bytes:,} (max_image_bytes)", "image_too_large")  # fmt: skip
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as e:
        raise _bad(f"{where}: data URL has invalid base64: {e}") from e
    if len(data) > max_bytes:
        raise _bad(f"{where}: image is {len(data):,} bytes, above the limit of {max_bytes:,} "
                   "(max_image_bytes)", "image_too_large")  # fmt: skip
    return data


def read_local_file(url: str, cfg: MediaConfig, where: str) -> bytes:
    """A ``file://`` URL's bytes, only for regular files inside ``cfg.media_root``."""
    if cfg.media_root is None:
        raise _bad(f"{where}: file:// URLs are disabled (the server has no --media-root)",
                   "local_files_disabled")  # fmt: skip
    parts = urllib.parse.urlsplit(url)
    if parts.netloc not in ("", "localhost") or parts.query or parts.fragment:
        raise _bad(f"{where}: a file URL must be file:///absolute/path (no host, query, fragment)")
    root = os.path.realpath(cfg.media_root)
    path = os.path.realpath(urllib.parse.unquote(parts.path))
    if os.path.commonpath([root, path]) != root:
        raise _bad(f"{where}: {parts.path!r} is outside the media root", "path_outside_root")
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):  # before open(): opening a FIFO would block
            raise _bad(f"{where}: {parts.path!r} is not a regular file")
        if st.st_size > cfg.max_image_bytes:
            raise _bad(f"{where}: file is {st.st_size:,} bytes, above the limit of "
                       f"{cfg.max_image_bytes:,} (max_image_bytes)", "image_too_large")  # fmt: skip
        with open(path, "rb") as f:
            data = f.read(cfg.max_image_bytes + 1)
    except OSError as e:
        raise _bad(f"{where}: cannot read {parts.path!r}: {e.strerror}", "image_missing") from e
    if len(data) > cfg.max_image_bytes:  # the file grew after stat()
        raise _bad(f"{where}: file is over the limit of {cfg.max_image_bytes:,} bytes",
                   "image_too_large")  # fmt: skip
    return data


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
            raise _bad(f"{where}: fetching http(s) URLs is disabled on this server (send a data "
                       "URL, or start it with --allow-fetch HOST)", "fetch_disabled")  # fmt: skip
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
        try:
            parts = urllib.parse.urlsplit(url)
            port = parts.port
        except ValueError as e:
            raise _bad(f"{where}: malformed URL: {e}") from e
        if parts.scheme not in ("http", "https"):
            raise _bad(f"{where}: redirect to a {parts.scheme or 'relative'} URL refused",
                       "fetch_refused")  # fmt: skip
        host = (parts.hostname or "").lower()
        if parts.username is not None or parts.password is not None:
            raise _bad(f"{where}: URLs with credentials are refused", "fetch_refused")
        allowed = {h.lower() for h in self.cfg.allow_fetch_hosts}
        if host not in allowed:
            raise _bad(f"{where}: host {host!r} is not in the fetch allow-list", "fetch_refused")
        default = 443 if parts.scheme == "https" else 80
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        return parts.scheme, host, port or default, target

    def _vetted_address(self, host: str, port: int, where: str) -> str:
        ips = self.resolve(host, port)
        if not ips:
            raise _bad(f"{where}: host {host!r} has no address", "fetch_failed")
        if not self.cfg.allow_private_addresses:
            for ip in ips:
                why = address_refused(ip)
                if why is not None:
                    raise _bad(f"{where}: host {host!r} resolves to {ip}, a {why} address; "
                               "refused", "fetch_refused")  # fmt: skip
        return ips[0]

    def _get(
        self, scheme: str, host: str, port: int, ip: str, target: str, deadline: float, where: str
    ) -> tuple[int, str | None, bytes]:
        """One GET to the vetted ``ip``: (status, Location, body ≤ max_image_bytes)."""
        max_bytes = self.cfg.max_image_bytes
        try:
            sock = self.dial(ip, port, _remaining(deadline, where))
            if scheme == "https":
                sock = ssl.create_default_context().wrap_socket(sock, server_hostname=host)
            conn = http.client.HTTPConnection(host, port, timeout=_remaining(deadline, where))
            conn.sock = sock  # connect to the vetted address, never re-resolve
            try:
                conn.request("GET", target, headers={"Accept": "image/*", "User-Agent": "mm15"})
                resp = conn.getresponse()
                if resp.status in _REDIRECTS or resp.status != 200:
                    return resp.status, resp.getheader("Location"), b""
                length = resp.getheader("Content-Length")
                if length is not None and length.isdigit() and int(length) > max_bytes:
                    raise _bad(f"{where}: image is {int(length):,} bytes, above the limit of "
                               f"{max_bytes:,} (max_image_bytes)", "image_too_large")  # fmt: skip
                chunks, size = [], 0
                while True:
                    sock.settimeout(_remaining(deadline, where))
                    chunk = resp.read1(65536)
                    if not chunk:
                        return 200, None, b"".join(chunks)
                    chunks.append(chunk)
                    size += len(chunk)
                    if size > max_bytes:
                        raise _bad(f"{where}: image is over the limit of {max_bytes:,} bytes "
                                   "(max_image_bytes)", "image_too_large")  # fmt: skip
            finally:
                conn.close()
        except (OSError, http.client.HTTPException) as e:
            if time.monotonic() >= deadline or isinstance(e, TimeoutError):
                raise _bad(f"{where}: fetching from {host} timed out "
                           f"(fetch_timeout_s={self.cfg.fetch_timeout_s})", "fetch_timeout") from e  # fmt: skip
            raise _bad(f"{where}: fetching from {host} failed: {e}", "fetch_failed") from e


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
