"""A tiny two-stage training setup on a corpus the tests write, with injectable bad samples."""

from __future__ import annotations

import io
from pathlib import Path

import torch
from PIL import Image

from mm15.data.config import FlatWeights, MixtureConfig, PackingConfig, SourceConfig
from mm15.data.schema import Media, Message, Part, Region, Sample
from mm15.data.sources.canonical import write_canonical
from mm15.model.mm15 import IGNORE_INDEX, MM15
from mm15.presets import tiny
from mm15.train.config import DatasetConfig, StageConfig, TrainConfig
from mm15.train.optim import OptimConfig
from mm15.train.parallel import ParallelConfig


def _png(w: int, h: int, colour: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), colour).save(buf, format="PNG")
    return buf.getvalue()


def write_corpus(root: Path, *, n: int = 24, bad: bool = False) -> dict[str, int]:
    """Caption and grounding samples; with ``bad``, also one of each failure kind.

    Returns the number of injected bad samples by the reason they must be counted under."""
    root.mkdir(parents=True, exist_ok=True)
    caps, sft = [], []
    for i in range(n):
        w = 60 + 7 * i
        p = root / f"img{i}.png"
        p.write_bytes(_png(w, 50, (10 * i, 120, 200)))
        caps.append(
            Sample(
                id=f"c{i}",
                source="caps",
                category="caption",
                stage="pretrain",
                media=[Media(path=str(p))],
                messages=[Message("document", [Part.m(0), Part.t(f"photo {i} of a sky")])],
            )
        )
        sft.append(
            Sample(
                id=f"s{i}",
                source="ground",
                category="refer_ground",
                stage="sft",
                media=[Media(path=str(p), size=(w, 50))],
                regions=[Region(media=0, box=(2.0, 3.0, w / 2, 40.0))],
                messages=[
                    Message("user", [Part.m(0), Part.t("Where is the sky?")]),
                    Message("assistant", [Part.t("The sky "), Part.r(0)]),
                ],
            )
        )
    injected = {}
    if bad:
        (root / "truncated.png").write_bytes(_png(64, 64, (1, 2, 3))[:60])
        caps += [
            Sample(
                id="missing",
                source="caps",
                category="caption",
                stage="pretrain",
                media=[Media(path=str(root / "nope.png"))],
                messages=[Message("document", [Part.m(0), Part.t("gone")])],
            ),
            Sample(
                id="corrupt",
                source="caps",
                category="caption",
                stage="pretrain",
                media=[Media(path=str(root / "truncated.png"))],
                messages=[Message("document", [Part.m(0), Part.t("broken")])],
            ),
            Sample(
                id="long",
                source="caps",
                category="caption",
                stage="pretrain",
                messages=[Message("document", [Part.t("word " * 400)])],
            ),
        ]
        sft.append(
            Sample(
                id="empty",
                source="ground",
                category="refer_ground",
                stage="sft",
                messages=[Message("user", [Part.t("hello? (no answer to learn)")])],
            )
        )
        injected = {"missing": 1, "corrupt": 1, "too_long": 1, "empty": 1}
    write_canonical(caps, root / "caps.jsonl")
    write_canonical(sft, root / "ground.jsonl")
    return injected


def train_config(
    root: Path,
    run_dir: Path,
    *,
    steps: int = 3,
    batch_rows: int = 2,
    dropout: float = 0.0,
    strategy: str = "none",
    optim: str = "adafactor",
) -> TrainConfig:
    model = tiny()
    model.lm.dropout = dropout

    def stage(name: str, kind: str, source: str, category: str, lr: float) -> StageConfig:
        return StageConfig(
            name=name,
            kind=kind,
            steps=steps,
            batch_rows=batch_rows,
            lr=lr,
            warmup_steps=1,
            optim=OptimConfig(kind=optim),
            packing=PackingConfig(seq_len=320),
            mixture=MixtureConfig(
                weights=FlatWeights(), sources=[SourceConfig(name=source, category=category)]
            ),
            datasets=[
                DatasetConfig(
                    name=source,
                    kind="canonical",
                    category=category,
                    paths=[str(root / f"{source}.jsonl")],
                )
            ],
        )

    return TrainConfig(
        model=model,
        stages=[
            stage("pretrain", "pretrain", "caps", "caption", 3e-3),
            stage("sft", "sft", "ground", "refer_ground", 1e-3),
        ],
        run_dir=str(run_dir),
        ckpt_every=2,
        log_every=1,
        parallel=ParallelConfig(strategy=strategy),
    )


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def distributed_worker(
    rank: int, world: int, port: int, corpus: str, run_dir: str, out: str
) -> None:
    """One rank of a torchrun-like CPU run (gloo, FSDP2); rank 0 writes the per-step losses."""
    import json
    import os

    import torch

    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
    )
    torch.set_num_threads(1)
    from mm15.train.loop import train

    result = train(train_config(Path(corpus), Path(run_dir), steps=3, strategy="fsdp2"))
    if rank == 0:
        Path(out).write_text(json.dumps(result.losses))
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


def tiny_model(seed: int = 0) -> MM15:
    cfg = tiny(vocab_size=259)
    cfg.image_token_id = 258
    torch.manual_seed(seed)
    return MM15(cfg)


def tiny_batch(cfg, batch: int = 2, seq: int = 24, seed: int = 0) -> dict[str, torch.Tensor]:
    """One 56-px tile (16 image tokens) per sample; every sample has the same number of targets,
    so the mean of per-rank losses is the full-batch loss."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, cfg.image_token_id, (batch, seq), generator=g)
    ids[:, 2:18] = cfg.image_token_id
    labels = ids.masked_fill(ids == cfg.image_token_id, IGNORE_INDEX)
    pixels = torch.randn(batch, 3, 56, 56, generator=g)
    return dict(input_ids_BT=ids, labels_BT=labels, pixels_NCHW=pixels)
