"""``mm15 demo``: the whole MM1.5 recipe, in minutes, on a laptop CPU.

1. Generate a deterministic synthetic corpus for every stage and category
   (:mod:`mm15.demo.data.tasks`) and train a byte-level BPE tokenizer on its text.
2. Pre-train the tiny preset's encoder and connector on dense scene targets
   (:mod:`mm15.demo.encoder`, standing in for the paper's pretrained CLIP encoder), then train
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

import contextlib
import dataclasses
import shutil
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from mm15.data.config import (
    CPTWeights,
    FlatWeights,
    MixtureConfig,
    MixtureWeights,
    PackingConfig,
    PretrainWeights,
    SourceConfig,
)
from mm15.demo.config import DemoConfig, Stage
from mm15.demo.data.corpus import CorpusFile, CorpusIndex, generate_corpus
from mm15.demo.data.tasks import SFT_TASKS
from mm15.presets import tiny
from mm15.tokenizer import MM15Tokenizer, train_bpe_tokenizer
from mm15.train.config import DatasetConfig, StageConfig, TrainConfig
from mm15.train.optim import OptimConfig
from mm15.train.parallel import ParallelConfig

if TYPE_CHECKING:  # annotations only: the model, loop and suite load when a step needs them
    from mm15.config import FormatConfig, ImageConfig
    from mm15.eval.synthetic_suite import SuiteResult
    from mm15.model.mm15 import MM15
    from mm15.train.loop import RunResult


def corpus_sizes(cfg: DemoConfig) -> dict[str, int]:
    pretrain = {
        "caption/shapes": 800,
        "caption/grounded": 800,
        "interleaved/shapes": 200,
        "text/facts": 600,
    }
    cpt = {"ocr/pages": 300, "ocr/words": 600}
    trained = {*cfg.sft.tasks, *(cfg.bind.tasks if cfg.bind.steps else ())}
    return {
        "caption/object": 800,
        **{t: n * (t in cfg.pretrain.tasks) for t, n in pretrain.items()},
        **{t: n * (t in cfg.cpt.tasks) for t, n in cpt.items()},
        **{t: cfg.corpus.train_per_task * (t in trained) for t in SFT_TASKS},
        **{f"test/{t}": cfg.corpus.test_per_task * (t in cfg.sft.tasks) for t in SFT_TASKS},
    }


def corpus_texts(corpus: CorpusIndex) -> list[str]:
    """Every text part of the training files (never the test files), plus the numbers 0–999:
    box coordinates are rendered from regions at tokenisation time, so they are not in the text."""
    texts = [" ".join(str(n) for n in range(1000))] * 5
    for f in corpus.files:
        if f.split == "train":
            for sample in corpus.load(f.task, f.split):
                texts += [p.text for m in sample.messages for p in m.content if p.text]
    return texts


def demo_train_config(
    cfg: DemoConfig, corpus: CorpusIndex, tok_dir: Path, run_dir: Path, vocab: int
) -> TrainConfig:
    """The tiny preset and its stages: [bind], alignment, pre-training, continual pre-training,
    [bind], SFT (the bind stage runs at ``cfg.bind.at``, or not at all with 0 steps)."""
    model = tiny(vocab_size=vocab)
    model.lm.init_std = cfg.lm.init_std
    model.lm.n_layers = cfg.lm.layers
    low_res = dataclasses.replace(model.image, split="none")
    bind = [_bind_stage(cfg, corpus)] if cfg.bind.steps else []
    return TrainConfig(
        model=model,
        tokenizer=str(tok_dir),
        run_dir=str(run_dir),
        seed=cfg.seed,
        log_every=20,
        ckpt_every=10_000,
        keep_last=1,
        parallel=ParallelConfig(strategy="none", autocast="none"),
        stages=[
            *(bind if cfg.bind.at == "start" else []),
            _align_stage(cfg, corpus, low_res),
            _pretrain_stage(cfg, corpus, low_res),
            _cpt_stage(cfg, corpus),
            *(bind if cfg.bind.at == "before_sft" else []),
            _sft_stage(cfg, corpus, sft_image(cfg, model.image), model.format),
        ],
    )


def _bind_stage(cfg: DemoConfig, corpus: CorpusIndex) -> StageConfig:
    """Small steps at a constant LR on the lookup tasks (:class:`~mm15.demo.config.BindStage`)."""
    b = cfg.bind
    return _stage(
        cfg,
        corpus,
        name="bind",
        kind="sft",
        knobs=b,
        tasks=list(b.tasks),
        mix=FlatWeights(),
        warmup=10,
        freeze=list(b.freeze),
        rows=b.rows,
        min_lr_ratio=1.0,
    )


def _align_stage(cfg: DemoConfig, corpus: CorpusIndex, low_res: ImageConfig) -> StageConfig:
    """Single-object captions at low resolution, before the paper's three stages."""
    return _stage(
        cfg,
        corpus,
        name="align",
        kind="pretrain",
        knobs=cfg.align,
        tasks=["caption/object"],
        mix=PretrainWeights(),
        image=low_res,
    )


