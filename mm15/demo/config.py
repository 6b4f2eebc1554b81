"""``DemoConfig``: the demo's knobs, one nested config per stage (``mm15 demo --set sft.steps=600``).

The stages after the encoder warm-up are :class:`~mm15.train.config.StageConfig` s of the one
training loop (:func:`mm15.demo.recipe.demo_train_config`); each nested config here holds only
what the demo varies of its stage.  The flat names before issue 21 (``sft_steps``,
``bind_tasks`` …) map to these as docs/demo.md's table lists.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal, get_args

from mm15.demo.data.tasks import SFT_TASKS, TASKS
from mm15.train.config import Part

# One SFT task per category: with all tasks in the budget each task gets too few samples for the
# tiny model to learn to read images (docs/demo-log.md); ``--set sft.tasks=[...]`` trains any subset,
# SFT_TASKS all of them.
DEMO_SFT_TASKS = (
    "general/colour",
    "text_rich/word",
    "refer_ground/box",
    "math/count",
    "multi_image/common",
    "video/direction",
    "ui/read_selected",
    "text_only/add",
)
PRETRAIN_TASKS = ("caption/object", "caption/shapes", "interleaved/shapes", "text/facts")
CPT_TASKS = ("ocr/pages", "ocr/words")
# The encoder warm-up's dense heads (mm15.demo.encoder.HEADS; here so that the config imports
# neither torch nor the model).
ENCODER_HEADS = ("colour", "shape", "place", "box", "word")


def _check_parts(key: str, parts: list[str]) -> None:
    if bad := sorted(set(parts) - set(get_args(Part))):
        raise ValueError(f"{key}: unknown parts {bad}; choose from {get_args(Part)}")


def _check_tasks(key: str, tasks: list[str], known) -> None:
    if bad := sorted(set(tasks) - set(known)):
        raise ValueError(f"{key}: unknown {bad}; choose from {list(known)}")


@dataclass(kw_only=True)
class EncoderWarmup:
    """The paper starts from a pretrained CLIP encoder; the demo pre-trains its own on dense
    scene targets (:mod:`mm15.demo.encoder`; 0 steps starts from a random one).  Not a stage of
    the training loop: it trains the encoder and connector alone, through linear heads that are
    thrown away, on freshly drawn scenes rather than a corpus.  Its heads: "word" makes it read
    the button labels and sign words of the UI and text-rich tasks, as CLIP reads text; "place"
    puts each token's own position into its features, which the coordinates of grounding need."""

    steps: int = 1000
    heads: list[str] = dataclasses.field(
        default_factory=lambda: ["colour", "shape", "place", "word"]
    )
    lr: float = 6e-3

    def __post_init__(self) -> None:
        if self.steps < 0:
            raise ValueError(f"encoder.steps must be >= 0, got {self.steps}")
        _check_tasks("encoder.heads", self.heads, ENCODER_HEADS)
        if self.steps and not self.heads:
            raise ValueError("encoder.heads is empty; give at least one head or encoder.steps=0")
        if not self.lr > 0:
            raise ValueError(f"encoder.lr must be > 0, got {self.lr}")


@dataclass(kw_only=True)
class Stage:
    """A stage of the training loop: its steps (0: skipped) and peak LR (None: DemoConfig.lr)."""

    steps: int = 0
    lr: float | None = None

    def __post_init__(self) -> None:
        if self.steps < 0:
            raise ValueError(f"steps must be >= 0, got {self.steps}")
        if self.lr is not None and not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")


@dataclass(kw_only=True)
class AlignStage(Stage):
    """A short alignment stage on single-object captions (like LLaVA's projector alignment)
    teaches the decoder that images carry answers, before the paper's three stages."""

    steps: int = 60


@dataclass(kw_only=True)
class PretrainStage(Stage):
    """The pre-training stage's sources (MM1.5 §3–4: captions, interleaved, text at 50:10:40 by
    category; sources of one category share its weight).  "caption/grounded" adds GRIT-style
    captions with each object's box (measured in docs/demo-log.md; not a default)."""

    steps: int = 120
    tasks: list[str] = dataclasses.field(default_factory=lambda: list(PRETRAIN_TASKS))

    def __post_init__(self) -> None:
        super().__post_init__()
        known = [n for n, t in TASKS.items() if t.stage == "pretrain"]
        if not self.tasks:
            raise ValueError(f"pretrain.tasks is empty; give at least one of {known}")
        _check_tasks("pretrain.tasks", self.tasks, known)


