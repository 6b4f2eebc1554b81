"""``mm15 eval``: zero-shot greedy benchmark evaluation (MM1.5 §4.1, Tables 4–14; :mod:`mm15.eval.runner`).

    mm15 eval --model CKPT --task textvqa --data ~/data/textvqa --out out/eval
    mm15 eval --model CKPT --task pope,mme --data ~/data/lmms-lab      # ROOT/pope, ROOT/mme
    mm15 eval --model CKPT --task refcoco:testA --task refcoco:testB --data D1 --data D2
    mm15 eval --model CKPT --task synthetic --data out/demo/corpus

    mm15 eval --model CKPT --task textvqa --data D --n-max 16          # Table 2: more tiles
    mm15 eval --model CKPT --suite paper --data ~/data/mm15-bench --paper-size 3B

``--suite paper`` runs every task of the paper's Tables 4-12 whose data is under the root
(``ROOT/<task>``, named as the tasks of ``--task``: ROOT/textvqa, ROOT/docvqa, ...; absent ones are reported as
"no data") and prints the paper's table beside its numbers for ``--paper-size``.

``--data`` is given once per task (same order), or once for all: a directory holding one
entry per task (``ROOT/<task>`` as a directory or ``ROOT/<task>.jsonl`` / ``.parquet``).
The settings are one EvalConfig; ``--set`` reaches every field (``--set image.n_max=16``,
any ImageConfig field under ``image.``).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from mm15.cli.config import (
    IMAGE_SHORTHANDS,
    add_config_args,
    add_image_flags,
    print_config,
    resolve_config,
    shorthand_epilog,
)
from mm15.errors import number
from mm15.eval.judge import JudgeConfig
from mm15.eval.tasks import TASKS, get_task
from mm15.services.image_settings import check_image_settings


@dataclass(kw_only=True)
class EvalConfig:
    """``mm15 eval``'s config (every flag is a shorthand for a field, see ``--help``)."""

    model: str | None = None  # the mm15 checkpoint directory
    tasks: list[str] = field(default_factory=list)  # NAME[:SPLIT], or comma separated
    data: list[str] = field(default_factory=list)  # one path per task, or one root for all
    out: str = "out/eval"
    batch_size: int = 8  # prompts generated together
    limit: int | None = None  # first N items of each task
    max_new_tokens: int | None = None  # None: each task's own
    device: str = "auto"  # cpu, cuda, cuda:1, ... (auto: cuda if any)
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"  # auto: bfloat16 on cuda, else fp32
    # Inference-time ImageConfig fields over the checkpoint's (Table 2), e.g. {"n_max": 16}.
    image: dict[str, Any] = field(default_factory=dict)
    # The judge of the judged tasks (mathvista, mmvet, llava_bench, ferret_bench): any
    # OpenAI-compatible endpoint, e.g. --set judge.url=https://api.openai.com/v1
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    # "paper": every task of MM1.5's Tables 4-12 with data under --data ROOT (mm15.eval.suite)
    suite: str | None = None
    paper_size: str | None = None  # the suite's reference column; None: the checkpoint's size

    def __post_init__(self) -> None:
        if self.suite not in (None, "paper"):
            raise ValueError(f"suite must be 'paper' (or unset), got {self.suite!r}")
        for name, least in (("batch_size", 1), ("limit", 0), ("max_new_tokens", 1)):
            value = getattr(self, name)
            if value is not None and value < least:
                raise ValueError(f"{name} must be >= {least}, got {value}")
        check_image_settings(self.image)


