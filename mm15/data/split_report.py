"""Backend of ``mm15 split IMAGE... [--n-min --n-max --resolution] [--json]``.

Shows what dynamic splitting (§3.5) does to given images: the grid, tiles, image tokens and
effective resolution, all from :func:`mm15.data.layout.plan_image` (the one token counter), and
optionally a picture of the tiles.  **Bad files become error rows** (``{"path", "error",
"reason"}``) so one unreadable file does not hide the report on the others; the CLI decides the
exit status from :func:`has_errors`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
from PIL import Image, ImageDraw

from mm15.config import ImageConfig
from mm15.data.image_io import ImageDecodeError, open_image
from mm15.data.layout import ImagePlan, plan_image
from mm15.data.splitting import OVERVIEW_ID, TiledImage


def _wxh(wh: tuple[int, int]) -> str:
    return f"{wh[0]}×{wh[1]}"


def plan_row(path: str, plan: ImagePlan, cfg: ImageConfig) -> dict[str, Any]:
    """The report row of one planned image (JSON-ready)."""
    geo = plan.geometry
    return {
        "path": path,
        "size": list(plan.size_wh),
        "grid": list(plan.grid),
        "n_sub_images": plan.n_sub_images,
        "n_tiles": plan.n_tiles,
        "overview": geo.overview,
        "indicator": plan.indicator,
        "tokens_per_tile": plan.tokens_per_tile,
        "image_tokens": plan.image_tokens,
        "effective_pixels": plan.effective_resolution,
        "effective_resolution": _wxh(geo.canvas_wh),
        "resized": _wxh(geo.resized_wh),
        "padding_fraction": round(geo.padding_pixels / (geo.canvas_wh[0] * geo.canvas_wh[1]), 4),
        "split": cfg.split,
        "n_min": cfg.n_min,
        "n_max": cfg.n_max,
        "resolution": cfg.resolution,
    }


def describe_images(
    paths: Sequence[str | os.PathLike],
    cfg: ImageConfig,
    *,
    tokens_per_tile: int,
    allow_split: bool = True,
) -> list[dict[str, Any]]:
    """One row per path, in order: the plan as :func:`plan_row`, or an error row
    ``{"path", "error", "reason"}`` when the file cannot be decoded safely.

    Each image is described as a single-image sample (``allow_split=True``); the size used is
    the decoded one, after EXIF orientation, exactly as training sees it.
    """
    rows = []
    for p in paths:
        path = os.fspath(p)
        try:
            image = open_image(path, cfg=cfg)
        except ImageDecodeError as e:
            rows.append({"path": path, "error": str(e), "reason": e.reason})
            continue
        plan = plan_image(image.size, cfg, tokens_per_tile=tokens_per_tile, allow_split=allow_split)
        rows.append(plan_row(path, plan, cfg))
    return rows


def has_errors(rows: Sequence[dict[str, Any]]) -> bool:
    return any("error" in r for r in rows)


_COLUMNS = ("path", "size", "grid", "tiles", "tokens", "effective", "MP", "padding")


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """A plain-text table for humans (error rows show their message)."""
    lines = []
    for r in rows:
        if "error" in r:
            lines.append((r["path"], f"error ({r['reason']}): {r['error']}"))
            continue
        ov = {"after": "+ov", "before": "ov+", "none": ""}[r["overview"]]
        lines.append(
            (
                r["path"],
                _wxh(tuple(r["size"])),
                f"{r['grid'][0]}x{r['grid'][1]}",
                f"{r['n_tiles']}{ov and ' (' + ov + ')'}",
                f"{r['tokens_per_tile']}/{r['image_tokens']}",
                r["effective_resolution"],
                f"{r['effective_pixels'] / 1e6:.2f}",
                f"{100 * r['padding_fraction']:.1f}%",
            )
        )
    full = [ln for ln in lines if len(ln) == len(_COLUMNS)]
    widths = [max(len(c) for c in col) for col in zip(_COLUMNS, *full, strict=True)]
    widths[0] = max(len(ln[0]) for ln in [_COLUMNS, *lines])

    def fmt(cells: Sequence[str]) -> str:
        if len(cells) == 2:  # error row: path, message
            return f"{cells[0]:<{widths[0]}}  {cells[1]}"
        return "  ".join(f"{c:<{w}}" for c, w in zip(cells, widths, strict=True)).rstrip()

    return "\n".join([fmt(_COLUMNS), *(fmt(ln) for ln in lines)])


def _tile_to_image(tile_CHW: torch.Tensor, cfg: ImageConfig, px: int) -> Image.Image:
    mean = torch.tensor(cfg.mean).view(3, 1, 1)
    std = torch.tensor(cfg.std).view(3, 1, 1)
    x = ((tile_CHW * std + mean) * 255.0).round().clamp(0, 255).to(torch.uint8)
    return Image.fromarray(x.permute(1, 2, 0).numpy()).resize((px, px), Image.Resampling.BILINEAR)


def save_tiles_picture(
    tiled: TiledImage, out_path: str | os.PathLike, *, cfg: ImageConfig, tile_px: int = 192
) -> Image.Image:
    """Draw the tiles as the grid they came from, the overview to its right, each labelled with
    its ``(i,j)`` id and stream position; save to ``out_path`` (format from the extension).

    Padding shows as the mean colour (grey).  Returns the picture.
    """
    rows, cols = tiled.grid
    gap, label_h = 6, 14
    cell = tile_px + label_h
    width = cols * (tile_px + gap) + gap + (tile_px + 3 * gap if tiled.geometry.has_overview else 0)
    height = max(rows, 1) * (cell + gap) + gap
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for t, (i, j) in enumerate(tiled.tile_ids):
        if (i, j) == OVERVIEW_ID:
            x, y, label = cols * (tile_px + gap) + 3 * gap, gap, f"#{t} overview (0,0)"
        else:
            x, y, label = (
                gap + (j - 1) * (tile_px + gap),
                gap + (i - 1) * (cell + gap),
                f"#{t} ({i},{j})",
            )
        draw.text((x, y), label, fill=(0, 0, 0))
        canvas.paste(_tile_to_image(tiled.tiles[t], cfg, tile_px), (x, y + label_h))
    canvas.save(out_path)
    return canvas
