"""Table benchmark metrics (MM1.5 §4.1, Table 4, text-rich: WTQ, TabFact).

* :func:`wtq_accuracy` (WikiTableQuestions): the official evaluator's denotation check
  (Pasupat & Liang 2015, ``evaluator.py``; the same check as the DUE benchmark's ``WTQ``
  scorer that DocOwl 1.5 scores DocDownstream with).  Every value is normalised
  (:func:`wtq_normalize`: diacritics dropped, quotes and dashes unified, trailing citations
  ``[1]`` / ``†``, trailing parenthesised details and outer quotes removed, a final "." dropped,
  whitespace collapsed, lower case) and typed: a number (``int`` then ``float``; within 1e-6 is
  equal), a date ``yyyy-mm-dd`` with ``xx`` placeholders (a year alone is the number), else a
  string.  The prediction is right when, as sets of values, it has as many values as the
  reference and every reference value matches one of them (same normalised text, or equal
  number / date).  A free-form answer becomes a list by splitting on ``|``, the separator of
  WTQ's own ``targetValue`` column; so does a reference given as one string.
* :func:`tabfact_label` / :func:`tabfact_accuracy` (TabFact): the first word of the answer read
  as a verdict (``true``/``yes``/``entailed``/``supported``/``correct``/``1`` or
  ``false``/``no``/``not``/``refuted``/``incorrect``/``0``), compared with the reference's;
  anything else is wrong.  DocOwl 1.5 compares the bare strings "true"/"false"; reading the
  first word also scores "True." and "false, because …" as the model meant them.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

# ---------------------------------------------------------------------------------------------
# WTQ: the official evaluator's normalisation and value matching

_TRAILING = (  # applied in turn until nothing changes
    (re.compile(r"((?<!^)\[[^\]]*\]|\[\d+\]|[•♦†‡*#+])*$"), ""),  # citations, footnote marks
    (re.compile(r"(?<!^)( \([^)]*\))*$"), ""),  # details in parentheses
    (re.compile(r'^"([^"]*)"$'), r"\1"),  # outermost quotes
)


def wtq_normalize(text: str) -> str:
    """The official WTQ ``normalize``: "Ångström [1]" → "angstrom", "“Yes”." → "yes"."""
    text = "".join(
        c for c in unicodedata.normalize("NFKD", text) if unicodedata.category(c) != "Mn"
    )
    text = re.sub(r"[‘’´`]", "'", text)
    text = re.sub(r"[“”]", '"', text)
    text = re.sub(r"[‐‑‒–—−]", "-", text)
    while True:
        before = text
        for pattern, repl in _TRAILING:
            text = pattern.sub(repl, text.strip())
        if text == before:
            break
    if text.endswith("."):
        text = text[:-1]
    return re.sub(r"\s+", " ", text).lower().strip()


@dataclass(frozen=True)
class WtqValue:
    """One typed answer value: ``kind`` number / date / string, ``key`` its identity (the
    amount, ``(y, m, d)`` with -1 placeholders, or the normalised text) and ``text`` the
    normalised original string."""

    kind: str
    key: object
    text: str

    def matches(self, other: WtqValue) -> bool:
        if self.text == other.text:
            return True
        if self.kind == other.kind == "number":
            return abs(self.key - other.key) < 1e-6  # type: ignore[operator]
        return self.kind == other.kind == "date" and self.key == other.key


def _number(text: str) -> int | float | None:
    if "_" in text:  # Python 3 reads "1_000"; the official (Python 2) evaluator does not
        return None
    try:
        return int(text)
    except ValueError:
        pass
    try:
        amount = float(text)
    except ValueError:
        return None
    return None if math.isnan(amount) or math.isinf(amount) else amount


def _date(text: str) -> tuple[int, int, int] | None:
    parts = text.lower().split("-")
    if len(parts) != 3:
        return None
    try:
        y = -1 if parts[0] in ("xx", "xxxx") else int(parts[0])
        m = -1 if parts[1] == "xx" else int(parts[1])
        d = -1 if parts[2] == "xx" else int(parts[2])
    except ValueError:
        return None
    if y == m == d == -1 or not (m == -1 or 1 <= m <= 12) or not (d == -1 or 1 <= d <= 31):
        return None
    return y, m, d


def wtq_value(text: str) -> WtqValue:
    """A raw answer string as a typed value (number, then date, else string)."""
    norm = wtq_normalize(text)
    amount = _number(text)
    if amount is None and (ymd := _date(text)) is not None:
        if ymd[1] == ymd[2] == -1:
            amount = ymd[0]
        else:
            return WtqValue("date", ymd, norm)
    if amount is not None:
        if abs(amount - round(amount)) < 1e-6:
            amount = int(amount)  # truncation, as the official evaluator (2.9999999 → 2)
        return WtqValue("number", amount, norm)
    return WtqValue("string", norm, norm)


def wtq_values(texts: str | Sequence[str]) -> list[WtqValue]:
    """Distinct values of an answer list (a string is split on ``|``); equal values (same
    kind and key) count once, as the official evaluator's sets do."""
    items = texts.split("|") if isinstance(texts, str) else list(texts)
    out: dict[tuple[str, object], WtqValue] = {}
    for item in items or [""]:
        value = wtq_value(item.strip())
        out.setdefault((value.kind, value.key), value)
    return list(out.values())


def wtq_accuracy(pred: str, refs: Sequence[str]) -> float:
    """1.0 if the prediction's values denote the reference list (module docstring), else 0.0.

    ``refs``: the reference values; one string is split on ``|``."""
    if not refs:
        raise ValueError("wtq_accuracy needs at least one reference value")
    target = wtq_values(refs[0] if len(refs) == 1 else refs)
    predicted = wtq_values(pred)
    if len(target) != len(predicted):
        return 0.0
    return float(all(any(t.matches(p) for p in predicted) for t in target))


# ---------------------------------------------------------------------------------------------
# TabFact: a verdict read from the answer

_TRUE = frozenset({"true", "yes", "entailed", "entailment", "supported", "correct", "1"})
_FALSE = frozenset({"false", "no", "not", "refuted", "incorrect", "0"})


def tabfact_label(text: str) -> str | None:
    """ "true" / "false" from the first word of ``text`` (module docstring), else None."""
    words = re.findall(r"[a-z0-9]+", text.lower())
    if not words:
        return None
    return "true" if words[0] in _TRUE else "false" if words[0] in _FALSE else None


def tabfact_accuracy(pred: str, ref: str) -> float:
    """1.0 if the prediction's verdict equals the reference's ("true"/"false"/"1"/"0")."""
    gold = tabfact_label(ref)
    if gold is None:
        raise ValueError(f"TabFact reference {ref!r} is not true/false")
    return float(tabfact_label(pred) == gold)
