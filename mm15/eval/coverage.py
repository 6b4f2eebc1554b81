"""Every benchmark of MM1.5's Tables 4–12 with the mm15 task that scores it, its metric and its
status: the table in docs/evaluation.md ("The paper's benchmarks"), generated from
``paper_numbers.toml`` (:mod:`mm15.eval.paper_numbers`) and the task registry so that it cannot drift
from either (tests/test_eval_coverage.py).  ``python -m mm15.eval.coverage`` prints it.
"""

from __future__ import annotations

from mm15.eval.paper_numbers import CATEGORIES, PaperRow, load_paper_rows
from mm15.eval.tasks import get_task


def _tables(row: PaperRow) -> str:
    names = sorted({k.removeprefix("table").split("_")[0] for k in row.tables}, key=int)
    return ", ".join(names) or "—"


def _status(row: PaperRow, rows: dict[str, PaperRow]) -> tuple[str, str, str]:
    """(tasks, metrics, status) of one paper row."""
    if row.no_task:
        return "—", "—", f"no task: {row.no_task}"
    if row.parts:
        return f"mean of {', '.join(rows[p].name for p in row.parts)}", "—", "task"
    metrics = sorted({get_task(t)[0].metric for t in row.tasks})
    tasks = ", ".join(f"`{t}`" for t in row.tasks)
    return (
        tasks,
        ", ".join(f"`{m}`" for m in metrics),
        "task" + (f" ({row.note})" if row.note else ""),
    )


def coverage_markdown(rows: dict[str, PaperRow] | None = None) -> str:
    """The markdown table of every paper row (splits and sub-tasks under their benchmark)."""
    rows = rows if rows is not None else load_paper_rows()
    lines = [
        "| category | benchmark (paper) | tables | mm15 task(s) | metric | status |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows.values():
        tasks, metrics, status = _status(row, rows)
        name = f"↳ {row.name}" if row.parent else row.name
        lines.append(
            f"| {CATEGORIES[row.category]} | {name} | {_tables(row)} | {tasks} | {metrics} "
            f"| {status} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(coverage_markdown(), end="")
