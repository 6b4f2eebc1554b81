"""``mm15 eval --suite paper``: every benchmark of MM1.5's Tables 4–12 whose data is present under
one root, scored by :func:`mm15.eval.runner.run_eval`, then laid out as the paper's tables beside
the paper's own numbers for one model size.

* **The paper's numbers** live in ``paper_numbers.toml`` beside this module (its header says how):
  one entry per row of the paper's tables, naming the mm15 task(s) that score it (``tasks``), the
  rows it averages (``parts``, e.g. RefCOCO (avg)) or why mm15 has no task for it (``no_task``),
  its unit and the numbers of each table that gives it.  :func:`load_paper_rows` reads and checks
  it.
* **Data.** ``ROOT/<task>`` is the data of task ``<task>`` (a directory, or one file
  ``ROOT/<task>.jsonl`` / ``.parquet`` / ``.json`` / ``.arrow``), what ``--data PATH`` would be
  for ``--task <task>``; splits the paper scores (``refcoco:testA``, ``intentqa:val``) read the
  task's folder.  A task whose entry is absent is reported as "no data"; one whose data fails
  to read (or to run) is reported with its error and the suite goes on.
* **Outputs** (``--out``): ``tasks/<task>/`` holds each task's own ``items.jsonl`` and
  ``summary.*`` as ``mm15 eval --task`` writes them, as soon as the task is done;
  ``paper_table.md`` and ``paper_table.json`` are rewritten after every task (an interrupted
  run keeps what it finished); ``paper_table.png`` (mm15 vs the paper, per category) and
  ``summary.json`` / ``summary.md`` (the runner's own per-task summary over all tasks) at the
  end.
* **The table.** Rows grouped by the paper's categories, mm15's score in the paper's unit (MME
  as the perception + cognition sum, LLaVA-W and Ferret-Bench as judge scores, VCGBench 0-5,
  CIDEr × 100, otherwise %) beside the paper's.  Category averages follow the runner (the mean
  of the category's benchmark scores, MME as (P + C) / 2800), over the rows mm15 scored; the paper's
  average is over the same rows (none when it lacks one of them).  MMBase is the mean of the
  general, text-rich and knowledge averages present (§3.1).
"""

from __future__ import annotations

import dataclasses
import json
import sys
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from mm15.errors import USER_ERRORS, one_line
from mm15.eval.metrics import category_scores
from mm15.eval.paper_numbers import (
    CATEGORIES,
    SIZES,
    PaperRow,
    load_paper_rows,
    reference,
    suite_tasks,
)
from mm15.eval.suite_report import write_table
from mm15.eval.tasks import get_task

MME_MAX = 2800.0  # 14 sub-tasks x 200: the unit of mm15's MME score
DATA_SUFFIXES = (".jsonl", ".parquet", ".json", ".arrow")


# ---------------------------------------------------------------------------------------------
# The model size and the data


def checkpoint_size(model_dir: str | Path) -> str | None:
    """The paper size (``3B``, ``1B-MoE``, …) of a checkpoint whose decoder has the shape of one
    of mm15's paper presets (:func:`mm15.presets.paper_model`); None for any other decoder."""
    from mm15.config import load_model_config
    from mm15.presets import paper_model

    path = Path(model_dir) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{model_dir} is not an mm15 checkpoint (no config.json)")
    lm = load_model_config(str(path)).lm
    shape = ("dim", "n_layers", "n_heads", "n_kv_heads", "ffn_hidden")
    for size in ("1b", "3b", "7b", "30b"):
        ref = paper_model(size).lm
        if all(getattr(lm, f) == getattr(ref, f) for f in shape):
            name = size.upper() + ("-MoE" if lm.moe is not None else "")
            return name if name in SIZES else None
    return None


def paper_size(model_dir: str | Path | None, given: str | None) -> str:
    """``given`` (any case) checked against the paper's sizes, else the checkpoint's size."""
    if given is not None:
        by_lower = {s.lower(): s for s in SIZES}
        if given.lower() not in by_lower:
            no_moe = " (the paper has no 30B-MoE model)" if given.lower() == "30b-moe" else ""
            raise ValueError(
                f"--paper-size {given!r}: the paper reports MM1.5 at {', '.join(SIZES)}{no_moe}"
            )
        return by_lower[given.lower()]
    size = checkpoint_size(model_dir) if model_dir else None
    if size is None:
        raise ValueError(
            f"give --paper-size ({'|'.join(SIZES)}): the decoder of {model_dir} is not one of "
            "the paper's sizes, so the reference column cannot be chosen from it"
        )
    return size


