"""``mm15 demo``: the whole MM1.5 recipe, in minutes, on a laptop CPU.

1. Generate a deterministic synthetic corpus for every stage and category
   (:mod:`mm15.data.synthetic`) and train a byte-level BPE tokenizer on its text.
2. Pre-train the tiny preset's encoder and connector on dense scene targets
   (:mod:`mm15.demo_encoder`, standing in for the paper's pretrained CLIP encoder), then train
   with the real trainer: a short "bind" stage that teaches the fresh decoder to look up the
   object a question names (standing in for the in-context lookups of a pre-trained LLM), a
   short alignment stage on single-object captions, then the three stages: pre-training on
   captions, interleaved documents and text (50:10:40, low resolution, no splitting), continual
   pre-training on rendered text pages (high resolution, dynamic splitting), then SFT.
3. Evaluate the held-out test sets per category (exact match, multiple choice, Acc@IoU>0.5),
   each beside its chance baseline, and write ``report.json``, ``report.md``, plots and a few
   grounded answers drawn on their images.  The final model is an mm15 checkpoint in
   ``OUT/model`` that ``mm15 chat/eval/serve --model`` load.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

import torch

from mm15.config import MixtureConfig, PackingConfig, SourceConfig
from mm15.data.synthetic import SFT_TASKS, TASKS
from mm15.data.synthetic_corpus import CorpusIndex, generate_corpus
from mm15.demo_encoder import HEADS
from mm15.presets import tiny
from mm15.tokenizer import train_bpe_tokenizer
from mm15.train.config import DatasetConfig, Part, StageConfig, TrainConfig
from mm15.train.optim import OptimConfig
from mm15.train.parallel import ParallelConfig

# One SFT task per category: with all tasks in the budget each task gets too few samples for the
# tiny model to learn to read images (docs/demo.md); ``--set sft_tasks=[...]`` trains any subset,
# SFT_TASKS all of them.
DEMO_SFT_TASKS = ("general/colour", "text_rich/word", "refer_ground/box", "math/count",
                  "multi_image/common", "video/direction", "ui/read_selected", "text_only/add")  # fmt: skip


PRETRAIN_TASKS = ("caption/object", "caption/shapes", "interleaved/shapes", "text/facts")
CPT_TASKS = ("ocr/pages", "ocr/words")


@dataclass(kw_only=True)
class DemoConfig:
    """The demo's knobs; the defaults finish in under 10 minutes on 2 CPU cores."""

    seed: int = 0
    # The paper starts from a pretrained CLIP encoder; the demo pre-trains its own encoder on
    # dense scene targets (mm15.demo_encoder; 0 steps starts from a random one), then a short
    # alignment stage on single-object captions (like LLaVA's projector alignment) teaches the
    # decoder that images carry answers, before the paper's three stages (docs/demo.md).
    # Its dense heads (mm15.demo_encoder.HEADS): "word" makes it read the button labels and
    # sign words of the UI and text-rich tasks, as CLIP reads text; "place" puts each token's
    # own position into its features, which the coordinates of grounding need.
    encoder_steps: int = 1000
    encoder_heads: list[str] = dataclasses.field(
        default_factory=lambda: ["colour", "shape", "place", "word"]
    )
    encoder_lr: float = 6e-3
    align_steps: int = 60
    # The pre-training stage's sources (SPEC §4: captions, interleaved, text at 50:10:40 by
    # category; sources of one category share its weight).  "caption/grounded" adds GRIT-style
    # captions with each object's box (measured in docs/demo.md; not a default).
    pretrain_tasks: list[str] = dataclasses.field(default_factory=lambda: list(PRETRAIN_TASKS))
    # The continual pre-training stage's OCR sources, sampled equally (SPEC §4): rendered pages
    # (PDFA/IDL-like) and rendered words on signs and buttons (RenderedText-like).
    cpt_tasks: list[str] = dataclasses.field(default_factory=lambda: list(CPT_TASKS))
    train_per_sft_task: int = 3000  # unique samples; 600 repeat too often (docs/demo.md)
    test_per_task: int = 50
    vocab_size: int = 1600
    pretrain_steps: int = 120
    cpt_steps: int = 120
    sft_steps: int = 1200
    batch_rows: int = 8
    seq_len: int = 512
    lr: float = 1e-3  # 3e-3 learns text priors but not image lookups (docs/demo.md)
    # SFT keeps the pre-trained ViT frozen and trains the connector and decoder; a trainable
    # connector lets the decoder read words (docs/demo.md).  [] trains everything (MM1.5).
    sft_freeze: list[Part] = dataclasses.field(default_factory=lambda: ["vision"])
    max_digits: int = 1  # numbers in the tokenizer: 1 = digit by digit, 3 = one token up to 999
    # The decoder's weight init (LMConfig.init_std): at 64 wide, 0.1 learns several times faster
    # than the large models' 0.02 (docs/demo.md).
    lm_init_std: float = 0.1
    # The decoder's depth (the tiny preset has 4 blocks).
    lm_layers: int = 4
    sft_tasks: list[str] = dataclasses.field(default_factory=lambda: list(DEMO_SFT_TASKS))
    # The "bind" stage: SFT on tasks whose answer is one decision about the object the question
    # names ("the yellow star, top left"), so that the decoder learns to look the named object
    # up in the image.  MM1.5's decoder is a pre-trained LLM that arrives with such in-context
    # lookups; the demo's is trained from scratch, and in the full mixture the many-token
    # answers of the other tasks keep that lookup from being learnt (docs/demo.md).  On the
    # fresh decoder it is learnt in 1000 small steps; after pre-training it is not.  0: no stage.
    bind_steps: int = 1000
    bind_tasks: list[str] = dataclasses.field(
        default_factory=lambda: ["refer_ground/region", "general/colour"]
    )
    # The parts the bind stage keeps frozen: the connector too, so that its grid scenes alone do
    # not reshape the features the reading tasks need.
    bind_freeze: list[Part] = dataclasses.field(default_factory=lambda: ["vision", "connector"])
    # Rows per bind step (a few dozen short samples): the lookup is learnt in a number of steps
    # rather than of samples, so small steps at a constant LR are the cheap way there.
    bind_rows: int = 3
    # Where the bind stage runs: "start" (right after the encoder stage, on the fresh decoder,
    # as a pre-trained LLM arrives with its in-context lookups) or "before_sft".
    bind_at: Literal["start", "before_sft"] = "start"
    # Relative SFT sampling weight per task (1.0 when not listed), the demo's stand-in for the
    # paper's category ratios α: a task at weight w counts as w × its size in the mixer.
    # Grounding at 2 (the paper's α for refer&ground) lifts it to 0.66 and takes reading down to
    # 0.20–0.32, so the demo keeps equal weights (docs/demo.md, ninth session).
    sft_weights: dict[str, float] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.lm_layers < 1:
            raise ValueError(f"lm_layers must be >= 1, got {self.lm_layers}")
        if not self.lm_init_std > 0:
            raise ValueError(f"lm_init_std must be > 0, got {self.lm_init_std}")
        if not 1 <= self.max_digits <= 3:
            raise ValueError(f"max_digits must be 1, 2 or 3, got {self.max_digits}")
        for key in ("sft_freeze", "bind_freeze"):
            if bad := sorted(set(getattr(self, key)) - set(get_args(Part))):
                raise ValueError(f"{key}: unknown parts {bad}; choose from {get_args(Part)}")
        for key, stage in (("pretrain_tasks", "pretrain"), ("cpt_tasks", "cpt")):
            known = [n for n, t in TASKS.items() if t.stage == stage]
            if not getattr(self, key):
                raise ValueError(f"{key} is empty; give at least one of {known}")
            if bad := sorted(set(getattr(self, key)) - set(known)):
                raise ValueError(f"{key}: unknown {bad}; choose from {known}")
        if self.bind_steps and not self.bind_tasks:
            raise ValueError("bind_tasks is empty; give at least one SFT task or bind_steps=0")
        if bad := sorted(set(self.bind_tasks) - set(SFT_TASKS)):
            raise ValueError(f"bind_tasks: unknown {bad}; choose from {list(SFT_TASKS)}")
        if not self.sft_tasks:
            raise ValueError("sft_tasks is empty; give at least one SFT task")
        if bad := sorted(set(self.sft_tasks) - set(SFT_TASKS)):
            raise ValueError(f"sft_tasks: unknown {bad}; choose from {list(SFT_TASKS)}")
        if bad := sorted(set(self.sft_weights) - set(SFT_TASKS)):
            raise ValueError(f"sft_weights: unknown tasks {bad}; choose from {list(SFT_TASKS)}")
        if bad := sorted(k for k, w in self.sft_weights.items() if not w > 0):
            raise ValueError(f"sft_weights must be > 0: {bad}")
        if bad := sorted(set(self.encoder_heads) - set(HEADS)):
            raise ValueError(f"encoder_heads: unknown {bad}; choose from {list(HEADS)}")
        if self.encoder_steps and not self.encoder_heads:
            raise ValueError("encoder_heads is empty; give at least one head or encoder_steps=0")
        if not self.encoder_lr > 0:
            raise ValueError(f"encoder_lr must be > 0, got {self.encoder_lr}")
        if self.bind_at not in ("start", "before_sft"):
            raise ValueError(f"bind_at must be 'start' or 'before_sft', got {self.bind_at!r}")
        if self.bind_rows < 1:
            raise ValueError(f"bind_rows must be >= 1, got {self.bind_rows}")
        steps = ("encoder_steps", "align_steps", "pretrain_steps", "cpt_steps", "bind_steps",
                 "sft_steps")  # fmt: skip
        if neg := [k for k in steps if getattr(self, k) < 0]:
            raise ValueError(f"step counts must be >= 0: {neg}")


