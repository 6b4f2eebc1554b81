"""Training presets: the paper's recipe (SPEC §4) at every size, its variants, and the demo.

Each preset is a function returning a full :class:`TrainConfig`; the datasets it names are
placeholders under ``data/`` that a user points at their copies with ``--set``, e.g.::

    mm15 train --preset paper-3b \\
        --set 'stages.0.datasets.0.paths=["/data/cc12m/*.tar"]' --set run_dir=runs/3b

Numbers from the paper: stage 1 at 378 px without splitting, 144 tokens, ≤16 images per 4096
sequence, batch 512, 200k steps, peak LR from MM1 Eq. 1, mixture 50:10:40; stage 2 on the OCR
sets sampled equally, batch 256, AdaFactor, LR 1e-5, 30k steps, high resolution; stage 3 SFT with
α/w category weights, dynamic (4, 9) at 672, batch 256, LR 2e-5, 23k steps (one epoch).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from mm15.config import (
    CPTWeights,
    MixtureConfig,
    ModelConfig,
    PackingConfig,
    PretrainWeights,
    SourceConfig,
)
from mm15.presets import get_preset
from mm15.train.config import DatasetConfig, StageConfig, TrainConfig
from mm15.train.optim import AdafactorConfig, OptimConfig

# AdaFactor with an absolute step (step = lr, as optax/T5X without parameter scaling): the
# paper's peak LRs (1e-5, 2e-5) are absolute step sizes, not multiples of RMS(θ).
ADAFACTOR = OptimConfig(kind="adafactor", adafactor=AdafactorConfig(step_size="absolute"))


def _sources(specs: list[tuple[str, str, str, str]], stage: str):
    """(name, category, reader kind, path glob) → mixture sources and dataset configs."""
    sources = [SourceConfig(name=n, category=c) for n, c, _, _ in specs]
    datasets = [DatasetConfig(name=n, kind=k, category=c, paths=[p]) for n, c, k, p in specs]
    return sources, datasets


def paper_stages(model: ModelConfig) -> list[StageConfig]:
    """The three stages of §4 with placeholder datasets (one per kind of source)."""
    pre_src, pre_ds = _sources([
        ("captions", "caption", "captions", "data/captions/*.tar"),
        ("obelics", "interleaved", "obelics", "data/obelics/*.parquet"),
        ("text", "text", "table", "data/text/*.parquet"),
    ], "pretrain")  # fmt: skip
    ocr_src, ocr_ds = _sources([
        ("pdfa", "ocr", "pdf_ocr", "data/pdfa/*.tar"),
        ("idl", "ocr", "pdf_ocr", "data/idl/*.tar"),
        ("renderedtext", "ocr", "rendered_text", "data/renderedtext/*.tar"),
        ("docstruct4m", "ocr", "conversation", "data/docstruct4m/*.jsonl"),
    ], "cpt")  # fmt: skip
    sft_src, sft_ds = _sources([
        ("general", "general", "conversation", "data/sft/general/*.jsonl"),
        ("text_rich", "text_rich", "table", "data/sft/text_rich/*.parquet"),
        ("refer_ground", "refer_ground", "conversation", "data/sft/refer_ground/*.jsonl"),
        ("science", "science", "conversation", "data/sft/science/*.jsonl"),
        ("math", "math", "conversation", "data/sft/math/*.jsonl"),
        ("code", "code", "conversation", "data/sft/code/*.jsonl"),
        ("multi_image", "multi_image", "table", "data/sft/multi_image/*.parquet"),
        ("text_only", "text_only", "table", "data/sft/text_only/*.parquet"),
    ], "sft")  # fmt: skip
    low_res = dataclasses.replace(model.image, split="none", resolution=model.vision.image_size)
    return [
        StageConfig(
            name="pretrain", kind="pretrain", steps=200_000, batch_rows=512, warmup_steps=2000,
            image=low_res, optim=OptimConfig(kind="adamw"),
            mixture=MixtureConfig(rule="pretrain", pretrain=PretrainWeights(), sources=pre_src),
            datasets=pre_ds, packing=PackingConfig(seq_len=4096, max_images_per_sequence=16),
        ),
        StageConfig(
            name="cpt", kind="cpt", steps=30_000, batch_rows=256, lr=1e-5, warmup_steps=500,
            optim=ADAFACTOR, mixture=MixtureConfig(rule="cpt", cpt=CPTWeights(), sources=ocr_src),
            datasets=ocr_ds,
        ),
        StageConfig(
            name="sft", kind="sft", steps=23_000, batch_rows=256, lr=2e-5, warmup_steps=500,
            optim=ADAFACTOR, mixture=MixtureConfig(rule="sft", sources=sft_src), datasets=sft_ds,
        ),
    ]  # fmt: skip


def paper(size: str) -> TrainConfig:
    """``mm15 train --preset paper-3b`` (or 1b, 7b, 30b, 1b-moe, 3b-moe, 7b-moe)."""
    model = get_preset(size)
    return TrainConfig(model=model, stages=paper_stages(model), run_dir=f"runs/mm15-{size}")


def variant_sft(size: str, kind: str) -> TrainConfig:
    """Video SFT (§5: ShareGPTVideo, VideoChat2, ActivityNet-QA; 24 frames) or UI SFT (§6: the
    Ferret-UI mixture), continuing from a final MM1.5 checkpoint (``init_from``)."""
    model = get_preset(size)
    if kind == "video":
        src, ds = _sources([
            ("sharegptvideo", "video", "conversation", "data/video/sharegptvideo/*.jsonl"),
            ("videochat2", "video", "conversation", "data/video/videochat2/*.jsonl"),
            ("activitynet_qa", "video", "conversation", "data/video/activitynet_qa/*.jsonl"),
        ], "sft")  # fmt: skip
        packing = PackingConfig(seq_len=4096, max_images_per_sequence=None)
    else:
        src, ds = _sources(
            [("ferret_ui", "ui", "conversation", "data/ui/ferret_ui/*.jsonl")], "sft"
        )
        packing = PackingConfig()
    stage = StageConfig(
        name=f"{kind}-sft", kind="sft", steps=23_000, batch_rows=256, lr=2e-5, warmup_steps=500,
        optim=ADAFACTOR, mixture=MixtureConfig(rule="flat", sources=src), datasets=ds,
        packing=packing,
    )  # fmt: skip
    return TrainConfig(model=model, stages=[stage], init_from=f"runs/mm15-{size}/final",
                       run_dir=f"runs/mm15-{size}-{kind}")  # fmt: skip


TRAIN_PRESETS: dict[str, Callable[[], TrainConfig]] = {
    **{
        f"paper-{s}": (lambda s=s: paper(s))
        for s in ("1b", "3b", "7b", "30b", "1b-moe", "3b-moe", "7b-moe")
    },
    **{f"video-sft-{s}": (lambda s=s: variant_sft(s, "video")) for s in ("1b", "3b", "7b", "30b")},
    **{f"ui-sft-{s}": (lambda s=s: variant_sft(s, "ui")) for s in ("1b", "3b")},
}


def get_train_preset(name: str) -> TrainConfig:
    if name not in TRAIN_PRESETS:
        raise ValueError(f"unknown training preset {name!r}; choose from {sorted(TRAIN_PRESETS)} "
                         "(the demo's is built by `mm15 demo`)")  # fmt: skip
    return TRAIN_PRESETS[name]()
