"""Pictures for the synthetic corpus (:mod:`mm15.demo.data.tasks`): shapes, signs, pages, screens.

Every function takes a ``random.Random`` and returns PIL RGB image(s) plus a list of
:class:`Drawn` objects.  Each object is painted through its own mask, and its ``box`` is the
tight box of the mask's non-zero pixels in the continuous pixel convention of
:mod:`mm15.data.coords` (column ``i`` spans ``[i, i + 1)``), so a grounding reference is the real
extent of the pixels that object painted, never a nominal rectangle.  Drawing is plain PIL without
anti-aliasing for shapes (text is anti-aliased by FreeType), so the same seed gives the same
bytes.
"""

from __future__ import annotations

import functools
import math
import random
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from mm15.config import ImageConfig
from mm15.data.coords import Box
from mm15.data.splitting import tile_geometry

# Six saturated colours that stay distinct on the light background and after downscaling.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 160, 50),
    "blue": (40, 80, 220),
    "yellow": (225, 195, 0),
    "purple": (140, 50, 170),
    "orange": (245, 130, 20),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star")
BACKGROUND = (235, 235, 235)
INK = (20, 20, 20)
WHITE = (255, 255, 255)
# Muted backgrounds for signs and screens (none is close to a COLOURS entry or to white).
MUTED = ((200, 215, 230), (215, 230, 205), (230, 215, 200), (220, 210, 230), (205, 205, 205))

# Text-rich honesty (§3.5): text at least this tall in a sub-image, below this in the overview.
MIN_TILE_TEXT_PX, MAX_OVERVIEW_TEXT_PX = 8.0, 4.0


@dataclass(frozen=True)
class Drawn:
    """One painted object: ``kind`` is a shape name, "text", "line", "button" or "ball"."""

    kind: str
    box: Box  # tight ink box, pixels of the image it is on
    colour: str | None = None
    text: str | None = None
    cell: int | None = None  # grid cell (row-major) for grid scenes


@functools.lru_cache(maxsize=16)
def font(size: int) -> ImageFont.FreeTypeFont:
    """PIL's bundled FreeType font (Aileron) at ``size`` px."""
    return ImageFont.load_default(size=size)


def _paint(image: Image.Image, fill: tuple[int, int, int], draw_fn) -> Box:
    """Run ``draw_fn(ImageDraw on an L mask)``, paste ``fill`` through the mask, return its box."""
    mask = Image.new("L", image.size, 0)
    draw_fn(ImageDraw.Draw(mask))
    bbox = mask.getbbox()  # (left, upper, right, lower), right/lower exclusive
    if bbox is None:
        raise ValueError(f"nothing was painted on the {image.size[0]}x{image.size[1]} image")
    image.paste(fill, bbox, mask.crop(bbox))  # only the painted region: much faster
    return Box(*map(float, bbox))


def _shape_fn(kind: str, x0: int, y0: int, s: int):
    """A function drawing shape ``kind`` inside the ``s × s`` square at ``(x0, y0)`` in white."""
    x1, y1 = x0 + s - 1, y0 + s - 1
    if kind == "circle":
        return lambda d: d.ellipse((x0, y0, x1, y1), fill=255)
    if kind == "square":
        return lambda d: d.rectangle((x0, y0, x1, y1), fill=255)
    if kind == "triangle":
        return lambda d: d.polygon([(x0, y1), (x1, y1), ((x0 + x1) / 2, y0)], fill=255)
    if kind == "star":  # five points; inner radius 0.45 of the outer one
        cx, cy, r = (x0 + x1) / 2, (y0 + y1) / 2, (s - 1) / 2
        radii = [r if k % 2 == 0 else 0.45 * r for k in range(10)]
        pts = [
            (cx + rad * math.sin(k * math.pi / 5), cy - rad * math.cos(k * math.pi / 5))
            for k, rad in enumerate(radii)
        ]
        return lambda d: d.polygon(pts, fill=255)
    raise ValueError(f"unknown shape {kind!r}; shapes are {SHAPES}")


def paint_shape(image: Image.Image, kind: str, colour: str, x0: int, y0: int, s: int) -> Box:
    """Paint a ``colour`` ``kind`` in the ``s × s`` square at ``(x0, y0)``; returns its ink box."""
    return _paint(image, COLOURS[colour], _shape_fn(kind, x0, y0, s))


def paint_text(image: Image.Image, xy: tuple[int, int], text: str, size: int, fill=INK) -> Box:
    """Draw ``text`` with its ink's top-left corner at ``xy``; returns the ink box."""
    left, top, _, _ = font(size).getbbox(text)
    at = (xy[0] - left, xy[1] - top)
    return _paint(image, fill, lambda d: d.text(at, text, fill=255, font=font(size)))


def text_wh(text: str, size: int) -> tuple[int, int]:
    """(width, height) of ``text``'s glyph box at ``size`` (at least the ink box)."""
    left, top, right, bottom = font(size).getbbox(text)
    return right - left, bottom - top