@dataclass(kw_only=True)
class CptStage(Stage):
    """Continual pre-training on OCR sources, sampled equally (MM1.5 §3–4): rendered pages
    (PDFA/IDL-like) and rendered words on signs and buttons (RenderedText-like)."""

    steps: int = 120
    tasks: list[str] = dataclasses.field(default_factory=lambda: list(CPT_TASKS))

    def __post_init__(self) -> None:
        super().__post_init__()
        known = [n for n, t in TASKS.items() if t.stage == "cpt"]
        if not self.tasks:
            raise ValueError(f"cpt.tasks is empty; give at least one of {known}")
        _check_tasks("cpt.tasks", self.tasks, known)


@dataclass(kw_only=True)
class BindStage(Stage):
    """SFT on tasks whose answer is one decision about the object the question names ("the
    yellow star, top left"), so that the decoder learns to look the named object up in the
    image.  MM1.5's decoder is a pre-trained LLM that arrives with such in-context lookups; the
    demo's is trained from scratch, and in the full mixture the many-token answers of the other
    tasks keep that lookup from being learnt (docs/demo-log.md).  On the fresh decoder it is learnt
    in 1000 small steps; after pre-training it is not.  0 steps: no stage."""

    steps: int = 1000
    tasks: list[str] = dataclasses.field(
        default_factory=lambda: ["refer_ground/region", "general/colour"]
    )
    # Frozen: the connector too, so that its grid scenes alone do not reshape the features the
    # reading tasks need.
    freeze: list[Part] = dataclasses.field(default_factory=lambda: ["vision", "connector"])
    # Rows per step (a few dozen short samples): the lookup is learnt in a number of steps rather
    # than of samples, so small steps at a constant LR are the cheap way there.
    rows: int = 3
    # "start" (right after the encoder warm-up, on the fresh decoder, as a pre-trained LLM
    # arrives with its in-context lookups) or "before_sft".
    at: Literal["start", "before_sft"] = "start"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.steps and not self.tasks:
            raise ValueError("bind.tasks is empty; give at least one SFT task or bind.steps=0")
        _check_tasks("bind.tasks", self.tasks, SFT_TASKS)
        _check_parts("bind.freeze", self.freeze)
        if self.rows < 1:
            raise ValueError(f"bind.rows must be >= 1, got {self.rows}")
        if self.at not in ("start", "before_sft"):
            raise ValueError(f"bind.at must be 'start' or 'before_sft', got {self.at!r}")


@dataclass(kw_only=True)
class SftStage(Stage):
    """SFT keeps the pre-trained ViT frozen and trains the connector and decoder; a trainable
    connector lets the decoder read words (docs/demo-log.md).  ``freeze=[]`` trains everything
    (MM1.5)."""

    steps: int = 1200
    tasks: list[str] = dataclasses.field(default_factory=lambda: list(DEMO_SFT_TASKS))
    freeze: list[Part] = dataclasses.field(default_factory=lambda: ["vision"])
    # Relative sampling weight per task (1.0 when not listed), the demo's stand-in for the
    # paper's category ratios α: a task at weight w counts as w × its size in the mixer.
    # Grounding at 2 (the paper's α for refer&ground) lifts it to 0.66 and takes reading down to
    # 0.20–0.32, so the demo keeps equal weights (docs/demo-log.md, ninth session).
    weights: dict[str, float] = dataclasses.field(default_factory=dict)
    # How SFT (and the evaluation after it) splits images: None keeps the model's dynamic
    # splitting (MM1.5 §3.5); "none" shows every image as one low-resolution tile (Table 1's
    # no-splitting row; `mm15 demo --ablate splitting`).
    split: Literal["dynamic", "none"] | None = None
    # [n_min, n_max] of dynamic splitting in SFT and the evaluation after it (None: the
    # model's, (1, 4)); `mm15 demo --ablate inference_grid` trains at [2, 2].
    grid: list[int] | None = None
    # What region coordinates are normalised by (FormatConfig.coords): "image" (mm15) or
    # "grid", the grid-dependent control of Table 2 row 7.
    coords: Literal["image", "grid"] = "image"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.split not in (None, "dynamic", "none"):
            raise ValueError(f"sft.split must be 'dynamic' or 'none', got {self.split!r}")
        if self.grid is not None and not (
            len(self.grid) == 2
            and all(type(n) is int for n in self.grid)
            and 1 <= self.grid[0] <= self.grid[1]
        ):
            raise ValueError(
                f"sft.grid must be [n_min, n_max] with 1 <= n_min <= n_max, got {self.grid!r}"
            )
        if self.coords not in ("image", "grid"):
            raise ValueError(f"sft.coords must be 'image' or 'grid', got {self.coords!r}")
        if not self.tasks:
            raise ValueError("sft.tasks is empty; give at least one SFT task")
        _check_tasks("sft.tasks", self.tasks, SFT_TASKS)
        _check_parts("sft.freeze", self.freeze)
        _check_tasks("sft.weights", list(self.weights), SFT_TASKS)
        if bad := sorted(k for k, w in self.weights.items() if not w > 0):
            raise ValueError(f"sft.weights must be > 0: {bad}")


