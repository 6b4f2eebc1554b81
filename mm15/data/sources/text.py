"""Plain-text corpora for language-model pre-training (on-disk layouts: mm15/data/registry.toml
"Text-only pre-training"): FineWeb, DCLM, SlimPajama and the like, as Parquet, Arrow, JSONL or a
JSON list with one document per row in a ``text`` column.

Each row becomes one ``document`` message of one text part, so :func:`mm15.data.pipeline.format_sample`
puts loss on all of it and the EOS (read through the table reader's ``question`` layout it would
be a user turn without loss).  ``max_chars`` cuts a longer document at the last whitespace
before the limit (``meta["truncated"]``): the packer never truncates, it skips a sample longer
than a row as ``too_long``, which would drop long web documents whole.
"""

from __future__ import annotations

from collections.abc import Sequence

from mm15.data.schema import Category, Message, Part, Sample, SampleError, Stage
from mm15.data.sources.canonical import PathLike, as_paths, finish
from mm15.data.sources.rows import RowStore


class TextReader:
    """Map-style reader of a text column (module docstring).

    ``column``: the document text (default ``text``); ``id_column``: the sample id (default:
    ``file:row``); ``meta_columns``: copied into ``Sample.meta`` (e.g. ``url``, ``language``).
    A named column missing from a file is a ``ValueError`` at construction (Parquet / Arrow:
    the schema; JSON / JSONL: the first row).
    """

    def __init__(
        self,
        paths: PathLike | Sequence[PathLike],
        *,
        source: str,
        category: Category = "text",
        stage: Stage = "pretrain",
        column: str = "text",
        id_column: str | None = None,
        meta_columns: Sequence[str] = (),
        max_chars: int | None = None,
    ):
        if max_chars is not None and max_chars < 1:
            raise ValueError(f"max_chars must be >= 1 or None, got {max_chars}")
        self.paths = as_paths(paths)
        self.name = self.source = source
        self.category, self.stage = category, stage
        self.column, self.id_column, self.max_chars = column, id_column, max_chars
        self.meta_columns = tuple(meta_columns)
        wanted = [column, *([id_column] if id_column else []), *self.meta_columns]
        self.rows = RowStore(self.paths, list(dict.fromkeys(wanted)))
        self.rows.check_columns()

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> Sample:
        row, where, key = self.rows.row(i)
        if self.column not in row:
            raise SampleError("malformed", f"{where}: no column {self.column!r}")
        text = row[self.column]
        if text is not None and not isinstance(text, str):
            raise SampleError(
                "malformed", f"{where}: column {self.column!r} is {type(text).__name__}, not text"
            )
        if not text or not text.strip():
            raise SampleError("empty", f"{where}: column {self.column!r} is empty")
        meta = {c: row.get(c) for c in self.meta_columns}
        if self.max_chars is not None and len(text) > self.max_chars:
            text, meta["truncated"] = cut(text, self.max_chars), True
        rid = row.get(self.id_column) if self.id_column else None
        sample = Sample(
            id=str(rid) if rid is not None else key,
            source=self.source,
            category=self.category,
            stage=self.stage,
            messages=[Message("document", [Part.t(text)])],
            meta=meta,
        )
        return finish(sample, where)


def cut(text: str, limit: int) -> str:
    """``text`` up to ``limit`` characters, ended at the last whitespace within them (a hard cut
    when the first ``limit`` characters have none)."""
    head = text[:limit]
    space = max(head.rfind(c) for c in " \n\t")
    return (head[:space] if space > 0 else head).rstrip()