def grid_scene(
    rng: random.Random,
    items: list[tuple[str, str]],
    *,
    size: tuple[int, int] = (112, 112),
    grid: int = 3,
    fill: tuple[float, float] = (0.6, 0.85),
) -> tuple[Image.Image, list[Drawn]]:
    """``items`` = [(shape, colour)] placed in distinct random cells of a ``grid × grid`` layout.

    Each shape is a square of side ``fill``·(cell side) (uniform in the range), at a uniform
    position inside its cell, so boxes vary a little around one box per cell.
    """
    w, h = size
    if len(items) > grid * grid:
        raise ValueError(f"{len(items)} shapes do not fit a {grid}x{grid} grid")
    image = Image.new("RGB", size, BACKGROUND)
    cells = rng.sample(range(grid * grid), len(items))
    out = []
    for (kind, colour), cell in zip(items, cells, strict=True):
        cx0, cy0 = (cell % grid) * w // grid, (cell // grid) * h // grid
        cw, ch = (cell % grid + 1) * w // grid - cx0, (cell // grid + 1) * h // grid - cy0
        s = max(4, int(min(cw, ch) * rng.uniform(*fill)))
        x0, y0 = cx0 + rng.randint(0, cw - s), cy0 + rng.randint(0, ch - s)
        out.append(Drawn(kind, paint_shape(image, kind, colour, x0, y0, s), colour, cell=cell))
    return image, out


