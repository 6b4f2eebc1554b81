"""UI captioning benchmarks of MM1.5-UI (§6.1, Table 12): screen2words (a screen summary) and
widget captioning (a phrase for one widget, shown as a box region), scored with CIDEr.

**CIDEr** is pycocoevalcap's ``CiderScorer`` (CIDEr-D: n = 1..4, σ = 6, clipped counts, ×10;
document frequencies over the references of the whole test set, so it is a corpus metric:
:func:`cider_aggregate` scores every item once all predictions are in).  The paper reports it
×100 (Table 12: S2W 103.0 is CIDEr 1.030), as mm15's summary does.  pycocoevalcap's PTB
tokenizer runs Java; mm15 tokenises without it (:func:`cider_tokens`: lower case, every
character other than a letter, digit or apostrophe a space), which equals the PTB tokenizer's
output with punctuation removed for plain English captions except contractions ("don't" stays
one token where PTB writes "do n't").

**Layouts** (the benchmarks' own releases, with RICO's ``combined/`` screenshots linked under
``--data``):

* ``screen2words`` (google-research-datasets/screen2words): ``screen_summaries.csv``
  (``screenId``, ``summary``: five rows per screen) and ``split/{train,dev,test}_screens.txt``;
  screenshots ``combined/<screenId>.jpg``.
* ``widget_captioning`` (google-research-datasets/widget-caption): ``widget_captions.csv``
  (``screenId``, ``nodeId``, ``captions`` joined by "|") and ``split/{train,dev,test}.txt``;
  the widget's box comes from RICO's view hierarchy ``combined/<screenId>.json``: ``nodeId``
  "0.i.j" is ``activity.root.children[i].children[j]``, whose ``bounds`` are on RICO's
  1440×2560 canvas, scaled by image height / 2560 (as pix2struct's converter does).

A screen without a screenshot, a node path that does not exist or an item without captions is
an error item (score 0, in the denominator).
"""

from __future__ import annotations

import csv
import json
import re
from collections import defaultdict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from mm15.data.schema import Media, Message, Part, Region, Sample, SampleError
from mm15.data.sources.canonical import header_size
from mm15.eval.item_stream import ItemStream
from mm15.eval.task_spec import EvalItem, TaskSpec

RICO_CANVAS_H = 2560
S2W_PROMPT = "Summarize the screen in one sentence."
WIDGET_PROMPT = ("Describe the function of the widget ", " in a short phrase.")


# ---------------------------------------------------------------------------------------------
# CIDEr


def cider_tokens(text: str) -> str:
    """Lower case; every character other than a letter, digit or apostrophe becomes a space."""
    return " ".join(re.sub(r"[^\w']|_", " ", text.lower()).split())


def cider_scores(preds: Sequence[str], refs: Sequence[Sequence[str]]) -> list[float]:
    """Per-item CIDEr-D (pycocoevalcap) of ``preds[i]`` against ``refs[i]``, document
    frequencies over all ``refs``; the benchmark score is their mean."""
    try:
        from pycocoevalcap.cider.cider_scorer import CiderScorer
    except ImportError as e:
        raise ImportError(
            "CIDEr needs pycocoevalcap: pip install 'mm15[eval]' (pycocoevalcap==1.2)"
        ) from e

    if len(preds) != len(refs):
        raise ValueError(f"{len(preds)} predictions but {len(refs)} reference lists")
    if not preds:
        return []
    if any(not r for r in refs):
        raise ValueError("every item needs at least one reference caption")
    scorer = CiderScorer(n=4, sigma=6.0)
    for p, r in zip(preds, refs, strict=True):
        scorer += (cider_tokens(p), [cider_tokens(x) for x in r])
    _, scores = scorer.compute_score()
    return [float(s) for s in scores]


def cider_aggregate(rows: Sequence[dict[str, Any]]) -> tuple[float, dict[str, Any]]:
    """Corpus CIDEr over the written rows; each row's ``score`` is set to its own CIDEr (an
    error item predicts the empty caption; one without references scores 0 and is counted in
    ``n_unplaced``).  Every row stays in the denominator."""
    placed = [r for r in rows if r["reference"]]
    scores = cider_scores([r["prediction"] or "" for r in placed], [r["reference"] for r in placed])
    for r, s in zip(placed, scores, strict=True):
        r["score"] = s if r["prediction"] is not None else 0.0
    return sum(r["score"] for r in rows) / len(rows), {"n_unplaced": len(rows) - len(placed)}


# ---------------------------------------------------------------------------------------------
# Layouts


def _bad(reason: str, detail: str) -> SampleError:
    return SampleError(reason, detail)  # type: ignore[arg-type]


def _split_ids(path: Path) -> list[str]:
    if not path.is_file():
        raise FileNotFoundError(f"split file {path} does not exist")
    return [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]


