"""Training-state checkpoints: exact round trips, RNG, atomicity under injected crashes, keep_last,
half-written directories, and a 2-process FSDP2 (gloo) save → load."""

from __future__ import annotations

import copy
import json
import os
import random
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import torch.multiprocessing as mp
from torch import nn

from mm15.model.mm15 import MM15
from mm15.presets import tiny
from mm15.train import state_save
from mm15.train.resume import latest_checkpoint, load_training_state
from mm15.train.rng import capture_rng, restore_rng
from mm15.train.state_save import COMPLETE, CONFIG, DCP_DIR, LATEST, save_training_state

IMAGE_ID = 5  # a token id of the tiny vocabulary used as the image placeholder here
K = 16  # image tokens per tile in the tiny preset


def _mm15(seed: int) -> MM15:
    cfg = tiny()
    cfg.image_token_id = IMAGE_ID
    torch.manual_seed(seed)
    model = MM15(cfg)
    model.init_weights()
    return model


def _batch(gen: torch.Generator | None = None, *, image: bool = False) -> dict:
    ids = torch.randint(6, 500, (2, 24), generator=gen)
    batch = {"input_ids_BT": ids, "labels_BT": ids.clone()}
    if image:
        ids[0, 2 : 2 + K] = IMAGE_ID
        batch["labels_BT"][0, 2 : 2 + K] = -100
        batch["pixels_NCHW"] = torch.randn(1, 3, 112, 112, generator=gen)
    return batch


def _step(model: nn.Module, opt: torch.optim.Optimizer, batch: dict) -> float:
    loss = model(
        batch["input_ids_BT"], pixels_NCHW=batch.get("pixels_NCHW"), labels_BT=batch["labels_BT"]
    ).loss
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss.item()


def _adamw(model: nn.Module) -> torch.optim.AdamW:
    return torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)