def find_data(root: Path, task: str) -> Path | None:
    """``ROOT/<task>`` (a directory or a file) or ``ROOT/<task>.jsonl|.parquet|.json|.arrow``
    for task ``<task>[:SPLIT]``; None when there is none."""
    base = task.partition(":")[0]
    for p in (root / base, *(root / f"{base}{s}" for s in DATA_SUFFIXES)):
        if p.exists():
            return p
    return None


@dataclass
class SuitePlan:
    root: Path
    size: str
    rows: dict[str, PaperRow]
    present: list[tuple[str, Path]]  # (task, its data), in the table's order
    absent: list[str]


def plan_suite(data: Sequence[str | Path], size: str) -> SuitePlan:
    """Which of the suite's tasks have data under the one root ``data`` names."""
    if len(data) != 1:
        raise ValueError(f"--suite takes one --data ROOT (one folder per task), got {len(data)}")
    root = Path(data[0])
    if not root.is_dir():
        raise FileNotFoundError(f"--data {root}: the suite's root must be a directory")
    rows = load_paper_rows()
    present, absent = [], []
    for task in suite_tasks(rows):
        path = find_data(root, task)
        if path is None:
            absent.append(task)
        else:
            present.append((task, path))
    if not present:
        names = sorted({t.partition(":")[0] for t in absent})
        raise FileNotFoundError(
            f"--data {root}: no task's data is there; the suite reads ROOT/<task> "
            f"(a folder or <task>.jsonl/.parquet) for the tasks {', '.join(names)}"
        )
    return SuitePlan(root=root, size=size, rows=rows, present=present, absent=absent)


# ---------------------------------------------------------------------------------------------
# Running


def run_suite(
    model: Any,
    tokenizer: Any,
    plan: SuitePlan,
    out: str | Path,
    settings: Any = None,
    *,
    make_judge: Callable[[], Any] | None = None,
    progress: TextIO | None = None,
    log: TextIO | None = None,
) -> dict[str, Any]:
    """Run every task of ``plan`` into ``out/tasks/<task>/`` (one failing task is recorded and
    the rest still run), write the paper's table (``paper_table.*``) and return it (the JSON).
    ``make_judge()`` gives the judge of the judged tasks; when it raises, they are errors."""
    from mm15.eval.judged_tasks import JUDGED_METRICS
    from mm15.eval.runner import EvalSettings, run_eval, summarize, summary_markdown

    out, log = Path(out), log or sys.stderr
    settings = settings or EvalSettings()
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict[str, Any]] = {
        t: {"status": "no data", "data": str(plan.root / t.partition(":")[0])} for t in plan.absent
    }
    judge, judge_error = settings.judge, None
    judged = [t for t, _ in plan.present if get_task(t)[0].metric in JUDGED_METRICS]
    if judged and judge is None:
        try:
            if make_judge is None:
                raise ValueError("no judge given")
            judge = make_judge()
        except USER_ERRORS as e:
            judge_error = f"{type(e).__name__}: {one_line(e)}"
    settings = dataclasses.replace(settings, judge=judge)
    benches = []
    for task, data in plan.present:
        task_out = out / "tasks" / task.replace(":", "-")
        if task in judged and judge is None:
            results[task] = {"status": "error", "error": judge_error, "data": str(data)}
        else:
            try:
                summary = run_eval(
                    model, tokenizer, [(task, data)], task_out, settings, progress=progress
                )
            except Exception as e:  # one task's failure (its data, or a bug) must not end the suite
                if not isinstance(e, USER_ERRORS):
                    traceback.print_exc(file=log)
                results[task] = {
                    "status": "error",
                    "error": f"{type(e).__name__}: {one_line(e)}",
                    "data": str(data),
                }
            else:
                bench = summary["benchmarks"][task]
                benches.append(bench)
                results[task] = {
                    "status": "scored" if bench["score"] is not None else "n/a",
                    "score": bench["score"],
                    "n": bench["n"],
                    "n_errors": bench["n_errors"],
                    "details": bench["details"],
                    "data": str(data),
                    "out": str(task_out),
                }
        if results[task]["status"] == "error":
            print(f"warning: {task}: {results[task]['error']} (the suite goes on)", file=log)
        table = paper_table(plan.rows, plan.size, results, root=plan.root)
        write_table(out, table, plot=False)
    summary = summarize(benches)
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str) + "\n")
    (out / "summary.md").write_text(summary_markdown(summary))
    table = paper_table(plan.rows, plan.size, results, root=plan.root)
    write_table(out, table, plot=True)
    return table


# ---------------------------------------------------------------------------------------------
# The table


