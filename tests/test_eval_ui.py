"""UI captioning (MM1.5 Table 12): CIDEr by hand, and the screen2words / widget-caption readers
on fixtures in their releases' layouts."""

from __future__ import annotations

import math

import pytest

from mm15.eval.tasks import TASKS, aggregate
from mm15.eval.ui_tasks import cider_aggregate, cider_scores, cider_tokens
from tests.eval_fixtures import screen2words_release, widget_captions_release


def test_cider_tokens_drop_punctuation_and_case():
    assert cider_tokens("A  Login-page, for 'Gmail'.") == "a login page for 'gmail'"


def test_cider_hand_computed():
    """Two items with disjoint words: every n-gram has df = 1 in a corpus of 2, so idf = log 2
    everywhere and CIDEr-D is 10 × the mean over n = 1..4 of the clipped cosine.  An exact
    3-word caption has no 4-gram: (1 + 1 + 1 + 0) / 4 × 10 = 7.5.  "a b x" against "a b c":
    unigrams 2/3, bigrams 1/2, no shared trigram: (2/3 + 1/2) / 4 × 10."""
    assert cider_scores(["a b c", "d e f"], [["a b c"], ["d e f"]]) == pytest.approx([7.5, 7.5])
    got = cider_scores(["a b x", "d e f"], [["A b c."], ["d e f"]])
    assert got[0] == pytest.approx(10 * (2 / 3 + 1 / 2) / 4)
    assert got[1] == pytest.approx(7.5)
    assert cider_scores(["q r s", "d e f"], [["a b c"], ["d e f"]])[0] == 0.0
    assert math.isclose(cider_scores(["a b c d", "e f g h"], [["a b c d"], ["e f g h"]])[0], 10)
    with pytest.raises(ValueError, match="at least one reference"):
        cider_scores(["a"], [[]])


def test_cider_aggregate_keeps_error_items_in_the_denominator():
    rows = [
        {"prediction": "a b c", "reference": ["a b c"], "score": 0.0},
        {"prediction": None, "reference": ["d e f"], "score": 0.0},  # an error item
        {"prediction": None, "reference": [], "score": 0.0},  # its row could not be read
    ]
    score, details = cider_aggregate(rows)
    assert [r["score"] for r in rows] == pytest.approx([7.5, 0.0, 0.0])
    assert score == pytest.approx(7.5 / 3) and details == {"n_unplaced": 1}
    assert aggregate(TASKS["screen2words"], [dict(r) for r in rows])[0] == pytest.approx(2.5)


def _items(task, root, **kw):
    spec = TASKS[task]
    return list(spec.reader(spec, root, split=None, **kw))


def test_screen2words_reader(tmp_path):
    screen2words_release(tmp_path)
    items = _items("screen2words", tmp_path, limit=None)
    assert [i.id for i in items] == ["1", "2", "3"]
    assert items[0].references == ["login page of an app", "sign in screen"]
    assert items[0].sample.media[0].size == (54, 96)
    assert items[1].error.startswith("missing:") and "combined/2.jpg" in items[1].error
    assert items[2].error.startswith("empty:")  # no summary for screen 3
    assert len(_items("screen2words", tmp_path, limit=1)) == 1
    with pytest.raises(FileNotFoundError, match=r"nosuch_screens\.txt"):
        TASKS["screen2words"].reader(TASKS["screen2words"], tmp_path, split="nosuch")
    with pytest.raises(FileNotFoundError, match=r"screen_summaries\.csv"):
        TASKS["screen2words"].reader(TASKS["screen2words"], tmp_path / "split")


def test_widget_captioning_reader_boxes_from_the_view_hierarchy(tmp_path):
    widget_captions_release(tmp_path)
    items = _items("widget_captioning", tmp_path, limit=None)
    assert [i.id for i in items] == ["7_0.1", "7_0.5"]  # screen 8 is not in the test split
    ok = items[0]
    assert ok.references == ["go back", "back button"]
    assert ok.sample.regions[0].box == pytest.approx((0, 480, 540, 960))
    assert [p.type for p in ok.sample.messages[0].content] == ["media", "text", "region", "text"]
    assert items[1].error.startswith("malformed:") and "node 0.5" in items[1].error
