"""Benchmark evaluation: read, generate in batches, score, summarise (MM1.5 §4.1, Tables 4–14).

Zero-shot greedy decoding with the chat template the model was trained with
(:func:`mm15.services.inference.generate_for_samples`), ``batch_size`` prompts at a time, streamed from
the reader (a benchmark's images are never all in memory), one tqdm bar (items done, rate, ETA
estimated from the files' row counts) over all tasks.  A batch that fails on an item's data
(an image whose header reads but whose pixels do not decode) is retried one item at a time, so
only that item becomes an error item.

Written to ``out``:

* ``items.jsonl``: one line per item: task, id, prediction (None for an error item), reference,
  options, score, error ("reason: detail"), meta;
* ``summary.json``: per benchmark score (in [0, 1]), n, errors by reason, metric details (POPE
  splits, MME perception / cognition), the files read; category averages and MMBase;
* ``summary.md``: the same as tables; ``summary.png``: a bar plot.

The task ``synthetic`` runs :func:`mm15.eval.synthetic_suite.evaluate_synthetic` on a demo
corpus directory (``index.json``); its items join ``items.jsonl`` and its per-category table
(with chance baselines) goes into the details.
"""

from __future__ import annotations

import itertools
import json
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from tqdm import tqdm

from mm15.data.schema import SampleError
from mm15.eval.judge import Judge
from mm15.eval.judged_tasks import JUDGED_METRICS, judge_rows
from mm15.eval.metrics import category_scores
from mm15.eval.readers import ItemReader
from mm15.eval.submission import submission_entries, submission_file, write_submission
from mm15.eval.task_spec import EvalItem, TaskSpec
from mm15.eval.tasks import aggregate, get_task, score_item
from mm15.model.mm15 import MM15
from mm15.services.inference import GenerationSettings, generate_for_samples
from mm15.tokenizer import MM15Tokenizer

METRIC_NAMES = {
    "vqa": "VQA accuracy",
    "anls": "ANLS",
    "relaxed": "relaxed accuracy",
    "ocrbench": "OCRBench accuracy",
    "mc": "accuracy",
    "pope": "F1 (mean of splits)",
    "mme": "MME (P+C)/max",
    "box": "Acc@IoU>0.5",
    "any_box": "any-box recall",
    "synthetic": "suite MMBase",
    "wtq": "WTQ accuracy",
    "tabfact": "accuracy (true/false)",
    "lvis_ref": "accuracy (Ferret LVIS)",
    "best_option": "accuracy (Best Option)",
    "cider": "CIDEr",
    "vlicl": "VL-ICL accuracy",
    "mathvista_judge": "accuracy (judge-extracted)",
    "mmvet_judge": "judge score",
    "llava_judge": "relative score (judge)",
    "ferret_judge": "relative score (judge)",
    "videoqa_judge": "accuracy (judge)",
    "vcgbench_judge": "VCGBench score / 5 (judge)",
    "hound_judge": "accuracy (judge score >= 3)",
}


@dataclass
class EvalSettings:
    batch_size: int = 8
    limit: int | None = None  # items per task
    max_new_tokens: int | None = None  # None: each task's default
    judge: Judge | None = None  # for the judged tasks (mm15.eval.judged_tasks)


def _predict(
    model: MM15, tok: MM15Tokenizer, items: list[EvalItem], settings: GenerationSettings
) -> list[str | None]:
    """Greedy predictions of one batch (None where the item is or becomes an error item)."""
    todo = [i for i, it in enumerate(items) if it.sample is not None and it.error is None]
    if not todo:
        return [None] * len(items)
    try:
        outs = generate_for_samples(model, tok, [items[i].sample for i in todo], settings)
    except SampleError:  # an item's data is bad: run them one by one, keep the others
        outs = [_one(model, tok, items[i], settings) for i in todo]
    preds: list[str | None] = [None] * len(items)
    for i, out in zip(todo, outs, strict=True):
        if out is not None:
            preds[i] = out.text if out.text is not None else tok.decode(out.tokens)
    return preds


