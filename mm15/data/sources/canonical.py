"""Canonical JSONL (on-disk layouts: mm15/data/registry.toml "offline converters → canonical JSONL") and the
small pieces every reader shares.

A canonical file holds one :func:`~mm15.data.schema.sample_to_json` line per sample; offline
converters write it with :func:`write_canonical` and :class:`CanonicalReader` reads it back.

Shared pieces (used by every module of :mod:`mm15.data.sources`):

* :func:`header_size`: ``(W, H)`` from an image header without decoding pixels.  Readers call it
  only when a sample has regions (coordinate conversion needs the size); otherwise media stay a
  path or bytes and ``Media.size`` is None, so indexing and ``__getitem__`` never pay for pixels.
* :func:`line_offsets` / :func:`read_line`: byte offsets of JSONL lines, for random access.
* :func:`finish`: validate a built sample, turning inconsistencies into ``SampleError``.
* :func:`media_under_root`: the one rule for media paths a dataset entry names (below).

Media paths: a relative path in a dataset entry is joined to the reader's ``root`` and must stay
inside it once ``..`` is resolved (lexically: a symlink inside the root is the dataset owner's
choice); an absolute path is read only when the reader's ``allow_absolute_paths`` option is set.
Anything else is skipped as ``malformed`` with the path in the detail, so an entry such as
``../../etc/passwd`` or ``/home/me/private.png`` never makes the pipeline read outside the
dataset.  A canonical file read without ``root`` names its media as written: it is mm15's own
format, produced by these readers (which applied the rule) and trusted like a config.

Every reader is map-style: ``len(reader)`` and ``reader[i] -> Sample``; bad samples raise
:class:`~mm15.data.schema.SampleError` whose detail names the file and the row or key.
"""

from __future__ import annotations

import bisect
import json
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from mm15.config import ImageConfig
from mm15.data.coords import CoordinateError
from mm15.data.image_io import ImageDecodeError, image_size
from mm15.data.schema import (
    Category,
    Sample,
    SampleError,
    Stage,
    sample_from_json,
    sample_to_json,
)

PathLike = str | os.PathLike


def as_paths(paths: PathLike | Sequence[PathLike]) -> list[Path]:
    """One path or a sequence of them (shards), in the given order."""
    if isinstance(paths, str | os.PathLike):
        return [Path(paths)]
    out = [Path(p) for p in paths]
    if not out:
        raise ValueError("a reader needs at least one file")
    return out


def header_size(src: PathLike | bytes, *, where: str) -> tuple[int, int]:
    """``(W, H)`` of an image as :func:`mm15.data.image_io.open_image` will decode it, from the
    header only (:func:`mm15.data.image_io.image_size` with the default ``ImageConfig``).
    ``SampleError("missing")`` for an absent file, ``("corrupt")`` otherwise; ``where`` names
    the file and row in the message."""
    try:
        return image_size(src, cfg=ImageConfig())
    except ImageDecodeError as e:
        reason = "missing" if e.reason == "missing" else "corrupt"
        raise SampleError(reason, f"{where}: {e}") from None


def check_file(path: Path, where: str) -> Path:
    """``path`` if it exists (a file or, for frame folders, a directory), else missing."""
    if not path.exists():
        raise SampleError("missing", f"{where}: media file {path} not found")
    return path


def media_under_root(root: Path, rel: str, where: str, *, allow_absolute: bool) -> Path:
    """The file a dataset entry's media path ``rel`` names (module docstring: the rule)."""
    if os.path.isabs(rel):
        if not allow_absolute:
            raise SampleError(
                "malformed",
                f"{where}: media path {rel!r} is absolute; only paths "
                f"under the dataset root {str(root)!r} are read (the "
                "reader option allow_absolute_paths=true allows it)",
            )
        return check_file(Path(rel), where)
    base = os.path.abspath(root)
    if os.path.commonpath([base, os.path.abspath(os.path.join(base, rel))]) != base:
        raise SampleError(
            "malformed", f"{where}: media path {rel!r} leaves the dataset root {str(root)!r}"
        )
    return check_file(root / rel, where)


def line_offsets(path: Path, skips: list[tuple[int, int]] | None = None) -> list[int]:
    """Byte offsets of the non-blank lines of a JSONL file (blank lines are not rows).

    ``skips``, when given, receives ``(row, blank lines before it)`` wherever that count grows,
    so :func:`line_number` can name a row's line in the file without a list per line."""
    offsets, pos, skipped = [], 0, 0
    with open(path, "rb") as f:
        for n, line in enumerate(f):
            if line.strip():
                if skips is not None and n - len(offsets) != skipped:
                    skipped = n - len(offsets)
                    skips.append((len(offsets), skipped))
                offsets.append(pos)
            pos += len(line)
    return offsets


