"""Benchmark readers (mm15.eval.readers): lmms-eval Parquet layouts, plain JSONL with relative
image paths, and bad rows reported as error items that stay in the denominator."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from mm15.eval.readers import read_items
from mm15.eval.table_files import find_files
from mm15.eval.tasks import TASKS


def png(colour=(200, 0, 0), size=(40, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG")
    return buf.getvalue()


def write_parquet(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def write_jsonl(path: Path, rows: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def texts(item) -> str:
    return "".join(p.text for p in item.sample.messages[0].content if p.type == "text")


def test_lmms_eval_parquet_snapshot_with_error_items(tmp_path):
    """A textvqa snapshot: struct images (bytes, or a path next to the file), split files; a
    missing file, undecodable bytes and a null question become error items with reasons."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "side.png").write_bytes(png((0, 0, 255)))
    good = {"question": "what?", "answers": ["a"] * 10}
    rows = [
        {**good, "question_id": 0, "image": {"bytes": png(), "path": "x.png"}},
        {**good, "question_id": 1, "image": {"bytes": None, "path": "side.png"}},
        {**good, "question_id": 2, "image": {"bytes": None, "path": "gone.png"}},
        {**good, "question_id": 3, "image": {"bytes": b"not an image", "path": None}},
        {**good, "question_id": 4, "image": {"bytes": png(), "path": None}, "question": None},
    ]
    write_parquet(tmp_path / "data" / "validation-00000-of-00001.parquet", rows)
    write_parquet(tmp_path / "data" / "test-00000-of-00001.parquet", rows[:1])
    res = read_items(TASKS["textvqa"], tmp_path)  # default split: validation
    assert [i.id for i in res.items] == ["0", "1", "2", "3", "4"]
    assert [i.error.split(":")[0] if i.error else None for i in res.items] == [
        None,
        None,
        "missing",
        "corrupt",
        "empty",
    ]
    assert "gone.png" in res.items[2].error and "row 2" in res.items[2].error
    ok = res.items[0]
    assert ok.references == ["a"] * 10 and ok.sizes == [(40, 30)]
    assert ok.sample.media[0].bytes is not None and res.items[1].sample.media[0].path
    assert texts(ok) == "What?\nAnswer the question using a single word or phrase."
    assert [p.type for p in ok.sample.messages[0].content] == ["media", "text"]
    assert len(read_items(TASKS["textvqa"], tmp_path, split="test").items) == 1
    assert len(read_items(TASKS["textvqa"], tmp_path, limit=2).items) == 2
    with pytest.raises(FileNotFoundError, match="no file of split 'train'"):
        read_items(TASKS["textvqa"], tmp_path, split="train")


def test_missing_column_and_unreadable_file_raise(tmp_path):
    bad = write_parquet(tmp_path / "t.parquet", [{"question": "q", "image": png()}])
    with pytest.raises(ValueError, match=r"no column\(s\) \['answers'\]"):
        read_items(TASKS["textvqa"], bad)
    junk = tmp_path / "junk.parquet"
    junk.write_bytes(b"PAR1 truncated")
    with pytest.raises(ValueError, match=r"junk\.parquet: not a readable"):
        read_items(TASKS["textvqa"], junk)


def test_config_folders_and_split_names(tmp_path):
    row = {"questionId": 1, "question": "q", "answers": ["x"], "image": {"bytes": png()}}
    write_parquet(tmp_path / "DocVQA" / "validation-00000-of-00001.parquet", [row])
    write_parquet(tmp_path / "InfographicVQA" / "validation-00000-of-00002.parquet", [row, row])
    assert len(read_items(TASKS["docvqa"], tmp_path).items) == 1
    assert len(read_items(TASKS["infovqa"], tmp_path).items) == 2
    # the datasets cache names arrow files "<name>-<split>-0000k-of-0000n.arrow"
    cache = tmp_path / "cache"
    cache.mkdir()
    for split in ("val", "testA"):
        with pa.OSFile(str(cache / f"refcoco-{split}-00000-of-00001.arrow"), "wb") as f:
            table = pa.Table.from_pylist([{"x": 1}])
            with pa.ipc.new_stream(f, table.schema) as w:
                w.write_table(table)
    assert [p.name for p in find_files(cache, "testA", None)] == [
        "refcoco-testA-00000-of-00001.arrow"
    ]


