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
import math
import os
from collections import Counter, deque
from collections.abc import Mapping
from typing import Any, Literal

import torch

from mm15.config import ModelConfig
from mm15.data.config import SourceConfig
from mm15.data.mixture import build_sampler
from mm15.data.packing import PackedRow, Packer, collate
from mm15.data.pipeline import IGNORE_INDEX, Example, format_sample
from mm15.data.registry import RegistryEntry, resolve_dataset
from mm15.data.registry import registry as registry_entries
from mm15.data.sample_images import materialize_pixels
from mm15.data.schema import SampleError
from mm15.data.sources import open_source
from mm15.tokenizer import MM15Tokenizer
from mm15.train.config import DatasetConfig, StageConfig


def open_datasets(
    specs: list[DatasetConfig],
    *,
    stage: str,
    stage_name: str | None = None,
    data_root: str = "data",
    registry: Mapping[str, RegistryEntry] | None = None,
    missing: Literal["error", "skip"] = "error",
) -> dict[str, Any]:
    """One reader per dataset, resolved through the registry (names → reader, options, files
    under ``data_root``); paths may be globs (``data/cc12m/*.tar``), expanded sorted.

    Every problem — a dataset neither in the registry nor complete, no file matching, a reader
    option or column missing — is one ``ValueError`` naming the stage, the dataset and the field.
    With ``missing="skip"`` a dataset none of whose paths match a file is left out instead (the
    caller sees it absent from the result).
    """
    entries = registry if registry is not None else registry_entries()
    where = f"stage {stage_name or stage}"
    out = {}
    for spec in specs:
        try:
            d = resolve_dataset(spec, data_root=data_root, entries=entries)
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None
        label = f"{where}: dataset {d.name} ({d.kind})"
        if missing == "skip" and not any(_matches(p) for p in d.paths):
            continue
        paths = expand_paths(d.paths, label)
        try:
            out[d.name] = open_source(
                {
                    "kind": d.kind,
                    "paths": paths,
                    "source": d.name,
                    "category": d.category,
                    "stage": stage,
                    **d.options,
                }
            )
        except TypeError as e:  # a reader's required option missing, or an unknown one
            raise ValueError(f"{label}: options: {_option_problem(e)}") from None
        except (ValueError, OSError) as e:
            raise ValueError(f"{label}: {e}") from None
    return out


def _option_problem(e: TypeError) -> str:
    text = str(e)
    return text.split(".__init__() ", 1)[-1] if ".__init__() " in text else text


def _matches(pattern: str) -> bool:
    return bool(glob.glob(pattern)) if glob.has_magic(pattern) else os.path.exists(pattern)


def run_stage(stage: StageConfig, opened: Mapping[str, Any]) -> StageConfig:
    """``stage`` as it runs on the readers ``opened``: a mixture without sources gets one per
    dataset (its category from the reader, i.e. the registry or the dataset config), and the
    sources whose datasets were left out (``missing_datasets=skip``) are dropped."""
    sources = stage.mixture.sources or [
        SourceConfig(name=n, category=r.category) for n, r in opened.items()
    ]
    sources = [s for s in sources if s.name in opened]
    return dataclasses.replace(stage, mixture=dataclasses.replace(stage.mixture, sources=sources))