def corpus_sizes(cfg: DemoConfig) -> dict[str, int]:
    pretrain = {
        "caption/shapes": 800,
        "caption/grounded": 800,
        "interleaved/shapes": 200,
        "text/facts": 600,
    }
    cpt = {"ocr/pages": 300, "ocr/words": 600}
    trained = {*cfg.sft_tasks, *(cfg.bind_tasks if cfg.bind_steps else ())}
    return {"caption/object": 800,
            **{t: n * (t in cfg.pretrain_tasks) for t, n in pretrain.items()},
            **{t: n * (t in cfg.cpt_tasks) for t, n in cpt.items()},
            **{t: cfg.train_per_sft_task * (t in trained) for t in SFT_TASKS},
            **{f"test/{t}": cfg.test_per_task * (t in cfg.sft_tasks) for t in SFT_TASKS}}  # fmt: skip


def _texts(corpus: CorpusIndex) -> list[str]:
    """Every text part of the training files (never the test files), plus the numbers 0–999:
    box coordinates are rendered from regions at tokenisation time, so they are not in the text."""
    texts = [" ".join(str(n) for n in range(1000))] * 5
    for f in corpus.files:
        if f.split == "train":
            for sample in corpus.load(f.task, f.split):
                texts += [p.text for m in sample.messages for p in m.content if p.text]
    return texts