def _one(model: MM15, tok: MM15Tokenizer, item: EvalItem, settings: GenerationSettings) -> Any:
    try:
        return generate_for_samples(model, tok, [item.sample], settings)[0]
    except SampleError as e:
        item.error = str(e)
        return None


def _run_task(
    model: MM15,
    tok: MM15Tokenizer,
    spec: TaskSpec,
    name: str,
    reader: ItemReader,
    max_new: int,
    batch_size: int,
    bar: tqdm,
) -> list[dict]:
    """Stream ``reader`` through the model a batch at a time (MM1.5 §4.1, Tables 4–14: greedy)."""
    settings = GenerationSettings(max_new_tokens=max_new)  # temperature 0
    rows: list[dict] = []
    batch: list[EvalItem] = []
    for item in itertools.chain(reader, [None]):  # None flushes the last batch
        if item is not None:
            batch.append(item)
        if batch and (item is None or len(batch) == batch_size):
            rows += _rows(spec, name, batch, _predict(model, tok, batch, settings))
            if bar.n + len(batch) > bar.total:  # exploded rows (RefCOCO): more items than rows
                bar.total = bar.n + len(batch)
            bar.update(len(batch))
            batch = []
    return rows


def _rows(spec: TaskSpec, name: str, items: list[EvalItem], preds: list[str | None]) -> list[dict]:
    rows = []
    for item, pred in zip(items, preds, strict=True):
        ok = item.error is None and pred is not None
        reference: Any = [[b.x1, b.y1, b.x2, b.y2] for b in item.boxes] or item.references
        rows.append(
            {
                "task": name,
                "id": item.id,
                "prediction": pred if ok else None,
                "reference": reference,
                "options": item.options,
                "score": None if item.unanswered else score_item(spec, item, pred) if ok else 0.0,
                "error": None if ok else item.error,
                "meta": item.meta,
            }
        )
    return rows


def _benchmark(spec: TaskSpec, name: str, rows: list[dict], extra: dict[str, Any]) -> dict:
    """Scored over the answered items; items of unanswered files (score None: a test split)
    go to a submission file instead (:mod:`mm15.eval.submission`), counted in details.
    A benchmark with no answered item has score None and stays out of the averages."""
    scored = [r for r in rows if r["score"] is not None]
    score, details = aggregate(spec, scored) if scored else (None, {})
    if len(scored) < len(rows):
        _, counts = submission_entries([r for r in rows if r["score"] is None])
        details["submission"] = {"file": submission_file(name), **counts}
    errors = Counter(r["error"].split(":", 1)[0] for r in rows if r["error"])
    return {
        "task": name,
        "category": spec.category,
        "metric": METRIC_NAMES[spec.metric],
        "score": score,
        "n": len(rows),
        "n_errors": sum(errors.values()),
        "errors": dict(sorted(errors.items())),
        "details": details,
        **extra,
    }


def _run_synthetic(
    model: MM15,
    tok: MM15Tokenizer,
    spec: TaskSpec,
    data: Path,
    max_new: int | None,
    settings: EvalSettings,
    bar: tqdm,
) -> tuple[list[dict], dict]:
    from mm15.demo.data.corpus import CorpusIndex
    from mm15.demo.data.tasks import SFT_TASKS
    from mm15.eval.synthetic_suite import evaluate_synthetic

    corpus = CorpusIndex.read(data)
    tasks = [t for t in SFT_TASKS if any(f.task == t and f.split == "test" for f in corpus.files)]
    if not tasks:
        raise ValueError(f"synthetic corpus {data} has no test files")
    done = [0]

    def on_batch(n: int, _total: int) -> None:
        bar.update(n - done[0])
        done[0] = n

    res = evaluate_synthetic(
        model,
        tok,
        corpus,
        tasks=tasks,
        limit=settings.limit,
        batch_size=settings.batch_size,
        max_new_tokens=max_new,
        on_batch=on_batch,
    )
    rows = [
        {
            "task": spec.name,
            "id": it["id"],
            "prediction": it["prediction"],
            "reference": it["references"],
            "options": None,
            "score": it["score"],
            "error": None,
            "meta": {"subtask": it["task"], "category": it["category"]},
        }
        for it in res.items
    ]
    cats = res.categories
    score = (
        res.mmbase if res.mmbase is not None else sum(c["score"] for c in cats.values()) / len(cats)
    )
    bench = _benchmark(spec, spec.name, rows, {"files": [str(data / "index.json")], "filtered": 0})
    bench.update(
        score=score,
        details={"categories": cats, "mmbase": res.mmbase},
        max_new_tokens=res.max_new_tokens,
    )
    return rows, bench