def test_jsonl_relative_paths_lists_and_bad_lines(tmp_path):
    """MuirBench-style JSONL: image lists relative to the file; an undecodable line and a
    non-object line are error items; an answer outside the options too."""
    (tmp_path / "img").mkdir()
    for k in range(2):
        (tmp_path / "img" / f"{k}.png").write_bytes(png((k * 100, 0, 0)))
    row = {
        "idx": "q0",
        "question": "Which?",
        "image_list": ["img/0.png", "img/1.png"],
        "options": ["left", "right"],
        "answer": "B",
        "task": "t",
    }
    path = write_jsonl(
        tmp_path / "muir.jsonl", [row, "{oops", "[1, 2]", {**row, "idx": "q3", "answer": "E"}]
    )
    items = read_items(TASKS["muirbench"], path).items
    assert len(items) == 4
    ok = items[0]
    assert ok.error is None and ok.references == ["B"] and ok.options == ["left", "right"]
    assert [Path(m.path).name for m in ok.sample.media] == ["0.png", "1.png"]
    assert texts(ok) == (
        "Which?\nA. left\nB. right\nAnswer with the option's letter from the "
        "given choices directly."
    )
    assert ok.meta == {"task": "t"}
    assert items[1].error.startswith("corrupt") and "line 2" in items[1].error
    assert items[2].error.startswith("malformed: ") and "not an object" in items[2].error
    assert "answer 'E' is not one of the 2 options" in items[3].error


@pytest.mark.parametrize(
    ("task", "row", "refs", "options", "prompt_has"),
    [
        # AI2D: answers are indices, even when options are numbers themselves
        (
            "ai2d",
            {"question": "How many?", "options": ["1", "2", "3"], "answer": "1"},
            ["B"],
            ["1", "2", "3"],
            "A. 1\nB. 2\nC. 3",
        ),
        (
            "scienceqa_img",
            {"question": "Q?", "choices": ["a", "b"], "answer": 0, "hint": "It is cold."},
            ["A"],
            ["a", "b"],
            "Context: It is cold.\nQ?",
        ),
        (
            "qbench2",
            {
                "question": "Q?",
                "option0": "x",
                "option1": "y",
                "option2": "N/A",
                "option3": "N/A",
                "correct_choice": "B",
                "image1": None,
                "image2": None,
            },
            ["B"],
            ["x", "y"],
            "A. x\nB. y\n",
        ),
        (
            "realworldqa",
            {"question": "Which?\nA. up\nB. down\nPlease answer directly.", "answer": "B"},
            ["B"],
            ["up", "down"],
            "Which?",
        ),
        ("realworldqa", {"question": "How many cars?", "answer": "3"}, ["3"], None, "cars"),
        (
            "nlvr2",
            {"sentence": "Two dogs.", "images": None, "label": True},
            ["A"],
            ["True", "False"],
            "Two dogs.\nIs this statement true or false",
        ),
        # Mantis: short-answer rows are scored by exact match even when options are listed
        (
            "mantis",
            {
                "question": "Colour? (A) red (B) blue",
                "options": ["red", "blue"],
                "answer": "red",
                "question_type": "short-answer",
                "id": "m",
            },
            ["red"],
            None,
            "Colour? (A) red (B) blue\nAnswer the question using a single word",
        ),
        (
            "seed",
            {
                "question": "Q?",
                "choice_a": "a",
                "choice_b": "b",
                "choice_c": "c",
                "choice_d": "d",
                "answer": "C",
                "data_type": "image",
            },
            ["C"],
            ["a", "b", "c", "d"],
            "D. d",
        ),
    ],
)
def test_multiple_choice_rows(tmp_path, task, row, refs, options, prompt_has):
    cols = TASKS[task].columns
    for c in cols.images:  # fill every image column (qbench2 image1/image2, nlvr2's list)
        row[c] = [png(), png()] if c == "images" else png()
    item = read_items(TASKS[task], write_parquet(tmp_path / "t.parquet", [row])).items[0]
    assert item.error is None
    assert item.references == refs and item.options == options
    assert prompt_has in texts(item)


def test_blink_optional_images_and_parenthesised_answer(tmp_path):
    row = {
        "idx": "b1",
        "prompt": "Which is closer?\n(A) left\n(B) right",
        "choices": ["l", "r"],
        "answer": "(B)",
        "sub_task": "depth",
        "image_1": png(),
        "image_2": png(),
        "image_3": None,
        "image_4": None,
    }
    item = read_items(TASKS["blink"], write_parquet(tmp_path / "b.parquet", [row])).items[0]
    assert item.error is None and item.references == ["B"] and len(item.sample.media) == 2
    assert texts(item).startswith("Note: You only need to respond with A, B without")


def test_mmmu_interleaves_images_at_markers(tmp_path):
    row = {
        "id": "m1",
        "question": "Compare <image 2> with <image 1>. Is <image 2> bigger?",
        "options": "['yes', 'no']",
        "answer": "A",
        "question_type": "multiple-choice",
        "image_1": png((1, 0, 0)),
        "image_2": png((2, 0, 0), (50, 20)),
        "image_3": png(),
        **{f"image_{k}": None for k in range(4, 8)},
    }
    bad = {**row, "id": "m2", "question": "What is in <image 4>?"}
    items = read_items(TASKS["mmmu"], write_parquet(tmp_path / "m.parquet", [row, bad])).items
    item = items[0]
    parts = item.sample.messages[0].content
    assert [p.type for p in parts] == ["text", "media", "text", "media", "text"]
    assert parts[0].text == "Compare " and parts[4].text.startswith(". Is <image 2> bigger?")
    assert item.sizes == [(50, 20), (40, 30)]  # image 2 first; image 3 unreferenced: not shown
    assert item.options == ["yes", "no"] and item.references == ["A"]
    assert items[1].error.startswith("missing") and "<image 4>" in items[1].error
    open_row = {
        **row,
        "id": "m3",
        "question": "Value of <image 1>?",
        "options": "[]",
        "question_type": "open",
        "answer": "['1.5', '1.50']",
    }
    item = read_items(TASKS["mmmu"], write_parquet(tmp_path / "o.parquet", [open_row])).items[0]
    assert item.options is None and item.references == ["1.5", "1.50"]


