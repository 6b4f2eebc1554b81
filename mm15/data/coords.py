"""The coordinate language of referring and grounding (MM1.5 §3.1, Fig. 1, Fig. 3).

Three layers, used by every reader, the prompt builder, the output parser, drawing and eval:

1. **Internal form.** :class:`Box` / :class:`Point`: float pixel coordinates on the ORIGINAL
   (unresized, unpadded) image number ``image`` of a sample (0-based, the ``k`` of the paper's
   ``(k, i, j)`` sub-image indicator).  Coordinates are continuous: pixel column ``i`` spans
   ``[i, i + 1)``, the whole image is ``Box(0, 0, W, H)``.  Sizes are always ``(W, H)``.
2. **Source conventions** (on-disk layouts: mm15/data/registry.toml) → internal, in
   :mod:`mm15.data.coord_conventions` (``to_box`` / ``from_box``, ``to_point`` / ``from_point``).
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

ImageIndex = Literal["auto", "always", "never"]

NUM_BINS = 1000
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


def clip_coordinate(v: float, hi: float, tol: float, what: str) -> float:
    """``v`` clipped onto ``[0, hi]`` when it lies outside by at most ``tol`` px, else a
    CoordinateError naming ``what``."""
    if not -tol <= v <= hi + tol:
        raise CoordinateError(f"{what} = {v:g} lies outside [0, {hi:g}] by more than {tol:g} px")
    return min(max(v, 0.0), hi)


# ----------------------------------------------------------------------------------------------
# Quantisation to the model's [0, 1000) ints (rule in the module docstring)
# ----------------------------------------------------------------------------------------------


def _scaled(v: float, extent: float, tol: float, what: str) -> float:
    s = clip_coordinate(v, extent, tol, what) * NUM_BINS / extent
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
