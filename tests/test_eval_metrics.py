"""Tests for mm15.eval.metrics: hand-computed cases for every metric and the category means."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mm15.data.coords import Box, format_box
from mm15.data.schema import Media, Message, Part, Region, Sample
from mm15.eval.metrics import (
    box_iou,
    box_iou50,
    category_scores,
    exact_match,
    extract_choice,
    mc_accuracy,
    normalize_answer,
    point_in_box,
    score_sample,
)

ORD = ["first", "second", "third", "fourth"]


@pytest.mark.parametrize(
    ("text", "norm"),
    [
        ("  The  Cat. ", "the cat"),
        ('"17."', "17"),
        ("3.5", "3.5"),
        ("(OK)", "ok"),
        ("a\n b", "a b"),
    ],
)
def test_normalize_answer(text, norm):
    assert normalize_answer(text) == norm


def test_exact_match():
    assert exact_match("Red.", ["red"]) == 1.0
    assert exact_match("red", ["blue", " RED "]) == 1.0
    assert exact_match("reddish", "red") == 0.0
    assert exact_match("17", ["7"]) == 0.0
    assert exact_match("3.5", "35") == 0.0
    with pytest.raises(ValueError, match="at least one reference"):
        exact_match("x", [])


@given(
    word=st.sampled_from(["left", "17", "Cancel", "purple"]),
    pre=st.sampled_from(["", " ", "\n", '"']),
    post=st.sampled_from(["", ".", "!", " ", '"']),
    upper=st.booleans(),
)
@settings(max_examples=40, deadline=None)
def test_exact_match_ignores_case_space_and_edge_punctuation(word, pre, post, upper):
    pred = pre + (word.upper() if upper else word) + post
    assert exact_match(pred, [word]) == 1.0
    assert exact_match(pred + "x", [word]) == 0.0


@pytest.mark.parametrize(
    ("pred", "index"),
    [
        ("B", 1),
        ("(c)", 2),
        ("b.", 1),
        ("D) fourth", 3),
        ("A. first", 0),
        ("The answer is C.", 2),
        ("Answer: A", 0),
        ("second", 1),
        ("I pick the third one", 2),
        ("first or second", None),  # two options named: no choice
        ("E", None),  # beyond the options
        ("", None),
        ("A red circle", None),  # an article is not a letter
    ],
)
def test_extract_choice(pred, index):
    assert extract_choice(pred, ORD) == index


def test_extract_choice_prefers_whole_option_text():
    assert extract_choice("dark red", ["red", "dark red"]) == 1
    assert extract_choice("red", ["red", "dark red"]) == 0


def test_mc_accuracy_reference_as_letter_index_or_text():
    assert mc_accuracy("B", ORD, "B") == 1.0
    assert mc_accuracy("second", ORD, 1) == 1.0
    assert mc_accuracy("(b)", ORD, "second") == 1.0
    assert mc_accuracy("C", ORD, "B") == 0.0
    assert mc_accuracy("nothing", ORD, "A") == 0.0
    with pytest.raises(ValueError, match="not an option"):
        mc_accuracy("B", ORD, "fifth")
    with pytest.raises(ValueError, match="at least 2 options"):
        mc_accuracy("A", ["only"], "A")


def test_box_iou50_boundary_hand_computed():
    # Bins on a 1000 px image are 1 px: <0,0,49,99> decodes to (0, 0, 50, 100).
    ref, size = Box(0, 0, 100, 100), (1000, 1000)
    assert box_iou("<0,0,49,99>", ref, size) == pytest.approx(0.5)
    assert box_iou50("<0,0,49,99>", ref, size) == 1.0  # IoU exactly 0.5 counts
    assert box_iou("<0,0,48,99>", ref, size) == pytest.approx(0.49)
    assert box_iou50("<0,0,48,99>", ref, size) == 0.0
    # A non-square image: <100,100,500,500> on 100×200 → (10, 20, 50.1, 100.2).
    ref2 = Box(10, 20, 50, 100)
    assert box_iou("the box <100,100,500,500>", ref2, (100, 200)) == pytest.approx(
        40 * 80 / (40.1 * 80.2)
    )


@pytest.mark.parametrize(
    "pred",
    [
        "no box here",
        "<0,0,1000,99>",  # malformed (1000 is out of range)
        "<0,0,1000,99> then <0,0,99,99>",  # the first tag is malformed
        "<5,5> then <0,0,99,99>",  # the first tag is a point
        "<99,99,0,0>",  # x1 > x2
    ],
)
def test_box_iou50_zero_for_missing_malformed_or_point_first(pred):
    assert box_iou50(pred, Box(0, 0, 100, 100), (1000, 1000)) == 0.0


def test_box_iou50_first_valid_tag_wins_and_images_must_match():
    ref = Box(0, 0, 100, 100)
    assert box_iou50("<0,0,99,99> or <500,500,999,999>", ref, (1000, 1000)) == 1.0
    assert box_iou50("<500,500,999,999> or <0,0,99,99>", ref, (1000, 1000)) == 0.0
    on_second = Box(0, 0, 10, 10, image=1)
    sizes = [(50, 50), (100, 100)]
    assert box_iou50("<1:0,0,99,99>", on_second, sizes) == 1.0
    assert box_iou50("<0,0,99,99>", on_second, sizes) == 0.0  # right place, wrong image
    assert box_iou50("<2:0,0,99,99>", on_second, sizes) == 0.0  # no image 2: malformed


@given(
    x1=st.integers(0, 900),
    y1=st.integers(0, 900),
    w=st.integers(10, 99),
    h=st.integers(10, 99),
    size=st.sampled_from([(112, 112), (448, 112), (640, 480), (1000, 1000)]),
)
@settings(max_examples=60, deadline=None)
def test_formatted_reference_box_always_scores(x1, y1, w, h, size):
    sx, sy = size[0] / 1000, size[1] / 1000
    ref = Box(x1 * sx, y1 * sy, (x1 + w) * sx, (y1 + h) * sy)
    assert box_iou50(format_box(ref, size), ref, size) == 1.0


def test_point_in_box():
    ref, size = Box(0, 0, 100, 100), (1000, 1000)
    assert point_in_box("<50,50>", ref, size) == 1.0  # decodes to (50.5, 50.5)
    assert point_in_box("<99,0>", ref, size) == 1.0  # (99.5, 0.5)
    assert point_in_box("<100,50>", ref, size) == 0.0  # (100.5, 50.5): just outside
    assert point_in_box("<0,0,99,99>", ref, size) == 1.0  # a box counts by its centre
    assert point_in_box("<1:50,50>", ref, [size, size]) == 0.0  # other image
    assert point_in_box("nothing", ref, size) == 0.0


def test_category_scores_and_mmbase():
    items = [("general", 1.0), ("general", 0.0), ("text_rich", 1.0), ("math", 0.5)]
    out = category_scores(items)
    assert out == {"general": 0.5, "math": 0.5, "text_rich": 1.0, "mmbase": 0.75}
    as_dicts = [{"category": c, "score": s} for c, s in items]
    assert category_scores(as_dicts) == out
    with_knowledge = category_scores([*items, ("knowledge", 0.0)])
    assert with_knowledge["mmbase"] == pytest.approx(0.5)  # (0.5 + 1.0 + 0.0) / 3
    assert "mmbase" not in category_scores([("math", 1.0), ("ui", 0.0)])
    assert category_scores([]) == {}


def _eval_sample(metric: str, **kw) -> Sample:
    media = [Media(kind="image", path="x.png", size=(200, 100))]
    msgs = [Message("user", [Part.m(0), Part.t("q")])]
    return Sample(
        id="s",
        source="t",
        category="general",
        stage="eval",
        media=media,
        messages=msgs,
        meta={"metric": metric, **kw.pop("meta", {})},
        **kw,
    )


def test_score_sample_dispatch():
    assert score_sample(_eval_sample("exact", answers=["7"]), "7.") == 1.0
    mc = _eval_sample("mc", answers=["C"], options=ORD)
    assert score_sample(mc, "third") == 1.0 and score_sample(mc, "A") == 0.0
    reg = Region(media=0, box=(20.0, 10.0, 100.0, 50.0))
    ground = _eval_sample("iou50", regions=[reg], meta={"answer_region": 0})
    assert score_sample(ground, "<100,100,499,499>") == 1.0  # (20, 10, 100, 50) exactly
    assert score_sample(ground, "<600,600,999,999>") == 0.0
    pib = _eval_sample("point_in_box", regions=[reg], meta={"answer_region": 0})
    assert score_sample(pib, "<300,300>") == 1.0 and score_sample(pib, "<900,900>") == 0.0
    with pytest.raises(ValueError, match="unknown metric"):
        score_sample(_eval_sample("bleu", answers=["x"]), "x")
