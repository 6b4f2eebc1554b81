"""A stage's data: mixture draws → formatted examples → packed rows → this rank's batches.

Every rank runs the same, deterministic pipeline up to packed rows (sampling, reading, and
tokenising need only image headers), so the global sequence of rows does not depend on the
number of processes: one process with a global batch of B rows and two with B/2 each see the
same rows.  A rank then decodes pixels only for its own rows (``rows[rank::world]``).

Bad samples are skipped and counted by reason where every rank sees them (reader and formatting
errors, over-long examples).  An image that fails only when its pixels are decoded is replaced
by zeros and its document's labels are dropped, so every rank still runs the same number of
steps with the same shapes; it is counted as ``corrupt_pixels``.

Exact resume: the state holds the sampler's state and the (source, index) of every example still
waiting in the packer or in completed-but-unconsumed rows.  Formatting and packing are
deterministic, so re-adding those examples to a fresh packer rebuilds the same rows.
"""

from __future__ import annotations

import dataclasses
import glob
import os
from collections import Counter, deque
from collections.abc import Mapping
from typing import Any

import torch

from mm15.config import ModelConfig
from mm15.data.chat import IGNORE_INDEX, Example, format_sample, materialize_pixels
from mm15.data.mixture import build_sampler
from mm15.data.packing import PackedRow, Packer, collate
from mm15.data.schema import SampleError
from mm15.data.sources import open_source
from mm15.tokenizer import MM15Tokenizer
from mm15.train.config import DatasetConfig, StageConfig


def open_datasets(specs: list[DatasetConfig], *, stage: str) -> dict[str, Any]:
    """One reader per dataset; paths may be globs (``data/cc12m/*.tar``), expanded sorted."""
    return {
        d.name: open_source({"kind": d.kind, "paths": _expand(d.paths, d.name), "source": d.name,
                             "category": d.category, "stage": stage, **d.options})
        for d in specs
    }  # fmt: skip


def _expand(patterns: list[str], name: str) -> list[str]:
    out = []
    for pattern in patterns:
        matches = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
        if not matches:
            raise FileNotFoundError(f"dataset {name}: no files match {pattern!r}")
        folders = [m for m in matches if os.path.isdir(m)]
        if folders:
            raise ValueError(f"dataset {name}: path {folders[0]} is a directory; list the data "
                             f"files in it (e.g. {os.path.join(folders[0], '*')})")  # fmt: skip
        out += matches
    return out


