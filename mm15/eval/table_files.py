"""A benchmark's table files (``--data`` a file or a directory) and their rows.

In a directory, files of the task's split (a folder named after it, or a name starting
``"<split>-"`` / containing ``"-<split>-"``) and, for multi-config repositories, under the
config folder are read in sorted order.  Rows come through the training tables'
:class:`~mm15.data.sources.rows.RowStore`, so both read, name and report rows alike.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from mm15.data.schema import SampleError
from mm15.data.sources.rows import RowStore

SUFFIXES = (".parquet", ".arrow", ".jsonl", ".json")


def find_files(
    data: str | Path,
    split: str | None,
    config: str | None,
    *,
    split_required: bool = False,
    name_glob: str | None = None,
) -> list[Path]:
    """The table files of ``data`` (a file, or a directory searched recursively; there, only
    names matching ``name_glob`` when given: DocDownstream's ``test/TabFact_test.jsonl``)."""
    data = Path(data)
    if data.is_file():
        return [data]
    if not data.is_dir():
        raise FileNotFoundError(f"benchmark data {data} does not exist")
    files = sorted(p for p in data.rglob("*") if p.suffix in SUFFIXES and p.is_file())
    if not files:
        raise FileNotFoundError(f"{data} holds no {'/'.join(SUFFIXES)} files")
    if name_glob:
        files = [p for p in files if fnmatch.fnmatch(p.name, name_glob)]
        if not files:
            raise FileNotFoundError(f"{data} holds no file named {name_glob!r}")
    if config and any(config in p.relative_to(data).parts[:-1] for p in files):
        files = [p for p in files if config in p.relative_to(data).parts[:-1]]
    if split:
        hits = [p for p in files if _has_split(p.relative_to(data), split)]
        if hits or split_required:
            if not hits:
                raise FileNotFoundError(
                    f"{data}: no file of split {split!r} among "
                    f"{[str(p.relative_to(data)) for p in files[:10]]}"
                )
            files = hits
    return files


def _has_split(rel: Path, split: str) -> bool:
    stem = rel.name.split(".")[0]
    return (
        split in rel.parts[:-1]
        or stem == split
        or stem.startswith(f"{split}-")
        or f"-{split}-" in stem
        or stem.endswith(f"-{split}")
    )


RowOrError = tuple[dict[str, Any] | SampleError, str, str]  # (row, or why not; where; key)


def iter_rows(path: Path, required: Sequence[str], optional: Sequence[str]) -> Iterator[RowOrError]:
    """Rows of one file through the training tables' :class:`~mm15.data.sources.rows.RowStore`
    (the same row access, errors and ``where`` / key naming); an unreadable row (undecodable
    JSON line, not an object, unreadable row group) is yielded as its ``SampleError``.  A file
    that cannot be read at all, or lacks a ``required`` column, is a ``ValueError``."""
    rows = row_store(path, required, optional)
    for i in range(len(rows)):
        try:
            yield rows.row(i)
        except SampleError as e:
            yield e, str(path), f"{path.name}:{i}"


def row_store(path: Path, required: Sequence[str] = (), optional: Sequence[str] = ()) -> RowStore:
    """One file as a RowStore; a file that does not decode as a whole is a ``ValueError``."""
    try:
        return RowStore([path], list(dict.fromkeys(required)), optional=optional)
    except SampleError as e:  # a .json file that does not decode: the file, not a row
        raise ValueError(e.detail) from None