def evenly_spaced(n: int, k: int) -> list[int]:
    """Up to ``k`` distinct indices spread evenly over ``range(n)``, in order."""
    return sorted({i * n // k for i in range(k)}) if n > 0 else []


def epoch_steps(
    stage: StageConfig,
    datasets: Mapping[str, Any],
    *,
    tokenizer: MM15Tokenizer,
    model_cfg: ModelConfig,
    samples: int = 64,
) -> int:
    """Steps for ``stage.epochs`` passes over ``datasets``: each dataset's samples over the
    samples per packed row measured on up to ``samples`` of its own (evenly spaced, formatted
    and packed with the stage's settings), summed, times epochs, over ``batch_rows``."""
    assert stage.epochs is not None
    if stage.image is not None:
        model_cfg = dataclasses.replace(model_cfg, image=stage.image)
    rows = 0.0
    for name, reader in datasets.items():
        n = len(reader)
        packer = Packer.from_config(stage.packing, pad_id=tokenizer.pad_id)
        packed = built = 0
        for index in evenly_spaced(n, samples):
            try:
                ex = format_sample(
                    reader[index], tokenizer=tokenizer, model_cfg=model_cfg, fmt=stage.format
                )
            except SampleError:
                continue
            built += 1 if len(ex) <= stage.packing.seq_len else 0
            packed += len(packer.add(ex))
        packed += len(packer.flush())
        if not built:
            raise DataError(
                f"stage {stage.name}: dataset {name}: none of {min(n, samples)} "
                "samples checked could be formatted; cannot count its epochs"
            )
        rows += n / (built / packed)
    return max(1, math.ceil(stage.epochs * rows / stage.batch_rows))


def expand_paths(patterns: list[str], label: str) -> list[str]:
    """The files of ``patterns`` (globs expanded, sorted); none matching, or a folder, is an
    error naming ``label``."""
    out = []
    for pattern in patterns:
        matches = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
        if not matches or (not glob.has_magic(pattern) and not os.path.exists(pattern)):
            raise FileNotFoundError(
                f"{label}: paths: no files match {pattern!r} (set data_root, "
                "or the dataset's paths)"
            )
        folders = [m for m in matches if os.path.isdir(m)]
        if folders:
            raise ValueError(
                f"{label}: paths: {folders[0]} is a directory; list the data "
                f"files in it (e.g. {os.path.join(folders[0], '*')})"
            )
        out += matches
    return out


class DataError(ValueError):
    """A stage's data is broken (most samples of the stage, or of one source, are skipped)."""


class StageStream:
    """The global stream of packed rows of one stage (identical on every rank)."""

    def __init__(
        self,
        stage: StageConfig,
        datasets: Mapping[str, Any],
        *,
        tokenizer: MM15Tokenizer,
        model_cfg: ModelConfig,
        seed: int,
        max_skipped_fraction: float = 0.5,
    ):
        self.stage = stage
        self.datasets = dict(datasets)
        self.tokenizer = tokenizer
        self.model_cfg = (
            dataclasses.replace(model_cfg, image=stage.image)
            if stage.image is not None
            else model_cfg
        )
        self.sampler = build_sampler(stage.mixture, self.datasets, seed=seed)
        self.packer = Packer.from_config(stage.packing, pad_id=tokenizer.pad_id)
        self.max_skipped_fraction = max_skipped_fraction
        self.pending: deque[PackedRow] = deque()
        self.refs: deque[tuple[str, int]] = deque()  # examples in the packer or pending rows
        self.skipped: Counter = Counter()
        # Per source: draws, skips by reason and the last skip's detail (which names the file),
        # so a source that mostly fails is found even when the stage as a whole looks healthy.
        self.source_draws: Counter = Counter()
        self.source_skips: dict[str, Counter] = {}
        self.last_skip: dict[str, str] = {}
        self.draws = 0

    # ---- the stream ---------------------------------------------------------------------------

    def _example(self, name: str, index: int) -> Example:
        sample = self.datasets[name][index]
        return format_sample(
            sample, tokenizer=self.tokenizer, model_cfg=self.model_cfg, fmt=self.stage.format
        )

    def _pull(self) -> None:
        name, index = self.sampler.next_index()
        self.draws += 1
        self.source_draws[name] += 1
        try:
            ex = self._example(name, index)
        except SampleError as e:
            self._skip(name, e.reason, e.detail)
            return
        too_long = self.packer.stats.skipped["too_long"]
        rows = self.packer.add(ex)
        if self.packer.stats.skipped["too_long"] > too_long:
            self._skip(name, "too_long", f"{ex.sample_id}: {len(ex)} tokens")
        else:
            self.refs.append((name, index))
        self.pending.extend(rows)

    def _skip(self, name: str, reason: str, detail: str) -> None:
        self.skipped[reason] += 1
        self.source_skips.setdefault(name, Counter())[reason] += 1
        self.last_skip[name] = detail
        self._check_skips(name)

    def _check_skips(self, name: str) -> None:
        """A stage, or one source of it, whose samples mostly fail is an error, not a run."""
        limit = self.max_skipped_fraction
        n, mine = sum(self.skipped.values()), sum(self.source_skips[name].values())
        if mine >= 20 and mine > limit * self.source_draws[name]:
            raise DataError(
                f"stage {self.stage.name}: dataset {name}: {mine} of its "
                f"{self.source_draws[name]} samples skipped ({dict(self.source_skips[name])}), "
                f"e.g. {self.last_skip[name]}; the data is broken, not noisy"
            )
        if n >= 20 and n > limit * self.draws:
            worst = max(self.source_skips, key=lambda k: sum(self.source_skips[k].values()))
            raise DataError(
                f"stage {self.stage.name}: {n} of {self.draws} samples skipped "
                f"({dict(self.skipped)}), most from {worst}, e.g. {self.last_skip[worst]}; "
                "the data is broken, not noisy"
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
            "source_draws": dict(self.source_draws),
            "source_skips": {k: dict(v) for k, v in self.source_skips.items()},
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
        self.source_draws = Counter(state.get("source_draws", {}))
        self.source_skips = {k: Counter(v) for k, v in state.get("source_skips", {}).items()}
        self.draws = int(state["draws"])

    def audit(self) -> dict[str, Any]:
        """What the mixture drew, and per source what of it was skipped (by reason) and what
        reached training."""
        mixture = self.sampler.audit()
        for name, entry in mixture["sources"].items():
            skips = self.source_skips.get(name, Counter())
            entry["skipped"] = dict(skips)
            entry["trained"] = entry["drawn"] - sum(skips.values())
        return {
            "mixture": mixture,
            "skipped": dict(self.skipped),
            "packing": {
                "rows": self.packer.stats.rows,
                "tokens": self.packer.stats.tokens,
                "padding": self.packer.stats.padding,
            },
        }


# ---------------------------------------------------------------------------------------------
# This rank's tensors


def rank_batches(
    rows: list[PackedRow],
    *,
    rank: int,
    world_size: int,
    micro_rows: int,
    model_cfg: ModelConfig,
    device: torch.device,
) -> tuple[list[dict[str, torch.Tensor]], int]:
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
