"""``mm15 export --hf OUT --model DIR``: an mm15 checkpoint as a transformers model directory
(:mod:`mm15.hf.export`; loading it: docs/transformers.md)."""

from __future__ import annotations

import argparse


def cmd_export(args: argparse.Namespace) -> int:
    try:
        from mm15.hf.export import export_hf
    except ImportError as e:
        raise ValueError(
            f"mm15 export --hf needs transformers (pip install -e '.[test]'): {e}"
        ) from None
    out = export_hf(args.model, args.hf)
    print(f"wrote a transformers model directory to {out} (load it after `import mm15`)")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``export`` verb to the subparsers of :func:`mm15.cli.main.build_parser`."""
    p = sub.add_parser(
        "export", help="write a checkpoint as a transformers model directory (--hf OUT)"
    )
    p.add_argument("--model", required=True, metavar="DIR", help="the mm15 checkpoint directory")
    p.add_argument(
        "--hf",
        required=True,
        metavar="OUT",
        help="the transformers directory to write (new, or an empty directory)",
    )
    p.set_defaults(func=cmd_export)