def _screenshot(root: Path, screen: str, where: str) -> Media:
    for p in (root / "combined" / f"{screen}.jpg", root / f"{screen}.jpg"):
        if p.is_file():
            return Media(kind="image", path=str(p), size=header_size(str(p), where=where))
    raise _bad("missing", f"{where}: no screenshot combined/{screen}.jpg under {root}")


def _sample(spec: TaskSpec, item_id: str, media: Media, parts: list[Part], **kw: Any) -> Sample:
    return Sample(
        id=item_id,
        source=f"eval/{spec.name}",
        category="eval",
        stage="eval",
        media=[media],
        messages=[Message("user", parts)],
        **kw,
    )


def _items(spec: TaskSpec, keys: list[tuple[str, str]], build) -> Iterator[EvalItem]:
    for item_id, where in keys:
        try:
            yield build(item_id, where)
        except SampleError as e:
            yield EvalItem(spec.name, item_id, None, error=str(e))


def read_screen2words(
    spec: TaskSpec, data: str | Path, *, split: str | None = None, limit: int | None = None
) -> ItemStream:
    root = Path(data)
    table = root / "screen_summaries.csv"
    if not table.is_file():
        raise FileNotFoundError(f"{root}: no screen_summaries.csv (screen2words' release)")
    screens = _split_ids(root / "split" / f"{split or spec.split}_screens.txt")
    summaries: dict[str, list[str]] = defaultdict(list)
    with open(table, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            if (row.get("summary") or "").strip():
                summaries[str(row["screenId"]).strip()].append(row["summary"])

    def build(screen: str, where: str) -> EvalItem:
        refs = summaries.get(screen)
        if not refs:
            raise _bad("empty", f"{where}: screen {screen} has no summary in {table.name}")
        media = _screenshot(root, screen, where)
        sample = _sample(spec, screen, media, [Part.m(0), Part.t(S2W_PROMPT)], answers=refs)
        return EvalItem(spec.name, screen, sample, refs, sizes=[media.size])

    keys = [(s, f"{table}: screen {s}") for s in screens]
    return ItemStream([table], len(keys), lambda: _items(spec, keys, build), limit=limit)


def widget_box(root: Path, screen: str, node: str, height: int, where: str) -> tuple[float, ...]:
    """The widget's box in screenshot pixels, from RICO's view hierarchy."""
    path = root / "combined" / f"{screen}.json"
    if not path.is_file():
        raise _bad("missing", f"{where}: no view hierarchy combined/{screen}.json")
    try:
        current = json.loads(path.read_text())["activity"]["root"]
        for index in node.split(".")[1:]:
            current = current["children"][int(index)]
        x1, y1, x2, y2 = (float(v) * height / RICO_CANVAS_H for v in current["bounds"])
    except (KeyError, IndexError, TypeError, ValueError) as e:
        raise _bad("malformed", f"{where}: node {node} not in {path.name}: {e!r}") from None
    if not (x2 > x1 and y2 > y1):
        raise _bad("malformed", f"{where}: node {node} has an empty box {[x1, y1, x2, y2]}")
    return x1, y1, x2, y2


def read_widget_captions(
    spec: TaskSpec, data: str | Path, *, split: str | None = None, limit: int | None = None
) -> ItemStream:
    root = Path(data)
    table = root / "widget_captions.csv"
    if not table.is_file():
        raise FileNotFoundError(f"{root}: no widget_captions.csv (widget-caption's release)")
    screens = set(_split_ids(root / "split" / f"{split or spec.split}.txt"))
    with open(table, newline="", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if str(r.get("screenId", "")).strip() in screens]
    captions = {f"{r['screenId'].strip()}_{r['nodeId'].strip()}": r for r in rows}

    def build(item_id: str, where: str) -> EvalItem:
        row = captions[item_id]
        refs = [c.strip() for c in (row.get("captions") or "").split("|") if c.strip()]
        if not refs:
            raise _bad("empty", f"{where}: no caption")
        screen = row["screenId"].strip()
        media = _screenshot(root, screen, where)
        box = widget_box(root, screen, row["nodeId"].strip(), media.size[1], where)
        parts = [Part.m(0), Part.t(WIDGET_PROMPT[0]), Part.r(0), Part.t(WIDGET_PROMPT[1])]
        sample = _sample(
            spec, item_id, media, parts, regions=[Region(media=0, box=box)], answers=refs
        )
        return EvalItem(spec.name, item_id, sample, refs, sizes=[media.size])

    keys = [(k, f"{table}: {k}") for k in captions]
    return ItemStream([table], len(keys), lambda: _items(spec, keys, build), limit=limit)


def ui_specs() -> list[TaskSpec]:
    """screen2words and widget captioning (Table 12, S2W and WiC)."""
    return [
        TaskSpec(
            name=name,
            category="ui",
            metric="cider",
            split="test",
            max_new_tokens=32,
            reader=reader,
        )
        for name, reader in (
            ("screen2words", read_screen2words),
            ("widget_captioning", read_widget_captions),
        )
    ]
