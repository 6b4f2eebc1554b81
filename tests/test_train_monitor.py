"""Metrics: JSONL records, resume without duplicate/lost lines, rank gating, stage PNGs, progress."""

from __future__ import annotations

import io
import json
import logging
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from mm15.train.monitor import METRICS_FILE, MetricsLogger, Progress, plot_stage


def _records(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / METRICS_FILE).read_text().splitlines()]


def test_records_are_written_flushed_and_parseable(tmp_path):
    logger = MetricsLogger(tmp_path, rank=0, enable_tensorboard=False)
    logger.log(step=1, stage="pretrain", loss=torch.tensor(2.5), lr=1e-4, tokens=4096)
    # flushed per write: readable before close
    assert _records(tmp_path)[0]["loss"] == 2.5
    logger.log(step=2, stage="pretrain", loss=float("nan"), note="skipped")
    logger.close()
    r1, r2 = _records(tmp_path)
    assert {k: r1[k] for k in ("step", "stage", "lr", "tokens")} == {
        "step": 1,
        "stage": "pretrain",
        "lr": 1e-4,
        "tokens": 4096,
    }
    assert isinstance(r1["time"], float) and r2["time"] >= r1["time"]
    assert r2["loss"] is None and r2["note"] == "skipped"  # non-finite → null (strict JSON)


def test_bad_metrics_are_rejected_by_name(tmp_path):
    with MetricsLogger(tmp_path, rank=0, enable_tensorboard=False) as logger:
        with pytest.raises(TypeError, match=r"'loss' must be a scalar.*\(2,\)"):
            logger.log(step=1, stage="s", loss=torch.zeros(2))
        with pytest.raises(ValueError, match="reserved"):
            logger.log(step=1, stage="s", time=3.0)


def test_non_zero_rank_writes_nothing(tmp_path):
    run_dir = tmp_path / "run"
    with MetricsLogger(run_dir, rank=1, enable_tensorboard=None) as logger:
        logger.log(step=1, stage="sft", loss=1.0)
    assert not run_dir.exists()


def test_resume_truncates_steps_after_the_checkpoint_and_appends(tmp_path):
    with MetricsLogger(tmp_path, rank=0, enable_tensorboard=False) as logger:
        for step in range(1, 6):
            logger.log(step=step, stage="sft", loss=10.0 - step)
    with open(tmp_path / METRICS_FILE, "a") as f:
        f.write('{"step": 6, "sta')  # a record torn by the crash
    with MetricsLogger(tmp_path, rank=0, enable_tensorboard=False, resume_from_step=3) as logger:
        for step in (4, 5, 6):
            logger.log(step=step, stage="sft", loss=100.0 + step)
    recs = _records(tmp_path)
    assert [r["step"] for r in recs] == [1, 2, 3, 4, 5, 6]
    assert [r["loss"] for r in recs] == [9.0, 8.0, 7.0, 104.0, 105.0, 106.0]


def test_plain_append_after_a_torn_line_keeps_new_records_whole(tmp_path):
    (tmp_path / METRICS_FILE).write_text('{"step": 1, "stage": "a", "time": 0}\n{"step": 2, "st')
    with MetricsLogger(tmp_path, rank=0, enable_tensorboard=False) as logger:
        logger.log(step=3, stage="a", loss=1.0)
    lines = (tmp_path / METRICS_FILE).read_text().splitlines()
    assert json.loads(lines[-1])["step"] == 3 and len(lines) == 3


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 12), data=st.data())
def test_crash_and_resume_logs_every_step_exactly_once(tmp_path_factory, n, data):
    ckpt = data.draw(st.integers(0, n), label="last checkpoint step")
    run_dir = tmp_path_factory.mktemp("run")
    with MetricsLogger(run_dir, rank=0, enable_tensorboard=False) as logger:
        for step in range(1, n + 1):  # the first run got to step n, then crashed
            logger.log(step=step, stage="s", loss=float(step))
    with MetricsLogger(run_dir, rank=0, enable_tensorboard=False, resume_from_step=ckpt) as lg:
        for step in range(ckpt + 1, n + 3):
            lg.log(step=step, stage="s", loss=float(step))
    assert [r["step"] for r in _records(run_dir)] == list(range(1, n + 3))


