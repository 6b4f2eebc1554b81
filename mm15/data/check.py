"""``mm15 data check``: a dry run of a training config's data, in seconds to a minute.

Opens every dataset of every stage through the registry (as ``mm15 train`` does), formats
``samples`` evenly spaced samples of each with the stage's image and prompt settings, and reports
per dataset: files matched, samples in the dataset, samples read, skips by reason (with one
example's detail, which names the file), tokens, trainable tokens, images and tiles per sample;
per stage, the share of each category the mixture draws as configured and, with the measured
skip rates, as it will actually reach training. Every problem (no file matched, a reader option
or column missing, a dataset that skips more than ``max_skip_fraction`` of what was read) is a
line naming stage, dataset and field; :func:`check_config` returns them all at once.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mm15.config import ModelConfig
from mm15.data.mixture import mixture_weights
from mm15.data.pipeline import format_sample
from mm15.data.registry import RegistryEntry, registry, resolve_dataset
from mm15.data.schema import SampleError
from mm15.data.token_stream import prefix_merges
from mm15.tokenizer import MM15Tokenizer, byte_tokenizer
from mm15.train.config import DatasetConfig, StageConfig, TrainConfig, model_format, stage_format
from mm15.train.data import evenly_spaced, expand_paths, open_datasets, run_stage


@dataclass
class DatasetReport:
    stage: str
    name: str
    kind: str | None
    category: str | None
    files: int = 0
    size: int = 0
    read: int = 0
    skipped: Counter = field(default_factory=Counter)
    example_skip: str = ""
    tokens: int = 0
    trainable: int = 0
    images: int = 0
    tiles: int = 0
    missing: bool = False  # no files, left out (missing_datasets=skip)
    samples: list[Any] = field(default_factory=list, repr=False)  # two, for the contact sheet

    @property
    def ok(self) -> int:
        return self.read - sum(self.skipped.values())

    @property
    def skip_fraction(self) -> float:
        return sum(self.skipped.values()) / self.read if self.read else 0.0

    def per_sample(self, total: int) -> float:
        return total / self.ok if self.ok else 0.0


@dataclass
class StageReport:
    name: str
    datasets: list[DatasetReport] = field(default_factory=list)
    configured: dict[str, float] = field(default_factory=dict)  # category → share
    effective: dict[str, float] = field(default_factory=dict)  # after measured skips


@dataclass
class CheckReport:
    stages: list[StageReport] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def check_tokenizer(cfg: TrainConfig) -> MM15Tokenizer:
    """The tokenizer the run would use: init_from's, else ``tokenizer``, else the byte one."""
    if cfg.init_from:
        return MM15Tokenizer.load(cfg.init_from)
    return MM15Tokenizer.load(cfg.tokenizer) if cfg.tokenizer else byte_tokenizer()


@dataclass
class _Run:
    """What the checks of every stage share: the config, tokenizer, registry, sample count,
    skip limit and the report's problem lines."""

    cfg: TrainConfig
    tok: MM15Tokenizer
    entries: dict[str, RegistryEntry]
    samples: int
    limit: float
    problems: list[str]


def check_config(
    cfg: TrainConfig,
    *,
    samples: int = 16,
    max_skip_fraction: float | None = None,
    tokenizer: MM15Tokenizer | None = None,
) -> CheckReport:
    """Dry-run every stage's data; problems are collected, not raised."""
    limit = cfg.max_skipped_fraction if max_skip_fraction is None else max_skip_fraction
    report = CheckReport()
    if tokenizer is None:
        try:
            tokenizer = check_tokenizer(cfg)
        except (ValueError, OSError) as e:  # the run would stop here too; check the data anyway
            report.problems.append(
                f"init_from/tokenizer: {e} (token counts below use the byte tokenizer)"
            )
            tokenizer = byte_tokenizer()
    if not cfg.init_from and not cfg.allow_random_init:
        report.problems.append(
            "init_from: not set, and this recipe starts from pre-trained parts "
            "(set init_from=DIR, or allow_random_init=true)"
        )
    run = _Run(cfg, tokenizer, registry(cfg.registry), samples, limit, report.problems)
    start = model_format(cfg)
    for index in range(len(cfg.stages)):
        stage, model_cfg = _as_run(cfg, index, start, tokenizer)
        _check_format(run, stage)
        report.stages.append(_check_stage(run, stage, model_cfg))
    return report


def _check_format(run: _Run, stage: StageConfig) -> None:
    """A format whose assistant prefix merges into the answer under the run's tokenizer trains
    answers that no generation prompt can lead into (mm15.data.token_stream)."""
    prefix = stage.format.assistant_prefix  # resolved by _as_run
    if prefix_merges(run.tok, prefix):
        run.problems.append(
            f"stage {stage.name}: format.assistant_prefix {prefix!r} merges into the first "
            "token of an answer with this tokenizer, so generation prompts would end on a "
            "token training never saw there; end it at a token boundary, e.g. with a newline"
        )


