"""In-context learning (MM1.5 Table 8): the k-shot conversation, VL-ICL's shot selection and
answer matching by hand, its query.json / support.json layout, and a 4-shot `mm15 eval` run."""

from __future__ import annotations

import json
import random

import pytest
from PIL import Image

from mm15.cli.eval import main
from mm15.data.schema import Media
from mm15.eval.icl import N_SHOT, Shot, kshot_sample, select_shots, vlicl_match
from mm15.eval.tasks import TASKS


def test_vlicl_match_by_hand():
    assert vlicl_match("operator_induction", "The result is 12.", "12") == 1.0
    assert vlicl_match("operator_induction", "-3", "3") == 1.0  # the first integer, as VL-ICL
    assert vlicl_match("clevr", "3", "3") == 1.0
    assert vlicl_match("clevr", "There are 3", "3") == 0.0  # no number extraction for CLEVR
    assert vlicl_match("textocr", "Hello\nworld", "hello") == 1.0  # cut at the newline
    assert vlicl_match("open_mi", "dax.", "dax") == 1.0  # cut at the first "."
    assert vlicl_match("open_mi", ".dax", "dax") == 0.0  # a "." first is not a cut
    assert vlicl_match("matching_mi", "Yes, the same", "yes") == 1.0
    assert vlicl_match("matching_mi", "nope", "no") == 1.0  # no "yes" counts as no
    assert vlicl_match("matching_mi", "yes", "no") == 0.0


def test_kshot_sample_interleaves_images_and_answers():
    m = [Media(kind="image", path=f"{i}.png") for i in range(4)]
    s = kshot_sample(
        "q7",
        "Induce.",
        [Shot([m[0]], "2 ? 3", "5"), Shot([m[1], m[2]], "1 ? 1", "2")],
        Shot([m[3]], "4 ? 4"),
    )
    assert [msg.role for msg in s.messages] == ["user", "assistant"] * 2 + ["user"]
    assert s.media == m
    first = s.messages[0].content
    assert first[0].text == "Induce.\n" and first[1].media == 0 and first[2].text == "2 ? 3"
    assert [p.media for p in s.messages[2].content if p.type == "media"] == [1, 2]
    assert s.messages[3].content[0].text == "2" and s.messages[4].content[0].media == 3
    with pytest.raises(ValueError, match="support example 0 has no answer"):
        kshot_sample("q", "", [Shot([], "x")], Shot([], "y"))


def test_select_shots_follows_vlicl():
    support = [
        {"image": [f"s{i}.png"], "question": "?", "answer": [i, -i, 2 * i]} for i in range(6)
    ]
    shots = select_shots("operator_induction", {"operator": "x"}, support, 4, random.Random(0))
    expected = random.Random(0).sample(support, 4)
    assert [s["answer"] for s in shots] == [2 * s["answer"][0] for s in expected]
    query = {"answer": "dax", "classes": ["dax", "blicket"]}
    query["support"] = {c: {"images": [f"{c}{i}.png" for i in range(4)]} for c in query["classes"]}
    shots = select_shots("open_mi", query, [], 4, random.Random(0))
    assert len(shots) == 8 and {s["answer"] for s in shots[:2]} == {"dax", "blicket"}
    assert all(s["question"] == "This is a" for s in shots)
    pairs = [{"same": {"answer": "yes"}, "diff": {"answer": "no"}}] * 5
    assert [s["answer"] for s in select_shots("matching_mi", {}, pairs, 4, random.Random(0))] == [
        "yes",
        "no",
    ] * 4


@pytest.fixture(scope="module")
def vlicl_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("VL-ICL")
    task = root / "operator_induction"
    (task / "images").mkdir(parents=True)
    for i in range(6):
        Image.new("RGB", (24, 16), (40 * i, 0, 0)).save(task / f"images/{i}.png")
    support = [
        {"id": f"s{i}", "image": [f"operator_induction/images/{i}.png"], "question": "What?",
         "answer": [i + 1, i - 1, i]}
        for i in range(5)
    ]  # fmt: skip
    queries = [
        {"id": "a", "image": ["operator_induction/images/5.png"], "question": "What?",
         "answer": 6, "operator": "+"},
        {"id": "b", "image": ["operator_induction/images/none.png"], "question": "What?",
         "answer": 1, "operator": "-"},
        {"id": "c", "image": ["operator_induction/images/5.png"], "question": "What?",
         "answer": 1, "operator": "/"},
    ]  # fmt: skip
    (task / "support.json").write_text(json.dumps(support))
    (task / "query.json").write_text(json.dumps(queries))
    return root


def _items(root, limit=None):
    spec = TASKS["vlicl_operator_induction"]
    return list(spec.reader(spec, root, split=None, limit=limit))


def test_vlicl_reader(vlicl_root):
    ok, missing, bad_operator = _items(vlicl_root)
    assert ok.references == ["6"] and ok.meta == {"n_shot": N_SHOT}
    assert len(ok.sample.media) == N_SHOT + 1 and len(ok.sample.messages) == 2 * N_SHOT + 1
    assert ok.sample.media[-1].path.endswith("images/5.png")
    answers = [m.content[0].text for m in ok.sample.messages if m.role == "assistant"]
    picked = random.Random(0).sample(range(5), N_SHOT)  # VL-ICL's draw, "+" → answer[0]
    assert answers == [str(i + 1) for i in picked]
    assert missing.error.startswith("missing:") and "none.png" in missing.error
    assert bad_operator.error.startswith("malformed:") and "'/'" in bad_operator.error
    assert [i.id for i in _items(vlicl_root / "operator_induction", limit=1)] == ["a"]
    with pytest.raises(FileNotFoundError, match=r"query\.json"):
        _items(vlicl_root / "operator_induction" / "images")


def test_cli_eval_icl_task(tiny_ckpt_dir, vlicl_root, tmp_path):
    out = tmp_path / "out"
    argv = ["--model", str(tiny_ckpt_dir), "--task", "vlicl_operator_induction"]
    argv += ["--data", str(vlicl_root / "operator_induction"), "--out", str(out)]
    argv += ["--max-new-tokens", "2", "--device", "cpu", "--batch-size", "3"]
    assert main(argv) == 0
    bench = json.loads((out / "summary.json").read_text())["benchmarks"]["vlicl_operator_induction"]
    assert (bench["n"], bench["n_errors"], bench["category"]) == (3, 2, "icl")
    assert bench["errors"] == {"malformed": 1, "missing": 1}