def _assert_same_model(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def _save(run_dir: Path, step: int, model, opt, keep_last: int = 3, **state) -> Path:
    return save_training_state(
        run_dir,
        step=step,
        model=model,
        optimizer=opt,
        trainer_state=state,
        config={"lr": 1e-3},
        keep_last=keep_last,
    )


# ---- single process -----------------------------------------------------------------------------


def test_round_trip_restores_optimizer_and_the_next_step_is_identical(tmp_path):
    model, gen = _mm15(0), torch.Generator().manual_seed(0)
    opt = _adamw(model)
    for _ in range(2):
        _step(model, opt, _batch(gen))
    data_state = {"source_offsets": [3, 7], "epoch": 0}
    path = _save(tmp_path, 2, model, opt, stage=1, step_in_stage=2, data=data_state)
    assert path == tmp_path / "checkpoints" / "step_000002"
    assert json.loads((path / "config.json").read_text()) == {"lr": 1e-3}
    saved_opt = copy.deepcopy(opt.state_dict())
    loss_a = _step(model, opt, _batch(torch.Generator().manual_seed(9)))

    other = _mm15(1)  # different weights: everything must come from the checkpoint
    opt_b = _adamw(other)
    state = load_training_state(latest_checkpoint(tmp_path), model=other, optimizer=opt_b)
    assert state == {"step": 2, "stage": 1, "step_in_stage": 2, "data": data_state}
    got = opt_b.state_dict()
    assert got["param_groups"] == saved_opt["param_groups"]
    assert got["state"].keys() == saved_opt["state"].keys()
    for i, s in saved_opt["state"].items():
        for name, v in s.items():
            assert torch.equal(got["state"][i][name], v), (i, name)
    loss_b = _step(other, opt_b, _batch(torch.Generator().manual_seed(9)))
    assert loss_a == loss_b
    _assert_same_model(model, other)


def test_params_without_optimizer_state_stay_without_it(tmp_path):
    """Text-only steps give the encoder no gradient, so AdamW has no state (and no step count)
    for it; a resumed run must not invent one, or the first image step differs."""
    model = _mm15(0)
    opt = _adamw(model)
    gen = torch.Generator().manual_seed(0)
    for _ in range(2):
        _step(model, opt, _batch(gen))
    _save(tmp_path, 2, model, opt)
    n_with_state = len(opt.state)
    assert n_with_state == len(list(model.lm.parameters()))  # encoder, connector: no grad yet
    image_batch = _batch(torch.Generator().manual_seed(3), image=True)
    _step(model, opt, image_batch)

    other = _mm15(1)
    opt_b = _adamw(other)
    load_training_state(latest_checkpoint(tmp_path), model=other, optimizer=opt_b)
    assert len(opt_b.state) == n_with_state
    _step(other, opt_b, image_batch)
    _assert_same_model(model, other)


def test_saving_before_the_first_step_leaves_the_optimizer_untouched(tmp_path):
    model = _mm15(0)
    opt = _adamw(model)
    _save(tmp_path, 0, model, opt)
    assert len(opt.state) == 0  # no zero-lr initialisation step snuck in
    batch = _batch(torch.Generator().manual_seed(1))
    _step(model, opt, batch)

    other = _mm15(1)
    opt_b = _adamw(other)
    _step(other, opt_b, batch)  # a stale state that the load must clear
    load_training_state(latest_checkpoint(tmp_path), model=other, optimizer=opt_b)
    assert len(opt_b.state) == 0
    _step(other, opt_b, batch)
    _assert_same_model(model, other)


def test_rng_states_are_restored():
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    np.random.randn()  # leaves a cached gaussian in numpy's legacy state
    state = capture_rng()

    def draw():
        return random.random(), np.random.randn(3).tolist(), torch.rand(3).tolist()

    first = draw()
    draw()
    restore_rng(state)
    assert draw() == first


def test_load_restores_rng_and_rank_state(tmp_path):
    model = nn.Linear(4, 4)
    opt = _adamw(model)
    torch.manual_seed(5), random.seed(5), np.random.seed(5)
    save_training_state(
        tmp_path,
        step=1,
        model=model,
        optimizer=opt,
        trainer_state={},
        config={},
        keep_last=1,
        rank_state={"shard": 3},
    )
    expected = (torch.rand(4), random.random(), np.random.rand())
    torch.manual_seed(0), random.seed(0), np.random.seed(0)
    state = load_training_state(
        tmp_path / "checkpoints" / "step_000001", model=model, optimizer=opt
    )
    assert state["rank_state"] == {"shard": 3}
    got = (torch.rand(4), random.random(), np.random.rand())
    assert torch.equal(got[0], expected[0]) and got[1:] == expected[1:]
    # rng=False leaves the current streams alone
    load_training_state(
        tmp_path / "checkpoints" / "step_000001", model=model, optimizer=opt, rng=False
    )
    assert not torch.equal(torch.rand(4), expected[0])


def _crash_rank_file(monkeypatch):
    real = torch.save

    def fake(obj, f, *a, **kw):
        if Path(str(f)).name.startswith("rank_"):
            raise OSError("disk full (injected)")
        return real(obj, f, *a, **kw)

    monkeypatch.setattr(torch, "save", fake)


def _crash_after_dcp(monkeypatch):
    real = dcp.save

    def fake(*a, **kw):
        real(*a, **kw)
        raise OSError("killed after the shards were written (injected)")

    monkeypatch.setattr(dcp, "save", fake)


def _crash_config(monkeypatch):
    real = state_save._write_json_durable

    def fake(path, obj):
        if path.name == CONFIG:
            raise OSError("injected")
        real(path, obj)

    monkeypatch.setattr(state_save, "_write_json_durable", fake)


def _crash_latest(monkeypatch):
    real = os.replace

    def fake(src, dst, *a, **kw):
        if Path(dst).name == LATEST:
            raise OSError("injected")
        real(src, dst, *a, **kw)

    monkeypatch.setattr(os, "replace", fake)


@pytest.mark.parametrize(
    "crash", [_crash_rank_file, _crash_after_dcp, _crash_config, _crash_latest]
)
def test_crash_mid_save_keeps_previous_checkpoint(tmp_path, monkeypatch, crash):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 2))
    opt = _adamw(model)
    _step_linear(model, opt)
    _save(tmp_path, 1, model, opt)
    at_step_1 = {k: v.clone() for k, v in model.state_dict().items()}
    _step_linear(model, opt)
    with monkeypatch.context() as m:
        crash(m)
        with pytest.raises((RuntimeError, OSError), match="injected"):
            _save(tmp_path, 2, model, opt)
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoints" / "step_000001"
    fresh = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 2))
    assert (
        load_training_state(latest_checkpoint(tmp_path), model=fresh, optimizer=_adamw(fresh))[
            "step"
        ]
        == 1
    )
    for k, v in fresh.state_dict().items():
        assert torch.equal(v, at_step_1[k])
    # the next save succeeds and sweeps the debris of the failed one
    _save(tmp_path, 2, model, opt)
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["latest", "step_000001", "step_000002"]
    assert latest_checkpoint(tmp_path).name == "step_000002"


def _step_linear(model: nn.Module, opt: torch.optim.Optimizer) -> None:
    model(torch.randn(3, 8)).square().mean().backward()
    opt.step()
    opt.zero_grad()


def test_keep_last_deletes_old_checkpoints(tmp_path):
    model = nn.Linear(8, 8)
    opt = _adamw(model)
    for step in range(1, 6):
        _step_linear(model, opt)
        _save(tmp_path, step, model, opt, keep_last=2)
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["latest", "step_000004", "step_000005"]
    assert (tmp_path / "checkpoints" / "latest").read_text().strip() == "step_000005"


