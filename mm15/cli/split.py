"""``mm15 split IMAGE...``: how images are split into tiles and tokens (MM1.5 §3.5, Fig. 8)."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mm15.cli.config import (
    SPLIT_IMAGE_SHORTHANDS,
    add_config_args,
    add_image_flags,
    print_config,
    resolve_config,
    shorthand_epilog,
)
from mm15.errors import UsageError, number
from mm15.services.image_settings import check_image_settings, with_image_settings

ASSETS = Path(__file__).resolve().parents[1] / "assets"


@dataclass(kw_only=True)
class SplitConfig:
    """``mm15 split``'s settings (the images and the outputs are arguments)."""

    preset: str = "3b"  # whose image settings and tokens per tile (default: the final recipe)
    # ImageConfig fields over the preset's, e.g. {"n_max": 16, "split": "static"}.
    image: dict[str, Any] = field(default_factory=dict)
    tokens_per_tile: int | None = None  # connector tokens per tile (None: the preset's)

    def __post_init__(self) -> None:
        if self.tokens_per_tile is not None and self.tokens_per_tile < 1:
            raise ValueError(f"tokens_per_tile must be >= 1, got {self.tokens_per_tile}")
        check_image_settings(self.image)


SPLIT_SHORTHANDS = {
    "--preset": "preset",
    **SPLIT_IMAGE_SHORTHANDS,
    "--tokens-per-tile": "tokens_per_tile",
}


def _image_settings(cfg: SplitConfig):
    from mm15.presets import get_preset

    model = get_preset(cfg.preset)
    try:
        model = with_image_settings(model, cfg.image, whose=f"preset {cfg.preset!r}'s")
    except ValueError as e:
        raise UsageError(str(e)) from None
    tokens = cfg.tokens_per_tile if cfg.tokens_per_tile is not None else model.connector.num_tokens
    return model.image, tokens


def cmd_split(args: argparse.Namespace) -> int:
    from mm15.data.image_io import open_image
    from mm15.data.split_report import describe_images, format_table, save_tiles_picture
    from mm15.data.splitting import tile_image

    cfg = resolve_config(SplitConfig(), args, SPLIT_SHORTHANDS)
    if args.print_config:
        return print_config(cfg)
    if not args.images:
        raise UsageError("give at least one IMAGE")
    image_cfg, tokens = _image_settings(cfg)
    rows = describe_images(args.images, image_cfg, tokens_per_tile=tokens)
    if args.save_tiles:
        out = Path(args.save_tiles)
        out.mkdir(parents=True, exist_ok=True)
        for row in rows:
            if "error" not in row:
                pic = out / f"{Path(row['path']).stem}.tiles.png"
                tiled = tile_image(open_image(row["path"], cfg=image_cfg), image_cfg)
                save_tiles_picture(tiled, pic, cfg=image_cfg)
                row["tiles_picture"] = str(pic)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(format_table(rows))
    return 1 if any("error" in r for r in rows) else 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``split`` verb to the subparsers of :func:`mm15.cli.main.build_parser`."""
    s = sub.add_parser(
        "split",
        help="show how images are split into tiles and tokens",
        epilog=shorthand_epilog(
            SPLIT_SHORTHANDS,
            defaults=SplitConfig(),
            note="The settings are one "
            "SplitConfig; any ImageConfig field is --set image.FIELD=VALUE.",
        ),
    )
    s.add_argument("images", nargs="*", metavar="IMAGE", help="image files (at least one)")
    s.add_argument(
        "--preset",
        help="take image settings and tokens per tile from this preset",
    )
    add_image_flags(s, everything=True)
    s.add_argument(
        "--tokens-per-tile",
        type=number(int, minimum=1),
        help="connector tokens per tile (144, 81, 64; default: the preset's)",
    )
    s.add_argument("--json", action="store_true", help="print JSON instead of a table")
    s.add_argument("--save-tiles", metavar="DIR", help="save a picture of each image's tiles")
    add_config_args(s, example="image.static_grid=[3,3]")
    s.set_defaults(func=cmd_split)
