"""OBELICS-style interleaved documents (on-disk layouts: mm15/data/registry.toml).

Each row holds two aligned lists: ``images`` (URLs, None at text positions) and ``texts``
(strings, None at image positions); exactly one of the two is set at every position.  Images
are not in the Parquet: users download them (img2dataset) and give a URL → local file lookup,
:func:`load_url_map`: a dict, a JSON object file, or a Parquet file with ``url`` and ``path``
columns (img2dataset's per-shard parquet after adding the saved path; rows whose path is null,
i.e. failed downloads, are left out).  Relative paths are resolved against ``root`` (default:
the index file's folder).

A document becomes one ``document`` message whose parts follow the lists.  Images that are not
in the lookup, or whose file is gone, are dropped and counted in ``meta["dropped_images"]``;
consecutive texts (also those that met across a dropped image) are joined by a blank line.  A
document left without images raises ``SampleError("missing")`` when ``require_images`` (the
interleaved category's point is images in context), and one left without text ``"empty"``.
Pixels are never read: media are paths.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from mm15.data.schema import Category, Media, Message, Part, Sample, SampleError, Stage
from mm15.data.sources.canonical import PathLike, as_paths, finish, parse_json
from mm15.data.sources.rows import RowStore

PARAGRAPH_SEP = "\n\n"


def load_url_map(
    index: Mapping[str, PathLike] | PathLike,
    *,
    root: PathLike | None = None,
    url_column: str = "url",
    path_column: str = "path",
) -> dict[str, Path]:
    """URL → local image path from a dict, a ``.json`` object file or a ``.parquet`` table.

    ``root``: where relative paths point (default: the index file's folder; for a dict, the
    current directory).  A malformed index is a ``ValueError`` naming the file.
    """
    if isinstance(index, Mapping):
        base = Path(root) if root is not None else Path(".")
        return {str(u): base / p for u, p in index.items()}
    path = Path(index)
    base = Path(root) if root is not None else path.parent
    if path.suffix == ".parquet":
        try:
            table = pq.read_table(path, columns=[url_column, path_column])
        except (pa.ArrowException, OSError) as e:
            raise ValueError(
                f"{path}: cannot read columns {url_column!r}, {path_column!r}: {e}"
            ) from None
        pairs = zip(table[url_column].to_pylist(), table[path_column].to_pylist(), strict=True)
        return {u: base / p for u, p in pairs if u is not None and p is not None}
    try:
        data = parse_json(path.read_bytes(), str(path))
    except SampleError as e:
        raise ValueError(str(e)) from None
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        raise ValueError(f"{path}: a URL index .json must be an object mapping url → path")
    return {u: base / p for u, p in data.items()}


class ObelicsReader:
    """Map-style reader of ``images``/``texts`` aligned-list Parquet (see the module docstring).

    ``urls``: the lookup, or anything :func:`load_url_map` accepts (then ``root`` applies).
    """

    def __init__(
        self,
        paths: PathLike | Sequence[PathLike],
        *,
        urls: Mapping[str, PathLike] | PathLike,
        source: str,
        category: Category,
        stage: Stage,
        root: PathLike | None = None,
        require_images: bool = True,
    ):
        self.paths = as_paths(paths)
        self.name = self.source = source
        self.category, self.stage = category, stage
        self.urls = load_url_map(urls, root=root)
        self.require_images = require_images
        self.rows = RowStore(self.paths, ["images", "texts"])

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> Sample:
        row, where, key = self.rows.row(i)
        images, texts = row["images"], row["texts"]
        if not (isinstance(images, list) and isinstance(texts, list)) or len(images) != len(texts):
            raise SampleError(
                "malformed",
                f"{where}: images and texts must be lists of equal "
                f"length, got {_lens(images, texts)}",
            )
        media: list[Media] = []
        parts: list[Part] = []
        dropped = 0
        for n, (url, text) in enumerate(zip(images, texts, strict=True)):
            if (url is None) == (text is None):
                raise SampleError(
                    "malformed",
                    f"{where}: position {n} must hold exactly one of an image URL and a text",
                )
            if text is not None:
                _add_text(parts, text, f"{where} position {n}")
                continue
            path = self.urls.get(url) if isinstance(url, str) else None
            if path is None or not path.is_file():
                dropped += 1
                continue
            media.append(Media(path=str(path)))
            parts.append(Part.m(len(media) - 1))
        if self.require_images and not media:
            why = f"{dropped} URL(s) did not resolve to a local file" if dropped else "none given"
            raise SampleError("missing", f"{where}: no image left ({why}); require_images=True")
        if not any(p.type == "text" for p in parts):
            raise SampleError("empty", f"{where}: no text")
        sample = Sample(
            id=key,
            source=self.source,
            category=self.category,
            stage=self.stage,
            media=media,
            messages=[Message("document", parts)],
            meta={"dropped_images": dropped, "num_images": len(media) + dropped},
        )
        return finish(sample, where)


def _add_text(parts: list[Part], text: Any, where: str) -> None:
    """Append ``text``, joined to a preceding text part by a blank line; blank text is skipped."""
    if not isinstance(text, str):
        raise SampleError("malformed", f"{where}: text is {type(text).__name__}")
    if not text.strip():
        return
    if parts and parts[-1].type == "text":
        parts[-1] = Part.t(f"{parts[-1].text}{PARAGRAPH_SEP}{text}")
    else:
        parts.append(Part.t(text))


def _lens(images: Any, texts: Any) -> str:
    def size(x: Any) -> str:
        return str(len(x)) if isinstance(x, list) else type(x).__name__

    return f"images {size(images)}, texts {size(texts)}"
