"""Source coordinate conventions → the internal :class:`~mm15.data.coords.Box` / ``Point`` and
back (layer 2 of :mod:`mm15.data.coords`; on-disk layouts: mm15/data/registry.toml).

Every reader converts a region once, here, to float pixel coordinates on the ORIGINAL image
(MM1.5 §3.1: coordinates are normalised by the original image, never by the split grid, Table 2
row 7); the model's text form is then written by :func:`mm15.data.coords.format_box`.  Each
conversion checks the source's range first (normalised values within ``[-1e-6, 1 + 1e-6]``,
int grids integral and in range, sizes ``>= 0``), then that the pixels lie on the image up to a
tolerance, and clips only within it: a coordinate off the image is an error, never moved.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import numpy as np

from mm15.data.coords import PIXEL_TOL, Box, CoordinateError, Point, check_size, clip_coordinate

BoxConvention = Literal[
    "px_xyxy",  # pixels x1, y1, x2, y2 (Ferret GRIT, Shikra, Flickr30k xml)
    "px_xywh",  # pixels x, y, w, h (COCO, RefCOCO, MDETR)
    "norm01_xyxy",  # 0-1 floats xyxy (Kosmos-2 GRIT, lmms-eval prompts)
    "norm01_xywh",  # 0-1 floats xywh (PDFA, IDL / Textract)
    "norm01_xyxy_padsq",  # 0-1 xyxy on LLaVA's expand2square padded square (665k, disputed)
    "int999",  # ints 0..999, divided by 999 (DocOwl 1.5 <bbox>)
    "int1000",  # ints 0..1000, divided by 1000 (Ferret text)
    "quad01",  # 0-1 quad TL, TR, BR, BL (RenderedText) → its axis-aligned envelope
]
PointConvention = Literal["px", "norm01", "norm01_padsq", "int999", "int1000"]

NORM_EPS = 1e-6  # normalised inputs may exceed [0, 1] by this much (float noise), then clip


def _numbers(values: Sequence, n: int, what: str) -> list[float]:
    """``values`` flattened (quads may come as 4 pairs; lists, tuples, arrays) to n floats."""
    try:
        flat = np.asarray(values, dtype=np.float64).ravel().tolist()
    except (TypeError, ValueError):
        raise CoordinateError(f"{what} needs {n} numbers, got {values!r}") from None
    if len(flat) != n:
        raise CoordinateError(f"{what} needs {n} numbers, got {len(flat)}: {values!r}")
    if not all(math.isfinite(v) for v in flat):
        raise CoordinateError(f"{what} values must be finite, got {flat}")
    return flat


def _check_range(vals: list[float], lo: float, hi: float, what: str) -> None:
    bad = [v for v in vals if not lo <= v <= hi]
    if bad:
        raise CoordinateError(f"{what} values must lie in [{lo:g}, {hi:g}], got {vals}")


def _norm(vals: list[float], what: str) -> list[float]:
    _check_range(vals, -NORM_EPS, 1 + NORM_EPS, f"{what} (normalised)")
    return vals


def _ints(vals: list[float], top: int, what: str) -> list[float]:
    if not all(v.is_integer() for v in vals):
        raise CoordinateError(f"{what} values must be integers, got {vals}")
    _check_range(vals, 0, top, what)
    return [v / top for v in vals]


def _padsq(w: float, h: float) -> tuple[float, float, float]:
    """LLaVA ``expand2square``: side ``S = max(W, H)``, image pasted at ``(S - short) // 2``."""
    s = max(w, h)
    return s, (s - w) // 2, (s - h) // 2


def _xyxy_px(v: list[float], conv: str, w: float, h: float) -> list[float]:
    """Raw (unchecked against the image) pixel xyxy for ``conv``; checks source ranges."""
    if conv == "px_xyxy":
        return v
    if conv == "px_xywh":
        if v[2] < 0 or v[3] < 0:
            raise CoordinateError(f"px_xywh width and height must be >= 0, got {v}")
        return [v[0], v[1], v[0] + v[2], v[1] + v[3]]
    if conv == "norm01_xywh":
        if v[2] < 0 or v[3] < 0:
            raise CoordinateError(f"norm01_xywh width and height must be >= 0, got {v}")
        v = [v[0], v[1], v[0] + v[2], v[1] + v[3]]
    if conv == "norm01_xyxy_padsq":
        s, ox, oy = _padsq(w, h)
        x1, y1, x2, y2 = _norm(v, conv)
        return [x1 * s - ox, y1 * s - oy, x2 * s - ox, y2 * s - oy]
    if conv == "quad01":
        xs, ys = _norm(v, conv)[0::2], v[1::2]
        v = [min(xs), min(ys), max(xs), max(ys)]
    elif conv in ("int999", "int1000"):
        v = _ints(v, 999 if conv == "int999" else 1000, conv)
    elif conv in ("norm01_xyxy", "norm01_xywh"):
        v = _norm(v, conv)
    else:
        raise CoordinateError(f"unknown box convention {conv!r}")
    return [v[0] * w, v[1] * h, v[2] * w, v[3] * h]