def _check_stage(run: _Run, stage: StageConfig, model_cfg: ModelConfig) -> StageReport:
    """Open and sample every dataset of ``stage``, then its category shares."""
    sr = StageReport(stage.name)
    readers: dict[str, Any] = {}
    if not stage.datasets:
        run.problems.append(
            f"stage {stage.name}: no datasets; name them in "
            "the stage's datasets (registry names, `mm15 data list`)"
        )
    for spec in stage.datasets:
        dr = DatasetReport(stage.name, spec.name, spec.kind, spec.category)
        sr.datasets.append(dr)
        reader = _open_dataset(run, stage, spec, dr)
        if reader is not None:
            readers[spec.name] = reader
            _read(dr, reader, stage, run.tok, model_cfg, run.samples)
            run.problems += _problems(dr, run.limit)
    if stage.datasets and all(d.missing for d in sr.datasets):
        run.problems.append(
            f"stage {stage.name}: none of its datasets has files under "
            f"data_root {run.cfg.data_root!r}"
        )
    _shares(sr, stage, readers, run.problems)
    return sr


def _open_dataset(run: _Run, stage: StageConfig, spec: DatasetConfig, dr: DatasetReport) -> Any:
    """The reader of ``spec`` as ``mm15 train`` opens it, its files counted into ``dr``; None
    when it does not open (a problem line) or has no files (missing_datasets=skip)."""
    cfg = run.cfg
    try:
        opened = open_datasets(
            [spec],
            stage=stage.kind,
            stage_name=stage.name,
            data_root=cfg.data_root,
            registry=run.entries,
            missing=cfg.missing_datasets,
        )
    except (ValueError, OSError, KeyError) as e:
        run.problems.append(str(e).splitlines()[0])
        return None
    if spec.name not in opened:  # missing_datasets=skip: the run trains without it
        dr.missing = True
        return None
    resolved = resolve_dataset(spec, data_root=cfg.data_root, entries=run.entries)
    dr.kind, dr.category = resolved.kind, resolved.category
    dr.files = len(expand_paths(resolved.paths, spec.name))
    return opened[spec.name]


def preflight(
    cfg: TrainConfig, opened: dict[int, dict[str, Any]], tokenizer: MM15Tokenizer, samples: int
) -> list[str]:
    """What ``mm15 train`` checks before step 1, on the readers it opened (stage index → name →
    reader): ``samples`` of each dataset formatted as the stage will; a dataset that skips more
    than ``max_skipped_fraction`` of them, or holds no sample, is a problem line."""
    problems, start = [], model_format(cfg)
    for index, readers in opened.items():
        stage, model_cfg = _as_run(cfg, index, start, tokenizer)
        for name, reader in readers.items():
            dr = DatasetReport(stage.name, name, None, None)
            _read(dr, reader, stage, tokenizer, model_cfg, samples)
            problems += _problems(dr, cfg.max_skipped_fraction)
    return problems


def _as_run(cfg: TrainConfig, index: int, start, tok: MM15Tokenizer):
    """Stage ``index`` with its resolved chat format, and the model config its samples are
    formatted with (the stage's image settings, the tokenizer's image token)."""
    stage = dataclasses.replace(cfg.stages[index], format=stage_format(cfg, index, start))
    model_cfg = dataclasses.replace(cfg.model, image_token_id=tok.image_token_id)
    if stage.image is not None:
        model_cfg = dataclasses.replace(model_cfg, image=stage.image)
    return stage, model_cfg


def _problems(dr: DatasetReport, limit: float) -> list[str]:
    if not dr.size:
        return [f"stage {dr.stage}: dataset {dr.name}: paths: the files hold no samples"]
    if dr.read and dr.skip_fraction > limit:
        return [
            f"stage {dr.stage}: dataset {dr.name}: {sum(dr.skipped.values())} of {dr.read} "
            f"samples read were skipped ({dict(dr.skipped)}; over {limit:.0%}), "
            f"e.g. {dr.example_skip}"
        ]
    return []


def _read(dr: DatasetReport, reader: Any, stage: StageConfig, tok, model_cfg, n: int) -> None:
    dr.size = len(reader)
    for index in evenly_spaced(dr.size, n):
        dr.read += 1
        try:
            sample = reader[index]
            ex = format_sample(sample, tokenizer=tok, model_cfg=model_cfg, fmt=stage.format)
        except SampleError as e:
            dr.skipped[e.reason] += 1
            dr.example_skip = dr.example_skip or e.detail
            continue
        if len(ex) > stage.packing.seq_len:
            dr.skipped["too_long"] += 1
            dr.example_skip = dr.example_skip or f"{ex.sample_id}: {len(ex)} tokens"
            continue
        dr.tokens += len(ex)
        dr.trainable += ex.num_trainable
        dr.images += len(ex.images)
        dr.tiles += ex.num_tiles
        if len(dr.samples) < 2:
            dr.samples.append(sample)