SHORTHANDS = {
    "--model": "model",
    "--task": "tasks",
    "--data": "data",
    "--out": "out",
    "--batch-size": "batch_size",
    "--limit": "limit",
    "--max-new-tokens": "max_new_tokens",
    "--device": "device",
    "--dtype": "dtype",
    "--suite": "suite",
    "--paper-size": "paper_size",
    **IMAGE_SHORTHANDS,
}
_D = EvalConfig()


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``eval`` verb to the subparsers of :func:`mm15.cli.main.build_parser`."""
    e = sub.add_parser(
        "eval",
        help="zero-shot greedy evaluation on benchmarks (MM1.5 §4.1, Tables 4–14)",
        description=__doc__,
        epilog=shorthand_epilog(SHORTHANDS, defaults=_D),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    e.add_argument("--model", help="mm15 checkpoint directory (required)")
    e.add_argument(
        "--task",
        action="append",
        metavar="NAME[:SPLIT]",
        help=f"(required) repeatable or comma separated; one of {', '.join(sorted(TASKS))}",
    )
    e.add_argument(
        "--data",
        action="append",
        metavar="PATH",
        help="(required) benchmark data per task (same order), or one root for all tasks",
    )
    e.add_argument("--out", help="where items.jsonl and summary.* go")
    e.add_argument(
        "--batch-size",
        type=number(int, minimum=1),
        help="prompts generated together",
    )
    e.add_argument("--limit", type=number(int, minimum=0), help="first N items of each task")
    e.add_argument("--max-new-tokens", type=number(int, minimum=1), help="default: each task's own")
    e.add_argument("--device", help="cpu, cuda, cuda:1, ... (auto: cuda if any)")
    e.add_argument(
        "--dtype",
        choices=["auto", "float32", "bfloat16"],
        help="auto: bfloat16 on cuda, float32 on cpu",
    )
    e.add_argument(
        "--suite",
        choices=["paper"],
        help="instead of --task: every task of the paper's Tables 4-12 whose data is under "
        "--data ROOT as ROOT/<task> (a folder, or <task>.jsonl/.parquet); absent ones are "
        "reported as 'no data'. Writes paper_table.md/.json/.png beside the tasks' outputs",
    )
    e.add_argument(
        "--paper-size",
        metavar="SIZE",
        help="the suite's reference column: the paper's MM1.5 1B, 1B-MoE, 3B, 3B-MoE, 7B or "
        "30B (default: the checkpoint's size, when its decoder is a paper preset)",
    )
    add_config_args(e, example="image.n_max=16")
    add_image_flags(e)
    e.set_defaults(func=cmd_eval)


def config_from_args(args: argparse.Namespace) -> EvalConfig:
    """The EvalConfig of ``args``: its flags, then its ``--set`` overrides."""
    return resolve_config(EvalConfig(), args, SHORTHANDS)


def _require(cfg: EvalConfig) -> EvalConfig:
    if cfg.suite and cfg.tasks:
        raise ValueError("--suite and --task are exclusive (the suite picks its own tasks)")
    if cfg.paper_size and not cfg.suite:
        raise ValueError("--paper-size goes with --suite paper")
    for what, flag in (
        (cfg.model, "--model DIR"),
        (cfg.tasks or cfg.suite, "--task NAME"),
        (cfg.data, "--data PATH"),
    ):
        if not what:
            raise ValueError(f"give {flag} (see mm15 eval --help)")
    return cfg


def task_data(tasks: list[str], data: list[str]) -> list[tuple[str, Path]]:
    """Pair each task with its data path (see the module docstring)."""
    names = [t.strip() for arg in tasks for t in arg.split(",") if t.strip()]
    for name in names:
        get_task(name)  # unknown names fail before the model loads
    pairs = _pair(names, data)
    for name, path in pairs:
        _check_data(name, path)
    return pairs


def _pair(names: list[str], data: list[str]) -> list[tuple[str, Path]]:
    if len(data) == len(names):
        return [(n, Path(d)) for n, d in zip(names, data, strict=True)]
    if len(data) != 1:
        raise ValueError(
            f"{len(names)} task(s) but {len(data)} --data paths; give one per "
            "task or one root directory"
        )
    root, pairs = Path(data[0]), []
    for name in names:
        base = name.partition(":")[0]
        found = [
            p
            for p in (
                root / base,
                *(root / f"{base}{s}" for s in (".jsonl", ".parquet", ".json", ".arrow")),
            )
            if p.exists()
        ]
        if not found:
            raise FileNotFoundError(
                f"no data for task {name!r} under {root} (looked for "
                f"{root / base} and {root / base}.jsonl/.parquet)"
            )
        pairs.append((name, found[0]))
    return pairs


def _check_data(name: str, path: Path) -> None:
    """A synthetic corpus is a directory holding ``index.json`` (benchmark data may be a file
    or a directory: :func:`mm15.eval.table_files.find_files` checks it)."""
    spec, _ = get_task(name)
    if spec.metric != "synthetic":
        return
    if not path.exists():
        raise FileNotFoundError(f"--data {path} for task {name!r} does not exist")
    if not path.is_dir():
        raise ValueError(
            f"--data {path} for task {name!r} is a file; the synthetic suite wants "
            "the corpus directory (holding index.json) of `mm15 demo`"
        )
    index = path / "index.json"
    if not index.is_file():
        what = "is a directory" if index.is_dir() else "is missing"
        raise ValueError(
            f"--data {path} for task {name!r}: {index} {what}; expected the "
            "corpus index file of `mm15 demo`"
        )
    from mm15.demo.data.corpus import CorpusIndex

    try:
        CorpusIndex.read(path)
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(
            f"--data {path} for task {name!r}: {index} is not a corpus index "
            f"({type(e).__name__}: {e})"
        ) from None


def _check_out(out: Path) -> None:
    """``--out`` must be (or become) a directory: checked before hours of generation."""
    for parent in (out, *out.parents):
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(f"--out {out}: {parent} is a file, not a directory")
            return


def _judge(cfg: EvalConfig, pairs: list[tuple[str, Path]]) -> Any:
    """The judge, when a task needs one (its replies cached in ``judge.cache``, by default
    ``<out>/judge_cache.jsonl``); None otherwise."""
    from mm15.eval.judged_tasks import JUDGED_METRICS

    if not any(get_task(name)[0].metric in JUDGED_METRICS for name, _ in pairs):
        return None
    from mm15.eval.judge import Judge

    return Judge(cfg.judge, cfg.judge.cache or Path(cfg.out) / "judge_cache.jsonl")


def cmd_eval(args: argparse.Namespace) -> int:
    import torch

    from mm15.eval.runner import EvalSettings, run_eval
    from mm15.services.checkpoint import load_checkpoint
    from mm15.services.devices import resolve_device
    from mm15.services.image_settings import apply_image_settings, checkpoint_image_settings

    cfg = config_from_args(args)
    if args.print_config:
        return print_config(cfg)
    _require(cfg)
    if cfg.suite:  # its size and tasks are checked before the weights load (mm15.eval.suite)
        from mm15.eval import suite, suite_report

        plan = suite.plan_suite(cfg.data, suite.paper_size(cfg.model, cfg.paper_size))
    pairs = [] if cfg.suite else task_data(cfg.tasks, cfg.data)
    _check_out(Path(cfg.out))
    judge = _judge(cfg, pairs)  # a missing judge or key fails before the weights load
    device = resolve_device(cfg.device)
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}.get(cfg.dtype)
    if cfg.dtype == "auto":
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if cfg.image:  # bad image settings fail before the weights load
        checkpoint_image_settings(cfg.model, cfg.image)
    model, tokenizer = load_checkpoint(cfg.model, device=device, dtype=dtype)
    apply_image_settings(model, cfg.image)
    settings = EvalSettings(
        batch_size=cfg.batch_size, limit=cfg.limit, max_new_tokens=cfg.max_new_tokens, judge=judge
    )
    if cfg.suite:  # a judge that cannot be made fails only the judged tasks
        make_judge = lambda: _judge(cfg, plan.present)  # noqa: E731
        table = suite.run_suite(model, tokenizer, plan, cfg.out, settings, make_judge=make_judge)
        return suite_report.report(table, Path(cfg.out))
    summary = run_eval(model, tokenizer, pairs, cfg.out, settings)
    out = Path(cfg.out)
    print((out / "summary.md").read_text(), end="")
    print(
        f"wrote {out / 'items.jsonl'}, {out / 'summary.json'}, {out / 'summary.md'}, "
        f"{out / 'summary.png'}"
    )
    if summary["n_errors"]:
        print(
            f"warning: {summary['n_errors']} of {summary['n_items']} items could not be "
            "evaluated and count as 0 (reasons: the 'error' field of items.jsonl)",
            file=sys.stderr,
        )
    for name, b in summary["benchmarks"].items():
        if b["details"].get("n_judge_failed"):
            print(
                f"warning: {name}: the judge failed on {b['details']['n_judge_failed']} items, "
                "which count as 0 (reasons: 'judge.failed' in items.jsonl)",
                file=sys.stderr,
            )
    return 0 if summary["n_items"] > 0 else 1


def main(argv: list[str] | None = None) -> int:
    """``mm15 eval`` with ``argv`` (the arguments after ``eval``): tests, ``python -m``."""
    from mm15.cli import main as cli_main

    return cli_main(["eval", *(argv if argv is not None else sys.argv[1:])])


if __name__ == "__main__":
    sys.exit(main())