def to_box(
    values: Sequence[float],
    convention: BoxConvention,
    size: tuple[float, float],
    image: int = 0,
    *,
    tolerance_px: float = PIXEL_TOL,
) -> Box:
    """Convert one box from ``convention`` to the internal :class:`Box` on an image of ``size``.

    ``values``: 4 numbers (8, or 4 pairs, for ``quad01``).  Checks, in order: source range
    (normalised values within ``[-1e-6, 1 + 1e-6]``, int grids integral and within
    ``[0, 999]`` / ``[0, 1000]``, xywh sizes ``>= 0``), then the pixel box must lie within the
    image up to ``tolerance_px`` (clipped onto the edge only within it; raise
    ``tolerance_px`` for coarsely rounded sources, e.g. LLaVA's 2 decimals on the padded square
    are off by up to ``0.005 * max(W, H)`` px), then ``x1 <= x2``, ``y1 <= y2``.
    """
    w, h = check_size(size)
    vals = _numbers(values, 8 if convention == "quad01" else 4, convention)
    x1, y1, x2, y2 = _xyxy_px(vals, convention, w, h)
    if x1 > x2 or y1 > y2:
        raise CoordinateError(f"{convention} {vals} gives x1 > x2 or y1 > y2 on image {size}")
    return Box(
        clip_coordinate(x1, w, tolerance_px, "x1"),
        clip_coordinate(y1, h, tolerance_px, "y1"),
        clip_coordinate(x2, w, tolerance_px, "x2"),
        clip_coordinate(y2, h, tolerance_px, "y2"),
        image,
    )


def from_box(box: Box, convention: BoxConvention, size: tuple[float, float]) -> tuple[float, ...]:
    """Inverse of :func:`to_box`: 4 numbers (8 for ``quad01``: TL, TR, BR, BL).

    Int grids return ``round``-ed ints; every other convention returns floats.
    """
    w, h = check_size(size)
    x1, y1, x2, y2 = box.x1, box.y1, box.x2, box.y2
    if convention == "px_xyxy":
        return (x1, y1, x2, y2)
    if convention == "px_xywh":
        return (x1, y1, x2 - x1, y2 - y1)
    if convention == "norm01_xyxy":
        return (x1 / w, y1 / h, x2 / w, y2 / h)
    if convention == "norm01_xywh":
        return (x1 / w, y1 / h, (x2 - x1) / w, (y2 - y1) / h)
    if convention == "norm01_xyxy_padsq":
        s, ox, oy = _padsq(w, h)
        return ((x1 + ox) / s, (y1 + oy) / s, (x2 + ox) / s, (y2 + oy) / s)
    if convention in ("int999", "int1000"):
        top = 999 if convention == "int999" else 1000
        return tuple(round(v * top) for v in (x1 / w, y1 / h, x2 / w, y2 / h))
    if convention == "quad01":
        a, b, c, d = x1 / w, y1 / h, x2 / w, y2 / h
        return (a, b, c, b, c, d, a, d)
    raise CoordinateError(f"unknown box convention {convention!r}")


_POINT_AS_BOX: dict[str, BoxConvention] = {
    "px": "px_xyxy",
    "norm01": "norm01_xyxy",
    "norm01_padsq": "norm01_xyxy_padsq",
    "int999": "int999",
    "int1000": "int1000",
}


def _point_box_convention(convention: str) -> BoxConvention:
    if convention not in _POINT_AS_BOX:
        raise CoordinateError(f"unknown point convention {convention!r}")
    return _POINT_AS_BOX[convention]


def to_point(
    values: Sequence[float],
    convention: PointConvention,
    size: tuple[float, float],
    image: int = 0,
    *,
    tolerance_px: float = PIXEL_TOL,
) -> Point:
    """Convert ``(x, y)`` from ``convention`` to a :class:`Point`; same checks as :func:`to_box`."""
    x, y = _numbers(values, 2, f"point {convention}")
    conv = _point_box_convention(convention)
    box = to_box((x, y, x, y), conv, size, image, tolerance_px=tolerance_px)
    return Point(box.x1, box.y1, image)


def from_point(point: Point, convention: PointConvention, size: tuple[float, float]) -> tuple:
    """Inverse of :func:`to_point`: ``(x, y)``."""
    box = Box(point.x, point.y, point.x, point.y, point.image)
    return from_box(box, _point_box_convention(convention), size)[:2]


def box_from_coco(xywh: Sequence[float], size: tuple[float, float], image: int = 0) -> Box:
    """COCO / RefCOCO / MDETR pixel ``[x, y, w, h]``."""
    return to_box(xywh, "px_xywh", size, image)


def box_from_docowl(ints: Sequence[int], size: tuple[float, float], image: int = 0) -> Box:
    """DocOwl 1.5 ``<bbox>x1,y1,x2,y2</bbox>`` ints in 0..999 (divided by 999)."""
    return to_box(ints, "int999", size, image)


def box_from_ferret_ints(ints: Sequence[int], size: tuple[float, float], image: int = 0) -> Box:
    """Ferret-style text ints in 0..1000 (divided by 1000)."""
    return to_box(ints, "int1000", size, image)


def box_from_quad(quad: Sequence, size: tuple[float, float], image: int = 0) -> Box:
    """RenderedText normalised quad TL, TR, BR, BL → its axis-aligned envelope."""
    return to_box(quad, "quad01", size, image)
