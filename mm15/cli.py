"""The ``mm15`` command line.

Verbs:
    mm15 demo                      the main job on built-in data (see ``mm15 demo --help``)
    mm15 split IMAGE...            how images are split into tiles and tokens (§3.5)
    mm15 info --preset NAME        parameter counts of a preset, without allocating weights
    mm15 init --vision --llm ...   assemble a checkpoint from a pretrained encoder and decoder
    mm15 train --preset NAME       train through a recipe's stages (one process or torchrun)
    mm15 chat --model DIR          talk to a checkpoint about images or a video
    mm15 serve --model DIR         an OpenAI-compatible HTTP server with a web page
    mm15 eval --model DIR --task T --data PATH   zero-shot benchmark evaluation (MM1.5 §4.1, Tables 4–14)

train, demo, eval, serve, chat and split each run from one typed dataclass config: ``--set
KEY=VALUE`` sets any field, the everyday flags are shorthands for fields, ``--print-config``
shows the result (:mod:`mm15.cli_config`).
Heavy imports (torch, the model) happen inside the verbs so ``mm15 --help`` is instant.
A bad input (file, flag, config value) is one ``error: …`` line and exit status 2
(:mod:`mm15.errors`); anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mm15.cli_config import (
    SPLIT_IMAGE_SHORTHANDS,
    add_config_args,
    add_image_flags,
    print_config,
    resolve_config,
    shorthand_epilog,
)
from mm15.errors import USER_ERRORS, UsageError, number, one_line, validation_summary
from mm15.image_settings import check_image_settings, with_image_settings

ASSETS = Path(__file__).parent / "assets"


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


def cmd_info(args: argparse.Namespace) -> int:
    from mm15.config import to_dict
    from mm15.model.params import count_params, recipe_peak_lr
    from mm15.presets import get_preset

    cfg = get_preset(args.preset, encoder=args.encoder)
    counts = count_params(cfg)
    lr = recipe_peak_lr(cfg)
    if args.json:
        print(
            json.dumps(
                {
                    "preset": args.preset,
                    "params": counts.as_dict(),
                    "mm1_peak_lr": lr,
                    "config": to_dict(cfg),
                },
                indent=2,
            )
        )
        return 0
    moe = cfg.lm.moe
    print(
        f"preset {args.preset}: {_fmt(counts.total)} parameters, "
        f"{_fmt(counts.active_per_token)} active per token"
    )
    for name in (
        "vision",
        "connector",
        "lm",
        "lm_embedding",
        "lm_non_embedding",
        "lm_experts",
        "lm_active_per_token",
    ):
        print(f"  {name:<20} {_fmt(getattr(counts, name)):>9}  ({getattr(counts, name):,})")
    v, lm = cfg.vision, cfg.lm
    print(f"  encoder   ViT {v.width}w×{v.depth}L patch {v.patch_size} @ {v.image_size}px")
    print(f"  connector C-Abstractor, {cfg.connector.num_tokens} tokens per tile")
    print(
        f"  decoder   {lm.n_layers}L d={lm.dim} heads {lm.n_heads}/{lm.n_kv_heads} "
        f"ffn {lm.ffn_hidden} vocab {lm.vocab_size}"
        + (f", MoE {moe.num_experts} experts top-{moe.top_k} every {moe.every}" if moe else "")
    )
    im = cfg.image
    print(
        f"  images    {im.split} ({im.n_min}, {im.n_max}) at r={im.resolution}, "
        f"overview {im.overview}, indicator {im.indicator}"
    )
    print(f"  MM1 Eq. 1 peak LR (dense backbone's non-embedding N): {lr:.3g}")
    return 0


def cmd_init(args: argparse.Namespace) -> int:
    from mm15.checkpoint import init_from_parts
    from mm15.presets import get_preset

    out = init_from_parts(
        vision=args.vision,
        llm=args.llm,
        preset=get_preset(args.preset),
        out=args.out,
        seed=args.seed,
        upcycle_moe=args.upcycle_moe,
        connector=args.connector,
    )
    print(f"wrote mm15 checkpoint to {out}")
    return 0


def train_config_from_args(args: argparse.Namespace):
    """The TrainConfig of ``--preset NAME`` or ``--config FILE``, with ``--set`` applied."""
    from mm15.overrides import apply_overrides
    from mm15.train.config import TrainConfig
    from mm15.train.recipes import get_train_preset

    if args.config:
        cfg = _read_train_config(Path(args.config), TrainConfig)
    else:
        cfg = get_train_preset(args.preset)
    return apply_overrides(cfg, args.set)


def cmd_train(args: argparse.Namespace) -> int:
    cfg = train_config_from_args(args)
    if args.print_config:
        return print_config(cfg)
    from mm15.train.loop import NonFiniteTrainingError, train

    try:
        result = train(cfg)
    except NonFiniteTrainingError as e:  # diverged: one line, the run's earlier checkpoints kept
        print(f"error: training stopped: {e}", file=sys.stderr)
        return 1
    if result.final_model is not None:
        print(f"final model: {result.final_model}")
    return 0


def _read_train_config(path: Path, cls: type):
    """``train --config FILE``: a JSON TrainConfig, every problem one line naming the file."""
    from pydantic import TypeAdapter, ValidationError

    if path.is_dir():
        raise ValueError(
            f"--config {path} is a directory; give the JSON file --print-config writes"
        )
    if not path.exists():
        raise FileNotFoundError(f"--config {path}: no such file")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"--config {path} is not valid JSON ({e})") from None
    try:
        return TypeAdapter(cls).validate_python(data)
    except ValidationError as e:
        raise ValueError(
            f"--config {path} is not a valid training config: {validation_summary(e)}"
        ) from None


def cmd_demo(args: argparse.Namespace) -> int:
    from mm15.demo import DemoConfig, run_demo
    from mm15.demo.config import check_renamed
    from mm15.overrides import apply_overrides

    check_renamed(args.set)
    cfg = apply_overrides(DemoConfig(), args.set)
    if args.print_config:
        return print_config(cfg)
    return run_demo(out=Path(args.out), cfg=cfg)


def _fmt(n: int) -> str:
    for unit, div in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= div:
            return f"{n / div:.2f}{unit}"
    return str(n)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mm15", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="verb", required=True)

    s = sub.add_parser(
        "split",
        help="show how images are split into tiles and tokens",
        epilog=shorthand_epilog(
            SPLIT_SHORTHANDS,
            note="The settings are one "
            "SplitConfig; any ImageConfig field is --set image.FIELD=VALUE.",
        ),
    )
    s.add_argument("images", nargs="*", metavar="IMAGE", help="image files (at least one)")
    s.add_argument(
        "--preset",
        default=SplitConfig().preset,
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

    i = sub.add_parser("info", help="parameter counts of a preset (no weights allocated)")
    i.add_argument("--preset", required=True)
    i.add_argument(
        "--encoder",
        choices=["vit-h14-378", "vit-l14-336"],
        help="vision tower of a paper preset (default vit-h14-378)",
    )
    i.add_argument("--json", action="store_true")
    i.set_defaults(func=cmd_info)

    n = sub.add_parser("init", help="assemble an mm15 checkpoint from pretrained parts")
    n.add_argument("--vision", required=True, help="CLIP encoder dir (HF or open_clip layout)")
    n.add_argument("--llm", required=True, help="decoder dir (HF Llama/Qwen2 layout)")
    n.add_argument("--preset", required=True, help="connector/image/MoE settings")
    n.add_argument("--out", required=True)
    n.add_argument("--seed", type=int, default=0, help="connector initialisation seed")
    n.add_argument(
        "--connector",
        metavar="PATH",
        help="take the connector from a Honeybee C-Abstractor checkpoint (abstractor.* weights)",
    )
    n.add_argument(
        "--upcycle-moe",
        action="store_true",
        help="turn the dense decoder into the preset's MoE (experts copied)",
    )
    n.set_defaults(func=cmd_init)

    t = sub.add_parser("train", help="train through a recipe's stages (torchrun for many GPUs)")
    src = t.add_mutually_exclusive_group(required=True)
    src.add_argument("--preset", help="a training preset, e.g. paper-3b, video-sft-3b")
    src.add_argument("--config", help="a resolved training config (JSON, as --print-config writes)")
    add_config_args(t, example="stages.2.lr=1e-5")
    t.set_defaults(func=cmd_train)

    d = sub.add_parser("demo", help="run the main job on built-in data")
    d.add_argument("--out", default="out/demo", help="where results go")
    add_config_args(d, example="sft.steps=900")
    d.set_defaults(func=cmd_demo)

    # Verbs that own their parser live beside their code (their imports stay light).
    for module in ("mm15.chat_cli", "mm15.serve.cli", "mm15.eval.cli", "mm15.data.cli"):
        importlib.import_module(module).register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        raise
    except USER_ERRORS as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
