"""Data mixtures: per-source sampling weights from the recipe, and a resumable, audited sampler.

**Weights** (:func:`mixture_weights`, MM1.5 §3–4), by the rule of ``MixtureConfig.weights``
(each rule's weights are their own dataclass in :mod:`mm15.data.config`):

* ``pretrain`` (stage 1): groups caption : interleaved : text = 50 : 10 : 40;
* ``cpt`` (stage 2): the OCR sets "sampled equally" (§3.3), synthetic captions optional;
* ``sft`` (stage 3, §3.2.2): :func:`sft_category_weights`; general and text-rich mixed by
  size, science / math / code / refer&ground at ``α × |general|``, the single-image group scaled
  to ``w_single``, multi-image to ``w_multi``, text-only to ``w_text``;
* ``flat``: every source in one group (video SFT §5, UI SFT §6).

A group's weight is split among its sources ``equal``-ly or ``by_size``; groups without a
source drop out and the rest are renormalised.

**Sampling** (:class:`MixtureSampler`): each draw picks a source with one seeded PCG64 stream
(``u ~ U[0, 1)`` against the cumulative weights), then takes the next index of that source's
own permutation, seeded by ``(seed, crc32(name), epoch)`` and redrawn each epoch.  The state
(stream, per-source epoch and position, counts) resumes bit-identically; :meth:`audit` reports
what was drawn per source and category beside the configured shares (MM1.5 §3–4), so a run can be
audited and reproduced.
"""

from __future__ import annotations

import json
import os
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from mm15.data.config import (
    CPTWeights,
    FlatWeights,
    MixtureConfig,
    PretrainWeights,
    SFTWeights,
    Within,
)

SINGLE_IMAGE_BY_SIZE = ("general", "text_rich")
SFT_GROUPS = {"multi_image": "w_multi", "text_only": "w_text"}


class MapDataset(Protocol):
    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Any: ...


@dataclass
class SourceEntry:
    dataset: MapDataset
    category: str
    weight: float  # relative; the sampler normalises


# ---------------------------------------------------------------------------------------------
# Weights


def sft_category_weights(w: SFTWeights, sizes: Mapping[str, int]) -> dict[str, float]:
    """Share of each SFT category present in ``sizes`` (category → samples), summing to 1.

    Single-image (§3.2.2): general and text-rich by size; each α category at ``α·|general|``
    ("the data ratio from the general and target category is 1:α"); the group is then scaled
    to ``w_single``, and multi-image / text-only get ``w_multi`` / ``w_text``.
    """
    alphas = {
        "science": w.alpha_science,
        "math": w.alpha_math,
        "code": w.alpha_code,
        "refer_ground": w.alpha_refer_ground,
    }
    known = {*SINGLE_IMAGE_BY_SIZE, *alphas, *SFT_GROUPS}
    unknown = sorted(set(sizes) - known)
    if unknown:
        raise ValueError(
            f"SFT mixtures take categories {sorted(known)}; got {unknown} "
            '(use weights={"rule": "flat"} for video or UI SFT)'
        )
    single = {c: float(sizes[c]) for c in SINGLE_IMAGE_BY_SIZE if c in sizes}
    for cat, alpha in alphas.items():
        if cat in sizes:
            if not sizes.get("general"):
                raise ValueError(f"α for {cat} is relative to general, but no general data")
            single[cat] = alpha * sizes["general"]
    out: dict[str, float] = {}
    total_single = sum(single.values())
    if total_single > 0:
        out.update({c: w.w_single * v / total_single for c, v in single.items()})
    out.update({c: getattr(w, attr) for c, attr in SFT_GROUPS.items() if c in sizes})
    return _normalised(out, "SFT categories")


def _normalised(weights: Mapping[str, float], what: str) -> dict[str, float]:
    if any(v < 0 for v in weights.values()):
        raise ValueError(f"{what}: negative weight in {dict(weights)}")
    total = sum(weights.values())
    if total <= 0:
        raise ValueError(f"{what}: weights {dict(weights)} sum to {total}, nothing to sample")
    return {k: v / total for k, v in weights.items()}