def demo_train_config(cfg: DemoConfig, corpus: CorpusIndex, tok_dir: Path, run_dir: Path,
                      vocab: int) -> TrainConfig:  # fmt: skip
    model = tiny(vocab_size=vocab)
    model.lm.init_std = cfg.lm_init_std
    model.lm.n_layers = cfg.lm_layers

    def stage(name, kind, tasks, steps, rule, image=None, warmup=10, freeze=(),
              weights=None, rows=cfg.batch_rows, min_lr_ratio=0.05) -> StageConfig:  # fmt: skip
        files = [corpus.file(t) for t in tasks]
        weights = weights or {}
        return StageConfig(
            name=name, kind=kind, steps=steps, batch_rows=rows, lr=cfg.lr,
            warmup_steps=min(warmup, steps), min_lr_ratio=min_lr_ratio, image=image,
            optim=OptimConfig(kind="adamw", grad_clip=1.0),
            mixture=MixtureConfig(rule=rule, sources=[
                SourceConfig(name=f.task, category=f.category,
                             size=round(weights[f.task] * f.count) if f.task in weights else None)
                for f in files]),
            datasets=[DatasetConfig(name=f.task, kind="canonical", category=f.category,
                                    paths=[str(corpus.root / f.path)],
                                    options={"root": str(corpus.root)}) for f in files],
            packing=PackingConfig(seq_len=cfg.seq_len, max_images_per_sequence=16),
            freeze=list(freeze),  # format: the model's (ModelConfig.format)
        )  # fmt: skip

    low_res = dataclasses.replace(model.image, split="none")
    bind = [stage("bind", "sft", list(cfg.bind_tasks), cfg.bind_steps, "flat", warmup=10,
                  freeze=list(cfg.bind_freeze), rows=cfg.bind_rows, min_lr_ratio=1.0)
            ] if cfg.bind_steps else []  # fmt: skip
    return TrainConfig(
        model=model, tokenizer=str(tok_dir), run_dir=str(run_dir), seed=cfg.seed,
        log_every=20, ckpt_every=10_000, keep_last=1,
        parallel=ParallelConfig(strategy="none", autocast="none"),
        stages=[
            *(bind if cfg.bind_at == "start" else []),
            stage("align", "pretrain", ["caption/object"], cfg.align_steps, "pretrain",
                  image=low_res),
            stage("pretrain", "pretrain", list(cfg.pretrain_tasks), cfg.pretrain_steps, "pretrain",
                  image=low_res),
            stage("cpt", "cpt", list(cfg.cpt_tasks), cfg.cpt_steps, "cpt"),
            *(bind if cfg.bind_at == "before_sft" else []),
            stage("sft", "sft", list(cfg.sft_tasks), cfg.sft_steps,
                  "flat", warmup=30, freeze=list(cfg.sft_freeze), weights=cfg.sft_weights),
        ],
    )  # fmt: skip


