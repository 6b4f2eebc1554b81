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
    mm15 data list | check         the dataset registry; a recipe's data checked before training
    mm15 export --hf OUT --model DIR   a checkpoint as a transformers model directory

train, demo, eval, serve, chat and split each run from one typed dataclass config: ``--set
KEY=VALUE`` sets any field, the everyday flags are shorthands for fields, ``--print-config``
shows the result (:mod:`mm15.cli.config`).
Verbs live in :mod:`mm15.cli`, one module per verb or pair of verbs, each adding its parser
with ``register(sub)``; the services they call live elsewhere (:mod:`mm15.services`,
:mod:`mm15.train`, :mod:`mm15.eval`, :mod:`mm15.serve`).
Heavy imports (torch, the model) happen inside the verbs so ``mm15 --help`` is instant.
A bad input (file, flag, config value) is one ``error: …`` line and exit status 2
(:mod:`mm15.errors`); anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from mm15.errors import USER_ERRORS, UsageError, one_line

# One module per verb (or pair of verbs); each adds its parser with ``register(sub)``.
VERBS = ("split", "model", "train", "chat", "serve", "eval", "data", "export")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mm15", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="verb", required=True)
    for name in VERBS:
        importlib.import_module(f"mm15.cli.{name}").register(sub)
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
