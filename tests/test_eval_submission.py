"""DocVQA / InfoVQA test splits (no answers) → the official submission files
(``[{"questionId": int, "answer": str}]``): the readers' unanswered files, the accounting of
items that cannot be placed, and `mm15 eval` end to end through the CLI."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from mm15.cli.eval import main
from mm15.eval.readers import read_items
from mm15.eval.submission import submission_entries, submission_file
from mm15.eval.tasks import TASKS


def png(size=(40, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (0, 90, 200)).save(buf, format="PNG")
    return buf.getvalue()


def write_parquet(path: Path, rows: list[dict], schema: pa.Schema | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
    return path


SCHEMA = pa.schema(
    [
        ("questionId", pa.string()),
        ("question", pa.string()),
        ("answers", pa.list_(pa.string())),
        ("image", pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
    ]
)


def lmms_docvqa(root: Path) -> Path:
    """lmms-lab/DocVQA: DocVQA/ (test answers null) and InfographicVQA/ (test split without
    an answers column), each with a validation split that has answers."""
    img = {"bytes": png(), "path": None}
    test = [
        {"questionId": "57344", "question": "What is the date?", "answers": None, "image": img},
        {"questionId": "57345", "question": "Who signed?", "answers": None, "image": img},
        {"questionId": "57346", "question": "Total?", "answers": None, "image": None},
        {"questionId": "q-7", "question": "Where?", "answers": None, "image": img},
    ]
    write_parquet(root / "DocVQA" / "test-00000-of-00001.parquet", test, SCHEMA)
    val = [
        {"questionId": "1", "question": "q", "answers": ["x"], "image": img},
        {"questionId": "2", "question": "q", "answers": None, "image": img},
    ]
    write_parquet(root / "DocVQA" / "validation-00000-of-00001.parquet", val, SCHEMA)
    info = [{"questionId": 99, "question": "How many?", "image": img}]
    write_parquet(root / "InfographicVQA" / "test-00000-of-00001.parquet", info)
    write_parquet(root / "InfographicVQA" / "validation-00000-of-00001.parquet", val, SCHEMA)
    return root


def test_unanswered_test_split_items(tmp_path):
    root = lmms_docvqa(tmp_path)
    items = read_items(TASKS["docvqa"], root, split="test").items
    assert [i.unanswered for i in items] == [True] * 4
    assert [i.error.split(":")[0] if i.error else None for i in items] == [
        None,
        None,
        "missing",
        "malformed",
    ]
    assert "questionId 'q-7' is not an integer question id" in items[3].error
    assert items[0].references == [] and items[0].id == "57344"
    info = read_items(TASKS["infovqa"], root, split="test").items  # no answers column at all
    assert [(i.id, i.unanswered, i.error) for i in info] == [("99", True, None)]
    # an answered split keeps a null answer as an error item: it is not silently unscored
    val = read_items(TASKS["docvqa"], root).items
    assert [i.unanswered for i in val] == [False, False]
    assert val[1].error.startswith("empty") and "no reference answer" in val[1].error


def test_submission_entries_accounting():
    rows = [
        {"id": "5", "prediction": " 1/8/93 "},
        {"id": "6", "prediction": None},  # an error item: answer "" (scored 0 by the server)
        {"id": "file.parquet:3", "prediction": "x"},  # no integer id: cannot be placed
        {"id": "5", "prediction": "again"},  # a duplicate id: the first is kept
    ]
    entries, counts = submission_entries(rows)
    assert entries == [{"questionId": 5, "answer": "1/8/93"}, {"questionId": 6, "answer": ""}]
    assert counts == {"n": 2, "empty": 1, "unplaced": 1, "duplicates": 1}
    assert submission_file("docvqa:test") == "docvqa_test_submission.json"
    assert submission_file("infovqa") == "infovqa_test_submission.json"


def test_cli_writes_submission_files(tiny_ckpt_dir, tmp_path, capsys):
    root = lmms_docvqa(tmp_path / "docvqa")
    out = tmp_path / "out"
    argv = ["--model", str(tiny_ckpt_dir), "--out", str(out), "--device", "cpu"]
    argv += ["--task", "docvqa:test,infovqa:test,docvqa"]
    argv += ["--data", str(root), "--data", str(root), "--data", str(root)]
    assert main([*argv, "--max-new-tokens", "3", "--batch-size", "2"]) == 0
    printed = capsys.readouterr().out
    assert "| docvqa:test | text_rich | ANLS | n/a | 4 |" in printed
    assert "| docvqa:test test split | | submission | docvqa_test_submission.json | 3 |" in printed
    summary = json.loads((out / "summary.json").read_text())
    test = summary["benchmarks"]["docvqa:test"]
    assert test["score"] is None and test["n"] == 4 and test["n_errors"] == 2
    assert test["details"]["submission"] == {
        "file": "docvqa_test_submission.json",
        "n": 3,
        "empty": 1,
        "unplaced": 1,
        "duplicates": 0,
    }
    # the answered validation split is scored and is the only one in the text-rich average
    val = summary["benchmarks"]["docvqa"]
    assert isinstance(val["score"], float)
    assert summary["categories"] == {"text_rich": pytest.approx(val["score"])}
    sub = json.loads((out / "docvqa_test_submission.json").read_text())
    assert [e["questionId"] for e in sub] == [57344, 57345, 57346]
    assert all(isinstance(e["answer"], str) for e in sub) and sub[2]["answer"] == ""
    rows = [json.loads(x) for x in (out / "items.jsonl").read_text().splitlines()]
    preds = {r["id"]: r["prediction"] for r in rows if r["task"] == "docvqa:test"}
    assert [e["answer"] for e in sub[:2]] == [preds["57344"].strip(), preds["57345"].strip()]
    info = json.loads((out / "infovqa_test_submission.json").read_text())
    assert [e["questionId"] for e in info] == [99]
