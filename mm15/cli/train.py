"""``mm15 train`` (a recipe's stages, one process or torchrun) and ``mm15 demo`` (the main job:
the demo recipe on built-in synthetic data, :mod:`mm15.demo`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mm15.cli.config import add_config_args, print_config


def train_config_from_args(args: argparse.Namespace):
    """The TrainConfig of ``--preset NAME`` or ``--config FILE``, with ``--set`` applied."""
    from mm15.overrides import apply_overrides, read_config
    from mm15.train.config import TrainConfig
    from mm15.train.recipes import get_train_preset

    if args.config:
        cfg = read_config(Path(args.config), TrainConfig)
    else:
        cfg = get_train_preset(args.preset)
    return apply_overrides(cfg, args.set)


def cmd_train(args: argparse.Namespace) -> int:
    cfg = train_config_from_args(args)
    if args.print_config:
        return print_config(cfg)
    from mm15.train.loop import train
    from mm15.train.nonfinite import NonFiniteTrainingError

    try:
        result = train(cfg)
    except NonFiniteTrainingError as e:  # diverged: one line, the run's earlier checkpoints kept
        print(f"error: training stopped: {e}", file=sys.stderr)
        return 1
    if result.final_model is not None:
        print(f"final model: {result.final_model}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from mm15.demo import DemoConfig, run_demo
    from mm15.demo.config import check_renamed
    from mm15.overrides import apply_overrides, read_config

    check_renamed(args.set)
    base = read_config(Path(args.config), DemoConfig) if args.config else DemoConfig()
    cfg = apply_overrides(base, args.set)
    if args.print_config:
        return print_config(cfg)
    if args.seeds is not None and args.ablate is None:
        raise ValueError("--seeds goes with --ablate NAME")
    if args.ablate is not None:
        from mm15.demo.ablate import run_ablation

        out = Path(args.out)
        run_ablation(args.ablate, out=out, base=cfg, seeds=_seeds(args.seeds or "0,1,2"))
        print((out / f"ablation-{args.ablate}.md").read_text())
        return 0
    return run_demo(out=Path(args.out), cfg=cfg)


def _seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ValueError(f"--seeds takes comma-separated integers, got {text!r}") from None
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds repeats a seed: {text!r}")
    return seeds


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``train`` and ``demo`` verbs to the subparsers of :func:`mm15.cli.main.build_parser`."""
    t = sub.add_parser("train", help="train through a recipe's stages (torchrun for many GPUs)")
    src = t.add_mutually_exclusive_group(required=True)
    src.add_argument("--preset", help="a training preset, e.g. paper-3b, video-sft-3b")
    src.add_argument("--config", help="a resolved training config (JSON, as --print-config writes)")
    add_config_args(t, example="stages.2.lr=1e-5", config_file=False)
    t.set_defaults(func=cmd_train)

    d = sub.add_parser("demo", help="run the main job on built-in data")
    d.add_argument("--out", default="out/demo", help="where results go")
    d.add_argument(
        "--ablate",
        metavar="NAME",
        help="instead of the demo, one of the paper's ablation trends over --seeds: splitting, "
        "refer_ground_data, multi_image_data, inference_grid (docs/demo.md, Ablations)",
    )
    d.add_argument(
        "--seeds", metavar="S,S,...", help="the seeds of --ablate (default 0,1,2; at least two)"
    )
    add_config_args(d, example="sft.steps=900")
    d.set_defaults(func=cmd_demo)
