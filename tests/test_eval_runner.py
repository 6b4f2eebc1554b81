"""The evaluation runner and the ``eval`` verb on the tiny checkpoint (its answers are noise):
plumbing, batching, determinism, denominators with error items, and the files written."""

from __future__ import annotations

import argparse
import io
import json
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from mm15.cli.eval import main, register, task_data
from mm15.eval.runner import EvalSettings, run_eval
from mm15.services.checkpoint import load_checkpoint


def png(colour, size=(40, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG")
    return buf.getvalue()


def truncated_jpeg() -> bytes:
    """A JPEG whose header reads (so the reader accepts it) but whose scan data is cut."""
    noise = np.random.default_rng(0).integers(0, 255, (30, 40, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(noise).save(buf, format="JPEG")
    return buf.getvalue()[: 3 * len(buf.getvalue()) // 4]


@pytest.fixture(scope="module")
def model_tok(tiny_ckpt_dir):
    return load_checkpoint(tiny_ckpt_dir)


@pytest.fixture(scope="module")
def bench_root(tmp_path_factory):
    """textvqa (Parquet snapshot, 5 rows: one truncated image that decodes only at generation
    time, one missing image file), pope (JSONL, 6 rows + an undecodable line), refcoco."""
    root = tmp_path_factory.mktemp("bench")
    good = png((200, 10, 10))
    rows = [
        {
            "question_id": i,
            "question": f"what is {i}?",
            "answers": ["red"] * 10,
            "image": {"bytes": png((40 * i, 80, 0)), "path": None},
        }
        for i in range(5)
    ]
    rows[1]["image"] = {"bytes": truncated_jpeg(), "path": None}
    rows[3]["image"] = {"bytes": None, "path": "missing.png"}
    (root / "textvqa" / "data").mkdir(parents=True)
    pq.write_table(
        pa.Table.from_pylist(rows), root / "textvqa/data/validation-00000-of-00001.parquet"
    )
    (root / "pope").mkdir()
    (root / "pope" / "a.png").write_bytes(good)
    lines = [
        json.dumps(
            {
                "question_id": i,
                "question": "Is there a cat?",
                "image": "a.png",
                "answer": ["no", "yes"][i % 2],
                "category": ["random", "popular", "adversarial"][i % 3],
            }
        )
        for i in range(6)
    ] + ["{broken"]
    (root / "pope" / "pope.jsonl").write_text("\n".join(lines) + "\n")
    ref = [
        {
            "question_id": "r",
            "answer": ["the dog", "a dog"],
            "bbox": [1, 2, 10, 10],
            "image": {"bytes": good},
        }
    ]
    pq.write_table(pa.Table.from_pylist(ref), root / "refcoco.parquet")
    return root


TASKS = [("textvqa", "textvqa"), ("pope", "pope"), ("refcoco", "refcoco.parquet")]


def _run(model_tok, root, out, batch_size, **kw):
    model, tok = model_tok
    settings = EvalSettings(batch_size=batch_size, max_new_tokens=4)
    return run_eval(model, tok, [(t, root / d) for t, d in TASKS], out, settings, **kw)


def test_run_eval_writes_items_and_summary(model_tok, bench_root, tmp_path):
    progress = io.StringIO()
    summary = _run(model_tok, bench_root, tmp_path, batch_size=3, progress=progress)
    rows = [json.loads(line) for line in (tmp_path / "items.jsonl").read_text().splitlines()]
    assert [r["task"] for r in rows] == ["textvqa"] * 5 + ["pope"] * 7 + ["refcoco"] * 2
    tv = rows[:5]
    # the truncated image fails only when decoded; its batch is retried item by item
    assert "cannot decode (truncated)" in tv[1]["error"]
    assert [r["error"].split(":")[0] if r["error"] else None for r in tv] == [
        None,
        "corrupt",
        None,
        "missing",
        None,
    ]
    assert all(r["prediction"] is None and r["score"] == 0.0 for r in tv if r["error"])
    assert all(isinstance(r["prediction"], str) for r in tv if not r["error"])
    assert rows[11]["error"].startswith("corrupt") and "line 7" in rows[11]["error"]
    assert rows[12]["reference"] == [[1.0, 2.0, 11.0, 12.0]] and rows[12]["id"] == "r#0"
    bench = summary["benchmarks"]
    assert (bench["textvqa"]["n"], bench["textvqa"]["n_errors"]) == (5, 2)
    assert bench["textvqa"]["errors"] == {"corrupt": 1, "missing": 1}
    assert bench["pope"]["n"] == 7 and bench["pope"]["details"]["n_unplaced"] == 1
    assert bench["pope"]["details"]["item_accuracy"] == pytest.approx(
        sum(r["score"] for r in rows[5:12]) / 7
    )  # errors stay in the denominator
    assert bench["refcoco"]["category"] == "refer_ground" and bench["refcoco"]["n"] == 2
    assert summary["n_items"] == 14 and summary["n_errors"] == 3
    assert summary["mmbase"] == pytest.approx(
        (bench["pope"]["score"] + bench["textvqa"]["score"]) / 2
    )
    assert json.loads((tmp_path / "summary.json").read_text())["n_items"] == 14
    md = (tmp_path / "summary.md").read_text()
    assert "| textvqa | text_rich | VQA accuracy |" in md and "MMBase:" in md
    assert "| pope random | | acc / F1 |" in md
    assert (tmp_path / "summary.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    bar = progress.getvalue()
    assert "14/14" in bar and re.search(r"\d\d:\d\d<\d\d:\d\d", bar)  # elapsed<ETA


def test_batching_does_not_change_predictions(model_tok, bench_root, tmp_path):
    _run(model_tok, bench_root, tmp_path / "a", batch_size=1, progress=io.StringIO())
    _run(model_tok, bench_root, tmp_path / "b", batch_size=4, progress=io.StringIO())
    a, b = ((tmp_path / d / "items.jsonl").read_text() for d in "ab")
    assert a == b


def test_synthetic_suite_is_a_task(model_tok, tmp_path):
    from mm15.demo.data.corpus import DEFAULT_SIZES, generate_corpus
    from mm15.eval.synthetic_suite import ANSWER_SLACK, evaluate_synthetic

    two = ["general/colour", "refer_ground/box"]

    sizes = {k: 0 for k in DEFAULT_SIZES} | {"test/general/colour": 3, "test/refer_ground/box": 2}
    corpus = generate_corpus(tmp_path / "corpus", sizes=sizes)
    model, tok = model_tok
    summary = run_eval(
        model,
        tok,
        [("synthetic", corpus.root)],
        tmp_path / "out",
        EvalSettings(batch_size=4, limit=2),
        progress=io.StringIO(),
    )
    bench = summary["benchmarks"]["synthetic"]
    assert bench["n"] == 4 and bench["category"] == "synthetic"  # limit 2 per test file
    assert set(bench["details"]["categories"]) == {"general", "refer_ground"}
    assert "chance" in bench["details"]["categories"]["general"]
    assert summary["mmbase"] is None  # the synthetic suite never enters MMBase
    rows = (tmp_path / "out" / "items.jsonl").read_text().splitlines()
    assert {json.loads(r)["meta"]["subtask"] for r in rows} == {
        "general/colour",
        "refer_ground/box",
    }
    # The generation budget covers the longest reference (a box is ~17 byte tokens), so a
    # correct answer is never cut into a score of 0; a budget that would cut one is refused.
    longest = max(len(tok.encode(a)) for r in rows for a in json.loads(r)["reference"])
    assert longest >= 13 and bench["max_new_tokens"] == longest + ANSWER_SLACK
    with pytest.raises(ValueError, match="would cut reference answers"):
        evaluate_synthetic(model, tok, corpus, tasks=two, limit=2, max_new_tokens=longest - 1)
    ok = evaluate_synthetic(model, tok, corpus, tasks=two, limit=2, max_new_tokens=longest)
    assert ok.max_new_tokens == longest


def test_cli_eval(tiny_ckpt_dir, bench_root, tmp_path, capsys):
    out = tmp_path / "cli"
    rc = main(
        [
            "--model",
            str(tiny_ckpt_dir),
            "--task",
            "textvqa,pope",
            "--data",
            str(bench_root),
            "--out",
            str(out),
            "--limit",
            "2",
            "--batch-size",
            "2",
            "--max-new-tokens",
            "3",
            "--device",
            "cpu",
        ]
    )
    assert rc == 0
    printed = capsys.readouterr()
    assert "| textvqa |" in printed.out and "| pope |" in printed.out
    assert "items.jsonl" in printed.out
    assert "warning: 1 of 4 items could not be evaluated" in printed.err  # the truncated image
    summary = json.loads((out / "summary.json").read_text())
    assert [b["n"] for b in summary["benchmarks"].values()] == [2, 2]
    assert summary["benchmarks"]["textvqa"]["max_new_tokens"] == 3
    assert main(["--model", str(tiny_ckpt_dir), "--task", "nosuch", "--data", "x"]) == 2
    assert "unknown task 'nosuch'" in capsys.readouterr().err


def test_task_data_pairing(tmp_path):
    (tmp_path / "pope").mkdir()
    (tmp_path / "mme.jsonl").write_text("")
    assert task_data(["pope,mme"], [str(tmp_path)]) == [
        ("pope", tmp_path / "pope"),
        ("mme", tmp_path / "mme.jsonl"),
    ]
    assert task_data(["refcoco:testA", "refcoco:testB"], ["d1", "d2"])[1][0] == "refcoco:testB"
    with pytest.raises(ValueError, match="2 task"):
        task_data(["pope", "mme"], ["a", "b", "c"])
    with pytest.raises(FileNotFoundError, match="no data for task 'ai2d'"):
        task_data(["ai2d", "pope"], [str(tmp_path)])
    p = argparse.ArgumentParser()
    register(p.add_subparsers(dest="verb", required=True))
    args = p.parse_args(["eval", "--model", "m", "--task", "a", "--task", "b", "--data", "d"])
    assert args.task == ["a", "b"] and callable(args.func)
    assert args.batch_size is None  # a flag not given overrides nothing (--config FILE)
