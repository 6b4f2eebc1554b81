"""``image_url`` → a decoded image, safely (reliability notes T7, T13).

Three kinds of URL:

* ``data:image/...;base64,...`` -- always accepted; the size is checked from the base64 length
  before anything is decoded (:func:`decode_data_url`).
* ``http(s)://`` -- refused unless the host is in ``MediaConfig.allow_fetch_hosts``; every
  address it resolves to must be public, redirects are checked hop by hop and the whole exchange
  runs under one deadline (:class:`mm15.serve.fetch.Fetcher`).
* ``file://`` -- refused unless ``MediaConfig.media_root`` is set; then only regular files below
  the root, opened component by component with no symlink followed
  (:func:`mm15.serve.local_files.read_local_file`).

Decoding is :func:`mm15.data.image_io.open_image` (allowed formats only, pixels checked from the
header before decoding).  Every refusal is an :class:`APIError` 400 that says why.
"""

from __future__ import annotations

import base64
import binascii
import re

from PIL import Image

from mm15.config import ImageConfig
from mm15.data.image_io import ImageDecodeError, open_image
from mm15.serve.config import MediaConfig, MediaKind
from mm15.serve.fetch import Fetcher
from mm15.serve.local_files import read_local_file
from mm15.serve.schemas import APIError

_DATA_URL = re.compile(r"data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(?:;[^,;]*)*),", re.ASCII)
_WHITESPACE = re.compile(rb"\s+")


def _bad(message: str, code: str = "invalid_image_url") -> APIError:
    return APIError(400, message, code=code)


def split_data_url(url: str, where: str, kind: MediaKind = "image") -> tuple[str, bytes]:
    """The media type and the base64 payload (whitespace removed) of a ``data:<kind>/...;base64,``
    URL; nothing is decoded."""
    m = _DATA_URL.match(url)
    if m is None:
        raise _bad(
            f"{where}: malformed data URL (want data:{kind}/<type>;base64,<data>)",
            f"invalid_{kind}_url",
        )
    mime, params = (m.group("mime") or "").lower(), m.group("params").lower().split(";")
    if not mime.startswith(f"{kind}/"):
        raise _bad(
            f"{where}: data URL media type {mime or '(none)'!r} is not {kind}/*",
            f"invalid_{kind}_url",
        )
    if "base64" not in params:
        raise _bad(
            f"{where}: data URL is not base64-encoded (want ';base64,')", f"invalid_{kind}_url"
        )
    return mime, _WHITESPACE.sub(b"", url[m.end() :].encode("ascii", errors="replace"))


def decode_base64(payload: bytes, max_bytes: int, where: str, kind: MediaKind = "image") -> bytes:
    """At most ``max_bytes`` decoded from base64 ``payload``; the size is checked from its
    length before anything is decoded."""
    if len(payload) // 4 * 3 > max_bytes + 2:
        raise _bad(
            f"{where}: {kind} is about {len(payload) // 4 * 3:,} bytes, above the limit "
            f"of {max_bytes:,} (max_{kind}_bytes)",
            f"{kind}_too_large",
        )
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as e:
        raise _bad(f"{where}: data URL has invalid base64: {e}", f"invalid_{kind}_url") from e
    if len(data) > max_bytes:
        raise _bad(
            f"{where}: {kind} is {len(data):,} bytes, above the limit of {max_bytes:,} "
            f"(max_{kind}_bytes)",
            f"{kind}_too_large",
        )
    return data


def decode_data_url(url: str, max_bytes: int, where: str) -> bytes:
    """The bytes of a base64 ``data:image/*`` URL, at most ``max_bytes`` of them."""
    return decode_base64(split_data_url(url, where)[1], max_bytes, where)


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
