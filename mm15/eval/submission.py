"""Test-server submissions (MM1.5 §4.1: DocVQA and InfoVQA test numbers come from the official
servers, rrc.cvc.uab.es): a split without references is predicted, not scored, and its
predictions are written as the servers take them, a JSON list of
``{"questionId": int, "answer": str}`` (the format of lmms-eval's ``docvqa_test`` /
``infovqa_test`` submission files).

An item that could not be run keeps its place with answer ``""`` (the server scores it 0, as
the local scores do); one whose question id is not an integer cannot be placed and is counted.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa

from mm15.data.schema import SampleError
from mm15.data.sources.rows import RowStore
from mm15.eval.task_spec import TaskSpec


def question_id(spec: TaskSpec, row: dict[str, Any], where: str) -> int:
    """The integer id a submission file needs (``spec.submission_id``, DocVQA's
    ``questionId``); ``malformed`` when it is missing or not an integer."""
    value = row.get(spec.submission_id) if spec.submission_id else None
    try:
        if isinstance(value, bool) or float(value) != int(value):  # type: ignore[arg-type]
            raise ValueError
        return int(value)  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):
        raise SampleError(
            "malformed",
            f"{where}: {spec.submission_id} {value!r:.40} is not an integer question id "
            "(a test-split item needs one for the submission file)",
        ) from None


def has_answers(spec: TaskSpec, path: Path) -> bool:
    """False for a file of a test-server task (``spec.submission_id``) whose answer column is
    absent or null in every row (lmms-lab/DocVQA's test split): its items are predicted for
    the submission file.  Else True, so a null answer in an answered file stays an ``empty``
    error item."""
    if not spec.submission_id or not spec.columns.answer:
        return True
    try:
        values = RowStore([path], []).column(spec.columns.answer)
    except (KeyError, pa.ArrowException):  # the file has no such column
        return False
    except SampleError as e:  # a .json file that does not decode
        raise ValueError(e.detail) from None
    return any(v is not None for v in values)


def submission_file(task: str) -> str:
    """``docvqa:test`` → ``docvqa_test_submission.json``."""
    return task.replace(":", "_") + ("" if ":" in task else "_test") + "_submission.json"


def submission_entries(rows: Sequence[dict[str, Any]]) -> tuple[list[dict], dict[str, int]]:
    """The submission list of a task's unanswered item rows, and its accounting: ``n`` entries,
    ``empty`` (error items, answer ""), ``unplaced`` (no integer id), ``duplicates`` (an id
    seen before; the first is kept)."""
    entries: list[dict] = []
    seen: set[int] = set()
    counts = {"n": 0, "empty": 0, "unplaced": 0, "duplicates": 0}
    for row in rows:
        qid = row["id"]
        try:
            qid = int(str(qid))
        except ValueError:
            counts["unplaced"] += 1
            continue
        if qid in seen:
            counts["duplicates"] += 1
            continue
        seen.add(qid)
        answer = row["prediction"]
        counts["empty"] += answer is None
        entries.append({"questionId": qid, "answer": (answer or "").strip()})
    counts["n"] = len(entries)
    return entries, counts


def write_submission(path: Path, entries: list[dict]) -> None:
    path.write_text(json.dumps(entries, ensure_ascii=False) + "\n", encoding="utf-8")
