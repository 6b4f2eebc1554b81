"""Boxes written inside the text of source data → :class:`~mm15.data.schema.Region` s
(on-disk layouts: mm15/data/registry.toml).

Some datasets write their boxes into the conversation text in their own coordinate language.
Passed through, the model would learn a second coordinate language next to mm15's one
(:mod:`mm15.data.coords`), so a reader converts each such box once, with the coordinate library,
to pixel xyxy on the original image, and replaces it by a region part; the prompt builder writes
it in mm15's language at tokenisation time.  Dialects (``text_boxes`` of the conversation
reader):

* ``"docowl_bbox"``: DocOwl 1.5 / DocStruct4M ``<bbox>x1,y1,x2,y2</bbox>``, integers 0..999
  relative to the image (``int999``: divided by 999).  A ``<bbox>`` tag whose body is not four
  integers is ``malformed`` (it is never left in the text).
* ``"llava_square"``: LLaVA-1.5 665k ``[0.12, 0.34, 0.56, 0.78]``, 0-1 xyxy on the image padded
  to a square (``expand2square``; ``norm01_xyxy_padsq``).  A bracketed list of four numbers in
  ``[0, 1]`` written as ``0``, ``1`` or with a decimal point; other lists are text.  Samples
  without an image keep such lists as text (they are numbers, not coordinates: the 665k mix's
  text-only ShareGPT rows).  The source rounds to 2 decimals of the square's side, so the
  default tolerance at the image edges is ``0.005 * max(W, H) + 0.5`` px.

With ``text_boxes`` unset, a DocOwl ``<bbox>`` tag (unambiguous) in the text is ``malformed``,
naming the option, rather than trained as text.  A converted box needs exactly one image in the
sample (``malformed`` otherwise); ``Media.size`` comes from its header.  ``<ocr>…</ocr>`` (DocOwl's
recognised-text wrapper) is not a coordinate and stays as written.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from mm15.data.coord_conventions import to_box
from mm15.data.coords import PIXEL_TOL, CoordinateError
from mm15.data.schema import Media, Message, Part, Region, SampleError
from mm15.data.sources.canonical import coord_error, header_size

TextBoxes = Literal["docowl_bbox", "llava_square"]
TEXT_BOXES: tuple[str, ...] = ("docowl_bbox", "llava_square")

DOCOWL_BBOX = re.compile(r"<bbox>(.*?)</bbox>", re.DOTALL)
_INT4 = re.compile(r"\s*(\d+)\s*,\s*(\d+)\s*,\s*(\d+)\s*,\s*(\d+)\s*")
_NUM = r"([01](?:\.\d+)?|\.\d+)"
LLAVA_BOX = re.compile(rf"\[\s*{_NUM}\s*,\s*{_NUM}\s*,\s*{_NUM}\s*,\s*{_NUM}\s*\]")


def check_mode(mode: str | None) -> None:
    if mode is not None and mode not in TEXT_BOXES:
        raise ValueError(f"text_boxes={mode!r}; expected one of {TEXT_BOXES} or None")


def convert_text_boxes(
    messages: list[Message],
    media: list[Media],
    regions: list[Region],
    mode: TextBoxes | None,
    where: str,
    *,
    tolerance_px: float | None = None,
) -> None:
    """Replace the in-text boxes of ``messages`` (dialect ``mode``, module docstring) by region
    parts, appending their :class:`Region` s to ``regions``; in place."""
    pattern = DOCOWL_BBOX if mode != "llava_square" else LLAVA_BOX
    images = [m for m in media if m.kind == "image"]
    if mode == "llava_square" and not images:
        return
    found = any(
        p.type == "text" and pattern.search(p.text or "") for msg in messages for p in msg.content
    )
    if not found:
        return
    if mode is None:
        raise SampleError(
            "malformed",
            f"{where}: the text holds a <bbox>…</bbox> box (DocOwl's "
            "0..999 ints); set the reader option "
            "text_boxes='docowl_bbox' to convert it",
        )
    if len(images) != 1 or media[0].kind != "image":
        raise SampleError(
            "malformed",
            f"{where}: in-text boxes need exactly one image, the "
            f"sample has {len(images)} image(s) of {len(media)} media",
        )
    m = media[0]
    if m.size is None:
        src = m.bytes if m.bytes is not None else Path(m.path or "")
        m.size = header_size(src, where=where)
    tol = tolerance_px
    if tol is None:
        tol = 0.005 * max(m.size) + PIXEL_TOL if mode == "llava_square" else PIXEL_TOL
    convert = _docowl if mode == "docowl_bbox" else _llava
    for t, msg in enumerate(messages):
        msg.content = _split(
            msg.content,
            pattern,
            lambda match, n, t=t: _region(
                convert(match, f"{where} turn {t} box {n}"),
                m.size,
                regions,
                tol,
                f"{where} turn {t} box {n}",
            ),
        )


def _docowl(match: re.Match, where: str) -> tuple[list[float], str]:
    body = _INT4.fullmatch(match.group(1))
    if body is None:
        raise SampleError("malformed", f"{where}: {match.group(0)!r} is not four integers")
    return [float(v) for v in body.groups()], "int999"


def _llava(match: re.Match, where: str) -> tuple[list[float], str]:
    return [float(v) for v in match.groups()], "norm01_xyxy_padsq"


def _region(
    conv: tuple[list[float], str],
    size: tuple[int, int],
    regions: list[Region],
    tol: float,
    where: str,
) -> int:
    values, convention = conv
    try:
        box = to_box(values, convention, size, 0, tolerance_px=tol)  # type: ignore[arg-type]
    except CoordinateError as e:
        raise coord_error(e, where) from None
    regions.append(Region(media=0, box=(box.x1, box.y1, box.x2, box.y2)))
    return len(regions) - 1


def _split(
    parts: list[Part], pattern: re.Pattern, make: Callable[[re.Match, int], int]
) -> list[Part]:
    """Text parts cut at each match of ``pattern``, the match replaced by ``Part.r(make(...))``;
    text left empty by a cut is dropped."""
    out: list[Part] = []
    n = 0
    for p in parts:
        if p.type != "text" or not pattern.search(p.text or ""):
            out.append(p)
            continue
        text, pos = p.text or "", 0
        for match in pattern.finditer(text):
            if text[pos : match.start()]:
                out.append(Part.t(text[pos : match.start()]))
            out.append(Part.r(make(match, n)))
            n += 1
            pos = match.end()
        if text[pos:]:
            out.append(Part.t(text[pos:]))
    return out
