"""Training presets: the paper's recipe (MM1.5 §3–4) at every size, its variants, and the demo.

Each preset is a function returning a full :class:`TrainConfig`; its datasets are names in the
dataset registry (mm15/data/registry.toml), found under the run's ``data_root``::

    mm15 train --preset paper-3b --set data_root=/data --set init_from=ckpt/3b --set run_dir=runs/3b

Numbers from the paper: stage 1 at 378 px without splitting, 144 tokens, ≤16 images per 4096
sequence, batch 512, 200k steps, peak LR from MM1 Eq. 1, mixture 50:10:40; stage 2 on the OCR
sets sampled equally, batch 256, AdaFactor, LR 1e-5, 30k steps, high resolution; stage 3 SFT with
α/w category weights, dynamic (4, 9) at 672, batch 256, LR 2e-5, 23k steps (one epoch).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from mm15.config import ModelConfig
from mm15.data.config import (
    CPTWeights,
    FlatWeights,
    MixtureConfig,
    PackingConfig,
    PretrainWeights,
    SFTWeights,
    SourceConfig,
)
from mm15.data.registry import RegistryStage, stage_entries
from mm15.presets import get_preset
from mm15.train.config import DatasetConfig, StageConfig, TrainConfig
from mm15.train.optim import AdafactorConfig, OptimConfig

# AdaFactor with an absolute step (step = lr, as optax/T5X without parameter scaling): the
# paper's peak LRs (1e-5, 2e-5) are absolute step sizes, not multiples of RMS(θ).
ADAFACTOR = OptimConfig(kind="adafactor", adafactor=AdafactorConfig(step_size="absolute"))


def _sources(stage: RegistryStage) -> tuple[list[SourceConfig], list[DatasetConfig]]:
    """The registry's datasets of ``stage`` as mixture sources and dataset configs that name
    them (reader, options, category and files come from the registry at run time)."""
    entries = stage_entries(stage)
    sources = [SourceConfig(name=e.name, category=e.category) for e in entries]
    return sources, [DatasetConfig(name=e.name) for e in entries]


def paper_stages(model: ModelConfig) -> list[StageConfig]:
    """The three stages of §4 over the registry's pre-training, OCR and SFT datasets."""
    pre_src, pre_ds = _sources("pretrain")
    ocr_src, ocr_ds = _sources("cpt")
    sft_src, sft_ds = _sources("sft")
    low_res = dataclasses.replace(model.image, split="none", resolution=model.vision.image_size)
    return [
        StageConfig(
            name="pretrain",
            kind="pretrain",
            steps=200_000,
            batch_rows=512,
            warmup_steps=2000,
            image=low_res,
            optim=OptimConfig(kind="adamw"),
            mixture=MixtureConfig(weights=PretrainWeights(), sources=pre_src),
            datasets=pre_ds,
            packing=PackingConfig(seq_len=4096, max_images_per_sequence=16),
        ),
        StageConfig(
            name="cpt",
            kind="cpt",
            steps=30_000,
            batch_rows=256,
            lr=1e-5,
            warmup_steps=500,
            optim=ADAFACTOR,
            mixture=MixtureConfig(weights=CPTWeights(), sources=ocr_src),
            datasets=ocr_ds,
        ),
        StageConfig(
            name="sft",
            kind="sft",
            steps=23_000,
            batch_rows=256,
            lr=2e-5,
            warmup_steps=500,
            optim=ADAFACTOR,
            mixture=MixtureConfig(weights=SFTWeights(), sources=sft_src),
            datasets=sft_ds,
        ),
    ]


def paper(size: str) -> TrainConfig:
    """``mm15 train --preset paper-3b`` (or 1b, 7b, 30b, 1b-moe, 3b-moe, 7b-moe)."""
    model = get_preset(size)
    return TrainConfig(
        model=model,
        stages=paper_stages(model),
        run_dir=f"runs/mm15-{size}",
        allow_random_init=False,
    )


def variant_sft(size: str, kind: str) -> TrainConfig:
    """Video SFT (§5: ShareGPTVideo, VideoChat2, ActivityNet-QA; 24 frames) or UI SFT (§6: the
    Ferret-UI mixture), continuing from a final MM1.5 checkpoint (``init_from``)."""
    model = get_preset(size)
    src, ds = _sources("video" if kind == "video" else "ui")
    if kind == "video":
        packing = PackingConfig(seq_len=4096, max_images_per_sequence=None)
    else:
        packing = PackingConfig()
    stage = StageConfig(
        name=f"{kind}-sft",
        kind="sft",
        steps=23_000,
        batch_rows=256,
        lr=2e-5,
        warmup_steps=500,
        optim=ADAFACTOR,
        mixture=MixtureConfig(weights=FlatWeights(), sources=src),
        datasets=ds,
        packing=packing,
    )
    return TrainConfig(
        model=model,
        stages=[stage],
        init_from=f"runs/mm15-{size}/final",
        run_dir=f"runs/mm15-{size}-{kind}",
        allow_random_init=False,
    )


def finetune() -> TrainConfig:
    """``mm15 train --preset finetune``: one SFT stage (the paper's SFT settings: AdaFactor, peak
    LR 2e-5, one epoch) over the datasets you name in ``stages.0.datasets`` (registry names or
    entries of your own in ``registry``), from ``init_from``. The model comes from the
    checkpoint; docs/finetune.md walks through it."""
    model = get_preset("1b")
    stage = StageConfig(
        name="sft",
        kind="sft",
        steps=0,
        epochs=1.0,
        batch_rows=16,
        lr=2e-5,
        warmup_steps=0,
        optim=ADAFACTOR,
        mixture=MixtureConfig(weights=FlatWeights()),
        datasets=[],
    )
    return TrainConfig(
        model=model, stages=[stage], run_dir="runs/finetune", allow_random_init=False
    )


TRAIN_PRESETS: dict[str, Callable[[], TrainConfig]] = {
    "finetune": finetune,
    **{
        f"paper-{s}": (lambda s=s: paper(s))
        for s in ("1b", "3b", "7b", "30b", "1b-moe", "3b-moe", "7b-moe")
    },
    **{f"video-sft-{s}": (lambda s=s: variant_sft(s, "video")) for s in ("1b", "3b", "7b", "30b")},
    **{f"ui-sft-{s}": (lambda s=s: variant_sft(s, "ui")) for s in ("1b", "3b")},
}


def get_train_preset(name: str) -> TrainConfig:
    if name not in TRAIN_PRESETS:
        raise ValueError(
            f"unknown training preset {name!r}; choose from {sorted(TRAIN_PRESETS)} "
            "(the demo's is built by `mm15 demo`)"
        )
    return TRAIN_PRESETS[name]()
