"""MM1.5's published numbers (Tables 4–12) as ``paper_numbers.toml`` holds them: one
:class:`PaperRow` per row of the paper's tables, naming the mm15 task(s) that score it, the rows
it averages, or why mm15 has no task for it (the file's header says how).  Read by
``mm15 eval --suite paper`` (:mod:`mm15.eval.suite`) for its reference column and by
:mod:`mm15.eval.coverage` for docs/evaluation.md's table.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mm15.eval.tasks import get_task

NUMBERS_FILE = Path(__file__).with_name("paper_numbers.toml")
SIZES = ("1B", "1B-MoE", "3B", "3B-MoE", "7B", "30B")
# The paper's groups, in its order (Table 4, then Tables 10 and 12).
CATEGORIES = {
    "general": "General",
    "text_rich": "Text-rich",
    "knowledge": "Knowledge",
    "refer_ground": "Refer&Ground",
    "multi_image": "Multi-image",
    "icl": "In-context learning",
    "video": "Video",
    "ui": "UI",
}
UNITS = ("%", "sum", "score", "cider", "score5")
TABLE_LABELS = {  # how the reference column names where a number comes from
    "table10": "10 (Video, training-free)",
    "table10_sft": "10 (Video SFT)",
    "table11": "11 (Video, training-free)",
    "table11_sft": "11 (Video SFT)",
    "table12": "12 (UI)",
    "table5_pc": "5 (P + C)",
}


# ---------------------------------------------------------------------------------------------
# The paper's numbers


@dataclass(frozen=True)
class PaperRow:
    """One row of the paper's tables (a benchmark, a split of one, or an average of rows)."""

    key: str
    name: str
    category: str
    unit: str
    tasks: tuple[str, ...] = ()
    parts: tuple[str, ...] = ()
    parent: str | None = None
    no_task: str | None = None
    note: str | None = None
    tables: dict[str, dict[str, Any]] = field(default_factory=dict)  # "table4" → size → number


def load_paper_rows(path: str | Path = NUMBERS_FILE) -> dict[str, PaperRow]:
    """The rows of ``paper_numbers.toml`` in the file's order, checked: each names known mm15
    tasks, or parts that are rows of the file, or says why it has no task."""
    with open(path, "rb") as f:
        body = tomllib.load(f)
    rows: dict[str, PaperRow] = {}
    for key, entry in body.items():
        where = f"{path}: [{key}]"
        tables = {k: v for k, v in entry.items() if k.startswith("table")}
        rest = {k: v for k, v in entry.items() if not k.startswith("table")}
        try:
            row = PaperRow(
                key=key,
                tables=tables,
                **{k: tuple(v) if k in ("tasks", "parts") else v for k, v in rest.items()},
            )
        except TypeError as e:
            raise ValueError(f"{where}: {e}") from None
        if row.category not in CATEGORIES or row.unit not in UNITS:
            raise ValueError(f"{where}: category {row.category!r} / unit {row.unit!r} unknown")
        if sum(map(bool, (row.tasks, row.parts, row.no_task))) != 1:
            raise ValueError(f"{where}: give exactly one of tasks, parts or no_task")
        for task in row.tasks:
            get_task(task)  # an unknown task name is a ValueError
        for table, values in tables.items():
            bad = sorted(set(values) - set(SIZES))
            if bad:
                raise ValueError(f"{where}: {table} has sizes {bad}; sizes are {list(SIZES)}")
        rows[key] = row
    for row in rows.values():
        for k in (*row.parts, *([row.parent] if row.parent else [])):
            if k not in rows:
                raise ValueError(f"{path}: [{row.key}] names {k!r}, which is not a row")
    return rows


def reference(rows: dict[str, PaperRow], key: str, size: str) -> tuple[float | None, str | None]:
    """(the paper's number for ``size`` in the row's unit, the table it comes from): the first
    table of the row that gives the size; MME's perception + cognition sum (Table 5); for an
    average row without one, the mean of its parts' numbers ("… derived")."""
    row = rows[key]
    for table, values in row.tables.items():
        if size in values:
            value = values[size]
            if table == "table5_pc":
                return round(sum(value), 1), TABLE_LABELS[table]
            return float(value), TABLE_LABELS.get(table, table.removeprefix("table"))
    if row.parts:
        refs = [reference(rows, p, size) for p in row.parts]
        if refs and all(v is not None for v, _ in refs):
            sources = sorted({s for _, s in refs if s})
            mean = sum(v for v, _ in refs if v is not None) / len(refs)
            return round(mean, 2), f"{', '.join(sources)} (mean, derived)"
    return None, None


def suite_tasks(rows: dict[str, PaperRow]) -> list[str]:
    """Every mm15 task (NAME or NAME:SPLIT) the rows name, in the table's order."""
    return list(dict.fromkeys(t for row in rows.values() for t in row.tasks))