def _pretrain_encoder(cfg: DemoConfig, train_cfg: TrainConfig, tok, out: Path) -> Path:
    """The seeded initial model with its encoder pre-trained (:mod:`mm15.demo_encoder`)."""
    from mm15.checkpoint import save_checkpoint
    from mm15.demo_encoder import EncoderPretrainConfig, pretrain_encoder
    from mm15.model.mm15 import MM15

    torch.manual_seed(cfg.seed)
    model = MM15(dataclasses.replace(train_cfg.model, image_token_id=tok.image_token_id))
    model.init_weights()
    acc = pretrain_encoder(model, EncoderPretrainConfig(
        steps=cfg.encoder_steps, seed=cfg.seed, heads=tuple(cfg.encoder_heads), lr=cfg.encoder_lr),
                           log=lambda m: print(m, flush=True))  # fmt: skip
    print("  encoder probe on held-out scenes: " + ", ".join(f"{k} {v:.2f}" for k, v in acc.items()),
          flush=True)  # fmt: skip
    return save_checkpoint(model, tok, out)


def run_demo(*, out: Path, cfg: DemoConfig | None = None) -> int:
    from mm15.checkpoint import load_checkpoint
    from mm15.demo_report import write_report
    from mm15.eval.synthetic_suite import evaluate_synthetic
    from mm15.train.loop import train

    cfg = cfg or DemoConfig()
    t0 = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    print(f"[demo 1/4] generating the synthetic corpus in {out / 'corpus'}", flush=True)
    corpus = generate_corpus(out / "corpus", seed=cfg.seed, sizes=corpus_sizes(cfg))
    tok = train_bpe_tokenizer(_texts(corpus), vocab_size=cfg.vocab_size, max_digits=cfg.max_digits)
    tok.save(out / "tokenizer")
    print(
        f"  {sum(f.count for f in corpus.files)} samples in {len(corpus.files)} files; "
        f"tokenizer of {len(tok)} tokens ({time.perf_counter() - t0:.0f} s)",
        flush=True,
    )

    stages = "bind, alignment" if cfg.bind_steps and cfg.bind_at == "start" else "alignment"
    print(f"[demo 2/4] training the tiny preset: {stages}, then the three stages", flush=True)
    run_dir = out / "run"
    shutil.rmtree(run_dir, ignore_errors=True)
    train_cfg = demo_train_config(cfg, corpus, out / "tokenizer", run_dir, len(tok))
    if cfg.encoder_steps:
        train_cfg.init_from = str(_pretrain_encoder(cfg, train_cfg, tok, out / "encoder"))
    t1 = time.perf_counter()
    result = train(train_cfg)
    train_seconds = time.perf_counter() - t1
    model_dir = out / "model"
    shutil.rmtree(model_dir, ignore_errors=True)
    shutil.move(str(result.final_model), model_dir)

    print("[demo 3/4] evaluating held-out test sets per category", flush=True)
    model, tok = load_checkpoint(model_dir)
    suite = evaluate_synthetic(
        model, tok, corpus, tasks=cfg.sft_tasks,
        on_batch=lambda done, total: print(f"  evaluated {done}/{total}", flush=True)
        if done % 128 < 32 or done == total else None,
    )  # fmt: skip

    print("[demo 4/4] writing the report", flush=True)
    seconds = time.perf_counter() - t0
    report = write_report(out, suite=suite, corpus=corpus, train_result=result,
                          train_seconds=train_seconds, total_seconds=seconds,
                          config=cfg, model=model)  # fmt: skip
    print((out / "report.md").read_text())
    below = [n for n, c in report["categories"].items() if c["score"] < 2 * c["chance"]]
    print(f"done in {seconds:.0f} s; model in {model_dir}")
    if below:  # the run worked; the scores are what they are (docs/demo.md)
        print(f"below 2× chance: {', '.join(below)}")
    return 0