def _avg_scale(unit: str, value: float | None) -> float | None:
    """A number on the 0-100 scale the averages use (MME's sum / 28, VCGBench's 0-5 × 20)."""
    if value is None:
        return None
    return 100 * value / MME_MAX if unit == "sum" else 20 * value if unit == "score5" else value


def _task_row(row: PaperRow, results: dict[str, dict]) -> dict[str, Any]:
    got = [results.get(t, {"status": "not run"}) for t in row.tasks]
    scored = [r for r in got if r.get("score") is not None]
    failed = [t for t, r in zip(row.tasks, got, strict=True) if r.get("error")]
    mm15 = avg = None
    if scored:
        avg = 100 * sum(r["score"] for r in scored) / len(scored)
        mm15 = avg
        if row.unit == "sum":  # MME in the paper's unit: perception + cognition
            sums = [
                r["details"].get("perception", 0) + r["details"].get("cognition", 0) for r in scored
            ]
            mm15 = sum(sums) / len(sums)
        elif row.unit == "score5":  # VCGBench: mm15's score is the 0-5 average / 5
            mm15 = avg / 20
    if failed:
        status = "error: " + ", ".join(failed)
    elif not scored:
        states = {r["status"] for r in got}
        status = states.pop() if len(states) == 1 else ", ".join(sorted(states))
    elif len(scored) < len(got):
        status = f"partial: {len(scored)} of {len(got)} tasks"
    else:
        status = ""
    return {"mm15": mm15, "mm15_avg_scale": avg, "status": status}


def paper_table(
    rows: dict[str, PaperRow], size: str, results: dict[str, dict], *, root: Path | None = None
) -> dict[str, Any]:
    """The suite's table as JSON-ready data: one entry per paper row, category averages and
    MMBase for mm15 and the paper (see the module docstring), and every task's result."""
    out_rows: dict[str, dict[str, Any]] = {}
    for key, row in rows.items():  # parts come after their average row: fill those later
        if row.no_task:
            got = {"mm15": None, "mm15_avg_scale": None, "status": "no task"}
        elif row.tasks:
            got = _task_row(row, results)
        else:
            got = {}
        value, source = reference(rows, key, size)
        out_rows[key] = {
            "key": key,
            "name": row.name,
            "category": row.category,
            "parent": row.parent,
            "tasks": list(row.tasks),
            "unit": row.unit,
            "paper": value,
            "paper_avg_scale": _avg_scale(row.unit, value),
            "table": source,
            "note": row.note or row.no_task,
            **got,
        }
    for key, row in rows.items():
        if row.parts:
            parts = [out_rows[p] for p in row.parts]
            have = [p["mm15_avg_scale"] for p in parts if p["mm15_avg_scale"] is not None]
            failed = [t for p in parts if p["status"].startswith("error") for t in p["tasks"]]
            mean = sum(have) / len(have) if have else None
            if failed:
                status = "error: " + ", ".join(failed)
            elif not have:
                status = ", ".join(sorted({p["status"] for p in parts}))
            elif len(have) < len(parts):
                status = f"partial: {len(have)} of {len(parts)} parts"
            else:
                status = ""
            out_rows[key].update(mm15=mean, mm15_avg_scale=mean, status=status)
    top = [r for r in out_rows.values() if r["parent"] is None]
    ours = category_scores(
        (r["category"], r["mm15_avg_scale"]) for r in top if r["mm15_avg_scale"] is not None
    )
    ours.pop("mmbase", None)
    categories: dict[str, dict[str, Any]] = {}
    for cat in CATEGORIES:
        members = [r for r in top if r["category"] == cat]
        scored = [r for r in members if r["mm15_avg_scale"] is not None]
        papers = [r["paper_avg_scale"] for r in scored]
        categories[cat] = {
            "mm15": ours.get(cat),
            "paper": sum(papers) / len(papers)  # type: ignore[arg-type]
            if scored and all(p is not None for p in papers)
            else None,
            "rows_scored": len(scored),
            "rows": len(members),
        }
    base = [
        categories[c]
        for c in ("general", "text_rich", "knowledge")
        if categories[c]["mm15"] is not None
    ]
    mmbase = {
        "mm15": sum(c["mm15"] for c in base) / len(base) if base else None,
        "paper": sum(c["paper"] for c in base) / len(base)
        if base and all(c["paper"] is not None for c in base)
        else None,
    }
    return {
        "paper_size": size,
        "root": str(root) if root is not None else None,
        "rows": list(out_rows.values()),
        "categories": categories,
        "mmbase": mmbase,
        "tasks": results,
    }
