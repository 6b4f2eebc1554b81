"""Benchmark rows from local copies → :class:`~mm15.eval.task_spec.EvalItem` s (MM1.5 §4.1).

Layouts users have:

* **lmms-eval Parquet**: an HF dataset snapshot (``data/validation-00000-of-00003.parquet``,
  ``DocVQA/test-….parquet``) or single files; images are ``{"bytes", "path"}`` structs (a
  struct with null bytes names a file relative to the Parquet file), raw bytes or paths.
  ``.arrow`` files of the ``datasets`` cache are read the same way.
* **plain JSONL** (or a JSON list): one row per line with the same field names; image fields
  hold a path relative to the JSONL file, or a list of paths.

``--data`` may be a file or a directory (which files of it are read:
:mod:`mm15.eval.table_files`).

Every row that cannot be used becomes an **error item** (``sample=None``, ``error = "reason:
detail"`` naming the file and row): a missing or undecodable image, a null question or
reference, an answer that is not one of the options, a bad box, an undecodable JSON line, an
unreadable Parquet row group (one error item per row).  They stay in the denominator with score
0; only rows outside the benchmark's definition (SEED's video questions) are filtered, and
counted.
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mm15.data.coord_conventions import to_box
from mm15.data.coords import Box, CoordinateError
from mm15.data.schema import Media, Message, Part, Sample, SampleError
from mm15.data.sources.canonical import header_size
from mm15.data.sources.rows import image_media
from mm15.eval.regions import place_region, prompt_region
from mm15.eval.submission import has_answers, question_id
from mm15.eval.table_files import find_files, iter_rows, row_store
from mm15.eval.task_spec import EvalItem, TaskSpec

_MARKER = re.compile(r"<image (\d+)>")  # MMMU's interleaved image references
_OPTION_LINE = re.compile(r"^\s*\(?([A-Z])[.)]\s*(.+?)\s*$", re.MULTILINE)


@dataclass
class ReadResult:
    items: list[EvalItem]
    files: list[Path]
    filtered: int = 0  # rows outside the benchmark (Columns.where), not items
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# Rows → items


def _bad(reason: str, detail: str) -> SampleError:
    return SampleError(reason, detail)  # type: ignore[arg-type]


def _media(cell: Any, root: Path, where: str, column: str) -> list[Media | None]:
    """Image slots of one cell (a struct, bytes, a path, or a list of those); a null cell is
    one empty slot, so that "<image k>" markers keep their numbering."""
    return [None] if cell is None else list(image_media(cell, column, root, where))


def _content(text: str, slots: list[Media | None], where: str) -> tuple[list[Part], list[Media]]:
    """Message parts: images at "<image k>" markers (first mention; unreferenced images are not
    shown, as lmms-eval's MMMU), else every image before the text."""
    text = text.replace("<image>", "image")  # the image token may not appear in text
    marks = list(_MARKER.finditer(text))
    if not marks:
        shown = [m for m in slots if m is not None]
        return [*(Part.m(i) for i in range(len(shown))), Part.t(text)], shown
    parts, shown, placed, pos = [], [], {}, 0
    for mk in marks:
        k = int(mk.group(1)) - 1
        if k in placed:
            continue
        if not 0 <= k < len(slots) or slots[k] is None:
            raise _bad(
                "missing",
                f"{where}: the question refers to {mk.group(0)} but that "
                f"image is absent (image slots: {len(slots)})",
            )
        parts += [Part.t(text[pos : mk.start()]), Part.m(len(shown))]
        placed[k], pos = True, mk.end()
        shown.append(slots[k])
    parts.append(Part.t(text[pos:]))
    return [p for p in parts if p.type != "text" or p.text], shown


def _options(spec: TaskSpec, row: dict[str, Any], question: str, where: str) -> list[str] | None:
    cols = spec.columns.options
    if len(cols) == 1:
        value = row[cols[0]]
        if isinstance(value, str):  # MMMU stores a Python-literal list
            try:
                value = ast.literal_eval(value)
            except (ValueError, SyntaxError):
                raise _bad("malformed", f"{where}: options {value!r:.80} are not a list") from None
        opts = [str(v) for v in value or []]
    elif cols:
        opts = [str(row[c]) for c in cols if row.get(c) not in (None, "", "N/A")]
    elif spec.fixed_options:
        opts = list(spec.fixed_options)
    elif spec.options_from_question:
        opts = [m.group(2) for m in _OPTION_LINE.finditer(question)]
        if [m.group(1) for m in _OPTION_LINE.finditer(question)] != [
            chr(ord("A") + i) for i in range(len(opts))
        ]:
            opts = []
    else:
        opts = []
    return opts or None


def _letter(value: Any, options: list[str], as_index: bool, where: str) -> str:
    """An MC reference as its option letter: an index (``as_index``: AI2D's "1", ScienceQA's
    1), else a letter ("B", "(B)") or an option's text (NLVR2's True / False)."""
    text = str(value).strip() if value is not None else ""
    if as_index:
        if text.isdigit() and int(text) < len(options):
            return chr(ord("A") + int(text))
    else:
        v = text.strip("()").strip()
        if len(v) == 1 and v.isalpha() and ord(v.upper()) - ord("A") < len(options):
            return v.upper()
        texts = [o.strip().lower() for o in options]
        if text.lower() in texts:
            return chr(ord("A") + texts.index(text.lower()))
    raise _bad(
        "malformed", f"{where}: answer {value!r:.60} is not one of the {len(options)} options"
    )


def _references(spec: TaskSpec, value: Any, where: str) -> list[str]:
    if isinstance(value, str) and value.startswith("[") and spec.name == "mmmu":
        with contextlib.suppress(ValueError, SyntaxError):  # a plain answer starting with "["
            value = ast.literal_eval(value)
    refs = [str(v) for v in (value if isinstance(value, list) else [value]) if v is not None]
    refs = [r for r in refs if r.strip()]
    if not refs:
        raise _bad("empty", f"{where}: no reference answer")
    if spec.metric in ("pope", "mme"):
        refs = [refs[0].lower().strip().replace(".", "")]
        if refs[0] not in ("yes", "no"):
            raise _bad("malformed", f"{where}: a yes/no reference, got {value!r:.40}")
    return refs


def _boxes(spec: TaskSpec, value: Any, size: tuple[int, int], where: str) -> list[Box]:
    if value is None:
        raise _bad("empty", f"{where}: no reference box in column {spec.columns.box!r}")
    many = spec.metric == "any_box"
    values = value if many else [value]
    if many and not values:
        raise _bad("empty", f"{where}: no reference box in column {spec.columns.box!r}")
    try:
        return [to_box(v, spec.box_convention, size) for v in values]
    except CoordinateError as e:
        raise _bad("malformed", f"{where}: bad box {value!r:.80}: {e}") from None


def row_items(
    spec: TaskSpec, row: dict[str, Any], where: str, key: str, root: Path, *, answered: bool = True
) -> list[EvalItem]:
    """The items of one row (several for exploded columns); a bad row gives one error item.
    ``answered=False``: the file has no references (a test split), its items are predicted
    for the submission file only."""
    cols = spec.columns
    if spec.nested:
        try:
            row = spec.nested.flatten(row, where, int(key.rsplit(":", 1)[1]))
        except SampleError as e:  # named by the raw row's id where it has one
            rid = row.get(cols.id) if cols.id else None
            rid = key if rid is None else str(rid)
            return [EvalItem(spec.name, rid, None, error=str(e), unanswered=not answered)]
    base = str(row[cols.id]) if cols.id and row.get(cols.id) is not None else key
    texts = row.get(cols.explode) if cols.explode else None
    texts = [texts] if isinstance(texts, str) else texts
    ids = [f"{base}#{k}" for k in range(len(texts))] if isinstance(texts, list) else [base]
    try:
        if cols.explode and not (isinstance(texts, list) and texts):
            raise _bad("empty", f"{where}: column {cols.explode!r} has no expressions")
        exprs = texts if cols.explode else [None]
        return [
            _item(spec, row, where, i, root, e, answered) for i, e in zip(ids, exprs, strict=True)
        ]
    except SampleError as e:  # every item of the row fails: one error item each
        refs: list[str] = []
        with contextlib.suppress(SampleError):  # best effort: POPE / MME place errors by answer
            refs = _references(spec, row.get(cols.answer), where) if cols.answer else []
        return [
            EvalItem(
                spec.name,
                i,
                None,
                refs if answered else [],
                meta=_meta(spec, row),
                error=str(e),
                unanswered=not answered,
            )
            for i in ids or [base]
        ]


def _meta(spec: TaskSpec, row: dict[str, Any]) -> dict[str, Any]:
    return {c: row.get(c) for c in spec.columns.keep}


def _item(
    spec: TaskSpec,
    row: dict[str, Any],
    where: str,
    item_id: str,
    root: Path,
    expression: Any,
    answered: bool = True,
) -> EvalItem:
    cols = spec.columns
    question = row.get(cols.question) if cols.question else ""
    if not isinstance(question, str) or (cols.question and not question.strip()):
        raise _bad("empty", f"{where}: no question in column {cols.question!r}")
    if cols.explode and (not isinstance(expression, str) or not expression.strip()):
        raise _bad("empty", f"{where}: an empty expression in column {cols.explode!r}")
    slots = [m for c in cols.images for m in _media(row.get(c), root, where, c)]
    if not cols.images_optional and any(m is None for m in slots):
        raise _bad("missing", f"{where}: no image in column(s) {list(cols.images)}")
    is_mc = spec.metric == "mc" and (spec.mc_if is None or row.get(spec.mc_if[0]) == spec.mc_if[1])
    options = _options(spec, row, question, where) if is_mc else None
    if spec.metric in ("box", "any_box"):
        refs = []
    elif not answered:
        refs = []
        question_id(spec, row, where)
    elif options:
        refs = [_letter(row.get(cols.answer), options, spec.answer_is_index, where)]
    else:
        refs = _references(spec, row.get(cols.answer), where)
    fields = {
        **_meta(spec, row),
        "question": question,
        "options": options or [],
        "hint": row.get(cols.hint) if cols.hint else None,
        "expression": expression,
    }
    parts, shown = _content(spec.prompt(fields), slots, where)
    sizes = [header_size(m.bytes if m.bytes is not None else m.path, where=where) for m in shown]
    regions = []
    if cols.region:
        regions = [prompt_region(spec, row.get(cols.region), sizes, where)]
        parts = place_region(parts, where)
        shown[0] = dataclasses.replace(shown[0], size=sizes[0])  # regions need the media size
    boxes = []
    if spec.metric in ("box", "any_box"):
        if not sizes:
            raise _bad("missing", f"{where}: a grounding question needs an image")
        boxes = _boxes(spec, row.get(cols.box), sizes[0], where)
    sample = Sample(
        id=item_id,
        source=f"eval/{spec.name}",
        category="eval",
        stage="eval",
        media=shown,
        messages=[Message("user", parts)],
        regions=regions,
        answers=refs,
        options=options,
    )
    meta = _meta(spec, row) | ({"expression": expression} if cols.explode else {})
    return EvalItem(
        spec.name, item_id, sample, refs, options, boxes, sizes, meta, unanswered=not answered
    )


def _wanted(spec: TaskSpec, answered: bool = True) -> tuple[list[str], list[str]]:
    c = spec.columns
    if spec.nested:
        return list(spec.nested.reads), []
    answer = c.answer if answered else None
    required = [x for x in (c.question, answer, c.box, c.explode) if x] + list(c.options)
    if not c.images_optional:
        required += list(c.images)
    optional = [x for x in (c.hint, c.id, c.where[0] if c.where else None) if x]
    return required, optional + list(c.keep) + list(c.images) + ([] if answered else [c.answer])


class ItemReader:
    """Streams the items of ``spec`` in ``data`` (the first ``limit``), error items included,
    so a benchmark's images are never all in memory.  ``filtered`` counts rows outside the
    benchmark (``Columns.where``) once iteration has passed them."""

    def __init__(
        self,
        spec: TaskSpec,
        data: str | Path,
        *,
        split: str | None = None,
        limit: int | None = None,
    ) -> None:
        self.spec, self.limit, self.filtered = spec, limit, 0
        self.files = find_files(
            data,
            split or spec.split,
            spec.config,
            split_required=split is not None,
            name_glob=spec.files,
        )

    def row_count(self) -> int:
        """Rows in the files (Parquet footers, non-blank JSONL lines; capped at ``limit``): the
        progress bar's estimate, before exploded rows and filters."""
        n = sum(len(row_store(path)) for path in self.files)
        return n if self.limit is None else min(n, self.limit)

    def __iter__(self) -> Iterator[EvalItem]:
        spec, done = self.spec, 0
        for path in self.files:
            answered = has_answers(spec, path)
            required, optional = _wanted(spec, answered)
            up = spec.nested is not None and spec.nested.images_from == "parent"
            root = path.parent.parent if up else path.parent
            for row, where, key in iter_rows(path, required, optional):
                if isinstance(row, SampleError):
                    items = [
                        EvalItem(spec.name, key, None, error=str(row), unanswered=not answered)
                    ]
                elif spec.columns.where and row.get(spec.columns.where[0]) not in (
                    None,
                    spec.columns.where[1],
                ):
                    self.filtered += 1
                    continue
                else:
                    items = row_items(spec, row, where, key, root, answered=answered)
                for item in items:
                    if self.limit is not None and done >= self.limit:
                        return
                    done += 1
                    yield item
                if self.limit is not None and done >= self.limit:
                    return


def read_items(
    spec: TaskSpec, data: str | Path, *, split: str | None = None, limit: int | None = None
) -> ReadResult:
    """Every item at once (see :class:`ItemReader`)."""
    reader = ItemReader(spec, data, split=split, limit=limit)
    items = list(reader)
    return ReadResult(items, reader.files, reader.filtered)