def sign_scene(
    rng: random.Random, code: str, *, size: tuple[int, int], tile: int, font_size: int
) -> tuple[Image.Image, Drawn]:
    """A long image (muted background, 0–2 distractor shapes) with ``code`` on a white sign.

    The image's long side is cut into ``tile``-px segments (the sub-images of dynamic splitting
    when ``tile`` is the encoder resolution); the sign lies wholly inside one random segment and
    each distractor in another, so the code is never cut by a tile border.
    """
    w, h = size
    horizontal = w >= h
    n_seg = (w if horizontal else h) // tile
    image = Image.new("RGB", size, rng.choice(MUTED))
    sign_seg, *others = rng.sample(range(n_seg), min(n_seg, 1 + rng.randint(0, 2)))
    origin = [(seg * tile, 0) if horizontal else (0, seg * tile) for seg in (sign_seg, *others)]
    for sx, sy in origin[1:]:  # distractor shapes
        s = rng.randint(tile // 4, tile // 2)
        x0, y0 = sx + rng.randint(0, tile - s), sy + rng.randint(0, tile - s)
        paint_shape(image, rng.choice(SHAPES), rng.choice(list(COLOURS)), x0, y0, s)
    tw, th = text_wh(code, font_size)
    pad = 4
    bw, bh = tw + 2 * pad, th + 2 * pad
    (sx, sy), short = origin[0], min(w, h)
    bx = sx + rng.randint(2, (tile if horizontal else short) - bw - 2)
    by = sy + rng.randint(2, (short if horizontal else tile) - bh - 2)
    ImageDraw.Draw(image).rectangle((bx, by, bx + bw - 1, by + bh - 1), fill=WHITE)
    sign = Drawn("text", paint_text(image, (bx + pad, by + pad), code, font_size), text=code)
    return image, sign


def page_scene(
    rng: random.Random, lines: list[str], *, size: tuple[int, int], font_size: int
) -> tuple[Image.Image, list[Drawn]]:
    """A white page with ``lines`` left-aligned top to bottom; one :class:`Drawn` per line."""
    w, h = size
    image = Image.new("RGB", size, WHITE)
    step = font_size + 6
    y = rng.randint(4, max(4, h - step * len(lines) - 4))
    out = []
    for line in lines:
        x = rng.randint(4, max(4, w - text_wh(line, font_size)[0] - 4))
        out.append(Drawn("line", paint_text(image, (x, y), line, font_size), text=line))
        y += step
    if y > h:
        raise ValueError(f"{len(lines)} lines at {font_size} px do not fit a {w}x{h} page")
    return image, out


def expression_scene(
    rng: random.Random, text: str, *, size: tuple[int, int] = (112, 112), font_size: int = 24
) -> tuple[Image.Image, Drawn]:
    """``text`` (e.g. "3 + 4") in large ink at a random position."""
    w, h = size
    tw, th = text_wh(text, font_size)
    image = Image.new("RGB", size, BACKGROUND)
    xy = (rng.randint(4, w - tw - 4), rng.randint(4, h - th - 4))
    return image, Drawn("text", paint_text(image, xy, text, font_size), text=text)


def ink_for(fill: tuple[int, int, int]) -> tuple[int, int, int]:
    """Dark ink on light fills, white on dark ones (Rec. 601 luma below 140)."""
    return WHITE if 0.299 * fill[0] + 0.587 * fill[1] + 0.114 * fill[2] < 140 else INK


def ui_scene(
    rng: random.Random,
    labels: list[str],
    *,
    size: tuple[int, int] = (112, 224),
    slots: int = 5,
    font_size: int = 12,
    fills: list[str | None] | None = None,
) -> tuple[Image.Image, list[Drawn]]:
    """A phone-like screen: a dark title bar and one button per label in distinct random slots.

    Slots are equal bands below the bar; a button is ~75% of the width (±8 px), 24 px high,
    centred in its slot up to a few pixels, with its label centred, in dark ink on white or, when
    ``fills[k]`` names a :data:`COLOURS` entry, on that colour in the ink :func:`ink_for` picks.
    The :class:`Drawn` of a button has the button's box, its label and its fill colour name.
    """
    w, h = size
    fills = fills or [None] * len(labels)
    if len(fills) != len(labels):
        raise ValueError(f"{len(labels)} labels but {len(fills)} fills")
    bar = 16
    image = Image.new("RGB", size, rng.choice(MUTED))
    ImageDraw.Draw(image).rectangle((0, 0, w - 1, bar - 1), fill=(60, 60, 70))
    slot_h = (h - bar) // slots
    out = []
    chosen = sorted(rng.sample(range(slots), len(labels)))
    for label, fill, slot in zip(labels, fills, chosen, strict=True):
        bw, bh = int(0.75 * w) + rng.randint(-8, 8), 24
        x0 = (w - bw) // 2 + rng.randint(-3, 3)
        y0 = bar + slot * slot_h + (slot_h - bh) // 2 + rng.randint(-3, 3)
        rgb = COLOURS[fill] if fill else WHITE
        box = _paint(
            image, rgb, lambda d, a=(x0, y0, x0 + bw - 1, y0 + bh - 1): d.rectangle(a, fill=255)
        )
        tw, th = text_wh(label, font_size)
        paint_text(
            image, (x0 + (bw - tw) // 2, y0 + (bh - th) // 2), label, font_size, fill=ink_for(rgb)
        )
        out.append(Drawn("button", box, colour=fill, text=label, cell=slot))
    return image, out


def motion_frames(
    rng: random.Random,
    direction: str,
    *,
    n_frames: int = 4,
    size: tuple[int, int] = (112, 112),
) -> tuple[list[Image.Image], list[Drawn]]:
    """A ball moving ``direction`` (left/right/up/down) by a fixed step per frame."""
    w, h = size
    s, step = rng.randint(16, 24), rng.randint(14, 20)
    dx, dy = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}[direction]
    travel = step * (n_frames - 1)
    # Start so that the whole path stays inside the frame with a 2 px margin.
    x_lo, x_hi = 2 + max(0, -dx) * travel, w - s - 2 - max(0, dx) * travel
    y_lo, y_hi = 2 + max(0, -dy) * travel, h - s - 2 - max(0, dy) * travel
    x, y = rng.randint(x_lo, x_hi), rng.randint(y_lo, y_hi)
    colour = rng.choice(list(COLOURS))
    background = rng.choice(MUTED)
    frames, balls = [], []
    for f in range(n_frames):
        frame = Image.new("RGB", size, background)
        box = paint_shape(frame, "circle", colour, x + dx * step * f, y + dy * step * f, s)
        frames.append(frame)
        balls.append(Drawn("ball", box, colour))
    return frames, balls


# ---- geometry helpers -------------------------------------------------------------------------


def point_inside(image: Image.Image, box: Box, rng: random.Random, erode: int = 2) -> tuple:
    """A random pixel centre in ``box`` with the colour of the box's centre pixel all around it
    (``erode`` px): a point safely inside the object drawn there."""
    x1, y1, x2, y2 = (int(v) for v in (box.x1, box.y1, box.x2, box.y2))
    a = np.asarray(image)[y1:y2, x1:x2]
    ok = (a == a[(y2 - y1) // 2, (x2 - x1) // 2]).all(-1)
    for _ in range(erode):
        ok = ok & np.roll(ok, 1, 0) & np.roll(ok, -1, 0) & np.roll(ok, 1, 1) & np.roll(ok, -1, 1)
        ok[[0, -1], :], ok[:, [0, -1]] = False, False
    ys, xs = np.nonzero(ok)
    k = rng.randrange(len(ys))
    return (x1 + int(xs[k]) + 0.5, y1 + int(ys[k]) + 0.5)


def demo_image_config() -> ImageConfig:
    """The image settings the text-rich task is made illegible-at-overview for (preset tiny)."""
    from mm15.presets import tiny  # presets imports mm15.config only

    return tiny().image


def text_px(size_wh: tuple[int, int], ink_h: float, cfg: ImageConfig) -> tuple[float, float]:
    """``(in a sub-image, in the overview)`` pixel height of text ``ink_h`` px tall (§3.5)."""
    geo = tile_geometry(size_wh, cfg)
    tile = ink_h * geo.resized_wh[1] / size_wh[1]
    overview = ink_h * geo.overview_wh[1] / size_wh[1] if geo.overview_wh else tile
    return tile, overview
