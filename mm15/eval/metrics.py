"""Scoring one prediction against its references, and averaging per category (MM1.5 §4.1, Tables 4–14).

Every metric returns a float in [0, 1] for one prediction; datasets average them.

* :func:`exact_match`: equal after :func:`normalize_answer` (case, surrounding whitespace and
  punctuation, repeated spaces), against any of the references.
* :func:`mc_accuracy`: the option a free-form answer picks (:func:`extract_choice`: a letter,
  "(B)", "Answer: B", or an option's text) equals the reference option.
* :func:`box_iou50`: Acc@IoU≥0.5 (RefCOCO-style, Recall@1): the **first coordinate tag** of the
  prediction (:mod:`mm15.data.coord_parse`) must be a valid box with IoU ≥ 0.5 against the
  reference; no tag, a malformed first tag or a point scores 0.  :func:`point_in_box` is the
  same for points (a box's centre counts as its point).
* :func:`category_scores`: mean per category, and **MMBase** = mean of the general, text-rich
  and knowledge category averages that are present (§3.1).
* :func:`score_sample`: dispatch on ``sample.meta["metric"]`` (``exact | mc | iou50 |
  point_in_box``), as the synthetic test sets (:mod:`mm15.demo.data.tasks`) set it.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence

from mm15.data.coord_parse import parse_regions
from mm15.data.coords import Box, Point, iou
from mm15.data.schema import Sample

IOU_THRESHOLD = 0.5
MMBASE_CATEGORIES = ("general", "text_rich", "knowledge")
_EDGE_PUNCT = " \t\n\r.,;:!?\"'`()[]{}"
Size = tuple[float, float]


def normalize_answer(text: str) -> str:
    """Lower case, whitespace runs → one space, surrounding punctuation and quotes stripped.

    Inner punctuation stays ("3.5", "o'clock"), so numbers keep their meaning.
    """
    return re.sub(r"\s+", " ", text.lower()).strip(_EDGE_PUNCT)


def exact_match(pred: str, refs: str | Sequence[str]) -> float:
    """1.0 if ``pred`` equals any reference after :func:`normalize_answer`, else 0.0."""
    refs = [refs] if isinstance(refs, str) else list(refs)
    if not refs:
        raise ValueError("exact_match needs at least one reference answer")
    p = normalize_answer(pred)
    return float(any(p == normalize_answer(r) for r in refs))


def extract_choice(pred: str, options: Sequence[str]) -> int | None:
    """The 0-based option ``pred`` picks, or None.  Rules, first match wins:

    1. the whole answer is an option's text (normalised);
    2. the whole answer is a letter: "B", "b", "(B)", "B.", "B)";
    3. it starts with an upper-case letter and ".", ")" or ":" ("B. second", "(B) second");
    4. "answer/option/choice (is) (:) B" anywhere (case-insensitive keyword, upper-case letter);
    5. exactly one option's text occurs in it as whole words.

    Letters beyond the number of options do not count.
    """
    n = len(options)
    text = pred.strip()
    norm = normalize_answer(text)
    opts = [normalize_answer(o) for o in options]
    if norm in opts and opts.count(norm) == 1:
        return opts.index(norm)
    patterns = (
        (r"\(?([A-Za-z])\)?[.):]?", re.fullmatch),
        (r"\(?([A-Z])(?:\)|[.:])(?:\s|$)", re.match),
        (r"(?i:\b(?:answer|option|choice)\b)(?:\s+is)?\s*:?\s*\(?([A-Z])\b", re.search),
    )
    for pattern, fn in patterns:
        m = fn(pattern, text)
        if m and ord(m.group(1).upper()) - ord("A") < n:
            return ord(m.group(1).upper()) - ord("A")
    hits = [i for i, o in enumerate(opts) if o and re.search(rf"\b{re.escape(o)}\b", norm)]
    return hits[0] if len(hits) == 1 else None


def _answer_index(answer: str | int, options: Sequence[str]) -> int:
    """The reference option as an index: an int, a letter "A"…, or an option's text."""
    if isinstance(answer, int) and 0 <= answer < len(options):
        return answer
    if isinstance(answer, str):
        a = answer.strip()
        if len(a) == 1 and a.isalpha() and ord(a.upper()) - ord("A") < len(options):
            return ord(a.upper()) - ord("A")
        opts = [normalize_answer(o) for o in options]
        if normalize_answer(a) in opts:
            return opts.index(normalize_answer(a))
    raise ValueError(f"reference answer {answer!r} is not an option of {list(options)}")


