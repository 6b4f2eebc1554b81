"""Safe image decoding (MM1.5 §3.1, §3.5; reliability anchor T7): bounded in formats and pixels.

Order of checks in :func:`open_image`, each failing with an :class:`ImageDecodeError` that names
the file and carries a typed ``reason``:

1. the file exists (``missing``);
2. PIL identifies it using **only** the plugins of ``ImageConfig.formats`` (``Image.open(...,
   formats=...)``), so a disallowed plugin never parses a header (``format`` when the file
   extension names a disallowed format, else ``unreadable``);
3. ``width × height`` from the header is at most ``ImageConfig.max_pixels``, checked before any
   pixel is decoded (``too_large``; PIL's own ``DecompressionBombError``, raised at open above
   2 × ``Image.MAX_IMAGE_PIXELS``, is mapped to the same reason);
4. the first frame decodes completely (``truncated`` / ``unreadable``): truncated files are never
   accepted (``ImageFile.LOAD_TRUNCATED_IMAGES`` is left alone);
5. EXIF orientation is applied, alpha is composited onto white, 16-bit greys are scaled to 8 bits,
   and the result is a detached RGB image.

:func:`open_image_reduced` runs the same checks, then lets the JPEG decoder scale the image down
by 2, 4 or 8 in the DCT domain (PIL ``Image.draft``) when the caller needs no more pixels than
that: a 12 MP photo bound for a 2016×1512 canvas decodes at 1/2 scale, roughly twice as fast and
without the full-size resize.  The result differs from "decode, then bicubic-resize" by DCT
scaling versus a bicubic filter (measured and bounded in tests/test_data_fast.py), so it is an
opt-in fast path for training data; :func:`open_image` stays exact.
"""

from __future__ import annotations

import contextlib
import io
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO, Literal

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from mm15.config import ImageConfig

Reason = Literal["missing", "unreadable", "truncated", "format", "too_large"]

# Exceptions PIL raises on malformed data (its fuzzers treat these as "bad input", not bugs).
_PIL_DATA_ERRORS = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    struct.error,
    IndexError,
    KeyError,
    ZeroDivisionError,
)


class ImageDecodeError(ValueError):
    """An image that cannot be used; ``str(err)`` starts with the file's name.

    ``reason`` is one of ``missing``, ``unreadable``, ``truncated``, ``format``, ``too_large``
    (for a loader's skip counters); ``name`` is the file's name as given.
    """

    def __init__(self, name: str, reason: Reason, detail: str):
        self.name = name
        self.reason = reason
        super().__init__(f"{name}: {detail}")


def _label(source: object, name: str | None) -> str:
    if name is not None:
        return name
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    return "<bytes>" if isinstance(source, (bytes, bytearray, memoryview)) else "<stream>"


def _format_from_extension(label: str) -> str | None:
    ext = os.path.splitext(label)[1].lower()
    return Image.registered_extensions().get(ext) if ext else None


def _open_formats(allowed: tuple[str, ...]) -> tuple[str, ...]:
    """The PIL plugins to try for ``allowed`` formats (MPO files are opened by the JPEG plugin)."""
    Image.init()  # registers every plugin once; changes no setting
    unknown = [f for f in allowed if f not in Image.OPEN and f != "MPO"]
    if unknown:
        raise ValueError(f"ImageConfig.formats has formats PIL cannot open: {unknown}")
    plugins = [f for f in allowed if f in Image.OPEN]
    if "MPO" in allowed and "JPEG" not in plugins:
        plugins.append("JPEG")
    return tuple(plugins)


def _identify(fp: BinaryIO, label: str, cfg: ImageConfig) -> Image.Image:
    """``Image.open`` restricted to the allowed formats (header only, no pixels)."""
    allowed = tuple(f.upper() for f in cfg.formats)
    try:
        im = Image.open(fp, formats=_open_formats(allowed))
    except Image.DecompressionBombError as e:
        raise ImageDecodeError(label, "too_large", f"refused before decoding: {e}") from e
    except UnidentifiedImageError as e:
        ext_fmt = _format_from_extension(label)
        if ext_fmt is not None and ext_fmt not in allowed:
            raise ImageDecodeError(
                label,
                "format",
                f"format {ext_fmt} (by extension) is not allowed; allowed "
                f"formats are {', '.join(allowed)} (ImageConfig.formats)",
            ) from e
        raise ImageDecodeError(
            label, "unreadable", f"not an image in an allowed format ({', '.join(allowed)})"
        ) from e
    except _PIL_DATA_ERRORS as e:
        raise ImageDecodeError(label, "unreadable", f"unreadable header: {e}") from e
    if im.format not in allowed:  # e.g. the JPEG plugin found an MPO and MPO is not allowed
        im.close()
        raise ImageDecodeError(
            label,
            "format",
            f"format {im.format} is not allowed; allowed formats are "
            f"{', '.join(allowed)} (ImageConfig.formats)",
        )
    return im


def _check_pixels(im: Image.Image, label: str, cfg: ImageConfig) -> None:
    w, h = im.size
    if w < 1 or h < 1:
        raise ImageDecodeError(label, "unreadable", f"empty image size {w}x{h}")
    if w * h > cfg.max_pixels:
        raise ImageDecodeError(
            label,
            "too_large",
            f"{w}x{h} = {w * h:,} pixels is above max_pixels="
            f"{cfg.max_pixels:,} (ImageConfig.max_pixels); refused before decoding",
        )


def _to_rgb(im: Image.Image) -> Image.Image:
    """RGB copy of ``im``: alpha composited onto white, 16-bit greys scaled to 8 bits."""
    if im.mode.startswith("I;16"):
        arr = np.asarray(im, dtype=np.float64) / 257.0
        im = Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), mode="L")
    has_alpha = im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info
    if has_alpha:
        white = Image.new("RGBA", im.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, im.convert("RGBA")).convert("RGB")
    return im.convert("RGB")


