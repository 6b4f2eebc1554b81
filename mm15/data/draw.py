"""Draw boxes and points (:mod:`mm15.data.coords`) onto images, for inspection and demos.

Regions are drawn onto an RGB copy; the input image is never modified.  Region ``i`` of a call
gets colour ``PALETTE[i % len(PALETTE)]`` and a label "i" or "i: phrase", so a legend printed
next to the text lines up with the picture.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from PIL import Image, ImageDraw, ImageFont

from mm15.data.coord_parse import ParsedRegion
from mm15.data.coords import Box, CoordinateError, Point

Drawable = Box | Point | ParsedRegion

# Distinct, saturated colours (Tableau 10 and a few more), cycled.
PALETTE: tuple[tuple[int, int, int], ...] = (
    (228, 26, 28),
    (55, 126, 184),
    (77, 175, 74),
    (152, 78, 163),
    (255, 127, 0),
    (166, 86, 40),
    (247, 129, 191),
    (23, 190, 207),
    (188, 189, 34),
    (0, 0, 128),
    (0, 128, 128),
    (128, 0, 0),
)
MAX_LABEL_CHARS = 40
WHITE = (255, 255, 255)


def _shape_and_label(region: Drawable, index: int) -> tuple[Box | Point, str]:
    if isinstance(region, ParsedRegion):
        label = region.label[:MAX_LABEL_CHARS]
        return region.shape, f"{index}: {label}" if label else str(index)
    if isinstance(region, (Box, Point)):
        return region, str(index)
    raise TypeError(f"region {index} must be a Box, Point or ParsedRegion, got {type(region)}")


def place_label(
    anchor: tuple[int, int, int, int], text_wh: tuple[int, int], image_wh: tuple[int, int]
) -> tuple[int, int, int, int]:
    """Where a label of size ``text_wh`` goes for a region whose pixel bounds are ``anchor``.

    Above the region's top-left corner if it fits there, else just inside it; always shifted to
    lie within the image (for labels larger than the image, its top-left corner is (0, 0)).
    Returns the label rectangle ``(x0, y0, x1, y1)`` (exclusive x1, y1).
    """
    ax0, ay0, _, _ = anchor
    tw, th = text_wh
    iw, ih = image_wh
    y0 = ay0 - th if ay0 - th >= 0 else ay0
    x0 = max(0, min(ax0, iw - tw))
    y0 = max(0, min(y0, ih - th))
    return x0, y0, x0 + tw, y0 + th


def _pixel_bounds(shape: Box | Point, size: tuple[int, int], radius: int) -> tuple[int, ...]:
    """Inclusive pixel rectangle covered by ``shape`` (a point's marker for points)."""
    w, h = size
    if isinstance(shape, Box):
        x0, y0 = math.floor(shape.x1), math.floor(shape.y1)
        x1, y1 = max(x0, math.ceil(shape.x2) - 1), max(y0, math.ceil(shape.y2) - 1)
    else:
        cx, cy = math.floor(shape.x), math.floor(shape.y)
        x0, y0, x1, y1 = cx - radius, cy - radius, cx + radius, cy + radius
    clamp = lambda v, hi: max(0, min(v, hi - 1))  # noqa: E731
    return clamp(x0, w), clamp(y0, h), clamp(x1, w), clamp(y1, h)


def _draw_one(
    draw: ImageDraw.ImageDraw,
    shape: Box | Point,
    label: str | None,
    color: tuple[int, int, int],
    size: tuple[int, int],
    width: int,
    font: ImageFont.ImageFont | ImageFont.FreeTypeFont,
) -> None:
    w, h = size
    if isinstance(shape, Box):
        if min(shape.x1, shape.y1) < -0.5 or shape.x2 > w + 0.5 or shape.y2 > h + 0.5:
            raise CoordinateError(f"box {shape} lies outside the {w}x{h} image it is drawn on")
        bounds = _pixel_bounds(shape, size, 0)
        draw.rectangle(bounds, outline=color, width=width)  # PIL grows the outline inwards
    else:
        if not (-0.5 <= shape.x <= w + 0.5 and -0.5 <= shape.y <= h + 0.5):
            raise CoordinateError(f"point {shape} lies outside the {w}x{h} image it is drawn on")
        r = 2 * width + 2
        bounds = _pixel_bounds(shape, size, r)
        cx, cy = math.floor(shape.x), math.floor(shape.y)
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), outline=color, width=width)
        draw.line((cx - r, cy, cx + r, cy), fill=color, width=max(1, width // 2))
        draw.line((cx, cy - r, cx, cy + r), fill=color, width=max(1, width // 2))
    if label:
        left, top, right, bottom = draw.textbbox((0, 0), label, font=font)
        x0, y0, x1, y1 = place_label(bounds, (right - left + 4, bottom - top + 4), size)
        draw.rectangle((x0, y0, x1 - 1, y1 - 1), fill=color)
        ink = (0, 0, 0) if 0.299 * color[0] + 0.587 * color[1] + 0.114 * color[2] > 150 else WHITE
        draw.text((x0 + 2 - left, y0 + 2 - top), label, fill=ink, font=font)


def _draw(
    image: Image.Image,
    items: Sequence[tuple[int, Drawable]],
    labels: bool,
    width: int | None,
) -> Image.Image:
    out = image.convert("RGB") if image.mode != "RGB" else image.copy()
    size = out.size
    width = width if width is not None else max(2, round(min(size) / 200))
    draw = ImageDraw.Draw(out)
    font = ImageFont.load_default()
    for index, region in items:
        shape, label = _shape_and_label(region, index)
        color = PALETTE[index % len(PALETTE)]
        _draw_one(draw, shape, label if labels else None, color, size, width, font)
    return out


def draw_regions(
    image: Image.Image,
    regions: Sequence[Drawable],
    *,
    labels: bool = True,
    width: int | None = None,
) -> Image.Image:
    """Draw every region onto an RGB copy of ``image`` (whatever the region's ``image`` index).

    Boxes are rectangles whose outline lies inside the box; points are a circle with a cross.
    ``width``: line width in pixels (default ``max(2, min(W, H) / 200)``).  Regions must lie in
    the image (within 0.5 px), else :class:`CoordinateError`.
    """
    return _draw(image, list(enumerate(regions)), labels, width)


def draw_on_images(
    images: Sequence[Image.Image],
    regions: Sequence[Drawable],
    *,
    labels: bool = True,
    width: int | None = None,
) -> list[Image.Image]:
    """Draw each region onto the copy of its own image ``images[region.image]``.

    Colours and label numbers follow the region's position in ``regions`` across all images.
    """
    groups: list[list[tuple[int, Drawable]]] = [[] for _ in images]
    for i, region in enumerate(regions):
        k = region.image
        if not 0 <= k < len(images):
            raise CoordinateError(f"region {i} is on image {k} but only {len(images)} were given")
        groups[k].append((i, region))
    return [_draw(im, g, labels, width) for im, g in zip(images, groups, strict=True)]