class StageStream:
    """The global stream of packed rows of one stage (identical on every rank)."""

    def __init__(
        self, stage: StageConfig, datasets: Mapping[str, Any], *, tokenizer: MM15Tokenizer,
        model_cfg: ModelConfig, seed: int, max_skipped_fraction: float = 0.5,
    ):  # fmt: skip
        self.stage = stage
        self.datasets = dict(datasets)
        self.tokenizer = tokenizer
        self.model_cfg = (dataclasses.replace(model_cfg, image=stage.image)
                          if stage.image is not None else model_cfg)  # fmt: skip
        self.sampler = build_sampler(stage.mixture, self.datasets, seed=seed)
        self.packer = Packer.from_config(stage.packing, pad_id=tokenizer.pad_id)
        self.max_skipped_fraction = max_skipped_fraction
        self.pending: deque[PackedRow] = deque()
        self.refs: deque[tuple[str, int]] = deque()  # examples in the packer or pending rows
        self.skipped: Counter = Counter()
        self.draws = 0

    # ---- the stream ---------------------------------------------------------------------------

    def _example(self, name: str, index: int) -> Example:
        sample = self.datasets[name][index]
        return format_sample(sample, tokenizer=self.tokenizer, model_cfg=self.model_cfg,
                             fmt=self.stage.format)  # fmt: skip

    def _pull(self) -> None:
        name, index = self.sampler.next_index()
        self.draws += 1
        try:
            ex = self._example(name, index)
        except SampleError as e:
            self.skipped[e.reason] += 1
            self._check_skips()
            return
        too_long = self.packer.stats.skipped["too_long"]
        rows = self.packer.add(ex)
        if self.packer.stats.skipped["too_long"] > too_long:
            self.skipped["too_long"] += 1
            self._check_skips()
        else:
            self.refs.append((name, index))
        self.pending.extend(rows)

    def _check_skips(self) -> None:
        n = sum(self.skipped.values())
        if n >= 20 and n > self.max_skipped_fraction * self.draws:
            raise RuntimeError(
                f"stage {self.stage.name}: {n} of {self.draws} samples skipped "
                f"({dict(self.skipped)}); the data is broken, not noisy"
            )

    def peek_rows(self, n: int) -> list[PackedRow]:
        """The rows the next ``next_rows(n)`` will return, without consuming them (they stay in
        the resume state, so a checkpoint taken now replays them)."""
        while len(self.pending) < n:
            self._pull()
        return [self.pending[i] for i in range(n)]

    def next_rows(self, n: int) -> list[PackedRow]:
        """The next ``n`` rows of the global stream."""
        rows = self.peek_rows(n)
        for row in rows:
            self.pending.popleft()
            for _ in row.sample_ids:
                self.refs.popleft()
        return rows

    # ---- resume -------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {
            "sampler": self.sampler.state_dict(),
            "replay": [list(r) for r in self.refs],
            "skipped": dict(self.skipped),
            "draws": self.draws,
            "packer": dataclasses.asdict(self.packer.stats)
            | {"skipped": dict(self.packer.stats.skipped)},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.sampler.load_state_dict(state["sampler"])
        self.packer = Packer.from_config(self.stage.packing, pad_id=self.tokenizer.pad_id)
        self.pending.clear()
        self.refs.clear()
        for name, index in state["replay"]:
            self.refs.append((name, int(index)))
            self.pending.extend(self.packer.add(self._example(name, int(index))))
        packer = dict(state["packer"])
        packer["skipped"] = Counter(packer["skipped"])
        packer["skip_records"] = [tuple(r) for r in packer["skip_records"]]
        self.packer.stats = type(self.packer.stats)(**packer)
        self.skipped = Counter(state["skipped"])
        self.draws = int(state["draws"])

    def audit(self) -> dict[str, Any]:
        return {"mixture": self.sampler.audit(), "skipped": dict(self.skipped),
                "packing": {"rows": self.packer.stats.rows, "tokens": self.packer.stats.tokens,
                            "padding": self.packer.stats.padding}}  # fmt: skip


# ---------------------------------------------------------------------------------------------
# This rank's tensors


def rank_batches(
    rows: list[PackedRow], *, rank: int, world_size: int, micro_rows: int, model_cfg: ModelConfig,
    device: torch.device,
) -> tuple[list[dict[str, torch.Tensor]], int]:  # fmt: skip
    """This rank's rows of a global batch, as micro-batches of tensors on ``device``, and the
    number of images whose pixels failed to decode (their documents' labels are dropped)."""
    mine = rows[rank::world_size]
    micro = micro_rows if micro_rows > 0 else len(mine)
    batches, failed = [], 0
    for start in range(0, len(mine), micro):
        chunk = mine[start : start + micro]
        pixels = []
        for row in chunk:
            px, bad = _row_pixels(row, model_cfg)
            pixels.append(px)
            failed += bad
        batch = collate(chunk, pixels)
        batches.append({k: v.to(device) for k, v in batch.items() if v is not None})
    return batches, failed


def _row_pixels(row: PackedRow, model_cfg: ModelConfig) -> tuple[torch.Tensor, int]:
    try:
        return materialize_pixels(row.images, model_cfg), 0
    except SampleError:
        pass
    r = model_cfg.image.resolution
    tiles, bad_docs = [], set()
    for ref, doc in zip(row.images, row.image_documents, strict=True):
        try:
            tiles.append(materialize_pixels([ref], model_cfg))
        except SampleError:
            tiles.append(torch.zeros(ref.n_tiles, 3, r, r))
            bad_docs.add(doc)
    for t, doc in enumerate(row.document_ids):
        if doc in bad_docs:
            row.labels[t] = IGNORE_INDEX
    return torch.cat(tiles), len(bad_docs)