def test_tensorboard_is_used_when_installed_else_one_info_line(tmp_path, caplog):
    try:
        import torch.utils.tensorboard  # noqa: F401
    except ImportError:
        with caplog.at_level(logging.INFO, logger="mm15.train.monitor"):
            MetricsLogger(tmp_path, rank=0).close()
        assert [r.message for r in caplog.records if "tensorboard" in r.message] == [
            "tensorboard is not installed; metrics go to metrics.jsonl only"
        ]
        with pytest.raises(ImportError, match="install the 'tensorboard' package"):
            MetricsLogger(tmp_path, rank=0, enable_tensorboard=True)
    else:
        with MetricsLogger(tmp_path, rank=0) as logger:
            logger.log(step=1, stage="s", loss=1.0)
        assert any((tmp_path / "tensorboard").iterdir())


def _write_two_stages(run_dir, *, lr: bool) -> None:
    with MetricsLogger(run_dir, rank=0, enable_tensorboard=False) as logger:
        for step in range(1, 41):
            extra = {"lr": 1e-4 * min(1.0, step / 10)} if lr else {}
            logger.log(step=step, stage="pretrain", loss=5 * math.exp(-step / 15), **extra)
        for step in range(41, 50):
            logger.log(step=step, stage="sft", loss=1.0, aux_loss=0.01)


def test_plot_stage_writes_a_png(tmp_path):
    _write_two_stages(tmp_path, lr=True)
    out = plot_stage(tmp_path / METRICS_FILE, "pretrain", tmp_path / "plots" / "pretrain.png")
    with Image.open(out) as im:
        im.load()
        assert im.format == "PNG" and im.width > 100 and im.height > 100
        lo, hi = im.convert("L").getextrema()
        assert lo < hi  # something was drawn
        two_panels = im.height
    _write_two_stages(tmp_path / "b", lr=False)
    out = plot_stage(tmp_path / "b" / METRICS_FILE, "pretrain", tmp_path / "b.png")
    with Image.open(out) as im:
        assert im.height < two_panels  # loss only: one panel
    with pytest.raises(ValueError, match=r"no records of stage 'video'.*\['pretrain', 'sft'\]"):
        plot_stage(tmp_path / METRICS_FILE, "video", tmp_path / "v.png")


class _Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self) -> float:
        self.t += 1.0
        return self.t


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_prints_plain_lines_when_not_a_tty():
    out = io.StringIO()
    with Progress(5, "sft", True, log_every=2, file=out, clock=_Clock()) as bar:
        for step in range(1, 6):
            bar.update(step, loss=1.0 / step, lr=2e-5, tokens=1000)
    lines = out.getvalue().splitlines()
    assert [line.split()[2] for line in lines] == ["2/5", "4/5", "5/5"]
    # step 2: 2000 tokens in 2 s → 1,000 tok/s; 3 steps left at 1 s/step → eta 0:00:03
    assert lines[0] == "sft step 2/5 (40.0%) loss 0.5000 lr 2.00e-05 tok/s 1,000 eta 0:00:03"


def test_progress_resumed_eta_counts_only_this_run():
    out = io.StringIO()
    bar = Progress(100, "pt", True, initial=90, log_every=5, file=out, clock=_Clock())
    bar.update(95, tokens=50)
    assert out.getvalue().strip().endswith("eta 0:00:01")  # 5 steps in 1 s, 5 to go


def test_progress_tty_uses_tqdm_and_disabled_is_silent():
    tty = _Tty()
    with Progress(3, "stage-x", True, file=tty) as bar:
        bar.update(1, loss=1.25, lr=1e-3, tokens=10)
        bar.update(3, loss=1.0, tokens=10)
    text = tty.getvalue()
    assert "stage-x" in text and "loss=1.0000" in text and "3/3" in text
    quiet = io.StringIO()
    with Progress(3, "x", False, file=quiet) as bar:
        bar.update(3, loss=1.0)
    assert quiet.getvalue() == ""
