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
the size; pixels are never decoded).

Parquet rows are found through the per-row-group row counts in the file footer; reading a row
reads its row group (the last two are cached).  ``.arrow`` files (Arrow IPC, file or stream, as
the ``datasets`` cache writes them) are memory-mapped.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from mm15.data.coords import BoxConvention, CoordinateError, to_box
from mm15.data.schema import Category, Media, Region, Sample, SampleError, Stage
from mm15.data.sources.canonical import (
    PathLike,
    as_paths,
    coord_error,
    finish,
    header_size,
    line_number,
    line_offsets,
    media_under_root,
    parse_json,
    read_line,
)
from mm15.data.sources.conversation import ConversationFormat, build_messages


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


class RowStore:
    """Random access to the rows of Parquet, Arrow IPC, JSONL or JSON-list files.

    ``row(i)`` returns ``(row dict, "path row r", "name:r")``: the row, where it is for error
    messages (a JSONL row adds its line: ``"path row r (line n)"``), and a short key for sample
    ids (``r`` counts rows within the file).  A wanted column missing from a Parquet/Arrow
    schema is a ``ValueError`` at construction, naming file and column; ``optional`` columns
    are read where a file has them.  An unreadable row (undecodable JSON, a row group that
    does not read) raises ``SampleError`` from ``row``, the others stay readable.
    """

    def __init__(
        self, paths: Sequence[Path], columns: Sequence[str], *, optional: Sequence[str] = ()
    ):
        self.paths, self.columns = list(paths), list(columns)
        self.optional = [c for c in dict.fromkeys(optional) if c not in self.columns]
        self._cols: dict[int, list[str]] = {}  # Parquet/Arrow: the columns read from each file
        self._skips: dict[int, list[tuple[int, int]]] = {}  # JSONL: blank lines (line_number)
        self._failed: dict[tuple[int, int], str] = {}  # unreadable row groups: why
        self._parts: list[tuple[int, int, int]] = []  # (file, row group or -1, first row in file)
        self._starts: list[int] = []  # global index of each part's first row
        self._jsonl: dict[int, list[int]] = {}
        self._json: dict[int, list[Any]] = {}
        self._handles: dict[int, Any] = {}
        self._cache: dict[tuple[int, int], pa.Table] = {}
        total = 0
        for fi, path in enumerate(self.paths):
            for rg, first, n in self._scan(fi, path):
                self._parts.append((fi, rg, first))
                self._starts.append(total)
                total += n
        self._len = total

    def check_columns(self) -> None:
        """JSON / JSONL files have no schema: the first row of each must hold every wanted
        column, else a ``ValueError`` naming the file and the columns (Parquet and Arrow are
        checked against their schema in ``__init__``).  An unreadable first row is left for
        ``row`` to report as one bad sample."""
        for fi, path in enumerate(self.paths):
            if fi in self._json:
                rows = self._json[fi][:1]
            elif self._jsonl.get(fi):
                try:
                    rows = [parse_json(read_line(path, self._jsonl[fi][0]), f"{path} row 0")]
                except SampleError:
                    continue
            else:
                continue
            for row in rows:
                missing = [c for c in self.columns if not isinstance(row, dict) or c not in row]
                if missing:
                    has = sorted(row) if isinstance(row, dict) else type(row).__name__
                    raise ValueError(f"{path}: no column(s) {missing}; its first row has {has}")

    def column(self, name: str) -> list[Any]:
        """The values of one column over all rows, in row order, reading nothing else (Parquet
        column chunks only); a JSONL line that does not parse, or a row without the column,
        gives None."""
        out: list[Any] = []
        for fi, path in enumerate(self.paths):
            if fi in self._json:
                out += [r.get(name) if isinstance(r, dict) else None for r in self._json[fi]]
            elif fi in self._jsonl:
                for j, off in enumerate(self._jsonl[fi]):
                    try:
                        r = parse_json(read_line(path, off), f"{path} row {j}")
                    except SampleError:
                        r = None
                    out.append(r.get(name) if isinstance(r, dict) else None)
            else:
                handle = self._open(fi)
                table = (
                    handle.read(columns=[name]) if isinstance(handle, pq.ParquetFile) else handle
                )
                out += table.column(name).to_pylist()
        return out

    def _scan(self, fi: int, path: Path) -> list[tuple[int, int, int]]:
        """(row group, first row in file, rows) of each part of ``path``."""
        if path.suffix == ".jsonl":
            self._jsonl[fi] = line_offsets(path, self._skips.setdefault(fi, []))
            return [(-1, 0, len(self._jsonl[fi]))]
        if path.suffix == ".json":
            rows = parse_json(path.read_bytes(), str(path))
            if not isinstance(rows, list):
                raise ValueError(f"{path}: a table .json file must hold a list of rows")
            self._json[fi] = rows
            return [(-1, 0, len(rows))]
        handle = self._open(fi)
        schema = handle.schema_arrow if isinstance(handle, pq.ParquetFile) else handle.schema
        missing = [c for c in self.columns if c not in schema.names]
        if missing:
            raise ValueError(f"{path}: no column(s) {missing}; it has {schema.names}")
        self._cols[fi] = self.columns + [c for c in self.optional if c in schema.names]
        if not isinstance(handle, pq.ParquetFile):
            return [(-1, 0, handle.num_rows)]
        meta, first, parts = handle.metadata, 0, []
        for rg in range(meta.num_row_groups):
            parts.append((rg, first, meta.row_group(rg).num_rows))
            first += meta.row_group(rg).num_rows
        return parts

    def _open(self, fi: int) -> Any:
        """A ParquetFile, or the memory-mapped Arrow table; opened lazily in each process."""
        if fi not in self._handles:
            path = self.paths[fi]
            try:
                if path.suffix == ".arrow":
                    source = pa.memory_map(str(path))
                    try:
                        self._handles[fi] = pa.ipc.open_file(source).read_all()
                    except pa.ArrowInvalid:
                        self._handles[fi] = pa.ipc.open_stream(pa.memory_map(str(path))).read_all()
                else:
                    self._handles[fi] = pq.ParquetFile(path)
            except (pa.ArrowException, OSError) as e:
                raise ValueError(f"{path}: not a readable Parquet/Arrow file: {e}") from None
        return self._handles[fi]

    def __getstate__(self) -> dict[str, Any]:
        # DataLoader workers reopen files themselves; handles and caches do not pickle.
        return {**self.__dict__, "_handles": {}, "_cache": {}}

    def __len__(self) -> int:
        return self._len

    def row(self, i: int) -> tuple[dict[str, Any], str, str]:
        if not 0 <= i < self._len:
            raise IndexError(f"row {i} out of range for {self._len} rows")
        p = bisect.bisect_right(self._starts, i) - 1
        fi, rg, first = self._parts[p]
        j = i - self._starts[p]
        path = self.paths[fi]
        where = f"{path} row {first + j}"
        if fi in self._jsonl:
            where += f" (line {line_number(j, self._skips[fi])})"
            row = parse_json(read_line(path, self._jsonl[fi][j]), where)
        elif fi in self._json:
            row = self._json[fi][j]
        else:
            row = self._table(fi, rg, where).slice(j, 1).to_pylist()[0]
        if not isinstance(row, dict):
            raise SampleError("malformed", f"{where}: row is {type(row).__name__}, not an object")
        return row, where, f"{path.name}:{first + j}"

    def _table(self, fi: int, rg: int, where: str) -> pa.Table:
        handle = self._open(fi)
        if rg < 0:
            return handle
        if (fi, rg) not in self._cache:
            if (fi, rg) not in self._failed:  # a bad row group is read once, not once a row
                if len(self._cache) >= 2:
                    self._cache.pop(next(iter(self._cache)))
                try:
                    self._cache[(fi, rg)] = handle.read_row_group(rg, columns=self._cols[fi])
                except (pa.ArrowException, OSError) as e:
                    self._failed[(fi, rg)] = str(e)
            if (fi, rg) in self._failed:
                why = self._failed[(fi, rg)]
                raise SampleError("corrupt", f"{where}: row group {rg} unreadable: {why}")
        return self._cache[(fi, rg)]


def image_media(
    value: Any, column: str, root: Path, where: str, *, allow_absolute: bool = False
) -> list[Media]:
    """Media of one image cell: a struct ``{bytes, path}``, bytes, a path, or a list of them.
    A path must stay under ``root`` (:func:`~mm15.data.sources.canonical.media_under_root`)."""
    if value is None:
        return []
    out = []
    for k, item in enumerate(value if isinstance(value, list) else [value]):
        at = f"{where} column {column!r} image {k}"
        data = item.get("bytes") if isinstance(item, dict) else item
        if isinstance(data, bytes | bytearray) and data:
            out.append(Media(bytes=bytes(data)))
            continue
        rel = item.get("path") if isinstance(item, dict) else item
        if not isinstance(rel, str) or not rel:
            raise SampleError("missing", f"{at}: no bytes and no path ({item!r:.80})")
        out.append(Media(path=str(media_under_root(root, rel, at, allow_absolute=allow_absolute))))
    return out


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