def decoded_rgb(image: Image.Image | np.ndarray) -> Image.Image:
    """An image another library already decoded (a PIL image, or an ``(H, W[, C])`` uint8 array
    or tensor such as vLLM hands over) as the RGB image :func:`open_image` returns: same alpha
    and 16-bit rules, a detached copy."""
    if not isinstance(image, Image.Image):
        arr = np.asarray(image)
        if arr.dtype != np.uint8 or arr.ndim not in (2, 3):
            raise ValueError(
                f"a decoded image must be an (H, W) or (H, W, C) uint8 array, got "
                f"{arr.dtype} of shape {tuple(arr.shape)}"
            )
        image = Image.fromarray(arr)
    return _to_rgb(image) if image.mode != "RGB" else image.copy()


Source = str | os.PathLike | bytes | bytearray | memoryview | BinaryIO
_EXIF_ORIENTATION = 0x0112
_TRANSPOSED = (5, 6, 7, 8)  # EXIF orientations that swap width and height


def _open_checked(source: Source, label: str, cfg: ImageConfig, stack: contextlib.ExitStack):
    """The image opened lazily (header only) with its format and pixel count checked."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        fp: BinaryIO = io.BytesIO(bytes(source))
    elif isinstance(source, (str, os.PathLike)):
        try:
            fp = stack.enter_context(open(source, "rb"))  # noqa: SIM115 -- closed by the stack
        except FileNotFoundError as e:
            raise ImageDecodeError(label, "missing", "file not found") from e
        except OSError as e:
            raise ImageDecodeError(label, "unreadable", f"cannot open file: {e}") from e
    else:
        fp = source
    im = stack.enter_context(_identify(fp, label, cfg))
    _check_pixels(im, label, cfg)
    return im


def image_size(source: Source, *, cfg: ImageConfig, name: str | None = None) -> tuple[int, int]:
    """``(W, H)`` of the image :func:`open_image` would return, from the header alone (EXIF
    orientations 5–8 swap W and H, as ``exif_transpose`` will).  Same checks and errors."""
    label = _label(source, name)
    with contextlib.ExitStack() as stack:
        return _oriented_size(_open_checked(source, label, cfg, stack), label)[0]


def _oriented_size(im: Image.Image, label: str) -> tuple[tuple[int, int], bool]:
    """``((W, H) after EXIF orientation, whether the orientation swaps the stored axes)``."""
    try:
        orientation = im.getexif().get(_EXIF_ORIENTATION, 1)
    except _PIL_DATA_ERRORS as e:  # a malformed EXIF block
        raise ImageDecodeError(label, "unreadable", f"unreadable header: {e}") from e
    w, h = im.size
    transposed = orientation in _TRANSPOSED
    return ((h, w) if transposed else (w, h)), transposed


def _decode(im: Image.Image, label: str, draft_wh: tuple[int, int] | None) -> Image.Image:
    """First frame of the checked, still undecoded ``im`` as RGB (``draft_wh``: see
    :func:`open_image_reduced`, in stored orientation)."""
    try:
        im.seek(0)  # animated GIF/WEBP/TIFF/MPO: the first frame
        if draft_wh is not None:
            im.draft(None, draft_wh)  # JPEG only (a no-op for other formats); before load()
        im.load()
        im = ImageOps.exif_transpose(im)
        return _to_rgb(im)
    except _PIL_DATA_ERRORS as e:
        reason: Reason = "truncated" if "truncated" in str(e).lower() else "unreadable"
        raise ImageDecodeError(label, reason, f"cannot decode ({reason}): {e}") from e


def open_image(
    source: Source,
    *,
    cfg: ImageConfig,
    name: str | None = None,
) -> Image.Image:
    """Decode one image safely into RGB (first frame of animated images).

    ``source`` is a path, the file's bytes, or a binary stream; ``name`` (default: the path)
    is what errors call it.  Raises :class:`ImageDecodeError` (a ``ValueError``).
    """
    label = _label(source, name)
    with contextlib.ExitStack() as stack:
        return _decode(_open_checked(source, label, cfg, stack), label, None)


@dataclass(frozen=True)
class ReducedImage:
    """An image decoded for a known output size (:func:`open_image_reduced`)."""

    image: Image.Image  # RGB; the full image, or one scaled down by 2, 4 or 8 (JPEG only)
    size_wh: tuple[int, int]  # the full image's (W, H) after EXIF orientation: what tiling and
    #                           coordinates use, whatever size ``image`` was decoded at


def open_image_reduced(
    source: Source,
    *,
    cfg: ImageConfig,
    target_wh: Callable[[tuple[int, int]], tuple[int, int]],
    name: str | None = None,
) -> ReducedImage:
    """:func:`open_image` for a caller that will resize to at most ``target_wh(size_wh)``.

    ``target_wh`` maps the full (EXIF-oriented) size to the largest ``(w, h)`` the caller
    resizes to; JPEGs are decoded at 1/2, 1/4 or 1/8 scale — the strongest reduction that
    keeps both sides at least that large, never below it — other formats in full.  Same checks,
    same order, same errors as :func:`open_image`; the pixel bound applies to the full size.
    """
    label = _label(source, name)
    with contextlib.ExitStack() as stack:
        im = _open_checked(source, label, cfg, stack)
        size_wh, transposed = _oriented_size(im, label)
        tw, th = target_wh(size_wh)
        draft_wh = (max(1, th), max(1, tw)) if transposed else (max(1, tw), max(1, th))
        return ReducedImage(image=_decode(im, label, draft_wh), size_wh=size_wh)