def _pretrain_stage(cfg: DemoConfig, corpus: CorpusIndex, low_res: ImageConfig) -> StageConfig:
    """Stage 1 (MM1.5 §3.4): captions, interleaved documents and text, low resolution, no
    splitting."""
    return _stage(
        cfg,
        corpus,
        name="pretrain",
        kind="pretrain",
        knobs=cfg.pretrain,
        tasks=list(cfg.pretrain.tasks),
        mix=PretrainWeights(),
        image=low_res,
    )


def _cpt_stage(cfg: DemoConfig, corpus: CorpusIndex) -> StageConfig:
    """Stage 2 (MM1.5 §3.3): OCR data at high resolution with dynamic splitting (§3.5)."""
    return _stage(
        cfg,
        corpus,
        name="cpt",
        kind="cpt",
        knobs=cfg.cpt,
        tasks=list(cfg.cpt.tasks),
        mix=CPTWeights(),
    )


def sft_image(cfg: DemoConfig, model_image: ImageConfig) -> ImageConfig | None:
    """The image settings of SFT and of the evaluation after it: the model's, unless
    ``sft.split`` changes the splitting or ``sft.grid`` its ``(n_min, n_max)`` (None: the
    stage keeps the model's)."""
    sft = cfg.sft
    if sft.split is None and sft.grid is None:
        return None
    image = model_image if sft.split is None else dataclasses.replace(model_image, split=sft.split)
    if sft.grid is not None:
        image = dataclasses.replace(image, n_min=sft.grid[0], n_max=sft.grid[1])
    return image


def _sft_stage(
    cfg: DemoConfig, corpus: CorpusIndex, image: ImageConfig | None, fmt: FormatConfig
) -> StageConfig:
    """Stage 3 (MM1.5 §3.2): the SFT tasks, each weighted by ``cfg.sft.weights``; with
    ``sft.coords`` other than the model's, the stage trains (and records) that format."""
    stage = _stage(
        cfg,
        corpus,
        name="sft",
        kind="sft",
        knobs=cfg.sft,
        tasks=list(cfg.sft.tasks),
        mix=FlatWeights(),
        warmup=30,
        freeze=list(cfg.sft.freeze),
        weights=cfg.sft.weights,
        image=image,
    )
    if cfg.sft.coords != fmt.coords:
        stage.format = dataclasses.replace(fmt, coords=cfg.sft.coords)
    return stage


def _stage(
    cfg: DemoConfig,
    corpus: CorpusIndex,
    *,
    name: str,
    kind: str,
    knobs: Stage,
    tasks: list[str],
    mix: MixtureWeights,
    image: ImageConfig | None = None,
    warmup: int = 10,
    freeze: Sequence[str] = (),
    weights: dict[str, float] | None = None,
    rows: int | None = None,
    min_lr_ratio: float = 0.05,
) -> StageConfig:
    """One stage over the corpus files of ``tasks``; ``knobs`` gives its steps and LR (None: the
    shared ``cfg.lr``), ``rows`` its batch rows (None: ``cfg.batch_rows``)."""
    files = [corpus.file(t) for t in tasks]
    return StageConfig(
        name=name,
        kind=kind,
        steps=knobs.steps,
        batch_rows=cfg.batch_rows if rows is None else rows,
        lr=cfg.lr if knobs.lr is None else knobs.lr,
        warmup_steps=min(warmup, knobs.steps),
        min_lr_ratio=min_lr_ratio,
        image=image,
        optim=OptimConfig(kind="adamw", grad_clip=1.0),
        mixture=_mixture(files, mix, weights or {}),
        datasets=[
            DatasetConfig(
                name=f.task,
                kind="canonical",
                category=f.category,
                paths=[str(corpus.root / f.path)],
                options={"root": str(corpus.root)},
            )
            for f in files
        ],
        packing=PackingConfig(seq_len=cfg.seq_len, max_images_per_sequence=16),
        freeze=list(freeze),  # format: the model's (ModelConfig.format)
    )


def _mixture(
    files: list[CorpusFile], mix: MixtureWeights, weights: dict[str, float]
) -> MixtureConfig:
    """One source per file; a task listed in ``weights`` counts as weight × its size."""
    sources = [
        SourceConfig(
            name=f.task,
            category=f.category,
            size=round(weights[f.task] * f.count) if f.task in weights else None,
        )
        for f in files
    ]
    return MixtureConfig(weights=mix, sources=sources)


def pretrain_encoder_checkpoint(cfg: DemoConfig, train_cfg: TrainConfig, tok, out: Path) -> Path:
    """The seeded initial model with its encoder pre-trained (:mod:`mm15.demo.encoder`)."""
    from mm15.demo.encoder import EncoderPretrainConfig, pretrain_encoder
    from mm15.model.mm15 import MM15
    from mm15.services.checkpoint import save_checkpoint

    torch.manual_seed(cfg.seed)
    model = MM15(dataclasses.replace(train_cfg.model, image_token_id=tok.image_token_id))
    model.init_weights()
    enc = cfg.encoder
    acc = pretrain_encoder(
        model,
        EncoderPretrainConfig(steps=enc.steps, seed=cfg.seed, heads=tuple(enc.heads), lr=enc.lr),
        log=lambda m: print(m, flush=True),
    )
    print(
        "  encoder probe on held-out scenes: " + ", ".join(f"{k} {v:.2f}" for k, v in acc.items()),
        flush=True,
    )
    return save_checkpoint(model, tok, out)