def test_refcoco_explodes_expressions_and_converts_boxes(tmp_path):
    row = {
        "question_id": "r1",
        "question": "caption this",
        "answer": ["left dog", "brown dog"],
        "bbox": [4.0, 3.0, 20.0, 15.0],
        "image": {"bytes": png(size=(40, 30))},
    }
    outside = {**row, "question_id": "r2", "bbox": [30.0, 3.0, 20.0, 15.0]}
    path = write_parquet(tmp_path / "r.parquet", [row, outside])
    items = read_items(TASKS["refcoco"], path).items
    # a bad row gives one error item per expression: the denominator keeps every expression
    assert [i.id for i in items] == ["r1#0", "r1#1", "r2#0", "r2#1"]
    box = items[0].boxes[0]
    assert (box.x1, box.y1, box.x2, box.y2) == (4, 3, 24, 18)  # xywh pixels → xyxy
    assert items[0].sizes == [(40, 30)] and items[0].meta == {"expression": "left dog"}
    assert texts(items[1]) == "Where is brown dog? Answer with a bounding box."
    assert all(i.error.startswith("malformed") and "bad box" in i.error for i in items[2:])


def test_flickr_any_box_jsonl_and_seed_filter(tmp_path):
    (tmp_path / "a.png").write_bytes(png(size=(100, 50)))
    rows = [
        {
            "image": "a.png",
            "caption": "A man rides a horse.",
            "phrase": "a horse",
            "boxes": [[10, 10, 50, 40], [60, 5, 90, 45]],
        }
    ]
    item = read_items(TASKS["flickr30k"], write_jsonl(tmp_path / "f.jsonl", rows)).items[0]
    assert (
        len(item.boxes) == 2
        and item.boxes[1].x2 == 90
        and item.meta == {"caption": rows[0]["caption"]}
    )
    assert 'In the sentence "A man rides a horse.", where is "a horse"?' in texts(item)
    seed = {
        "question_id": 1,
        "question": "Q?",
        "choice_a": "a",
        "choice_b": "b",
        "choice_c": "c",
        "choice_d": "d",
        "answer": "A",
        "image": [png()],
    }
    table = [
        {**seed, "data_type": "image"},
        {**seed, "data_type": "video"},
        {**seed, "data_type": "image"},
    ]
    res = read_items(TASKS["seed"], write_parquet(tmp_path / "s.parquet", table))
    assert len(res.items) == 2 and res.filtered == 1


def test_rows_come_through_the_training_row_store(tmp_path, monkeypatch):
    """Row access is RowStore's (mm15.data.sources.rows): a JSON list's rows count from 0 like
    Parquet rows and item keys, a JSONL row names its line, an unreadable row group gives one
    error item per row, and an undecodable .json file is a ValueError."""
    (tmp_path / "a.png").write_bytes(png())
    row = {"question_id": 7, "question": "Is there a cat?", "image": "a.png", "answer": "yes"}
    data = tmp_path / "pope.json"
    data.write_text(json.dumps([row, [1], {**row, "image": "gone.png"}]))
    items = read_items(TASKS["pope"], data).items
    assert items[0].error is None and items[1].id == "pope.json:1"
    assert items[1].error.startswith("malformed") and "pope.json row 1" in items[1].error
    assert items[2].error.startswith("missing") and "pope.json row 2" in items[2].error
    jsonl = write_jsonl(tmp_path / "pope.jsonl", [row, "", "{oops"])
    assert "pope.jsonl row 1 (line 3)" in read_items(TASKS["pope"], jsonl).items[1].error
    (tmp_path / "bad.json").write_text("[{")
    with pytest.raises(ValueError, match=r"bad\.json: undecodable JSON"):
        read_items(TASKS["pope"], tmp_path / "bad.json")
    path = tmp_path / "t.parquet"
    pq.write_table(pa.Table.from_pylist([{**row, "image": png()}] * 3), path, row_group_size=2)

    def read(self, rg, **kw):
        raise pa.ArrowInvalid("bad page")

    monkeypatch.setattr(pq.ParquetFile, "read_row_group", read)
    items = read_items(TASKS["pope"], path).items
    assert [i.id for i in items] == ["t.parquet:0", "t.parquet:1", "t.parquet:2"]
    assert all(
        i.error.startswith(f"corrupt: {path} row {k}: row group") for k, i in enumerate(items)
    )
