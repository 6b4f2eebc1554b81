"""``mm15 data``: the dataset registry and a dry run of a training config's data.

    mm15 data list [--stage sft] [--json]
    mm15 data check --preset paper-1b --set data_root=/data [--samples 16] [--out DIR]
    mm15 data check --config my.json

``check`` opens every dataset of every stage as ``mm15 train`` would, formats a few samples of
each and prints what it read (mm15/data/check.py); it exits 2 listing every problem, naming
stage, dataset and field. ``--out`` also writes ``data_check.json`` and ``contact_sheet.png``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mm15.errors import number


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``data`` verb to the subparsers of :func:`mm15.cli.main.build_parser`."""
    d = sub.add_parser(
        "data",
        help="the dataset registry; a dry run of a config's data",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    verbs = d.add_subparsers(dest="data_verb", required=True)
    ls = verbs.add_parser("list", help="the registry's datasets")
    ls.add_argument("--stage", choices=["pretrain", "cpt", "sft", "video", "ui"])
    ls.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ls.set_defaults(func=cmd_list)
    ck = verbs.add_parser("check", help="open every dataset of a training config, format samples")
    src = ck.add_mutually_exclusive_group(required=True)
    src.add_argument("--preset", help="a training preset, e.g. paper-1b")
    src.add_argument("--config", help="a training config (JSON, as train --print-config writes)")
    ck.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override by dotted path, as for train (repeatable)",
    )
    ck.add_argument(
        "--samples",
        type=number(int, minimum=1),
        default=16,
        help="samples formatted per dataset (evenly spaced)",
    )
    ck.add_argument(
        "--max-skip-fraction",
        type=number(float, minimum=0.0, maximum=1.0),
        help="a dataset skipping more of what was read is a problem "
        "(default: the config's max_skipped_fraction)",
    )
    ck.add_argument("--out", metavar="DIR", help="write data_check.json and contact_sheet.png")
    ck.add_argument("--json", action="store_true", help="print JSON instead of tables")
    ck.set_defaults(func=cmd_check)


def cmd_list(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from mm15.data.registry import builtin_entries

    entries = [e for e in builtin_entries() if args.stage in (None, e.stage)]
    if args.json:
        print(json.dumps([asdict(e) for e in entries], indent=2))
        return 0
    print(
        f"{'name':<28} {'stage':<8} {'category':<13} {'kind':<15} {'files under data_root':<48} "
        "source"
    )
    for e in entries:
        files = ", ".join(f"{e.dir}/{f}" for f in e.files)
        print(f"{e.name:<28} {e.stage:<8} {e.category:<13} {e.kind:<15} {files:<48} {e.source}")
    print(f"{len(entries)} datasets (mm15/data/registry.toml)")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from mm15.cli.train import train_config_from_args
    from mm15.data.check import check_config, contact_sheet, format_report, report_json

    cfg = train_config_from_args(args)
    report = check_config(cfg, samples=args.samples, max_skip_fraction=args.max_skip_fraction)
    if args.json:
        print(json.dumps(report_json(report), indent=2))
    else:
        print(format_report(report))
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "data_check.json").write_text(json.dumps(report_json(report), indent=2))
        sheet = contact_sheet(report, out / "contact_sheet.png", image_cfg=cfg.model.image)
        if sheet is not None and not args.json:
            print(f"contact sheet: {sheet}")
    for problem in report.problems:
        print(f"error: {problem}", file=sys.stderr)
    return 2 if report.problems else 0