def _count(data: Path, limit: int | None) -> int:
    """Items the synthetic suite will run (for the progress bar)."""
    body = json.loads((data / "index.json").read_text())
    counts = [f["count"] for f in body["files"] if f["split"] == "test"]
    return sum(min(c, limit) if limit is not None else c for c in counts)


def run_eval(
    model: MM15,
    tokenizer: MM15Tokenizer,
    tasks: Sequence[tuple[str, str | Path]],
    out: str | Path,
    settings: EvalSettings | None = None,
    *,
    progress: TextIO | None = None,
) -> dict[str, Any]:
    """Evaluate ``model`` on ``tasks`` (``(name or name:split, data path)``), write the outputs
    to ``out`` (module docstring) and return the summary."""
    settings = settings or EvalSettings()
    t0 = time.perf_counter()
    plan = []
    for name, data in tasks:  # every path is checked before the first prediction
        spec, split = get_task(name)
        data = Path(data)
        if spec.metric in JUDGED_METRICS and settings.judge is None:
            raise ValueError(f"task {name!r} is scored by a judge: give EvalSettings(judge=...)")
        if spec.metric == "synthetic":
            plan.append((name, spec, data, None, _count(data, settings.limit)))
        else:
            reader = (spec.reader or ItemReader)(spec, data, split=split, limit=settings.limit)
            plan.append((name, spec, data, reader, reader.row_count()))
    all_rows, benches = [], []
    with tqdm(
        total=sum(p[4] for p in plan),
        desc="eval",
        unit="item",
        file=progress or sys.stderr,
        mininterval=0.5,
    ) as bar:
        for name, spec, data, reader, estimate in plan:
            bar.set_postfix_str(name)
            start = bar.n
            max_new = settings.max_new_tokens or spec.max_new_tokens
            if reader is None:
                rows, bench = _run_synthetic(model, tokenizer, spec, data, max_new, settings, bar)
            else:
                rows = _run_task(
                    model, tokenizer, spec, name, reader, max_new, settings.batch_size, bar
                )
                if spec.metric in JUDGED_METRICS:  # after generation: the judge scores
                    judge_rows(spec, rows, settings.judge)  # type: ignore[arg-type]
                bench = _benchmark(
                    spec,
                    name,
                    rows,
                    {"files": [str(f) for f in reader.files], "filtered": reader.filtered},
                )
            if bar.n - start < estimate:  # filtered rows (SEED's videos): fewer items than rows
                bar.total -= estimate - (bar.n - start)
                bar.refresh()
            bench.setdefault("max_new_tokens", max_new)
            all_rows += rows
            benches.append(bench)
    summary = summarize(benches, seconds=time.perf_counter() - t0)
    write_outputs(Path(out), all_rows, summary)
    return summary


