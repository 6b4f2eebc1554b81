"""Benchmark metrics against hand-computed cases from their official definitions
(mm15.eval.benchmarks, mm15.eval.tasks scoring and aggregation)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mm15.data.coords import Box
from mm15.eval import benchmarks as bm
from mm15.eval.task_spec import EvalItem
from mm15.eval.tasks import TASKS, aggregate, score_item

# ---- VQA accuracy -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "norm"),
    [
        ("Two", "2"),  # number words → digits
        ("the cat", "cat"),  # articles dropped
        ("A dog.", "dog"),  # final period stripped
        ("10,000", "10000"),  # commas removed
        ("3.5", "3.5"),  # a period between digits stays
        ("yes!", "yes"),
        ("dont", "don't"),  # contractions restored
        ("e-mail", "e mail"),  # "-" with no space around becomes a space ...
        ("e - mail", "e mail"),  # ... and is deleted when spaced
        ("What?", "what"),
        ("  New\tYork \n", "new york"),
        ("none", "0"),
        ("it's", "it 's"),
    ],
)
def test_vqa_normalize(raw, norm):
    assert bm.vqa_normalize(raw) == norm


@pytest.mark.parametrize(
    ("matches", "expected"),
    # 10 references, `matches` of them equal the prediction.  For a matching reference i the
    # other 9 hold matches - 1 hits, for the others `matches`: min(hits / 3, 1) averaged.
    [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (10, 1.0)],
)
def test_vqa_accuracy_leave_one_out(matches, expected):
    answers = ["2"] * matches + ["other"] * (10 - matches)
    assert bm.vqa_accuracy("two", answers) == pytest.approx(expected)


def test_vqa_accuracy_normalises_references_too():
    answers = ["10,000"] * 3 + ["The Beatles"] * 7
    assert bm.vqa_accuracy("10000", answers) == pytest.approx(0.9)
    assert bm.vqa_accuracy("beatles.", answers) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="at least one"):
        bm.vqa_accuracy("x", [])


# ---- ANLS, relaxed accuracy, OCRBench -----------------------------------------------------------


@pytest.mark.parametrize(
    ("pred", "answers", "expected"),
    [
        ("hello", ["hallo"], 0.8),  # 1 edit / 5
        ("2 pm", ["2pm"], 0.75),  # 1 edit / 4
        ("  Hello   World ", ["hello world"], 1.0),  # case and whitespace runs
        ("ab", ["ac"], 0.0),  # NL = 0.5 is not < 0.5: zero (Biten et al. 2019)
        ("abc", ["abd"], 1 - 1 / 3),
        ("abc", ["xyz", "abd", "abc"], 1.0),  # max over references
        ("", [""], 1.0),
        ("", ["a"], 0.0),
    ],
)
def test_anls(pred, answers, expected):
    assert bm.anls(pred, answers) == pytest.approx(expected)


@settings(max_examples=50, deadline=None)
@given(st.text(max_size=12), st.text(max_size=12))
def test_levenshtein_is_a_metric(a, b):
    d = bm.levenshtein(a, b)
    assert d == bm.levenshtein(b, a)
    assert abs(len(a) - len(b)) <= d <= max(len(a), len(b))
    assert (d == 0) == (a == b)


@pytest.mark.parametrize(
    ("pred", "target", "expected"),
    [
        ("12", "12.5", 1.0),  # 4% off
        ("11.8", "12.5", 0.0),  # 5.6% off
        ("13.125", "12.5", 1.0),  # exactly 5%
        ("50%", "0.5", 1.0),  # percentages are divided by 100
        ("-5", "-5.2", 1.0),
        ("Yes", "yes", 1.0),  # strings: case-insensitive equality
        (" 7 \n", "7", 1.0),
        ("0", "0", 1.0),  # zero target: string equality (pix2struct) ...
        ("0.0", "0", 0.0),  # ... so "0.0" misses
        ("1,000", "1000", 0.0),  # no comma handling in the official metric
    ],
)
def test_relaxed_accuracy(pred, target, expected):
    assert bm.relaxed_accuracy(pred, target) == expected


def test_ocrbench_match():
    assert bm.ocrbench_match("The sign says STOP here", ["stop"]) == 1.0
    assert bm.ocrbench_match("sto p", ["stop"]) == 0.0
    assert bm.ocrbench_match("x", ["y", "X"]) == 1.0
    # HME100k: spaces removed on both sides, case kept
    assert bm.ocrbench_match("x ^ { 2 }", ["x^{2}"], "HME100k") == 1.0
    assert bm.ocrbench_match("X^{2}", ["x^{2}"], "HME100k") == 0.0


# ---- POPE, MME ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pred", "label"),
    [
        ("Yes", "yes"),
        ("No.", "no"),
        ("There is not a cat.", "no"),
        ("no, there isn't", "no"),
        ("Yes. No", "yes"),
        ("NO", "yes"),
        ("nope", "yes"),
    ],
)
def test_pope_label(pred, label):
    assert bm.pope_label(pred) == label


def test_pope_summary_by_hand():
    # random: TP=2 FP=1 FN=1 TN=0 → acc 1/2, P 2/3, R 2/3, F1 2/3;  popular: all right → 1.
    items = [
        ("random", "yes", "yes"),
        ("random", "yes", "yes"),
        ("random", "no", "yes"),
        ("random", "yes", "no"),
        ("popular", "yes", "yes"),
        ("popular", "no", "no"),
    ]
    s = bm.pope_summary(items)
    r = s["splits"]["random"]
    assert (r["acc"], r["precision"], r["recall"]) == (0.5, 2 / 3, 2 / 3)
    assert r["f1"] == pytest.approx(2 / 3)
    assert r["yes_ratio"] == 0.75
    assert s["splits"]["popular"]["f1"] == 1.0
    assert s["mean_f1"] == pytest.approx((2 / 3 + 1) / 2)
    assert s["mean_acc"] == pytest.approx(0.75)
    # an error item (prediction None) counts as the wrong label: FN for a "yes", FP for a "no"
    err = bm.pope_summary([("a", "yes", None), ("a", "no", None), ("a", "yes", "yes")])
    assert err["splits"]["a"]["precision"] == 0.5 and err["splits"]["a"]["recall"] == 0.5


@pytest.mark.parametrize(
    ("pred", "label"),
    [("Yes", "yes"), ("no.", "no"), ("Yes, it is", "yes"), ("Not sure", "no"), ("Maybe", "other")],
)
def test_mme_label(pred, label):
    assert bm.mme_label(pred) == label


def test_mme_summary_acc_plus_by_hand():
    # existence: image a both right, image b one right → acc 75, acc+ 50 → 125
    # code_reasoning: image c both wrong → 0
    items = [
        ("existence", "a", 1.0),
        ("existence", "a", 1.0),
        ("existence", "b", 1.0),
        ("existence", "b", 0.0),
        ("code_reasoning", "c", 0.0),
        ("code_reasoning", "c", 0.0),
    ]
    s = bm.mme_summary(items)
    assert s["subtasks"]["existence"] == {"acc": 75.0, "acc_plus": 50.0, "score": 125.0}
    assert (s["perception"], s["cognition"], s["total"]) == (125.0, 0.0, 125.0)
    assert s["normalized"] == pytest.approx(125 / 400)
    with pytest.raises(ValueError, match="unknown MME subtask"):
        bm.mme_summary([("colour", "a", 1.0)])


# ---- MMMU open, grounding -------------------------------------------------------------------------


def test_mmmu_open_match():
    assert bm.mmmu_open_match("The answer is 3.14159", ["3.14"]) == 1.0  # numbers to 2 dp
    assert bm.mmmu_open_match("so the result is 1,200", ["1200"]) == 1.0
    assert bm.mmmu_open_match("Paris, France", ["paris"]) == 1.0  # substring of the prediction
    assert bm.mmmu_open_match("the answer is 4", ["5"]) == 0.0
    # one letter needs a space before or after it: not inside "cat sat", but in "a cat"
    assert bm.mmmu_open_match("the cat sat", ["a"]) == 0.0
    assert bm.mmmu_open_match("a cat", ["a"]) == 1.0


def test_any_box_recall():
    size = (1000, 1000)  # one bin = one pixel
    refs = [Box(0, 0, 100, 100), Box(500, 500, 700, 700)]
    assert bm.any_box_iou50("<500,500,699,699>", refs, size) == 1.0  # the second box
    assert bm.any_box_iou50("<0,0,49,99>", refs, size) == 1.0  # IoU exactly 0.5
    assert bm.any_box_iou50("<0,0,48,99>", refs, size) == 0.0
    assert bm.any_box_iou50("<50,50>", refs, size) == 0.0  # a point is not a box
    assert bm.any_box_iou50("<900,900,999,999> <0,0,99,99>", refs, size) == 0.0  # first tag only


# ---- per-task scoring and aggregation -------------------------------------------------------------


def _item(task, refs, options=None, **meta):
    return EvalItem(task, "x", None, list(refs), options, meta=meta)


def test_score_item_dispatch():
    assert score_item(TASKS["textvqa"], _item("textvqa", ["two"] * 10), "2") == 1.0
    assert score_item(TASKS["docvqa"], _item("docvqa", ["hallo"]), "hello") == pytest.approx(0.8)
    assert score_item(TASKS["chartqa"], _item("chartqa", ["12.5"]), "12") == 1.0
    ai2d = _item("ai2d", ["B"], ["cat", "dog", "bird"])
    assert score_item(TASKS["ai2d"], ai2d, "B") == 1.0
    assert score_item(TASKS["ai2d"], ai2d, "(B) dog") == 1.0
    assert score_item(TASKS["ai2d"], ai2d, "dog") == 1.0
    assert score_item(TASKS["ai2d"], ai2d, "A") == 0.0
    assert score_item(TASKS["mmmu"], _item("mmmu", ["3.14"]), "It is 3.14159") == 1.0
    assert score_item(TASKS["mantis"], _item("mantis", ["Red"]), "red.") == 1.0
    assert score_item(TASKS["pope"], _item("pope", ["no"]), "No, there is not.") == 1.0
    assert score_item(TASKS["mme"], _item("mme", ["yes"]), "Yes, it is.") == 1.0
    ocr = _item("ocrbench", ["x^{2}"], dataset="HME100k")
    assert score_item(TASKS["ocrbench"], ocr, "x ^ {2}") == 1.0


def _row(score, pred, ref, **meta):
    return {"score": score, "prediction": pred, "reference": [ref] if ref else [], "meta": meta}


def test_aggregate_pope_and_mme():
    rows = [
        _row(1.0, "yes", "yes", category="random"),
        _row(0.0, "yes", "no", category="random"),
        _row(0.0, None, "yes", category="popular"),
        _row(0.0, None, None),
    ]
    score, d = aggregate(TASKS["pope"], rows)
    assert d["splits"]["random"]["f1"] == pytest.approx(2 / 3)
    assert d["splits"]["popular"]["f1"] == 0.0  # the error item is a false negative
    assert score == pytest.approx(1 / 3)
    assert d["item_accuracy"] == 0.25 and d["n_unplaced"] == 1
    mme = [
        _row(1.0, "yes", "yes", category="OCR", question_id="i1"),
        _row(1.0, "no", "no", category="OCR", question_id="i1"),
        _row(0.0, "no", "yes", category="count", question_id="i2"),
        _row(1.0, "no", "no", category="count", question_id="i2"),
    ]
    score, d = aggregate(TASKS["mme"], mme)
    assert (d["subtasks"]["OCR"]["score"], d["subtasks"]["count"]["score"]) == (200.0, 50.0)
    assert d["perception"] == 250.0 and score == pytest.approx(250 / 400)


def test_aggregate_mean_and_ocrbench():
    rows = [_row(1.0, "a", "a"), _row(0.0, None, "b"), _row(0.5, "c", "c")]
    assert aggregate(TASKS["docvqa"], rows)[0] == pytest.approx(0.5)
    _, d = aggregate(TASKS["ocrbench"], rows)
    assert d == {"final_score": 1.5, "out_of": 3}
    assert aggregate(TASKS["docvqa"], []) == (0.0, {})