def _group_weights(
    w: PretrainWeights | CPTWeights | SFTWeights, cat_sizes: Mapping[str, int]
) -> dict[str, float]:
    """Weight of each category group present, and check that every category has a rule."""
    if isinstance(w, SFTWeights):
        return sft_category_weights(w, cat_sizes)
    if isinstance(w, PretrainWeights):
        table = {"caption": w.caption, "interleaved": w.interleaved, "text": w.text}
    else:
        table = {"ocr": w.ocr, "synthetic_caption": w.synthetic_caption}
    unknown = sorted(set(cat_sizes) - set(table))
    if unknown:
        raise ValueError(f"rule {w.rule!r} has weights for {sorted(table)}, not {unknown}")
    return _normalised({c: table[c] for c in cat_sizes}, f"{w.rule} groups")


def _within(rule: Within, sizes: Mapping[str, int]) -> dict[str, float]:
    if rule == "equal":
        return {n: 1.0 / len(sizes) for n in sizes}
    if rule == "by_size":
        return _normalised({n: float(s) for n, s in sizes.items()}, "sizes")
    raise ValueError(f"unknown within-group rule {rule!r} (equal, by_size)")


def mixture_weights(cfg: MixtureConfig, sizes: Mapping[str, int]) -> dict[str, float]:
    """Share of each source of ``cfg.sources`` (summing to 1).

    ``sizes``: samples per source name, used where ``SourceConfig.size`` is None.
    """
    names = [s.name for s in cfg.sources]
    if not names or len(set(names)) != len(names):
        raise ValueError(f"MixtureConfig.sources needs distinct names, got {names}")
    n_of: dict[str, int] = {}
    for s in cfg.sources:
        n = s.size if s.size is not None else sizes.get(s.name)
        if n is None or n < 1:
            raise ValueError(f"source {s.name!r} has {n} samples (needs >= 1)")
        n_of[s.name] = int(n)
    by_cat: dict[str, dict[str, int]] = {}
    for s in cfg.sources:
        by_cat.setdefault(s.category, {})[s.name] = n_of[s.name]
    w = cfg.weights
    if isinstance(w, FlatWeights):
        return _within(w.within, n_of)
    groups = _group_weights(w, {c: sum(d.values()) for c, d in by_cat.items()})
    out: dict[str, float] = {}
    for cat, members in by_cat.items():
        for name, share in _within(w.within, members).items():
            out[name] = groups[cat] * share
    return out


# ---------------------------------------------------------------------------------------------
# Sampling


