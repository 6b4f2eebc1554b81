"""Random access to the rows of tabular files (Parquet, Arrow IPC, JSONL, JSON lists) and the
media of their image cells, for the table-shaped readers (:mod:`mm15.data.sources.table`,
``coco``, ``synthdog``, ``text``, ``obelics``, ``video_qa``) and the benchmark readers.

Parquet rows are found through the per-row-group row counts in the file footer; reading a row
reads its row group (the last two are cached).  ``.arrow`` files (Arrow IPC, file or stream, as
the ``datasets`` cache writes them) are memory-mapped.  JSONL rows are found through their byte
offsets, indexed once.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from mm15.data.schema import Media, SampleError
from mm15.data.sources.canonical import (
    line_number,
    line_offsets,
    media_under_root,
    parse_json,
    read_line,
)


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
