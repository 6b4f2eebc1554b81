"""Parsing model text into regions (the reading half of :mod:`mm15.data.coords`).

Model output such as ``the flour <112,26,316,239>`` becomes :class:`ParsedRegion` s in pixels of
their image; every malformed tag becomes a :class:`ParseIssue` with its span and reason, never
clamped or dropped silently.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from mm15.data.coords import NUM_BINS, Box, Point, check_size, dequantize_box, dequantize_point

# A *coordinate tag candidate* is "<...>" on one line whose body holds only digits, ",", ".",
# ":", "+", "-", spaces and tabs, with at least one digit and at least one comma.  Anything else
# ("<image>", "<n>", "<5>", "<br/>", "<bbox_location0>", "a < b > c") is plain text.  A
# candidate that is not a valid tag is reported as a ParseIssue, never dropped silently.
_CANDIDATE = re.compile(r"<([0-9,.:+\- \t]*)>")
_FIELD = re.compile(r"[ \t]*([0-9]+)[ \t]*")
_BOUNDARY = re.compile(r"[.,;:!?()\n]")
_DETERMINER = re.compile(r"\b(?:the|a|an|this|these|that|those)\b\s*", re.IGNORECASE)
_CONJ = re.compile(r"^(?:and|or)\b\s*", re.IGNORECASE)
_GROUP_GAP = re.compile(r"^[\s,]*(?:(?:and|or)[\s,]*)?$", re.IGNORECASE)


@dataclass(frozen=True)
class ParsedRegion:
    """A valid tag in model text: ``text[span[0]:span[1]]`` is the tag itself."""

    span: tuple[int, int]
    shape: Box | Point
    label: str
    ints: tuple[int, ...]  # the bins as written (2 or 4)
    indexed: bool  # whether the tag wrote its image index ("<k:...>")

    @property
    def image(self) -> int:
        return self.shape.image


@dataclass(frozen=True)
class ParseIssue:
    """A malformed coordinate tag: where it is, its text, and what is wrong."""

    span: tuple[int, int]
    text: str
    reason: str


@dataclass(frozen=True)
class ParseResult:
    regions: list[ParsedRegion]
    errors: list[ParseIssue]


def _read_tag(body: str, num_images: int | None) -> tuple[int, bool, tuple[int, ...]] | str:
    """``(image, indexed, ints)`` of a candidate's body, or the reason it is malformed."""
    head, sep, rest = body.rpartition(":") if ":" in body else ("", "", body)
    image = 0
    if sep:
        m = _FIELD.fullmatch(head)
        if m is None:
            return f"bad image index {head.strip()!r} (want '<k:...>' with k an int >= 0)"
        image = int(m.group(1))
    fields = rest.split(",")
    if len(fields) not in (2, 4):
        return f"wrong arity: {len(fields)} values (want 2 for a point, 4 for a box)"
    ints = []
    for f in fields:
        m = _FIELD.fullmatch(f)
        if m is None:
            s = f.strip()
            kind = "empty" if not s else "negative" if s.startswith("-") else "not an integer"
            return f"value {s!r} is {kind}"
        ints.append(int(m.group(1)))
    if any(v >= NUM_BINS for v in ints):
        return f"values must be < {NUM_BINS}, got {ints}"
    if len(ints) == 4 and (ints[0] > ints[2] or ints[1] > ints[3]):
        return f"box needs x1 <= x2 and y1 <= y2, got {ints}"
    if num_images is not None and image >= num_images:
        return f"image index {image} but the sample has {num_images} image(s)"
    return image, bool(sep), tuple(ints)


def _label(text: str, gap_start: int, start: int, prev_label: str | None) -> str:
    """The phrase a tag grounds (see :func:`parse_regions`)."""
    gap = text[gap_start:start]
    if prev_label is not None and _GROUP_GAP.match(gap):
        return prev_label
    cut = [m.end() for m in _BOUNDARY.finditer(gap)]
    phrase = gap[cut[-1] if cut else 0 :].strip()
    det = _DETERMINER.search(phrase)
    if det is not None and phrase[det.end() :].strip():
        phrase = phrase[det.end() :]
    return _CONJ.sub("", phrase.strip()).strip()


def _scan(text: str, num_images: int | None):
    """Yield ``(span, label, tag-or-reason)`` for every candidate, in order."""
    prev_end, prev_label = 0, None
    for m in _CANDIDATE.finditer(text):
        body = m.group(1)
        if not any(c.isdigit() for c in body) or "," not in body:
            continue  # not a coordinate tag: plain text
        label = _label(text, prev_end, m.start(), prev_label)
        tag = _read_tag(body, num_images)
        yield m.span(), label, tag
        prev_end, prev_label = m.end(), (label if not isinstance(tag, str) else None)


def parse_regions(text: str, sizes: Sequence[tuple[float, float]]) -> ParseResult:
    """Find every point and box tag in ``text``; ``sizes[k]`` is the (W, H) of image k.

    Tags without an index are on image 0.  Labels (simple and predictable, not NLP): the text
    between the previous tag (or start) and this tag, cut after the last of ``. , ; : ! ? ( )``
    or newline; if it contains a determiner (the/a/an/this/these/that/those) the words after the
    first one; a leading "and"/"or" dropped; whitespace stripped.  A tag separated from a valid
    previous tag only by spaces, commas and one "and"/"or" shares its label, so
    "eggs <a> <b>" labels both "eggs".  Malformed candidates go to ``errors`` with the reason.
    """
    if len(sizes) == 2 and all(isinstance(v, (int, float)) for v in sizes):
        raise TypeError(f"sizes must be a sequence of (W, H), one per image; got {sizes!r}")
    sizes = [check_size(s) for s in sizes]
    regions, errors = [], []
    for span, label, tag in _scan(text, len(sizes)):
        if isinstance(tag, str):
            errors.append(ParseIssue(span, text[span[0] : span[1]], tag))
            continue
        image, indexed, ints = tag
        shape = (dequantize_box if len(ints) == 4 else dequantize_point)(ints, sizes[image], image)
        regions.append(ParsedRegion(span, shape, label, ints, indexed))
    return ParseResult(regions, errors)


def replace_regions(text: str, fn: Callable[[int, bool, tuple[int, ...], str], str]) -> str:
    """Replace every valid tag by ``fn(image, indexed, ints, label)``; other text is untouched.

    Needs no image sizes (works on the ints as written); malformed tags are left as they are.
    """
    out, pos = [], 0
    for (start, end), label, tag in _scan(text, None):
        if isinstance(tag, str):
            continue
        out += [text[pos:start], fn(*tag, label)]
        pos = end
    return "".join([*out, text[pos:]])


def strip_regions(text: str) -> str:
    """Remove valid tags with the spaces before them: "the flour <1,2,3,4>." → "the flour."."""
    out, pos = [], 0
    for (start, end), _, tag in _scan(text, None):
        if not isinstance(tag, str):
            out.append(text[pos:start].rstrip(" \t"))
            pos = end
    return "".join([*out, text[pos:]])
