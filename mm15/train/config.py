"""Training configuration: the three-stage recipe is data — a list of :class:`StageConfig`.

Each stage says what it trains on (a mixture over named datasets), at which image settings, for
how many steps, with which optimiser and peak learning rate, and which parts are frozen
(MM1.5 §3–4; prismatic-vlms tells its stages as a story, we keep them as plain configs).

Sizes, counts and rates are checked when a config is built (``__post_init__``, which pydantic
also runs for ``--set`` overrides and ``--config`` files), so a negative step count or a zero
batch is one clear error before anything starts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from mm15.config import FormatConfig, ImageConfig, ModelConfig, load_model_config
from mm15.data.config import MixtureConfig, PackingConfig
from mm15.data.registry import RegistryEntry
from mm15.train.optim import OptimConfig
from mm15.train.parallel import ParallelConfig

Part = Literal["vision", "connector", "lm"]


@dataclass(kw_only=True)
class DatasetConfig:
    """Where a mixture source's samples come from: a reader of :mod:`mm15.data.sources`.

    A dataset of the registry (mm15/data/registry.toml, ``mm15 data list``) needs only its
    ``name``: its reader (``kind``), ``category``, files (under the run's ``data_root``) and
    reader ``options`` come from the registry, and whatever is set here wins (``options`` key by
    key). A dataset not in the registry sets ``kind``, ``category`` and ``paths`` itself.
    """

    name: str  # the SourceConfig.name it feeds, and its registry name
    kind: str | None = None  # one of mm15.data.sources.KINDS
    paths: list[str] = field(default_factory=list)  # files or globs; [] = the registry's
    category: str | None = None
    options: dict[str, Any] = field(default_factory=dict)  # the reader's keyword arguments

    def __post_init__(self) -> None:
        from mm15.data.sources import KINDS

        if self.kind is not None and self.kind not in KINDS:
            raise ValueError(
                f"dataset {self.name!r}: kind {self.kind!r} is not a reader; "
                f"choose from {', '.join(KINDS)}"
            )


@dataclass(kw_only=True)
class StageConfig:
    name: str
    kind: Literal["pretrain", "cpt", "sft"]
    steps: int
    # Instead of steps (set steps=0): passes over the stage's data, counted in samples (epochs ×
    # the datasets' total samples), turned into steps when the stage starts from the packing
    # measured on its own samples (mm15/train/data.py: epoch_steps). The paper's SFT is 1 epoch.
    epochs: float | None = None
    batch_rows: int = 8  # global batch, in packed rows of ``packing.seq_len`` tokens
    micro_rows: int = 0  # rows per forward pass on one rank; 0 = all of this rank's rows
    # Peak LR; None = MM1 Eq. 1 from the decoder's (dense backbone's) non-embedding size.
    lr: float | None = None
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0  # cosine decays to this × peak (0: the paper's decay to zero)
    optim: OptimConfig = field(default_factory=OptimConfig)
    image: ImageConfig | None = None  # None: the model's image settings
    mixture: MixtureConfig = field(default_factory=MixtureConfig)
    datasets: list[DatasetConfig] = field(default_factory=list)
    packing: PackingConfig = field(default_factory=PackingConfig)
    # The chat format this stage trains with; None: the model's as it stands (the last earlier
    # stage that set one, else ModelConfig.format of init_from's checkpoint or of ``model``).
    # The exported model records the format it was trained with (stage_format).
    format: FormatConfig | None = None
    freeze: list[Part] = field(default_factory=list)  # MM1.5 §4: nothing frozen by default

    def __post_init__(self) -> None:
        where = f"stage {self.name!r}"
        _at_least(
            where,
            steps=(self.steps, 0),
            batch_rows=(self.batch_rows, 1),
            micro_rows=(self.micro_rows, 0),
            warmup_steps=(self.warmup_steps, 0),
            **{"packing.seq_len": (self.packing.seq_len, 2)},
        )
        if self.epochs is not None:
            if not 0 < self.epochs < float("inf"):
                raise ValueError(f"{where}: epochs must be > 0, got {self.epochs}")
            if self.steps:
                raise ValueError(f"{where}: set steps or epochs, not both (steps=0 with epochs)")
        elif self.warmup_steps > self.steps:
            raise ValueError(
                f"{where}: warmup_steps ({self.warmup_steps}) exceeds steps ({self.steps})"
            )
        if self.micro_rows > self.batch_rows:
            raise ValueError(
                f"{where}: micro_rows ({self.micro_rows}) exceeds batch_rows ({self.batch_rows})"
            )
        if self.lr is not None and not 0 < self.lr < float("inf"):
            raise ValueError(f"{where}: lr must be > 0 (or null for MM1 Eq. 1), got {self.lr}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"{where}: min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")


@dataclass(kw_only=True)
class TrainConfig:
    model: ModelConfig
    stages: list[StageConfig]
    init_from: str | None = None  # an mm15 checkpoint dir (`mm15 init`, or an earlier run)
    # Where registry datasets lie: entry ``cauldron/chartqa`` reads data_root/the_cauldron/
    # chartqa/train-*.parquet unless its DatasetConfig sets ``paths`` (mm15/data/registry.toml).
    data_root: str = "data"
    registry: list[RegistryEntry] = field(default_factory=list)  # a run's own datasets
    # A dataset of a stage none of whose files exist: "error" stops before step 1 naming it;
    # "skip" trains without it (the mixture re-weighs what is left by the same rule) and lists
    # it under "missing" in audit_<stage>.json. For a user who holds part of the paper's data.
    missing_datasets: Literal["error", "skip"] = "error"
    tokenizer: str | None = None  # a tokenizer dir; None = init_from's, else the byte tokenizer
    # Without init_from the model starts from random weights (and the byte tokenizer unless
    # ``tokenizer`` is set). The paper's presets set this to false: the recipe starts from a
    # pre-trained encoder and decoder (`mm15 init`), so a forgotten init_from is an error.
    allow_random_init: bool = True
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    run_dir: str = "runs/mm15"
    seed: int = 0
    log_every: int = 10
    ckpt_every: int = 200  # steps; a checkpoint is also written at the end of every stage
    keep_last: int = 3
    max_skipped_fraction: float = 0.5  # a stage whose samples mostly fail is an error, not a run
    # Before step 1 every dataset of every remaining stage formats this many of its samples
    # (evenly spaced), as `mm15 data check` does; over max_skipped_fraction skipped stops the run
    # naming the dataset and a file. 0 turns the check off.
    preflight_samples: int = 16
    # Decode and tile the next step's images in a background thread while this step trains
    # (the same batches in the same order; resume state is unaffected).  "auto": on when the
    # step runs on an accelerator or torch leaves a CPU core free, off when torch's threads
    # already use every core (there it is slower: docs/performance.md).
    prefetch: Literal["auto", "on", "off"] = "auto"
    # Consecutive steps skipped for a non-finite loss or gradient after which the run stops
    # (NonFiniteTrainingError) instead of training on: a transient spike skips a step or two, a
    # broken model or data source skips every one.
    max_nonfinite_steps: int = 5

    def __post_init__(self) -> None:
        if not self.stages:
            raise ValueError("stages is empty: a run needs at least one stage")
        _at_least(
            "train config",
            log_every=(self.log_every, 1),
            ckpt_every=(self.ckpt_every, 1),
            keep_last=(self.keep_last, 1),
            max_nonfinite_steps=(self.max_nonfinite_steps, 1),
            preflight_samples=(self.preflight_samples, 0),
        )
        if not 0.0 <= self.max_skipped_fraction <= 1.0:
            raise ValueError(
                f"max_skipped_fraction must be in [0, 1], got {self.max_skipped_fraction}"
            )


def model_format(cfg: TrainConfig) -> FormatConfig:
    """The format of the model the run starts from: init_from's checkpoint's (config.json),
    else ``cfg.model``'s.  An unreadable init_from falls back to ``cfg.model`` (loading the
    checkpoint is what reports it)."""
    if cfg.init_from:
        path = Path(cfg.init_from) / "config.json"  # mm15.services.checkpoint.CONFIG_FILE
        try:
            return load_model_config(str(path)).format
        except (OSError, ValueError):
            pass
    return cfg.model.format


def stage_format(cfg: TrainConfig, index: int, start: FormatConfig) -> FormatConfig:
    """The chat format stage ``index`` trains with: its own ``format``, else that of the last
    earlier stage that set one, else ``start`` (the model's, :func:`model_format`)."""
    for stage in reversed(cfg.stages[: index + 1]):
        if stage.format is not None:
            return stage.format
    return start


def _at_least(where: str, **checks: tuple[int, int]) -> None:
    """``name=(value, minimum)`` pairs; the first value below its minimum is an error."""
    for name, (value, low) in checks.items():
        if value < low:
            raise ValueError(f"{where}: {name} must be >= {low}, got {value}")
