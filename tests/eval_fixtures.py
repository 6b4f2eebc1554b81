"""Benchmark data in the releases' on-disk layouts, a few rows each, for the eval tests
(tests/test_eval_*.py): builders shared by the readers' own tests and the suite's end-to-end
test (tests/test_eval_suite_all.py).  Each ``write_*`` / ``*_release`` builds under ``root`` and
returns it."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image
from registry_fixtures import write_video

from tests.judge_fixtures import png


def jpg(path: Path, size=(54, 96)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (90, 90, 200)).save(path)


def write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def write_parquet(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


# ---------------------------------------------------------------------------------------------
# lmms-eval Parquet snapshots: single- and multi-image benchmarks, grounding


def lmms_rows() -> dict[str, tuple[list[str], dict]]:
    """task → (its files under ``ROOT/<task>/``, one row in the columns of its lmms-eval task
    (mm15/eval/*_tasks.py)); :func:`write_lmms_tasks` writes each row twice per file."""
    img = png()
    mc = {"question": "Which colour?", "image": img}
    ref = {"question": "caption", "answer": ["the red box", "a box"], "bbox": [4, 3, 20, 15]}
    splits = {"refcoco": ["testA", "testB"], "refcoco+": ["testA", "testB"], "refcocog": ["test"]}
    return {
        "mme": (
            ["data/test"],
            {"question": "Is there a box? Please answer yes or no.", "answer": "Yes",
             "category": "existence", "question_id": "existence/1.png", "image": img},
        ),
        "seed": (
            ["data/test"],
            {**mc, "question_id": "s1", "data_type": "image", "answer": "B",
             **{f"choice_{c}": c for c in "abcd"}},
        ),
        "realworldqa": (
            ["data/test"],
            {**mc, "question": "Which way?\nA. up\nB. down\nPlease answer directly.", "answer": "B"},
        ),
        "ocrbench": (
            ["data/test"],
            {**mc, "question": "What is written?", "answer": ["stop"], "dataset": "IIIT5K",
             "question_type": "Regular Text Recognition"},
        ),
        "chartqa": (["data/test"], {**mc, "answer": "14", "type": "human_test"}),
        "ai2d": (["data/test"], {**mc, "options": ["red", "blue", "green"], "answer": "1"}),
        "scienceqa_img": (
            ["ScienceQA-IMG/test"],
            {**mc, "choices": ["red", "blue"], "answer": 0, "hint": "It is warm."},
        ),
        "mmmu": (
            ["data/validation"],
            {"id": "m1", "question": "What is <image 1>?", "options": "['a box', 'a ball']",
             "answer": "A", "question_type": "multiple-choice", "image_1": img,
             **{f"image_{k}": None for k in range(2, 8)}},
        ),
        **{
            task: ([f"data/{s}" for s in names], {**ref, "question_id": "r", "image": img})
            for task, names in splits.items()
        },
        "flickr30k": (
            ["data/test"],
            {"image": img, "caption": "A red box on grey.", "phrase": "A red box",
             "boxes": [[4, 3, 24, 18]]},
        ),
        "qbench2": (
            ["data/dev"],
            {**mc, "id": "q", "correct_choice": "B", "image1": img, "image2": img,
             **{f"option{k}": o for k, o in enumerate(["red", "blue", "N/A", "N/A"])}},
        ),
        "mantis": (
            ["data/test"],
            {"id": "m", "question": "Same colour? (A) yes (B) no", "images": [img, img],
             "options": ["yes", "no"], "answer": "A", "question_type": "multi-choice"},
        ),
        "nlvr2": (["data/test"], {"sentence": "Both are red.", "images": [img, img], "label": True}),
        "blink": (
            ["data/val"],
            {"idx": "b", "prompt": "Which is closer?\n(A) left\n(B) right", "choices": ["l", "r"],
             "answer": "(B)", "sub_task": "depth", "image_1": img, "image_2": img,
             "image_3": None, "image_4": None},
        ),
        "muirbench": (
            ["data/test"],
            {"idx": "u", "question": "Which?", "image_list": [img, img],
             "options": ["left", "right"], "answer": "B", "task": "t"},
        ),
    }  # fmt: skip


def write_lmms_tasks(root: Path) -> Path:
    """``ROOT/<task>/<file>-00000-of-00001.parquet`` for each task of :func:`lmms_rows`, two
    rows per file (the second with another id where the task has one)."""
    for task, (files, row) in lmms_rows().items():
        ids = [c for c in ("question_id", "id", "idx") if c in row]
        rows = [row, {**row, **{c: f"{row[c]}2" for c in ids}}]
        for name in files:
            write_parquet(root / task / f"{name}-00000-of-00001.parquet", rows)
    return root


# ---------------------------------------------------------------------------------------------
# Video releases


def videomme_release(root: Path, options: list[str]) -> Path:
    """lmms-lab/Video-MME: ``videomme/test-*.parquet`` and clips under ``data/``: two good
    rows, a missing clip, an answer that is no option."""
    for name in ("v1", "v2"):
        write_video(root / f"data/{name}.mp4", frames=3, size=(16, 16))
    rows = [
        {
            "videoID": vid,
            "question_id": f"q{k}",
            "question": "What animal is shown?",
            "options": [f"{chr(65 + i)}. {o}" for i, o in enumerate(options)],
            "answer": ans,
            "duration": "short",
            "domain": "Knowledge",
            "task_type": "Counting Problem",
        }
        for k, (vid, ans) in enumerate([("v1", "B"), ("v2", "D"), ("gone", "A"), ("v1", "Z")])
    ]
    write_parquet(root / "videomme/test-00000.parquet", rows)
    return root


def video_mc_release(root: Path) -> Path:
    """One clip ``videos/e1.mp4`` with EgoSchema's ``Subset/test-*.parquet`` and NExT-QA /
    IntentQA's ``val.csv`` (answer C) and ``test.csv`` (answer A) beside it."""
    write_video(root / "videos/e1.mp4", frames=2, size=(16, 16))
    row = {"video_idx": "e1", "question": "why?", "option": ["A. x", "B. y"], "answer": "1"}
    write_parquet(root / "Subset/test-00000.parquet", [row])
    header = ["video_id", "question", "answer", "qid", "type", "a0", "a1", "a2", "a3", "a4"]
    for split, answer in (("val", 2), ("test", 0)):
        write_csv(
            root / f"{split}.csv",
            header,
            [["e1", "what next?", answer, 0, "CW", "p", "q", "r", "s", "t"]],
        )
    return root


def mvbench_release(root: Path) -> Path:
    """OpenGVLab/MVBench: ``json/action_antonym.json`` (a good row, an answer that is no
    candidate) with its 20-frame clip under ``video/ssv2_video_mp4/``."""
    write_video(root / "video/ssv2_video_mp4/c.mp4", frames=20, size=(16, 16))
    rows = [
        {"video": "c.mp4", "question": "What happens?", "candidates": ["x", "y"], "answer": "y"},
        {"video": "c.mp4", "question": "What?", "candidates": ["x", "y"], "answer": "z"},
    ]
    (root / "json").mkdir(parents=True, exist_ok=True)
    (root / "json/action_antonym.json").write_text(json.dumps(rows))
    return root


def hound_release(root: Path, others: tuple[str, ...] = ("msrvtt",)) -> Path:
    """ShareGPTVideo/test_video_and_instruction: ``video_instruction/test/msvd.qa.jsonl`` (a
    good row, a missing frame folder), its first row again in ``<set>.qa.jsonl`` for each set
    of ``others``, and one 4-frame folder ``video_data/test/msvd/vid1``."""
    frames = root / "video_data/test/msvd/vid1"
    frames.mkdir(parents=True)
    for k in range(4):
        Image.new("RGB", (16, 16), (40 * k, 90, 90)).save(frames / f"{k:04d}.jpg")
    test = root / "video_instruction/test"
    test.mkdir(parents=True)
    rows = [
        {"id": "msvd_0", "video": "msvd/vid1", "caption": "A dog runs on grass.",
         "conversations": [{"from": "human", "value": "<video>\nWhat runs?"},
                           {"from": "gpt", "value": "A dog runs on the grass."}]},
        {"id": "msvd_1", "video": "msvd/nosuch", "caption": "x",
         "conversations": [{"from": "human", "value": "<video>\nWhat?"},
                           {"from": "gpt", "value": "y"}]},
    ]  # fmt: skip
    (test / "msvd.qa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    for name in others:
        (test / f"{name}.qa.jsonl").write_text(json.dumps(rows[0]) + "\n")
    return root


# ---------------------------------------------------------------------------------------------
# UI captioning releases


def screen2words_release(root: Path) -> Path:
    """screen2words: ``screen_summaries.csv``, ``split/test_screens.txt`` (screens 1, 2, 3) and
    ``combined/1.jpg`` (screen 2's image is missing, screen 3 has no summary)."""
    write_csv(
        root / "screen_summaries.csv",
        ["screenId", "summary"],
        [[1, "login page of an app"], [1, "sign in screen"], [2, "settings"], [9, "train"]],
    )
    (root / "split").mkdir(parents=True, exist_ok=True)
    (root / "split/test_screens.txt").write_text("1\n2\n3\n")
    jpg(root / "combined/1.jpg")
    return root


def widget_captions_release(root: Path) -> Path:
    """widget-caption: ``widget_captions.csv``, ``split/test.txt`` (screen 7) and screen 7's
    image and RICO view hierarchy (node 0.1 is there, node 0.5 is not)."""
    write_csv(
        root / "widget_captions.csv",
        ["screenId", "nodeId", "captions"],
        [["7", "0.1", "go back|back button"], ["7", "0.5", "missing node"], ["8", "0", "x"]],
    )
    (root / "split").mkdir(parents=True, exist_ok=True)
    (root / "split/test.txt").write_text("7\n")
    jpg(root / "combined/7.jpg", size=(540, 960))  # RICO: 1440×2560 canvas, × 960/2560
    tree = {"bounds": [0, 0, 1440, 2560], "children": [{"bounds": [0, 0, 10, 10]}]}
    tree["children"].append({"bounds": [0, 1280, 1440, 2560]})
    (root / "combined/7.json").write_text(json.dumps({"activity": {"root": tree}}))
    return root


# ---------------------------------------------------------------------------------------------
# VL-ICL


def vlicl_tasks(root: Path) -> Path:
    """VL-ICL's release root with the five image-to-text tasks besides operator induction
    (tests/test_eval_icl.py has that one): ``<task>/query.json`` (two queries) and
    ``<task>/support.json`` (enough support for 4 shots), images under ``<task>/images/``."""
    for task in ("clevr", "textocr", "operator_induction_interleaved", "matching_mi", "open_mi"):
        (root / task / "images").mkdir(parents=True)
        paths = [f"{task}/images/{i}.png" for i in range(6)]
        for i, p in enumerate(paths):
            Image.new("RGB", (24, 16), (40 * i, 80, 0)).save(root / p)
        if task in ("clevr", "textocr"):
            support = [
                {"image": [p], "question": "How many?", "answer": i} for i, p in enumerate(paths)
            ]
            queries = [{"id": f"{task}{k}", "image": [paths[k]], "question": "How many?",
                        "answer": k} for k in range(2)]  # fmt: skip
        elif task == "operator_induction_interleaved":
            support = [{"image": [p, p], "question": "?", "answer": [2 * i, 0, i * i]}
                       for i, p in enumerate(paths)]  # fmt: skip
            queries = [{"id": f"oi{k}", "image": paths[:2], "question": "?", "answer": k,
                        "operator": op} for k, op in enumerate("+x")]  # fmt: skip
        elif task == "matching_mi":
            pair = {"same": {"image": paths[:2], "question": "Same?", "answer": "yes"},
                    "diff": {"image": paths[1:3], "question": "Same?", "answer": "no"}}  # fmt: skip
            support = [pair] * 5
            queries = [{"id": f"m{k}", "image": paths[k : k + 2], "question": "Same?",
                        "answer": ["yes", "no"][k]} for k in range(2)]  # fmt: skip
        else:  # open_mi: each query carries its classes' support images
            shots = {c: {"images": paths[:4]} for c in ("dax", "blicket")}
            support = []
            queries = [{"id": f"o{k}", "image": [paths[4 + k]], "question": "This is a",
                        "answer": c, "classes": ["dax", "blicket"], "support": shots}
                       for k, c in enumerate(["dax", "blicket"])]  # fmt: skip
        (root / task / "support.json").write_text(json.dumps(support))
        (root / task / "query.json").write_text(json.dumps(queries))
    return root