def line_number(row: int, skips: list[tuple[int, int]]) -> int:
    """The 1-based line of JSONL row ``row`` (0-based, blank lines not counted), from the
    ``skips`` that :func:`line_offsets` recorded."""
    k = bisect.bisect_right(skips, (row, math.inf)) - 1
    return row + 1 + (skips[k][1] if k >= 0 else 0)


def read_line(path: Path, offset: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.readline()


def parse_json(raw: bytes | str, where: str) -> Any:
    """``json.loads`` with undecodable input reported as ``SampleError("corrupt")``."""
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SampleError("corrupt", f"{where}: undecodable JSON: {e}") from None


def coord_error(e: CoordinateError, where: str) -> SampleError:
    """A bad box from the coordinate library, as a malformed sample."""
    return SampleError("malformed", f"{where}: bad box: {e}")


def finish(sample: Sample, where: str) -> Sample:
    """``sample`` after :meth:`Sample.validate` (``malformed``); a sample without text is
    ``empty``."""
    try:
        sample.validate()
    except ValueError as e:
        raise SampleError("malformed", f"{where}: {e}") from None
    texts = (p.text for msg in sample.messages for p in msg.content if p.type == "text")
    if not any(t and t.strip() for t in texts):
        raise SampleError("empty", f"{where}: no text in any message")
    return sample


class CanonicalReader:
    """Map-style reader of canonical JSONL files (one ``sample_to_json`` line per sample).

    ``category`` / ``stage`` / ``source``: None keeps what each line says; a value overrides it
    (a converter's output reused in another stage).  ``name`` defaults to the first file's stem.
    ``root``: relative ``Media.path`` values are resolved against it and must stay inside it;
    absolute ones then need ``allow_absolute_paths`` (module docstring).  Without ``root``,
    paths are used as written.
    """

    def __init__(
        self,
        paths: PathLike | Sequence[PathLike],
        *,
        name: str | None = None,
        source: str | None = None,
        category: Category | None = None,
        stage: Stage | None = None,
        root: PathLike | None = None,
        allow_absolute_paths: bool = False,
    ):
        self.paths = as_paths(paths)
        self.root = Path(root) if root is not None else None
        self.allow_absolute_paths = allow_absolute_paths
        self.name = name or source or self.paths[0].stem
        self.source, self.category, self.stage = source, category, stage
        self._index = [(fi, off) for fi, p in enumerate(self.paths) for off in line_offsets(p)]

    def __len__(self) -> int:
        return len(self._index)

    def __getitem__(self, i: int) -> Sample:
        fi, off = self._index[i]
        where = f"{self.paths[fi]} line at byte {off}"
        try:
            sample = sample_from_json(read_line(self.paths[fi], off).decode("utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:  # before ValueError: subclasses
            raise SampleError("corrupt", f"{where}: undecodable JSON: {e}") from None
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise SampleError("malformed", f"{where}: not a canonical sample: {e!r}") from None
        for attr in ("source", "category", "stage"):
            if getattr(self, attr) is not None:
                setattr(sample, attr, getattr(self, attr))
        if self.root is not None:
            for m in sample.media:
                if m.path is not None:
                    m.path = str(
                        media_under_root(
                            self.root, m.path, where, allow_absolute=self.allow_absolute_paths
                        )
                    )
        return finish(sample, where)


@dataclass
class WriteStats:
    written: int
    skipped: list[str]  # one "sample <id>: <why>" per sample left out (on_invalid="skip")


def write_canonical(
    samples: Iterable[Sample], path: PathLike, *, on_invalid: Literal["raise", "skip"] = "raise"
) -> WriteStats:
    """Write ``samples`` as canonical JSONL to ``path``.

    Every sample is checked first (:meth:`Sample.validate`): an inconsistent one raises
    ``ValueError`` naming it, or with ``on_invalid="skip"`` is left out and listed in
    ``WriteStats.skipped``.  The file is written under a temporary name and renamed only when
    complete, so a failed conversion never leaves ``path`` half written and an existing file
    at ``path`` survives it intact.
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    stats = WriteStats(written=0, skipped=[])
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            for sample in samples:
                try:
                    sample.validate()
                except ValueError as e:
                    if on_invalid == "raise":
                        raise
                    stats.skipped.append(str(e))
                    continue
                f.write(sample_to_json(sample) + "\n")
                stats.written += 1
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return stats
