"""docs/evaluation.md lists every benchmark of MM1.5's Tables 4–12 with its mm15 task, metric and
status (issue 23), exactly as mm15.eval.coverage generates it from paper_numbers.toml and the
task registry: a task added, renamed or dropped without the page following fails here."""

from __future__ import annotations

import re
from pathlib import Path

from mm15.eval.coverage import coverage_markdown
from mm15.eval.paper_numbers import load_paper_rows

DOC = Path(__file__).resolve().parents[1] / "docs" / "evaluation.md"


def _doc_table() -> str:
    text = DOC.read_text(encoding="utf-8")
    match = re.search(r"<!-- coverage:start -->\n(.*?)<!-- coverage:end -->", text, flags=re.S)
    assert match, "docs/evaluation.md has no coverage block"
    return match.group(1)


def test_the_page_lists_every_paper_benchmark_as_generated():
    assert _doc_table() == coverage_markdown(), "run: python -m mm15.eval.coverage"


def test_every_row_has_a_task_or_a_stated_reason():
    rows = load_paper_rows()
    table = coverage_markdown(rows)
    assert table.count("\n") == len(rows) + 2  # header, rule, one line per row
    for row in rows.values():
        assert row.tasks or row.parts or (row.no_task and len(row.no_task) > 20), row.key
    # Table 4's 28 benchmarks are all there (the "(avg)" rows included).
    top = [r for r in rows.values() if r.parent is None and "table4" in r.tables]
    assert len(top) == 28