def summarize(benches: list[dict], *, seconds: float = 0.0) -> dict[str, Any]:
    """Category averages are means over benchmark scores (§3.1: "the average score of all
    benchmark numbers"); MMBase is the mean of the general, text-rich and knowledge ones."""
    cats = category_scores((b["category"], b["score"]) for b in benches if b["score"] is not None)
    mmbase = cats.pop("mmbase", None)
    return {
        "benchmarks": {b["task"]: b for b in benches},
        "categories": cats,
        "mmbase": mmbase,
        "n_items": sum(b["n"] for b in benches),
        "n_errors": sum(b["n_errors"] for b in benches),
        "seconds": round(seconds, 2),
    }


def write_outputs(out: Path, rows: list[dict], summary: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "items.jsonl", "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
    for name, bench in summary["benchmarks"].items():
        if "submission" in bench["details"]:
            own = [r for r in rows if r["task"] == name and r["score"] is None]
            write_submission(
                out / bench["details"]["submission"]["file"], submission_entries(own)[0]
            )
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str) + "\n")
    (out / "summary.md").write_text(summary_markdown(summary))
    plot_summary(summary, out / "summary.png")


def summary_markdown(summary: dict[str, Any]) -> str:
    lines = [
        "| benchmark | category | metric | score | n | errors |",
        "|---|---|---|---:|---:|---|",
    ]
    for name, b in summary["benchmarks"].items():
        errs = ", ".join(f"{k} {v}" for k, v in b["errors"].items()) or "0"
        score = "n/a" if b["score"] is None else f"{100 * b['score']:.1f}"
        lines.append(f"| {name} | {b['category']} | {b['metric']} | {score} | {b['n']} | {errs} |")
        d = b["details"]
        if "submission" in d:
            sub = d["submission"]
            lines.append(f"| {name} test split | | submission | {sub['file']} | {sub['n']} | |")
        if "perception" in d:
            lines.append(
                f"| {name} perception / cognition | | sums | "
                f"{d['perception']:.1f} / {d['cognition']:.1f} | | |"
            )
        for split, s in d.get("splits", {}).items():
            lines.append(
                f"| {name} {split} | | acc / F1 | {100 * s['acc']:.1f} / "
                f"{100 * s['f1']:.1f} | {s['n']} | |"
            )
    lines += ["", "| category | average |", "|---|---:|"]
    lines += [f"| {c} | {100 * v:.1f} |" for c, v in summary["categories"].items()]
    base = summary["mmbase"]
    lines += [
        "",
        f"MMBase: {100 * base:.1f}"
        if base is not None
        else "MMBase: n/a (needs a general, text-rich or knowledge benchmark)",
    ]
    return "\n".join(lines) + "\n"


def plot_summary(summary: dict[str, Any], path: Path) -> None:
    """Benchmark scores (bars coloured by category), category averages and MMBase; drawn on
    matplotlib's Agg canvas directly, so the process's pyplot backend is never touched."""
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    benches = [b for b in summary["benchmarks"].values() if b["score"] is not None]
    colour = {
        c: colormaps["tab10"](i % 10)
        for i, c in enumerate(sorted({b["category"] for b in benches}))
    }
    averages = dict(summary["categories"])
    if summary["mmbase"] is not None:
        averages["MMBase"] = summary["mmbase"]
    fig = Figure(figsize=(10, 0.4 * max(len(benches), len(averages)) + 2.5))
    FigureCanvasAgg(fig)
    ax1, ax2 = fig.subplots(1, 2, gridspec_kw={"width_ratios": [3, 2]})
    panels = (
        (ax1, {b["task"]: b["score"] for b in benches}, "score (%)", "benchmarks"),
        (ax2, averages, "average (%)", "categories"),
    )
    for ax, values, xlabel, title in panels:
        cats = {b["task"]: b["category"] for b in benches} if ax is ax1 else {}
        bars = ax.barh(
            list(values),
            [100 * v for v in values.values()],
            color=[colour.get(cats.get(n, n), "black") for n in values],
        )
        ax.bar_label(bars, fmt="%.1f", padding=2)
        ax.invert_yaxis()
        ax.set(xlim=(0, 110), xlabel=xlabel, title=title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