@contextlib.contextmanager
def demo_threads(cfg: DemoConfig) -> Iterator[None]:
    """Torch's intra-op threads at ``cfg.threads`` for the block, restored after: the float
    sums, and so the table, do not depend on the machine's core count (``DemoConfig.threads``)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def run_demo(*, out: Path, cfg: DemoConfig | None = None) -> int:
    """The four steps of the module docstring; the report lands in ``out``, the model in
    ``out/model``."""
    cfg = cfg or DemoConfig()
    with demo_threads(cfg):
        return _run(out, cfg)


def _run(out: Path, cfg: DemoConfig) -> int:
    from mm15.demo.report import write_report

    t0 = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    corpus, tok = _make_corpus(cfg, out, t0)
    result, train_seconds, model_dir = _train(cfg, corpus, tok, out)
    model, suite = _evaluate(cfg, corpus, model_dir)

    print("[demo 4/4] writing the report", flush=True)
    seconds = time.perf_counter() - t0
    report = write_report(
        out,
        suite=suite,
        corpus=corpus,
        train_result=result,
        train_seconds=train_seconds,
        total_seconds=seconds,
        config=cfg,
        model=model,
    )
    print((out / "report.md").read_text())
    below = [n for n, c in report["categories"].items() if c["score"] < 2 * c["chance"]]
    print(f"done in {seconds:.0f} s; model in {model_dir}")
    if below:  # the run worked; the scores are what they are (docs/demo.md)
        print(f"below 2× chance: {', '.join(below)}")
    return 0


def _make_corpus(cfg: DemoConfig, out: Path, t0: float) -> tuple[CorpusIndex, MM15Tokenizer]:
    """Step 1: the synthetic corpus in ``out/corpus`` and a BPE tokenizer trained on its text."""
    print(f"[demo 1/4] generating the synthetic corpus in {out / 'corpus'}", flush=True)
    corpus = generate_corpus(
        out / "corpus", seed=cfg.seed, sizes=corpus_sizes(cfg), workers=cfg.threads
    )
    tok = train_bpe_tokenizer(
        corpus_texts(corpus),
        vocab_size=cfg.tokenizer.vocab_size,
        max_digits=cfg.tokenizer.max_digits,
    )
    tok.save(out / "tokenizer")
    print(
        f"  {sum(f.count for f in corpus.files)} samples in {len(corpus.files)} files; "
        f"tokenizer of {len(tok)} tokens ({time.perf_counter() - t0:.0f} s)",
        flush=True,
    )
    return corpus, tok


def _train(
    cfg: DemoConfig, corpus: CorpusIndex, tok: MM15Tokenizer, out: Path
) -> tuple[RunResult, float, Path]:
    """Step 2: the encoder warm-up, then every stage in the training loop; the final model is
    moved to ``out/model``.  Returns the run's result, its seconds and the model's folder."""
    from mm15.train.loop import train

    stages = "bind, alignment" if cfg.bind.steps and cfg.bind.at == "start" else "alignment"
    print(f"[demo 2/4] training the tiny preset: {stages}, then the three stages", flush=True)
    run_dir = out / "run"
    shutil.rmtree(run_dir, ignore_errors=True)
    train_cfg = demo_train_config(cfg, corpus, out / "tokenizer", run_dir, len(tok))
    if cfg.encoder.steps:
        train_cfg.init_from = str(pretrain_encoder_checkpoint(cfg, train_cfg, tok, out / "encoder"))
    t1 = time.perf_counter()
    result = train(train_cfg)
    train_seconds = time.perf_counter() - t1
    model_dir = out / "model"
    shutil.rmtree(model_dir, ignore_errors=True)
    shutil.move(str(result.final_model), model_dir)
    return result, train_seconds, model_dir


def _evaluate(cfg: DemoConfig, corpus: CorpusIndex, model_dir: Path) -> tuple[MM15, SuiteResult]:
    """Step 3: the trained model on the held-out test sets of the SFT tasks."""
    from mm15.eval.synthetic_suite import evaluate_synthetic
    from mm15.services.checkpoint import load_checkpoint

    print("[demo 3/4] evaluating held-out test sets per category", flush=True)
    model, tok = load_checkpoint(model_dir, grid_coords=True)
    model.cfg.image = sft_image(cfg, model.cfg.image) or model.cfg.image  # as SFT showed images
    suite = evaluate_synthetic(model, tok, corpus, tasks=cfg.sft.tasks, on_batch=_show_progress)
    return model, suite


def _show_progress(done: int, total: int) -> None:
    if done % 128 < 32 or done == total:
        print(f"  evaluated {done}/{total}", flush=True)