class MixtureSampler:
    """Seeded, resumable draws from weighted map-style sources (module docstring)."""

    def __init__(self, sources: Mapping[str, SourceEntry], seed: int):
        if not sources:
            raise ValueError("MixtureSampler needs at least one source")
        self.sources = dict(sources)
        self.seed = int(seed)
        self.names = sorted(self.sources)  # draw order does not depend on dict order
        for name in self.names:
            if len(self.sources[name].dataset) < 1:
                raise ValueError(f"source {name!r} is empty")
        shares = _normalised({n: self.sources[n].weight for n in self.names}, "source weights")
        self.shares = shares
        self._cum = np.cumsum([shares[n] for n in self.names])
        self._last_live = max(i for i, n in enumerate(self.names) if shares[n] > 0)
        self._rng = np.random.Generator(np.random.PCG64(self.seed))
        self._epoch = dict.fromkeys(self.names, 0)
        self._pos = dict.fromkeys(self.names, 0)
        self._drawn = dict.fromkeys(self.names, 0)
        self._perm: dict[str, tuple[int, np.ndarray]] = {}

    def _permutation(self, name: str) -> np.ndarray:
        epoch = self._epoch[name]
        cached = self._perm.get(name)
        if cached is None or cached[0] != epoch:
            key = [self.seed, zlib.crc32(name.encode()), epoch]
            perm = np.random.default_rng(key).permutation(len(self.sources[name].dataset))
            self._perm[name] = cached = (epoch, perm)
        return cached[1]

    def next_index(self) -> tuple[str, int]:
        """The next ``(source name, index into its dataset)``."""
        u = self._rng.random()
        i = min(int(np.searchsorted(self._cum, u, side="right")), self._last_live)
        name = self.names[i]
        if self._pos[name] == len(self.sources[name].dataset):  # epoch done: reshuffle
            self._epoch[name] += 1
            self._pos[name] = 0
        index = int(self._permutation(name)[self._pos[name]])
        self._pos[name] += 1
        self._drawn[name] += 1
        return name, index

    def __iter__(self) -> MixtureSampler:
        return self

    def __next__(self) -> Any:
        name, index = self.next_index()
        return self.sources[name].dataset[index]

    # ---- resume ------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue bit-identically (JSON-serialisable)."""
        return {
            "seed": self.seed,
            "rng": self._rng.bit_generator.state,
            "sources": {
                n: {
                    "size": len(self.sources[n].dataset),
                    "share": self.shares[n],
                    "epoch": self._epoch[n],
                    "position": self._pos[n],
                    "drawn": self._drawn[n],
                }
                for n in self.names
            },
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`; the sources, sizes, shares and seed must be the same."""
        saved = state["sources"]
        if sorted(saved) != self.names:
            raise ValueError(f"state has sources {sorted(saved)}, sampler has {self.names}")
        if state["seed"] != self.seed:
            raise ValueError(f"state was saved with seed {state['seed']}, sampler has {self.seed}")
        for n in self.names:
            size, share = len(self.sources[n].dataset), self.shares[n]
            if saved[n]["size"] != size or not np.isclose(saved[n]["share"], share):
                raise ValueError(
                    f"source {n!r}: state has size {saved[n]['size']}, share "
                    f"{saved[n]['share']:.6f}; sampler has {size}, {share:.6f}"
                )
        self._rng.bit_generator.state = state["rng"]
        for n in self.names:
            self._epoch[n] = int(saved[n]["epoch"])
            self._pos[n] = int(saved[n]["position"])
            self._drawn[n] = int(saved[n]["drawn"])

    # ---- audit -------------------------------------------------------------------------------

    def audit(self) -> dict[str, Any]:
        """Draws per source and per category: counts, drawn shares, configured shares."""
        total = sum(self._drawn.values())
        sources: dict[str, Any] = {}
        cats: dict[str, dict[str, Any]] = {}
        for n in self.names:
            cat = self.sources[n].category
            drawn = self._drawn[n]
            sources[n] = {
                "category": cat,
                "size": len(self.sources[n].dataset),
                "drawn": drawn,
                "share": drawn / total if total else 0.0,
                "configured_share": self.shares[n],
                "epoch": self._epoch[n],
            }
            c = cats.setdefault(cat, {"drawn": 0, "share": 0.0, "configured_share": 0.0})
            c["drawn"] += drawn
            c["configured_share"] += self.shares[n]
        for c in cats.values():
            c["share"] = c["drawn"] / total if total else 0.0
        return {"seed": self.seed, "draws": total, "sources": sources, "categories": cats}

    def write_audit(self, path: str | os.PathLike) -> None:
        """:meth:`audit` as JSON, written atomically (temp file, then rename)."""
        tmp = f"{os.fspath(path)}.tmp"
        with open(tmp, "w") as f:
            json.dump(self.audit(), f, indent=2, sort_keys=True)
            f.write("\n")
        os.replace(tmp, path)


def build_sampler(
    cfg: MixtureConfig, datasets: Mapping[str, MapDataset], *, seed: int | None = None
) -> MixtureSampler:
    """A :class:`MixtureSampler` over ``datasets`` (keyed by ``SourceConfig.name``) with the
    weights of :func:`mixture_weights`; ``seed`` defaults to ``cfg.seed``."""
    names = {s.name for s in cfg.sources}
    if names != set(datasets):
        raise ValueError(f"configured sources {sorted(names)} but datasets for {sorted(datasets)}")
    weights = mixture_weights(cfg, {n: len(d) for n, d in datasets.items()})
    entries = {
        s.name: SourceEntry(datasets[s.name], s.category, weights[s.name]) for s in cfg.sources
    }
    return MixtureSampler(entries, cfg.seed if seed is None else seed)