def test_half_written_directories_are_ignored(tmp_path):
    model = nn.Linear(4, 4)
    opt = _adamw(model)
    _save(tmp_path, 3, model, opt)
    ckpts = tmp_path / "checkpoints"
    # what a hard kill leaves: a final-named dir with no marker, a complete-looking tmp dir
    (ckpts / "step_000007").mkdir()
    (ckpts / "step_000007" / "trainer_state.json").write_text('{"step": 7}')
    (ckpts / "step_000008.tmp-dead").mkdir()
    (ckpts / "step_000008.tmp-dead" / COMPLETE).write_text("{}")
    assert latest_checkpoint(tmp_path) == ckpts / "step_000003"
    (ckpts / "latest").write_text("step_000007\n")  # even when ``latest`` names it
    assert latest_checkpoint(tmp_path) == ckpts / "step_000003"
    (ckpts / "latest").unlink()
    assert latest_checkpoint(tmp_path) == ckpts / "step_000003"
    with pytest.raises(FileNotFoundError, match="step_000007 is not a complete"):
        load_training_state(ckpts / "step_000007", model=model, optimizer=opt)
    assert latest_checkpoint(tmp_path / "nowhere") is None


def test_latest_marker_wins_after_resuming_from_an_earlier_step(tmp_path):
    model = nn.Linear(4, 4)
    opt = _adamw(model)
    for step in (10, 20, 30):
        _save(tmp_path, step, model, opt, keep_last=5)
    load_training_state(tmp_path / "checkpoints" / "step_000010", model=model, optimizer=opt)
    _save(tmp_path, 15, model, opt, keep_last=1)  # a rollback: 20 and 30 are an abandoned past
    assert latest_checkpoint(tmp_path).name == "step_000015"
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["latest", "step_000015", "step_000020", "step_000030"]


def test_state_must_be_json(tmp_path):
    model = nn.Linear(2, 2)
    with pytest.raises(TypeError, match="trainer_state must be JSON"):
        _save(tmp_path, 1, model, _adamw(model), data=torch.zeros(2))


# ---- two processes, FSDP2 over gloo ------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _sharded_mm15(seed: int):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    model = _mm15(seed)
    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    for block in model.lm.layers:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model, _adamw(model)


def _full_params(model: nn.Module) -> dict[str, torch.Tensor]:
    return {
        k: v.full_tensor() if hasattr(v, "full_tensor") else v
        for k, v in model.state_dict().items()
    }


def _fsdp_worker(rank: int, port: int, run_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        model, opt = _sharded_mm15(0)
        gen = torch.Generator().manual_seed(100 + rank)  # each rank its own data
        for _ in range(2):
            _step(model, opt, _batch(gen))
        torch.manual_seed(1000 + rank)  # per-rank RNG streams
        _save(Path(run_dir), 2, model, opt, data={"rank0_offset": 4})
        at_save = _full_params(model)
        if rank == 0:
            torch.save(at_save, Path(run_dir) / "expected.pt")
        expected_rand = torch.rand(3)
        batch = _batch(gen)
        loss_a = _step(model, opt, batch)
        after_a = _full_params(model)

        torch.manual_seed(0)
        other, opt_b = _sharded_mm15(1)
        path = latest_checkpoint(run_dir)
        state = load_training_state(path, model=other, optimizer=opt_b)
        assert state["data"] == {"rank0_offset": 4} and state["step"] == 2
        assert torch.equal(torch.rand(3), expected_rand), f"rank {rank}: RNG not restored"
        assert _step(other, opt_b, batch) == loss_a
        after_b = _full_params(other)
        for k in after_a:
            assert torch.equal(after_a[k], after_b[k]), f"rank {rank}: {k} differs"
    finally:
        dist.destroy_process_group()


def test_fsdp2_two_process_save_load_round_trip(tmp_path):
    mp.spawn(_fsdp_worker, args=(_free_port(), str(tmp_path)), nprocs=2, join=True)
    ckpt = tmp_path / "checkpoints" / "step_000002"
    assert sorted(p.name for p in ckpt.glob("rank_*.pt")) == ["rank_00000.pt", "rank_00001.pt"]
    assert json.loads((ckpt / COMPLETE).read_text())["world_size"] == 2
    assert len(list((ckpt / DCP_DIR).glob("*.distcp"))) == 2
    # resharding: the 2-rank checkpoint resumes in one process (a different world size)
    plain = _mm15(3)
    opt = _adamw(plain)
    load_training_state(ckpt, model=plain, optimizer=opt, rng=False)
    expected = torch.load(tmp_path / "expected.pt", weights_only=True)
    for k, v in plain.state_dict().items():
        assert torch.equal(v, expected[k]), k
    assert len(opt.state) == len(list(plain.lm.parameters()))
