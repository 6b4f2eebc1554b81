"""The coordinate language of referring and grounding (MM1.5 §3.1, Fig. 1, Fig. 3).

Three layers, used by every reader, the prompt builder, the output parser, drawing and eval:

1. **Internal form.** :class:`Box` / :class:`Point`: float pixel coordinates on the ORIGINAL
   (unresized, unpadded) image number ``image`` of a sample (0-based, the ``k`` of the paper's
   ``(k, i, j)`` sub-image indicator).  Coordinates are continuous: pixel column ``i`` spans
   ``[i, i + 1)``, the whole image is ``Box(0, 0, W, H)``.  Sizes are always ``(W, H)``.
2. **Source conventions** (on-disk layouts: mm15/data/registry.toml) → internal, :func:`to_box` /
   :func:`from_box`, :func:`to_point` / :func:`from_point`.
3. **Model text.** Integers in ``[0, 1000)`` normalised by the original image's W and H, never
   by the split grid (Table 2 row 7 lost 49.5 refer&ground points to grid-dependent
   coordinates): points ``<x,y>``, boxes ``<x1,y1,x2,y2>``, with the image written as
   ``<k:x,y>`` / ``<k:x1,y1,x2,y2>`` in multi-image samples.  :func:`format_box`,
   :func:`format_point`; parsing lives in :mod:`mm15.data.coord_parse`.

Quantisation (one bin = W/1000 px horizontally, H/1000 px vertically; ``s = x * 1000 / W``,
snapped to the nearest integer when within ``1e-6`` of it so that float noise never moves a
value across a bin edge):

* box min corner  ``q1 = clamp(floor(s1), 0, 999)``        → decodes to the bin's left edge
  ``q1 * W / 1000``;
* box max corner  ``q2 = clamp(ceil(s2) - 1, q1, 999)``    → decodes to the bin's right edge
  ``(q2 + 1) * W / 1000``.  A tag therefore names the inclusive range of bins the box touches:
  ``<0,0,999,999>`` is exactly the whole image, a decoded box always contains the original,
  and each edge moves by less than one bin;
* point           ``q = clamp(floor(s), 0, 999)``          → decodes to the bin centre
  ``(q + 0.5) * W / 1000`` (error ≤ half a bin).

Hence ints → pixels → ints is exact and pixels → ints → pixels is within one bin.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

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
ImageIndex = Literal["auto", "always", "never"]

NUM_BINS = 1000
NORM_EPS = 1e-6  # normalised inputs may exceed [0, 1] by this much (float noise), then clip
PIXEL_TOL = 0.5  # default: converted pixels may lie this far outside the image, then clip
_SNAP = 1e-6  # bin-space snapping, see the module docstring


class CoordinateError(ValueError):
    """A coordinate that is malformed, out of range or on an image that does not exist."""


def check_size(size: tuple[float, float]) -> tuple[float, float]:
    try:
        w, h = float(size[0]), float(size[1])
        if len(size) != 2:
            raise ValueError
    except (TypeError, ValueError, IndexError):
        raise CoordinateError(f"image size must be (W, H), got {size!r}") from None
    if not (math.isfinite(w) and math.isfinite(h) and w > 0 and h > 0):
        raise CoordinateError(f"image size must be positive and finite, got (W, H) = {size!r}")
    return w, h


def _validate(obj: Point | Box, names: tuple[str, ...]) -> None:
    """Coerce ``names`` to finite floats and check the image index, else CoordinateError."""
    for name in names:
        v = getattr(obj, name)
        try:
            f = float(v)
        except (TypeError, ValueError):
            f = math.nan
        if not math.isfinite(f):
            raise CoordinateError(f"{type(obj).__name__}.{name} must be a finite number, got {v!r}")
        object.__setattr__(obj, name, f)
    image = obj.image
    if isinstance(image, bool) or not isinstance(image, int) or image < 0:
        raise CoordinateError(f"image index must be an int >= 0, got {image!r}")


@dataclass(frozen=True)
class Point:
    """A point in float pixels of image ``image`` of its sample."""

    x: float
    y: float
    image: int = 0

    def __post_init__(self) -> None:
        _validate(self, ("x", "y"))


@dataclass(frozen=True)
class Box:
    """An axis-aligned box ``[x1, x2] × [y1, y2]`` in float pixels of image ``image``."""

    x1: float
    y1: float
    x2: float
    y2: float
    image: int = 0

    def __post_init__(self) -> None:
        _validate(self, ("x1", "y1", "x2", "y2"))
        if self.x1 > self.x2 or self.y1 > self.y2:
            raise CoordinateError(
                f"Box needs x1 <= x2 and y1 <= y2, got ({self.x1}, {self.y1}, {self.x2}, {self.y2})"
            )

    @property
    def width(self) -> float:
        return self.x2 - self.x1

    @property
    def height(self) -> float:
        return self.y2 - self.y1

    @property
    def area(self) -> float:
        return self.width * self.height

    @property
    def center(self) -> Point:
        return Point((self.x1 + self.x2) / 2, (self.y1 + self.y2) / 2, self.image)


def intersection_area(a: Box, b: Box) -> float:
    """Area of the overlap of two boxes (their ``image`` is not compared)."""
    iw = max(0.0, min(a.x2, b.x2) - max(a.x1, b.x1))
    ih = max(0.0, min(a.y2, b.y2) - max(a.y1, b.y1))
    return iw * ih


def iou(a: Box, b: Box) -> float:
    """Intersection over union of two boxes.

    Boxes on different images (``a.image != b.image``) never overlap: 0.0 (so a prediction on the
    wrong image scores zero).  Two zero-area boxes have IoU 1.0 if identical, else 0.0.
    """
    if a.image != b.image:
        return 0.0
    inter = intersection_area(a, b)
    union = a.area + b.area - inter
    if union <= 0.0:
        return float(a == b)
    return inter / union


# ----------------------------------------------------------------------------------------------
# Source conventions → pixels
# ----------------------------------------------------------------------------------------------


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


def _clip(v: float, hi: float, tol: float, what: str) -> float:
    if not -tol <= v <= hi + tol:
        raise CoordinateError(f"{what} = {v:g} lies outside [0, {hi:g}] by more than {tol:g} px")
    return min(max(v, 0.0), hi)


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
        _clip(x1, w, tolerance_px, "x1"),
        _clip(y1, h, tolerance_px, "y1"),
        _clip(x2, w, tolerance_px, "x2"),
        _clip(y2, h, tolerance_px, "y2"),
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


# ----------------------------------------------------------------------------------------------
# Quantisation to the model's [0, 1000) ints (rule in the module docstring)
# ----------------------------------------------------------------------------------------------


def _scaled(v: float, extent: float, tol: float, what: str) -> float:
    s = _clip(v, extent, tol, what) * NUM_BINS / extent
    r = round(s)
    return float(r) if abs(s - r) <= _SNAP else s


def quantize_box(
    box: Box, size: tuple[float, float], *, tolerance_px: float = PIXEL_TOL
) -> tuple[int, int, int, int]:
    """Pixel box → ``(q1x, q1y, q2x, q2y)`` bins in ``[0, 999]``; inclusive max corner."""
    w, h = check_size(size)
    out = []
    for lo, hi, extent, axis in ((box.x1, box.x2, w, "x"), (box.y1, box.y2, h, "y")):
        q1 = min(max(math.floor(_scaled(lo, extent, tolerance_px, f"{axis}1")), 0), NUM_BINS - 1)
        q2 = math.ceil(_scaled(hi, extent, tolerance_px, f"{axis}2")) - 1
        q2 = min(max(q2, q1), NUM_BINS - 1)
        out.append((q1, q2))
    (x1, x2), (y1, y2) = out
    return x1, y1, x2, y2


def dequantize_box(q: Sequence[int], size: tuple[float, float], image: int = 0) -> Box:
    """Bins ``(x1, y1, x2, y2)`` → the pixel box from x1's left edge to x2's right edge."""
    w, h = check_size(size)
    x1, y1, x2, y2 = q
    x1, y1, x2, y2 = x1 * w, y1 * h, (x2 + 1) * w, (y2 + 1) * h
    return Box(x1 / NUM_BINS, y1 / NUM_BINS, x2 / NUM_BINS, y2 / NUM_BINS, image)


def quantize_point(
    point: Point, size: tuple[float, float], *, tolerance_px: float = PIXEL_TOL
) -> tuple[int, int]:
    """Pixel point → the ``(x, y)`` bin containing it, in ``[0, 999]``."""
    w, h = check_size(size)
    qx = math.floor(_scaled(point.x, w, tolerance_px, "x"))
    qy = math.floor(_scaled(point.y, h, tolerance_px, "y"))
    return min(qx, NUM_BINS - 1), min(qy, NUM_BINS - 1)


def dequantize_point(q: Sequence[int], size: tuple[float, float], image: int = 0) -> Point:
    """Bin ``(x, y)`` → the pixel centre of the bin."""
    w, h = check_size(size)
    return Point((q[0] + 0.5) * w / NUM_BINS, (q[1] + 0.5) * h / NUM_BINS, image)


def _tag(ints: Sequence[int], image: int, image_index: ImageIndex) -> str:
    body = ",".join(str(i) for i in ints)
    if image_index == "always" or (image_index == "auto" and image != 0):
        return f"<{image}:{body}>"
    if image_index == "never" and image != 0:
        raise CoordinateError(f"region is on image {image} but image_index='never' would drop it")
    return f"<{body}>"


def format_box(box: Box, size: tuple[float, float], *, image_index: ImageIndex = "auto") -> str:
    """``<x1,y1,x2,y2>`` (or ``<k:x1,y1,x2,y2>``); ``size`` is the (W, H) of ``box.image``.

    ``image_index``: "auto" writes ``k:`` only when ``box.image != 0`` (an unindexed tag parses
    as image 0, so this round trips); "always" for multi-image samples, so the model sees one
    consistent form; "never" for single-image samples (raises if ``box.image != 0``).
    """
    return _tag(quantize_box(box, size), box.image, image_index)


def format_point(
    point: Point, size: tuple[float, float], *, image_index: ImageIndex = "auto"
) -> str:
    """``<x,y>`` (or ``<k:x,y>``); ``image_index`` as in :func:`format_box`."""
    return _tag(quantize_point(point, size), point.image, image_index)


def format_region(
    shape: Box | Point, sizes: Sequence[tuple[float, float]], *, image_index: ImageIndex = "auto"
) -> str:
    """Format a box or point, looking its image's size up in ``sizes`` (one per image)."""
    if shape.image >= len(sizes):
        raise CoordinateError(f"region is on image {shape.image} but the sample has {len(sizes)}")
    fmt = format_box if isinstance(shape, Box) else format_point
    return fmt(shape, sizes[shape.image], image_index=image_index)  # type: ignore[arg-type]
