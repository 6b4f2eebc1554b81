"""Tables with a column map: Parquet, Arrow, JSON / JSONL rows (on-disk layouts: mm15/data/registry.toml).

A :class:`ColumnMap` names which columns hold what; one of three text layouts per table:

* ``texts``: the Cauldron's ``list<{user, assistant, source}>``, one user + assistant pair per
  entry, **no placeholders**: all images go to the first user message, in order (§8.2);
* ``messages``: a chat column (``{role, content}`` or ``{from, value}``) whose ``<image>``
  placeholders pick images in order (Mantis-Instruct ``conversation``, LLaVA-ReCap
  ``conversations``), parsed by :func:`~mm15.data.sources.conversation.build_messages`;
* ``question`` (+ ``system``, ``answer``): QA, benchmark and text-only instruction sets whose
  column names differ (``instruction``/``input``/``output``, ``question``/``answer``,
  ``prompt``/``response``, ``system_prompt``/``question``/``response``); several question
  columns are joined by a blank line, empty ones skipped.

Image columns hold HF ``Image`` structs ``{bytes, path}``, raw bytes, a path string, or a list of
those.  Bytes win; a struct whose bytes are null is resolved against ``root`` (Mantis ``main``
revision, §8.3).  A null in a single-image column means "no image" (BLINK's ``image_3``); a null
inside a list is an error.  ``answers`` / ``options`` fill the sample's eval fields, and ``box``
is a reference box on image 0, converted once from ``box_convention`` (the image header gives
the size; pixels are never decoded).  Rows are read through
:class:`~mm15.data.sources.rows.RowStore`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mm15.data.coord_conventions import BoxConvention, to_box
from mm15.data.coords import CoordinateError
from mm15.data.schema import Category, Region, Sample, SampleError, Stage
from mm15.data.sources.canonical import PathLike, as_paths, coord_error, finish, header_size
from mm15.data.sources.conversation import ConversationFormat, build_messages
from mm15.data.sources.rows import RowStore, image_media


@dataclass(frozen=True, kw_only=True)
class ColumnMap:
    """Which column holds what; exactly one of ``texts``, ``messages``, ``question``."""

    images: tuple[str, ...] = ()
    texts: str | None = None
    messages: str | None = None
    question: tuple[str, ...] = ()
    system: str | None = None
    answer: str | None = None  # the assistant turn
    answers: str | None = None  # Sample.answers (a string becomes a one-element list)
    options: str | None = None  # Sample.options
    box: str | None = None  # a reference box on image 0 → Sample.regions
    box_convention: BoxConvention = "px_xywh"
    id: str | None = None
    row_source: str | None = None  # a per-row sub-source → Sample.meta["source"]

    def __post_init__(self) -> None:
        layouts = [self.texts is not None, self.messages is not None, bool(self.question)]
        if sum(layouts) != 1:
            raise ValueError(f"ColumnMap needs exactly one of texts, messages, question: {self}")
        if self.answer is not None and not self.question:
            raise ValueError("ColumnMap.answer is only used with question columns")

    def columns(self) -> list[str]:
        names = [
            *self.images,
            self.texts,
            self.messages,
            *self.question,
            self.system,
            self.answer,
            self.answers,
            self.options,
            self.box,
            self.id,
            self.row_source,
        ]
        return list(dict.fromkeys(n for n in names if n is not None))


COLUMN_MAPS: dict[str, ColumnMap] = {
    "cauldron": ColumnMap(images=("images",), texts="texts"),
    "mantis": ColumnMap(images=("images",), messages="conversation", id="id", row_source="source"),
    "llava_recap": ColumnMap(
        images=("image",), messages="conversations", id="id", row_source="data_source"
    ),
    "alpaca": ColumnMap(question=("instruction", "input"), answer="output"),
    "dolly": ColumnMap(question=("instruction", "context"), answer="response"),
    "orca": ColumnMap(system="system_prompt", question=("question",), answer="response", id="id"),
    "qa": ColumnMap(question=("question",), answer="answer"),
    "prompt_response": ColumnMap(question=("prompt",), answer="response"),
    "docvqa_eval": ColumnMap(
        images=("image",), question=("question",), answers="answers", id="questionId"
    ),
    "mc_eval": ColumnMap(
        images=("image",), question=("question",), options="options", answers="answer"
    ),
    "refcoco_eval": ColumnMap(
        images=("image",),
        question=("question",),
        answers="answer",
        box="bbox",
        box_convention="px_xywh",
        id="question_id",
    ),
}


class TableReader:
    """Map-style reader of tables through a :class:`ColumnMap` (see the module docstring).

    ``root``: where image paths point when a struct has no bytes (they must stay under it;
    ``allow_absolute_paths`` admits absolute ones); ``fmt``: placeholder conventions of a
    ``messages`` column.  ``category`` / ``stage`` go to every sample.
    """

    def __init__(
        self,
        paths: PathLike | Sequence[PathLike],
        *,
        columns: ColumnMap,
        source: str,
        category: Category,
        stage: Stage,
        root: PathLike = ".",
        fmt: ConversationFormat | None = None,
        allow_absolute_paths: bool = False,
    ):
        self.paths = as_paths(paths)
        self.name = self.source = source
        self.category, self.stage = category, stage
        self.allow_absolute_paths = allow_absolute_paths
        self.map, self.root, self.fmt = columns, Path(root), fmt or ConversationFormat()
        self.rows = RowStore(self.paths, columns.columns())

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> Sample:
        row, where, key = self.rows.row(i)
        cm = self.map
        absent = [c for c in cm.columns() if c not in row]
        if absent:  # JSON rows have no schema: a missing column is found per row
            raise SampleError("malformed", f"{where}: no column(s) {absent}")
        media = [
            m
            for col in cm.images
            for m in image_media(
                row[col], col, self.root, where, allow_absolute=self.allow_absolute_paths
            )
        ]
        messages = build_messages(
            self._turns(row, where), num_images=len(media), fmt=self.fmt, where=where
        )
        sample = Sample(
            id=str(row[cm.id]) if cm.id and row[cm.id] is not None else key,
            source=self.source,
            category=self.category,
            stage=self.stage,
            media=media,
            messages=messages,
            answers=_str_list(row[cm.answers]) if cm.answers else None,
            options=_str_list(row[cm.options]) if cm.options else None,
            meta=self._meta(row),
        )
        if cm.box and row[cm.box] is not None:
            self._add_box(sample, row[cm.box], where)
        return finish(sample, where)

    def _turns(self, row: dict[str, Any], where: str) -> Any:
        cm = self.map
        if cm.messages:
            return row[cm.messages]
        if cm.texts:
            texts = row[cm.texts]
            if not isinstance(texts, list) or not all(isinstance(t, dict) for t in texts):
                raise SampleError(
                    "malformed",
                    f"{where}: {cm.texts!r} must be a list of {{user, assistant}} objects",
                )
            return [{"role": r, "content": t.get(r)} for t in texts for r in ("user", "assistant")]
        turns = []
        if cm.system and row[cm.system]:
            turns.append({"role": "system", "content": _text(row[cm.system], cm.system, where)})
        question = "\n\n".join(
            q for q in (_text(row[c], c, where) for c in cm.question) if q.strip()
        )
        if not question.strip():
            raise SampleError("empty", f"{where}: question column(s) {list(cm.question)} empty")
        turns.append({"role": "user", "content": question})
        if cm.answer:
            turns.append({"role": "assistant", "content": _text(row[cm.answer], cm.answer, where)})
        return turns

    def _meta(self, row: dict[str, Any]) -> dict[str, Any]:
        """The row's sub-source: its ``row_source`` column, else the Cauldron's texts[0].source."""
        cm = self.map
        if cm.row_source:
            return {"source": row[cm.row_source]}
        texts = row[cm.texts] if cm.texts else None
        if texts and isinstance(texts[0], dict) and texts[0].get("source"):
            return {"source": texts[0]["source"]}
        return {}

    def _add_box(self, sample: Sample, value: Any, where: str) -> None:
        if not sample.media:
            raise SampleError(
                "malformed", f"{where}: column {self.map.box!r} has a box but the row has no image"
            )
        m = sample.media[0]
        m.size = header_size(m.bytes if m.bytes is not None else m.path, where=where)
        try:
            box = to_box(value, self.map.box_convention, m.size, 0)
        except CoordinateError as e:
            raise coord_error(e, f"{where} column {self.map.box!r}") from None
        sample.regions.append(Region(media=0, box=(box.x1, box.y1, box.x2, box.y2)))


def _text(value: Any, column: str, where: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise SampleError(
            "malformed", f"{where}: column {column!r} is {type(value).__name__}, not text"
        )
    return value


def _str_list(value: Any) -> list[str] | None:
    """Eval references / options as strings (a single value becomes a one-element list)."""
    if value is None:
        return None
    items = value if isinstance(value, list) else [value]
    return [v if isinstance(v, str) else str(v) for v in items if v is not None]