@dataclass(kw_only=True)
class CorpusSizes:
    train_per_task: int = 3000  # unique samples per trained SFT task; 600 repeat too often
    test_per_task: int = 50  # held-out items per evaluated SFT task


@dataclass(kw_only=True)
class TokenizerKnobs:
    vocab_size: int = 1600
    max_digits: int = 1  # numbers: 1 = digit by digit, 3 = one token up to 999

    def __post_init__(self) -> None:
        if not 1 <= self.max_digits <= 3:
            raise ValueError(f"tokenizer.max_digits must be 1, 2 or 3, got {self.max_digits}")


@dataclass(kw_only=True)
class DecoderKnobs:
    # The weight init (LMConfig.init_std): at 64 wide, 0.1 learns several times faster than the
    # large models' 0.02 (docs/demo-log.md).
    init_std: float = 0.1
    layers: int = 4  # the tiny preset has 4 blocks

    def __post_init__(self) -> None:
        if self.layers < 1:
            raise ValueError(f"lm.layers must be >= 1, got {self.layers}")
        if not self.init_std > 0:
            raise ValueError(f"lm.init_std must be > 0, got {self.init_std}")


@dataclass(kw_only=True)
class DemoConfig:
    """The demo's knobs; the defaults finish in under 10 minutes on 2 CPU cores."""

    seed: int = 0
    # Intra-op threads for the whole run (torch.set_num_threads).  Fixed rather than "all cores":
    # a sum split over another number of threads adds in another order, the greedy answers
    # follow, and the same seed would give another table on a bigger machine.
    threads: int = 2
    corpus: CorpusSizes = dataclasses.field(default_factory=CorpusSizes)
    tokenizer: TokenizerKnobs = dataclasses.field(default_factory=TokenizerKnobs)
    lm: DecoderKnobs = dataclasses.field(default_factory=DecoderKnobs)
    # What every stage of the training loop shares unless it says otherwise.
    lr: float = 1e-3  # 3e-3 learns text priors but not image lookups (docs/demo-log.md)
    batch_rows: int = 8
    seq_len: int = 512
    # The stages, in the order they run (bind: where bind.at says).
    encoder: EncoderWarmup = dataclasses.field(default_factory=EncoderWarmup)
    bind: BindStage = dataclasses.field(default_factory=BindStage)
    align: AlignStage = dataclasses.field(default_factory=AlignStage)
    pretrain: PretrainStage = dataclasses.field(default_factory=PretrainStage)
    cpt: CptStage = dataclasses.field(default_factory=CptStage)
    sft: SftStage = dataclasses.field(default_factory=SftStage)

    def __post_init__(self) -> None:
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        for key in ("batch_rows", "seq_len", "threads"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be >= 1, got {getattr(self, key)}")


# The flat fields before issue 21 and their nested paths now (docs/demo.md, "Config paths").
RENAMED = {
    **{
        f"{stage}_{knob}": f"{stage}.{knob}"
        for stage, knobs in (
            ("encoder", ("steps", "heads", "lr")),
            ("bind", ("steps", "tasks", "freeze", "rows", "at")),
            ("align", ("steps",)),
            ("pretrain", ("steps", "tasks")),
            ("cpt", ("steps", "tasks")),
            ("sft", ("steps", "tasks", "freeze", "weights")),
        )
        for knob in knobs
    },
    "train_per_sft_task": "corpus.train_per_task",
    "test_per_task": "corpus.test_per_task",
    "vocab_size": "tokenizer.vocab_size",
    "max_digits": "tokenizer.max_digits",
    "lm_init_std": "lm.init_std",
    "lm_layers": "lm.layers",
}


def check_renamed(overrides: list[str]) -> None:
    """``--set`` with a flat name of before issue 21: an error naming its new path."""
    for item in overrides:
        key = item.split("=", 1)[0].split(".", 1)[0]
        if key in RENAMED:
            raise ValueError(
                f"override {item!r}: {key} is now {RENAMED[key]} (docs/demo.md, Config paths)"
            )
