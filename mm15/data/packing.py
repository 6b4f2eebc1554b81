"""Greedy packing of formatted examples into fixed-length rows (MM1.5 §3–4: sequence length 4096).

Rules:

* Examples keep their order; each goes into the current row if its tokens and images fit, else
  the current row is closed (padded) and the example starts the next one.  A row that is
  exactly full closes at once.  Deterministic: the same examples give the same rows.
* An example is never cut, so an image's tokens are never split across rows.  An example longer
  than ``seq_len``, or with more images than ``max_images_per_row``, is skipped and counted
  (reason ``too_long``), never truncated.
* Every example is its own document: ``document_ids`` 0, 1, 2, … in the row (−1 on padding)
  isolate documents in attention (:class:`mm15.model.lm.Decoder`) and in the loss, which never
  predicts across a document boundary; ``position_ids`` restart at 0 for each document.
* Padding: ``pad_id`` tokens, labels ``IGNORE_INDEX``, positions 0, document −1.

Legend: B rows, T = seq_len, N tiles.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import torch

from mm15.data.config import PackingConfig
from mm15.data.pipeline import IGNORE_INDEX, Example
from mm15.data.sample_images import ImageRef

MAX_SKIP_RECORDS = 100  # skipped (sample id, why) pairs kept for the report


@dataclass
class PackedRow:
    """One training sequence of exactly ``seq_len`` tokens."""

    input_ids: list[int]
    labels: list[int]
    position_ids: list[int]
    document_ids: list[int]  # 0, 1, … per example; -1 on padding
    images: list[ImageRef]  # in order of appearance (the order tiles must be fed)
    image_documents: list[int]  # the document of each image
    sample_ids: list[str]  # one per document

    @property
    def num_tokens(self) -> int:
        """Tokens that are not padding."""
        return sum(1 for d in self.document_ids if d >= 0)

    @property
    def num_tiles(self) -> int:
        return sum(r.n_tiles for r in self.images)


@dataclass
class PackStats:
    examples: int = 0  # packed
    rows: int = 0
    tokens: int = 0  # non-padding tokens in emitted rows
    padding: int = 0
    skipped: Counter = field(default_factory=Counter)  # reason → count
    skip_records: list[tuple[str, str]] = field(default_factory=list)  # first few (id, why)


class Packer:
    """Greedy first-fit-in-order packer; see the module docstring for the rules."""

    def __init__(self, seq_len: int, max_images_per_row: int | None, pad_id: int):
        if seq_len < 1:
            raise ValueError(f"seq_len must be >= 1, got {seq_len}")
        if max_images_per_row is not None and max_images_per_row < 0:
            raise ValueError(f"max_images_per_row must be >= 0 or None, got {max_images_per_row}")
        self.seq_len = seq_len
        self.max_images = max_images_per_row
        self.pad_id = pad_id
        self.stats = PackStats()
        self._row: list[Example] = []
        self._tokens = 0
        self._images = 0

    @classmethod
    def from_config(cls, cfg: PackingConfig, *, pad_id: int) -> Packer:
        return cls(cfg.seq_len, cfg.max_images_per_sequence, pad_id)

    def _skip(self, ex: Example, why: str) -> None:
        self.stats.skipped["too_long"] += 1
        if len(self.stats.skip_records) < MAX_SKIP_RECORDS:
            self.stats.skip_records.append((ex.sample_id, why))

    def add(self, ex: Example) -> list[PackedRow]:
        """Add one example; returns the rows this completed (zero, one or two)."""
        if len(ex.input_ids) != len(ex.labels) or not ex.input_ids:
            raise ValueError(
                f"sample {ex.sample_id}: {len(ex.input_ids)} input ids and "
                f"{len(ex.labels)} labels (need equal, non-zero)"
            )
        n_img = len(ex.images)
        if len(ex) > self.seq_len:
            self._skip(ex, f"{len(ex)} tokens > seq_len {self.seq_len}")
            return []
        if self.max_images is not None and n_img > self.max_images:
            self._skip(ex, f"{n_img} images > {self.max_images} per sequence")
            return []
        out = []
        over_images = self.max_images is not None and self._images + n_img > self.max_images
        if self._row and (self._tokens + len(ex) > self.seq_len or over_images):
            out.append(self._close())
        self._row.append(ex)
        self._tokens += len(ex)
        self._images += n_img
        self.stats.examples += 1
        if self._tokens == self.seq_len:
            out.append(self._close())
        return out

    def flush(self) -> list[PackedRow]:
        """The partly filled row, padded (empty list when there is none)."""
        return [self._close()] if self._row else []

    def _close(self) -> PackedRow:
        row = PackedRow([], [], [], [], [], [], [])
        for doc, ex in enumerate(self._row):
            row.input_ids += ex.input_ids
            row.labels += ex.labels
            row.position_ids += range(len(ex))
            row.document_ids += [doc] * len(ex)
            row.images += ex.images
            row.image_documents += [doc] * len(ex.images)
            row.sample_ids.append(ex.sample_id)
        pad = self.seq_len - len(row.input_ids)
        row.input_ids += [self.pad_id] * pad
        row.labels += [IGNORE_INDEX] * pad
        row.position_ids += [0] * pad
        row.document_ids += [-1] * pad
        self.stats.rows += 1
        self.stats.tokens += self.seq_len - pad
        self.stats.padding += pad
        self._row, self._tokens, self._images = [], 0, 0
        return row


def pack(examples: Iterable[Example], packer: Packer) -> Iterator[PackedRow]:
    """All rows of ``examples`` through ``packer``, the last partial row included."""
    for ex in examples:
        yield from packer.add(ex)
    yield from packer.flush()


def collate(
    rows: Sequence[PackedRow], pixels_per_row: Sequence[torch.Tensor | None] | None = None
) -> dict[str, torch.Tensor | None]:
    """Stack rows into the model's inputs.

    Returns ``input_ids_BT``, ``labels_BT``, ``position_ids_BT``, ``document_ids_BT`` (int64,
    (B, T)) and ``pixels_NCHW``: the rows' tiles concatenated in row order (the order
    :meth:`mm15.model.mm15.MM15.embed` consumes them), or None when no row has an image.
    ``pixels_per_row[b]`` must hold exactly ``rows[b].num_tiles`` tiles.
    """
    if not rows:
        raise ValueError("collate needs at least one row")
    lengths = {len(r.input_ids) for r in rows}
    if len(lengths) != 1:
        raise ValueError(f"rows have different lengths {sorted(lengths)}")
    pixels_per_row = list(pixels_per_row) if pixels_per_row is not None else [None] * len(rows)
    if len(pixels_per_row) != len(rows):
        raise ValueError(f"{len(rows)} rows but {len(pixels_per_row)} pixel tensors")
    tiles = []
    for b, (row, px) in enumerate(zip(rows, pixels_per_row, strict=True)):
        n = 0 if px is None else px.shape[0]
        if n != row.num_tiles:
            raise ValueError(
                f"row {b} ({row.sample_ids}) has {row.num_tiles} tiles planned but {n} were given"
            )
        if n:
            tiles.append(px)

    def stack(name: str) -> torch.Tensor:
        return torch.tensor([getattr(r, name) for r in rows], dtype=torch.long)

    return {
        "input_ids_BT": stack("input_ids"),
        "labels_BT": stack("labels"),
        "position_ids_BT": stack("position_ids"),
        "document_ids_BT": stack("document_ids"),
        "pixels_NCHW": torch.cat(tiles) if tiles else None,
    }
