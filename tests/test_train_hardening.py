"""Hardening of training checkpoints and inputs (probe issue 18): a tampered or corrupted
checkpoint is refused before anything in it is unpickled, a numerically broken run stops
without overwriting good checkpoints or exporting a broken model, dataset media paths stay
inside their root, and nonsensical sizes are refused before training starts."""

from __future__ import annotations

import dataclasses
import io
import json
import pickle
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from train_fixtures import _png, train_config, write_corpus

from mm15.cli import main
from mm15.config_json import to_dict
from mm15.data.config import FlatWeights, MixtureConfig, PackingConfig, SourceConfig
from mm15.data.schema import SampleError
from mm15.data.sources.canonical import CanonicalReader, write_canonical
from mm15.data.sources.conversation import ConversationReader
from mm15.data.sources.rows import image_media
from mm15.model.mm15 import MM15
from mm15.presets import tiny
from mm15.tokenizer import byte_tokenizer
from mm15.train import loop, stage
from mm15.train.config import DatasetConfig, StageConfig
from mm15.train.data import StageStream, open_datasets
from mm15.train.integrity import (
    MANIFEST,
    CheckpointIntegrityError,
    SafeLoadPlanner,
    load_metadata,
    verify_checkpoint,
)
from mm15.train.loop import export_model, train
from mm15.train.nonfinite import NonFiniteTrainingError
from mm15.train.optim import OptimConfig, build_optimizer
from mm15.train.parallel import DistInfo
from mm15.train.resume import latest_checkpoint, load_training_state
from mm15.train.state_save import save_training_state

ONE_PROCESS = DistInfo(
    rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), backend="none"
)


def _trained(*, moe: bool = False, kind: str = "adamw", seed: int = 0):
    torch.manual_seed(seed)
    model = MM15(tiny(moe=moe))
    model.init_weights()
    opt = build_optimizer(model, OptimConfig(kind=kind, lr=1e-3))
    ids = torch.randint(0, 250, (2, 16), generator=torch.Generator().manual_seed(1))
    model(ids, labels_BT=ids).loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return model, opt


def _checkpoint(run_dir: Path, **kw) -> Path:
    model, opt = _trained(**kw)
    return save_training_state(
        run_dir,
        step=1,
        model=model,
        optimizer=opt,
        trainer_state={"stage": 0},
        config={"lr": 1e-3},
        keep_last=1,
    )


def _reload(path: Path, **kw) -> dict:
    model, opt = _trained(seed=1, **kw)
    return load_training_state(path, model=model, optimizer=opt)


def _rewrite_manifest(ckpt: Path) -> None:
    """What an attacker who can write the run directory does after planting a file."""
    import hashlib

    if not (ckpt / MANIFEST).exists():
        return
    doc = json.loads((ckpt / MANIFEST).read_text())
    for name in doc["files"]:
        doc["files"][name] = hashlib.sha256((ckpt / name).read_bytes()).hexdigest()
    (ckpt / MANIFEST).write_text(json.dumps(doc))