def _shares(
    sr: StageReport, stage: StageConfig, readers: dict[str, Any], problems: list[str]
) -> None:
    """Category shares as configured (the mixture rule over the sources that opened) and as
    they will reach training (each source's share × its measured kept fraction)."""
    mix = run_stage(stage, readers).mixture
    if not mix.sources:
        return
    try:
        weights = mixture_weights(mix, {n: len(r) for n, r in readers.items()})
    except ValueError as e:
        problems.append(f"stage {stage.name}: mixture: {e}")
        return
    kept = {d.name: (1.0 - d.skip_fraction) for d in sr.datasets}
    cats = {s.name: s.category for s in mix.sources}
    eff_total = sum(w * kept.get(n, 1.0) for n, w in weights.items()) or 1.0
    for name, w in weights.items():
        cat = cats[name]
        sr.configured[cat] = sr.configured.get(cat, 0.0) + w
        sr.effective[cat] = sr.effective.get(cat, 0.0) + w * kept.get(name, 1.0) / eff_total


def format_report(report: CheckReport) -> str:
    """The report as plain-text tables, one per stage, then the problems."""
    lines = []
    for sr in report.stages:
        lines.append(f"stage {sr.name}")
        lines.append(
            f"  {'dataset':<28} {'kind':<14} {'category':<13} {'files':>5} "
            f"{'samples':>8} {'read':>4} {'skips':<18} {'tok/s':>6} {'train/s':>7} "
            f"{'img/s':>5} {'tiles/s':>7}"
        )
        for d in sr.datasets:
            if d.missing:
                lines.append(f"  {d.name:<28} no files: left out (missing_datasets=skip)")
                continue
            skips = ",".join(f"{k}:{v}" for k, v in sorted(d.skipped.items())) or "-"
            lines.append(
                f"  {d.name:<28} {d.kind or '?':<14} {d.category or '?':<13} {d.files:>5} "
                f"{d.size:>8} {d.read:>4} {skips:<18} {d.per_sample(d.tokens):>6.0f} "
                f"{d.per_sample(d.trainable):>7.0f} {d.per_sample(d.images):>5.1f} "
                f"{d.per_sample(d.tiles):>7.1f}"
            )
        if sr.configured:
            lines.append("  category shares (configured → after measured skips):")
            for cat in sorted(sr.configured, key=lambda c: -sr.configured[c]):
                lines.append(f"    {cat:<13} {sr.configured[cat]:6.1%} → {sr.effective[cat]:6.1%}")
    lines.append(f"{len(report.problems)} problem(s)" if report.problems else "no problems")
    lines += [f"  {p}" for p in report.problems]
    return "\n".join(lines)


def report_json(report: CheckReport) -> dict[str, Any]:
    return {
        "stages": [
            {
                "name": sr.name,
                "configured_shares": sr.configured,
                "effective_shares": sr.effective,
                "missing": [d.name for d in sr.datasets if d.missing],
                "datasets": [
                    {
                        "name": d.name,
                        "kind": d.kind,
                        "category": d.category,
                        "files": d.files,
                        "samples": d.size,
                        "read": d.read,
                        "skipped": dict(d.skipped),
                        "example_skip": d.example_skip,
                        "tokens_per_sample": d.per_sample(d.tokens),
                        "trainable_per_sample": d.per_sample(d.trainable),
                        "images_per_sample": d.per_sample(d.images),
                        "tiles_per_sample": d.per_sample(d.tiles),
                    }
                    for d in sr.datasets
                    if not d.missing
                ],
            }
            for sr in report.stages
        ],
        "problems": report.problems,
    }


def _first_image_drawn(sample: Any, image_cfg: Any):
    """The sample's first image with the regions on it drawn, or None (no image)."""
    from mm15.data.coords import Box, Point
    from mm15.data.draw import draw_regions
    from mm15.data.media import load_image

    first = next((i for i, m in enumerate(sample.media) if m.kind == "image"), None)
    if first is None:
        return None
    image = load_image(sample.media[first], image_cfg)
    shapes = [
        Box(*r.box, image=first) if r.box is not None else Point(*r.point, image=first)
        for r in sample.regions
        if r.media == first
    ]
    return draw_regions(image, shapes)


def contact_sheet(
    report: CheckReport, out: Path, *, image_cfg: Any, per_dataset: int = 1
) -> Path | None:
    """A PNG of a few checked samples' first images with their regions drawn, captioned with
    stage and dataset; None when no checked sample has an image."""
    from PIL import Image, ImageDraw

    from mm15.data.coords import CoordinateError

    cells: list[tuple[str, Image.Image]] = []
    for sr in report.stages:
        for d in sr.datasets:
            for sample in d.samples[:per_dataset]:
                try:
                    picture = _first_image_drawn(sample, image_cfg)
                except (SampleError, CoordinateError, OSError, ValueError):
                    continue
                if picture is not None:
                    cells.append((f"{sr.name}/{d.name}", picture))
    if not cells:
        return None
    side, cols = 256, min(4, len(cells))
    rows = -(-len(cells) // cols)
    sheet = Image.new("RGB", (cols * side, rows * (side + 16)), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (label, img) in enumerate(cells):
        x, y = (i % cols) * side, (i // cols) * (side + 16)
        scale = min(side / img.width, side / img.height)  # fit the cell, small images grown
        img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))))
        sheet.paste(img, (x, y + 16))
        draw.text((x + 2, y + 2), label[:40], fill="black")
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)
    return out