def mc_accuracy(pred: str, options: Sequence[str], answer: str | int) -> float:
    """1.0 if the option ``pred`` picks (:func:`extract_choice`) is ``answer`` (an index, a
    letter or an option's text), else 0.0."""
    if len(options) < 2:
        raise ValueError(f"multiple choice needs at least 2 options, got {list(options)}")
    return float(extract_choice(pred, options) == _answer_index(answer, options))


def _sizes(size: Size | Sequence[Size]) -> list[Size]:
    """One (W, H) (single image) or one per image → a list of (W, H)."""
    if len(size) == 2 and all(isinstance(v, (int, float)) for v in size):
        return [tuple(size)]  # type: ignore[list-item]
    return [tuple(s) for s in size]  # type: ignore[union-attr]


def first_region(pred_text: str, size: Size | Sequence[Size]) -> Box | Point | None:
    """The first coordinate tag of ``pred_text`` in pixels, or None if there is none or the first
    one is malformed (tags on image k need ``size`` to list k + 1 sizes)."""
    parsed = parse_regions(pred_text, _sizes(size))
    tags = [(r.span, r.shape) for r in parsed.regions] + [(e.span, None) for e in parsed.errors]
    return min(tags, key=lambda t: t[0])[1] if tags else None


def box_iou(pred_text: str, ref_box: Box, size: Size | Sequence[Size]) -> float:
    """IoU of the prediction's first tag with ``ref_box`` (0.0 unless that tag is a valid box)."""
    shape = first_region(pred_text, size)
    return iou(shape, ref_box) if isinstance(shape, Box) else 0.0


def box_iou50(pred_text: str, ref_box: Box, size: Size | Sequence[Size]) -> float:
    """Acc@IoU≥0.5 of one prediction: 1.0 if :func:`box_iou` ≥ 0.5, else 0.0.

    ``size``: the (W, H) of the image, or one (W, H) per image for multi-image samples.
    """
    return float(box_iou(pred_text, ref_box, size) >= IOU_THRESHOLD)


def point_in_box(pred_text: str, ref_box: Box, size: Size | Sequence[Size]) -> float:
    """1.0 if the prediction's first tag is a point (or a box whose centre is) inside
    ``ref_box`` on the same image (edges included), else 0.0."""
    shape = first_region(pred_text, size)
    if isinstance(shape, Box):
        shape = shape.center
    if not isinstance(shape, Point) or shape.image != ref_box.image:
        return 0.0
    return float(ref_box.x1 <= shape.x <= ref_box.x2 and ref_box.y1 <= shape.y <= ref_box.y2)


def score_sample(sample: Sample, pred: str, frames: Sequence[Size] | None = None) -> float:
    """Score ``pred`` for an evaluation sample by its ``meta["metric"]``.

    exact: ``sample.answers``; mc: ``sample.options`` and ``answers[0]``; iou50 / point_in_box:
    the box ``sample.regions[meta["answer_region"]]`` on its image's ``Media.size``, the
    prediction's coordinates read against ``frames`` (one ``(W, H)`` per media; default the
    media sizes; :func:`mm15.data.sample_images.region_frames` for a model's own).
    """
    metric = sample.meta.get("metric")
    if metric == "exact":
        return exact_match(pred, sample.answers or [])
    if metric == "mc":
        return mc_accuracy(pred, sample.options or [], (sample.answers or [""])[0])
    if metric in ("iou50", "point_in_box"):
        reg = sample.regions[sample.meta["answer_region"]]
        if reg.box is None:
            raise ValueError(f"sample {sample.id}: answer region {reg} has no box")
        ref = Box(*reg.box, image=reg.media)
        sizes = list(frames) if frames is not None else [m.size for m in sample.media]
        fn = box_iou50 if metric == "iou50" else point_in_box
        return fn(pred, ref, sizes)
    raise ValueError(f"sample {sample.id}: unknown metric {metric!r} in meta")


def category_scores(items: Iterable[tuple[str, float] | Mapping]) -> dict[str, float]:
    """Mean score per category, plus ``"mmbase"`` when any MMBase category is present.

    ``items``: ``(category, score)`` pairs or mappings with ``"category"`` and ``"score"``.
    MMBase (§3.1) is the mean of the general, text-rich and knowledge category averages, over
    those present (MM1.5 §4.1, Tables 4–14).
    """
    scores: dict[str, list[float]] = defaultdict(list)
    for item in items:
        cat, score = (item["category"], item["score"]) if isinstance(item, Mapping) else item
        scores[str(cat)].append(float(score))
    out = {cat: sum(v) / len(v) for cat, v in sorted(scores.items())}
    base = [out[c] for c in MMBASE_CATEGORIES if c in out]
    if base:
        out["mmbase"] = sum(base) / len(base)
    return out
