"""The dataset registry: every dataset of the recipe by name, read from ``registry.toml``.

An entry says which reader opens the dataset, with which options, where its files lie under a
run's ``data_root`` (``data_root/dir/files``), which mixture category it belongs to, the
coordinate convention of its own regions, and where the public copy comes from. The recipes name
datasets only (``DatasetConfig(name="cauldron/chartqa")``); :func:`resolve_dataset` turns such
a name into a full reader spec, with whatever the run's config sets taking precedence.

A run adds or replaces entries with ``TrainConfig.registry`` (a user's own dataset is one entry).
"""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import TypeAdapter, ValidationError

from mm15.data.schema import Category
from mm15.errors import validation_summary

RegistryStage = Literal["pretrain", "cpt", "sft", "video", "ui"]


@dataclass(frozen=True, kw_only=True)
class RegistryEntry:
    """One dataset as its public copy lays it out on disk (``registry.toml`` documents each field)."""

    name: str
    stage: RegistryStage
    category: Category
    kind: str
    dir: str
    files: list[str]
    options: dict[str, Any] = field(default_factory=dict)
    coords: str = "none"
    source: str = ""
    paper: str = ""
    note: str = ""

    def paths(self, data_root: str | Path) -> list[str]:
        """The file globs under ``data_root`` (``data_root/dir/file`` each)."""
        return [str(Path(data_root, self.dir, f)) for f in self.files]

    def resolved_options(self, data_root: str | Path) -> dict[str, Any]:
        """The options with ``{dir}`` replaced by ``data_root/dir``."""
        folder = str(Path(data_root, self.dir))
        return {k: _fill(v, folder) for k, v in self.options.items()}


def _fill(value: Any, folder: str) -> Any:
    if isinstance(value, str):
        return value.replace("{dir}", folder)
    if isinstance(value, list):
        return [_fill(v, folder) for v in value]
    if isinstance(value, dict):
        return {k: _fill(v, folder) for k, v in value.items()}
    return value


def parse_entries(raw: Iterable[Mapping[str, Any]], where: str) -> list[RegistryEntry]:
    """Validated entries; a bad field is one ``ValueError`` naming ``where`` and the entry."""
    adapter = TypeAdapter(RegistryEntry)
    out = []
    for i, item in enumerate(raw):
        label = item.get("name", f"#{i}") if isinstance(item, Mapping) else f"#{i}"
        try:
            out.append(adapter.validate_python(item))
        except ValidationError as e:
            raise ValueError(f"{where}: dataset {label}: {validation_summary(e)}") from None
    return out


@cache
def builtin_entries() -> tuple[RegistryEntry, ...]:
    """The entries of ``mm15/data/registry.toml``, in file order."""
    text = resources.files("mm15.data").joinpath("registry.toml").read_text(encoding="utf-8")
    return tuple(parse_entries(tomllib.loads(text)["dataset"], "mm15/data/registry.toml"))


def registry(extra: Iterable[RegistryEntry] = ()) -> dict[str, RegistryEntry]:
    """Name → entry: the built-in entries, then ``extra`` (a run's own, replacing by name)."""
    out: dict[str, RegistryEntry] = {}
    for entry in (*builtin_entries(), *extra):
        out[entry.name] = entry
    return out


def stage_entries(stage: RegistryStage) -> list[RegistryEntry]:
    """The built-in entries a preset of ``stage`` trains on, in file order."""
    return [e for e in builtin_entries() if e.stage == stage]


def resolve_dataset(dataset: Any, *, data_root: str | Path, entries: Mapping[str, RegistryEntry]):
    """A ``DatasetConfig`` with every field it leaves unset taken from its registry entry.

    ``kind``, ``category`` and ``paths`` come from the entry when the config leaves them empty;
    the entry's options are the base and the config's ``options`` override them key by key. A
    dataset that is not in the registry must give ``kind``, ``category`` and ``paths`` itself.
    """
    entry = entries.get(dataset.name)
    if entry is None:
        missing = [f for f in ("kind", "category") if getattr(dataset, f) is None]
        if not dataset.paths:
            missing.append("paths")
        if missing:
            raise ValueError(
                f"dataset {dataset.name!r} is not in the registry (`mm15 data list`) "
                f"and does not set {', '.join(missing)}"
            )
        return dataset
    return dataclasses.replace(
        dataset,
        kind=dataset.kind or entry.kind,
        category=dataset.category or entry.category,
        paths=list(dataset.paths) or entry.paths(data_root),
        options={**entry.resolved_options(data_root), **dataset.options},
    )