class _CreatesFile:
    """A pickle that, when loaded by plain ``pickle``, creates ``path`` (stands for any code)."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


# ---- 5: a crafted checkpoint must not run code on resume ------------------------------------------


@pytest.mark.parametrize(
    "rewrite_manifest", [False, True], ids=["manifest-stale", "manifest-forged"]
)
def test_planted_metadata_pickle_does_not_run_code_on_resume(tmp_path, rewrite_manifest):
    ckpt = _checkpoint(tmp_path / "run")
    sentinel = tmp_path / "PWNED"
    (ckpt / "dcp" / ".metadata").write_bytes(pickle.dumps(_CreatesFile(sentinel)))
    if rewrite_manifest:  # the checksums pass: the restricted unpickler alone must refuse
        _rewrite_manifest(ckpt)
    with pytest.raises(CheckpointIntegrityError, match=r"\.metadata"):
        _reload(ckpt)
    assert not sentinel.exists()


def test_planted_metadata_refused_through_the_train_cli(tmp_path, capsys):
    """`mm15 train` resuming from a run dir with a planted .metadata: exit 2, one error line."""
    corpus, run = tmp_path / "corpus", tmp_path / "run"
    write_corpus(corpus, n=6)
    cfg = train_config(corpus, run, steps=2)
    cfg.stages = cfg.stages[:1]
    config = tmp_path / "cfg.json"
    config.write_text(json.dumps(to_dict(cfg)))
    assert main(["train", "--config", str(config)]) == 0
    sentinel = tmp_path / "PWNED"
    ckpt = latest_checkpoint(run)
    (ckpt / "dcp" / ".metadata").write_bytes(pickle.dumps(_CreatesFile(sentinel)))
    _rewrite_manifest(ckpt)
    capsys.readouterr()
    assert main(["train", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: refusing to read") and ".metadata" in err
    assert not sentinel.exists()


def test_planted_optimizer_item_pickle_is_refused(tmp_path):
    """DCP's default planner reads non-tensor items (optimiser hyper-parameters) with
    ``torch.load(weights_only=False)``; ours does not, and still reads genuine ones."""
    planner = SafeLoadPlanner()
    state = {"optim": {"param_groups": [{"lr": 0.0, "betas": (0.0, 0.0)}]}}
    planner.set_up_planner(state, is_coordinator=True)

    def item(value: object, fqn: str) -> tuple[SimpleNamespace, io.BytesIO]:
        buf = io.BytesIO()
        torch.save(value, buf)
        buf.seek(0)
        return SimpleNamespace(dest_index=SimpleNamespace(fqn=fqn)), buf

    planner.load_bytes(*item((0.9, 0.95), "optim.param_groups.0.betas"))
    assert state["optim"]["param_groups"][0]["betas"] == (0.9, 0.95)
    sentinel = tmp_path / "PWNED"
    with pytest.raises(CheckpointIntegrityError, match=r"optim\.param_groups\.0\.lr"):
        planner.load_bytes(*item(_CreatesFile(sentinel), "optim.param_groups.0.lr"))
    assert not sentinel.exists()
    assert state["optim"]["param_groups"][0]["lr"] == 0.0


def test_metadata_storage_path_outside_the_checkpoint_is_refused(tmp_path):
    ckpt = _checkpoint(tmp_path / "run")
    path = ckpt / "dcp" / ".metadata"
    md = pickle.loads(path.read_bytes())
    first = next(iter(md.storage_data))
    md.storage_data[first].relative_path = "../../rank_00000.pt"
    path.write_bytes(pickle.dumps(md))
    with pytest.raises(CheckpointIntegrityError, match="not a file of the checkpoint"):
        load_metadata(path)


@pytest.mark.parametrize("moe", [False, True], ids=["dense", "moe"])
@pytest.mark.parametrize("kind", ["adamw", "adafactor"])
def test_metadata_allow_list_admits_real_checkpoints(tmp_path, moe, kind):
    """The restricted unpickler reads what our trainer writes (the 2-process FSDP2 case runs in
    tests/test_train_resume.py) and the resume is exact."""
    ckpt = _checkpoint(tmp_path / "run", moe=moe, kind=kind)
    model, opt = _trained(moe=moe, kind=kind)
    other, opt_b = _trained(moe=moe, kind=kind, seed=1)
    state = load_training_state(ckpt, model=other, optimizer=opt_b)
    assert state == {"step": 1, "stage": 0}
    for (name, a), b in zip(model.state_dict().items(), other.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    sa, sb = opt.state_dict()["state"], opt_b.state_dict()["state"]
    assert sa.keys() == sb.keys()
    for i in sa:
        for k, v in sa[i].items():
            assert torch.equal(torch.as_tensor(v), torch.as_tensor(sb[i][k])), (i, k)
    assert opt.state_dict()["param_groups"] == opt_b.state_dict()["param_groups"]


# ---- 8: a corrupted checkpoint must not train on silently -----------------------------------------


@pytest.mark.parametrize(
    "name",
    ["dcp/__0_0.distcp", "dcp/.metadata", "rank_00000.pt", "trainer_state.json", "config.json"],
)
def test_flipped_bit_in_checkpoint_refuses_resume_naming_the_file(tmp_path, name):
    ckpt = _checkpoint(tmp_path / "run")
    data = bytearray((ckpt / name).read_bytes())
    data[len(data) // 2] ^= 0x10
    (ckpt / name).write_bytes(bytes(data))
    with pytest.raises(CheckpointIntegrityError, match=f"{name}: SHA-256 differs"):
        _reload(ckpt)


@pytest.mark.parametrize("change", ["no-manifest", "missing-file", "extra-file"])
def test_checkpoint_that_cannot_be_verified_is_refused(tmp_path, change):
    ckpt = _checkpoint(tmp_path / "run")
    if change == "no-manifest":
        (ckpt / MANIFEST).unlink(missing_ok=True)
        match = f"{MANIFEST} is missing"
    elif change == "missing-file":
        (ckpt / "rank_00000.pt").unlink()
        match = "rank_00000.pt: listed in"
    else:
        (ckpt / "dcp" / "__1_0.distcp").write_bytes(b"planted")
        match = "dcp/__1_0.distcp: not listed"
    with pytest.raises(CheckpointIntegrityError, match=match):
        verify_checkpoint(ckpt)


def _poisoned_build(real):
    def build(cfg):
        model, tok = real(cfg)
        with torch.no_grad():
            model.lm.norm.weight[0] = float("nan")
        return model, tok

    return build


def test_persistent_nonfinite_steps_stop_the_run_and_export_nothing(tmp_path, monkeypatch):
    corpus, run = tmp_path / "corpus", tmp_path / "run"
    write_corpus(corpus, n=6)
    cfg = train_config(corpus, run, steps=6)
    cfg.ckpt_every, cfg.max_nonfinite_steps = 100, 3
    monkeypatch.setattr(loop, "build_model", _poisoned_build(loop.build_model))
    with pytest.raises(NonFiniteTrainingError, match="3 consecutive steps"):
        train(cfg)
    assert not (run / "final").exists()
    assert not (run / "checkpoints").exists()
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["skipped_step"] for r in rows] == [1, 1, 1]


def test_persistent_nonfinite_steps_through_the_train_cli(tmp_path, monkeypatch, capsys):
    """`mm15 train` on a run that goes non-finite: exit 1 and one error line, no traceback."""
    corpus, run = tmp_path / "corpus", tmp_path / "run"
    write_corpus(corpus, n=6)
    cfg = train_config(corpus, run, steps=6)
    cfg.ckpt_every, cfg.max_nonfinite_steps = 100, 2
    config = tmp_path / "cfg.json"
    config.write_text(json.dumps(to_dict(cfg)))
    monkeypatch.setattr(loop, "build_model", _poisoned_build(loop.build_model))
    assert main(["train", "--config", str(config)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: training stopped:"), err
    assert "2 consecutive steps" in err[0]
    assert not (run / "final").exists()


def test_nonfinite_model_is_never_checkpointed_and_earlier_checkpoints_survive(
    tmp_path, monkeypatch
):
    corpus, run = tmp_path / "corpus", tmp_path / "run"
    write_corpus(corpus, n=6)
    cfg = train_config(corpus, run, steps=2)
    cfg.stages, cfg.keep_last = cfg.stages[:1], 1
    train(cfg)  # a good checkpoint at step 2 (and a final model, set aside)
    (run / "final").rename(tmp_path / "final_of_the_good_run")
    good = latest_checkpoint(run)
    before = {p.name: p.read_bytes() for p in good.rglob("*") if p.is_file()}

    real_step = stage.train_step

    def step_that_breaks_the_weights(model, *args, **kwargs):
        out = real_step(model, *args, **kwargs)
        with torch.no_grad():  # e.g. an overflowing update: finite step, NaN weights
            next(model.parameters()).view(-1)[0] = float("nan")
        return out

    monkeypatch.setattr(stage, "train_step", step_that_breaks_the_weights)
    cfg.stages[0].steps = 6  # resume at step 2; the next save point is step 4
    with pytest.raises(NonFiniteTrainingError, match="refusing to save a checkpoint at step 4"):
        train(cfg)
    assert latest_checkpoint(run) == good
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["latest", good.name]
    assert {p.name: p.read_bytes() for p in good.rglob("*") if p.is_file()} == before
    verify_checkpoint(good)
    assert not (run / "final").exists()


def test_export_refuses_a_model_holding_nan(tmp_path):
    model = MM15(dataclasses.replace(tiny(), image_token_id=byte_tokenizer().image_token_id))
    model.init_weights()
    with torch.no_grad():
        model.lm.layers[1].attn.wq.weight[0, 0] = float("nan")
    out = tmp_path / "final"
    with pytest.raises(NonFiniteTrainingError, match=r"lm\.layers\.1\.attn\.wq\.weight"):
        export_model(model, model, byte_tokenizer(), out, ONE_PROCESS)
    assert not out.exists()


# ---- media paths stay inside the dataset root ------------------------------------------------------


def _llava(image: str, i: int) -> dict:
    return {
        "id": f"r{i}",
        "image": image,
        "conversations": [
            {"from": "human", "value": "<image>\nWhat colour?"},
            {"from": "gpt", "value": "Blue."},
        ],
    }


@pytest.fixture
def dataset(tmp_path):
    root = tmp_path / "data" / "images"
    (root / "sub").mkdir(parents=True)
    (root / "ok.png").write_bytes(_png(32, 32, (0, 0, 255)))
    secret = tmp_path / "secret.png"  # readable, but not part of the dataset
    secret.write_bytes(_png(32, 32, (255, 0, 0)))
    images = ["ok.png", "sub/../ok.png", "../../secret.png", str(secret), "sub/../../../secret.png"]
    jsonl = tmp_path / "data" / "llava.jsonl"
    jsonl.write_text("".join(json.dumps(_llava(im, i)) + "\n" for i, im in enumerate(images)))
    return root, jsonl, secret


def test_media_paths_outside_the_dataset_root_are_skipped(dataset):
    root, jsonl, secret = dataset
    reader = ConversationReader(jsonl, source="llava", category="general", stage="sft", root=root)
    assert reader[0].media[0].path == str(root / "ok.png")
    assert reader[1].media[0].path == str(root / "sub/../ok.png")
    for i, why in [(2, "leaves the dataset root"), (3, "is absolute"), (4, "leaves the dataset")]:
        with pytest.raises(SampleError, match=why) as e:
            reader[i]
        assert e.value.reason == "malformed"
    allowed = ConversationReader(
        jsonl, source="llava", category="general", stage="sft", root=root, allow_absolute_paths=True
    )
    assert allowed[3].media[0].path == str(secret)
    with pytest.raises(SampleError, match="leaves the dataset root"):
        allowed[2]  # relative paths stay confined even then


def test_table_and_canonical_media_paths_stay_inside_the_root(dataset, tmp_path):
    root, _, secret = dataset
    assert image_media({"path": "ok.png"}, "image", root, "t")[0].path == str(root / "ok.png")
    for bad in ("../../secret.png", str(secret)):
        with pytest.raises(SampleError, match="dataset root"):
            image_media({"bytes": None, "path": bad}, "image", root, "t")
    from mm15.data.schema import Media, Message, Part, Sample

    samples = [
        Sample(
            id=f"c{i}",
            source="c",
            category="caption",
            stage="pretrain",
            media=[Media(path=p)],
            messages=[Message("document", [Part.m(0), Part.t("a sky")])],
        )
        for i, p in enumerate(["ok.png", "../../secret.png", str(secret)])
    ]
    write_canonical(samples, tmp_path / "c.jsonl")
    reader = CanonicalReader(tmp_path / "c.jsonl", root=root)
    assert reader[0].media[0].path == str(root / "ok.png")
    for i in (1, 2):
        with pytest.raises(SampleError, match="dataset root"):
            reader[i]


def test_escaping_media_paths_are_counted_skips_in_training(dataset):
    _, jsonl, _ = dataset
    stage = StageConfig(
        name="sft",
        kind="sft",
        steps=1,
        batch_rows=4,
        packing=PackingConfig(seq_len=320),
        mixture=MixtureConfig(
            weights=FlatWeights(), sources=[SourceConfig(name="llava", category="general")]
        ),
        datasets=[
            DatasetConfig(
                name="llava",
                kind="conversation",
                category="general",
                paths=[str(jsonl)],
                options={"root": str(dataset[0])},
            )
        ],
    )
    tok = byte_tokenizer()
    model_cfg = dataclasses.replace(tiny(), image_token_id=tok.image_token_id)
    stream = StageStream(
        stage,
        open_datasets(stage.datasets, stage="sft"),
        tokenizer=tok,
        model_cfg=model_cfg,
        seed=0,
        max_skipped_fraction=1.0,
    )
    stream.next_rows(4)
    assert set(stream.skipped) == {"malformed"} and stream.skipped["malformed"] >= 3
    assert stream.audit()["skipped"] == dict(stream.skipped)


# ---- sizes are validated before training starts ----------------------------------------------------


@pytest.mark.parametrize(
    "override, field",
    [
        ("stages.0.steps=-5", "steps must be >= 0"),
        ("stages.0.batch_rows=0", "batch_rows must be >= 1"),
        ("stages.0.micro_rows=-1", "micro_rows must be >= 0"),
        ("stages.0.micro_rows=100000", "micro_rows (100000) exceeds batch_rows"),
        ("stages.0.packing.seq_len=0", "packing.seq_len must be >= 2"),
        ("stages.0.lr=-1e-5", "lr must be > 0"),
        ("stages.0.lr=0", "lr must be > 0"),
        ("stages.0.warmup_steps=-1", "warmup_steps must be >= 0"),
        ("stages.0.warmup_steps=99999999", "warmup_steps (99999999) exceeds steps"),
        ("stages.0.min_lr_ratio=1.5", "min_lr_ratio must be in [0, 1]"),
        ("stages.0.optim.lr=-1", "optim.lr must be > 0"),
        ("stages.0.optim.weight_decay=-0.1", "optim.weight_decay must be >= 0"),
        ("ckpt_every=0", "ckpt_every must be >= 1"),
        ("keep_last=0", "keep_last must be >= 1"),
        ("log_every=0", "log_every must be >= 1"),
        ("max_nonfinite_steps=0", "max_nonfinite_steps must be >= 1"),
        ("max_skipped_fraction=2", "max_skipped_fraction must be in [0, 1]"),
        ("stages=[]", "stages is empty"),
    ],
)
def test_train_refuses_nonsensical_sizes_before_starting(capsys, override, field):
    assert main(["train", "--preset", "paper-1b", "--set", override, "--print-config"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""  # nothing printed, nothing started
    assert captured.err.startswith("error: ") and field in captured.err


def test_train_accepts_the_presets_and_zero_step_stages(capsys):
    assert (
        main(
            [
                "train",
                "--preset",
                "paper-1b",
                "--set",
                "stages.0.steps=0",
                "--set",
                "stages.0.warmup_steps=0",
                "--print-config",
            ]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out)["stages"][0]["steps"] == 0
