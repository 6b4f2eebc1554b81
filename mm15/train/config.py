"""Training configuration: the three-stage recipe is data — a list of :class:`StageConfig`.

Each stage says what it trains on (a mixture over named datasets), at which image settings, for
how many steps, with which optimiser and peak learning rate, and which parts are frozen
(SPEC §4; prismatic-vlms tells its stages as a story, we keep them as plain configs).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from mm15.config import FormatConfig, ImageConfig, MixtureConfig, ModelConfig, PackingConfig
from mm15.train.optim import OptimConfig
from mm15.train.parallel import ParallelConfig

Part = Literal["vision", "connector", "lm"]


@dataclass(kw_only=True)
class DatasetConfig:
    """Where a mixture source's samples come from: a reader of :mod:`mm15.data.sources`.

    ``options`` are the reader's keyword arguments (e.g. ``{"columns": "cauldron"}``)."""

    name: str  # the SourceConfig.name it feeds
    kind: Literal["conversation", "table", "captions", "pdf_ocr", "rendered_text", "obelics",
                  "canonical"]  # fmt: skip
    paths: list[str]
    category: str
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(kw_only=True)
class StageConfig:
    name: str
    kind: Literal["pretrain", "cpt", "sft"]
    steps: int
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
    format: FormatConfig = field(default_factory=FormatConfig)
    freeze: list[Part] = field(default_factory=list)  # SPEC §1: nothing frozen by default


@dataclass(kw_only=True)
class TrainConfig:
    model: ModelConfig
    stages: list[StageConfig]
    init_from: str | None = None  # an mm15 checkpoint dir (`mm15 init`, or an earlier run)
    tokenizer: str | None = None  # a tokenizer dir; None = init_from's, else the byte tokenizer
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    run_dir: str = "runs/mm15"
    seed: int = 0
    log_every: int = 10
    ckpt_every: int = 200  # steps; a checkpoint is also written at the end of every stage
    keep_last: int = 3
    max_skipped_fraction: float = 0.5  # a stage whose samples mostly fail is an error, not a run
    # Decode and tile the next step's images in a background thread while this step trains
    # (the same batches in the same order; resume state is unaffected).  "auto": on when the
    # step runs on an accelerator or torch leaves a CPU core free, off when torch's threads
    # already use every core (there it is slower: docs/performance.md).
    prefetch: Literal["auto", "on", "off"] = "auto"
