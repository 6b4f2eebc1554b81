"""The suite's table as the paper lays it out (:mod:`mm15.eval.suite`): ``paper_table.md`` /
``.json`` rewritten after every task, the plot ``paper_table.png`` (mm15 beside the paper, one
panel per category, on matplotlib's Agg canvas), and the printed report with its exit status.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from mm15.eval.paper_numbers import CATEGORIES

UNIT_LABELS = {"score": "judge score", "cider": "CIDEr", "score5": "judge score, 0–5"}


def _fmt(value: float | None, unit: str = "%") -> str:
    if value is None:
        return "–"
    return f"{value:.2f}" if unit == "score5" else f"{value:.1f}"


def table_markdown(table: dict[str, Any]) -> str:
    """The paper's layout: rows by category, mm15 beside MM1.5-<size>, averages, MMBase."""
    size = table["paper_size"]
    lines = [
        f"| category | benchmark | mm15 task | mm15 | MM1.5-{size} (paper) | table | status |",
        "|---|---|---|---:|---:|---|---|",
    ]
    for cat, title in CATEGORIES.items():
        members = [r for r in table["rows"] if r["category"] == cat]
        for r in members:
            name = f"↳ {r['name']}" if r["parent"] else r["name"]
            unit = UNIT_LABELS.get(r["unit"])
            bench = f"{name} ({unit})" if unit else name
            lines.append(
                f"| {title} | {bench} | {', '.join(r['tasks'])} | {_fmt(r['mm15'], r['unit'])} | "
                f"{_fmt(r['paper'], r['unit'])} | {r['table'] or ''} | {r['status']} |"
            )
        c = table["categories"][cat]
        lines.append(
            f"| {title} | **average** | | {_fmt(c['mm15'])} | {_fmt(c['paper'])} | | "
            f"{c['rows_scored']} of {c['rows']} rows scored |"
        )
    m = table["mmbase"]
    lines.append(f"| | **MMBase** | | {_fmt(m['mm15'])} | {_fmt(m['paper'])} | | |")
    tasks = table["tasks"]
    counts: dict[str, list[str]] = {}
    for task, res in tasks.items():
        counts.setdefault(res["status"], []).append(task)
    lines += [
        "",
        "Units: % unless named; MME is the perception + cognition sum (out of 2800); LLaVA-W "
        "and Ferret-Bench are judge scores; VCGBench a 0–5 judge score; CIDEr × 100. Averages: "
        "0–100 (MME as sum / 28, VCGBench × 20), "
        "over the rows mm15 scored; the paper's over the same rows.",
        "",
        "Tasks: " + "; ".join(f"{len(v)} {k}" for k, v in sorted(counts.items())) + ".",
    ]
    for r in table["rows"]:
        if r["note"]:
            lines.append(f"Note: {r['name']}: {r['note']}.")
    if counts.get("no data"):
        lines.append(f"No data under {table['root']}: {', '.join(counts['no data'])}.")
    for task in counts.get("error", []):
        lines.append(f"Failed: {task}: {tasks[task]['error']}")
    return "\n".join(lines) + "\n"


def report(table: dict[str, Any], out: Path) -> int:
    """Print the table and what was written (``mm15 eval --suite``); the exit status: 0 when
    some task was scored, 1 when none was."""
    print(table_markdown(table), end="")
    written = [out / f"paper_table.{ext}" for ext in ("md", "json", "png")]
    print(
        f"wrote {', '.join(map(str, written))}, {out / 'summary.json'}; per task: {out / 'tasks'}"
    )
    results = table["tasks"].values()
    failed = [r for r in results if r["status"] == "error"]
    if failed:
        print(f"warning: {len(failed)} task(s) failed (listed under the table)", file=sys.stderr)
    return 0 if any(r.get("n") for r in results) else 1


def write_table(out: Path, table: dict[str, Any], *, plot: bool = True) -> list[Path]:
    """``paper_table.md``, ``paper_table.json`` (and ``paper_table.png``) in ``out``."""
    paths = [out / "paper_table.md", out / "paper_table.json"]
    paths[0].write_text(table_markdown(table))
    paths[1].write_text(json.dumps(table, indent=1, default=str) + "\n")
    if plot:
        paths.append(out / "paper_table.png")
        plot_table(table, paths[-1])
    return paths


def plot_table(table: dict[str, Any], path: Path) -> None:
    """Grouped bars, mm15 beside the paper, per benchmark, one panel per category with a number;
    drawn on matplotlib's Agg canvas (the process's pyplot backend is never touched)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    panels = []
    for cat, title in CATEGORIES.items():
        rows = [
            r
            for r in table["rows"]
            if r["category"] == cat
            and r["parent"] is None
            and (r["mm15_avg_scale"] is not None or r["paper_avg_scale"] is not None)
        ]
        if rows:
            panels.append((title, rows))
    fig = Figure(figsize=(11, 1.2 + sum(0.45 * len(r) + 0.8 for _, r in panels)))
    FigureCanvasAgg(fig)
    if not panels:
        fig.text(0.5, 0.5, "no numbers to plot", ha="center")
        fig.savefig(path, dpi=100)
        return
    axes = fig.subplots(
        len(panels), 1, squeeze=False, gridspec_kw={"height_ratios": [len(r) for _, r in panels]}
    )[:, 0]
    size = table["paper_size"]
    for ax, (title, rows) in zip(axes, panels, strict=True):
        ys = range(len(rows))
        labels = [
            r["name"].replace("(sum)", "(sum / 28)") + (" (× 20)" if r["unit"] == "score5" else "")
            for r in rows
        ]
        for offset, key, label, colour in (
            (-0.2, "mm15_avg_scale", "mm15", "tab:blue"),
            (0.2, "paper_avg_scale", f"MM1.5-{size} (paper)", "tab:gray"),
        ):
            values = [r[key] if r[key] is not None else 0.0 for r in rows]
            bars = ax.barh([y + offset for y in ys], values, height=0.4, color=colour, label=label)
            ax.bar_label(bars, labels=[_fmt(r[key]) for r in rows], padding=2, fontsize=7)
        ax.set_yticks(list(ys), labels, fontsize=8)
        ax.invert_yaxis()
        top = max([110.0] + [r["paper_avg_scale"] or 0 for r in rows])
        top = max([top] + [r["mm15_avg_scale"] or 0 for r in rows])
        ax.set(xlim=(0, top * 1.1), title=title)
    axes[0].legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
