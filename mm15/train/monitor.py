"""Training metrics: JSONL records, optional TensorBoard, per-stage loss-curve PNGs, progress.

``run_dir/metrics.jsonl`` holds one JSON object per line, appended and flushed per record, written
by rank 0 only.  Every record has ``step`` (the global optimiser-step count *after* the update,
the number passed to :func:`mm15.train.state_save.save_training_state`), ``stage`` (the stage
name) and ``time`` (Unix seconds), plus the scalars logged.  Non-finite numbers are written as
``null`` (strict JSON; a null loss means the step diverged).

Resume: a run that crashed after its last checkpoint at step k has already logged steps k+1...;
the resumed run repeats them.  ``MetricsLogger(..., resume_from_step=k)`` therefore rewrites the
file without records whose step > k (and without a torn last line), atomically, before appending,
and TensorBoard purges its events from step k+1 on (``SummaryWriter(purge_step=k + 1)``).  So the
file ends up with each step exactly once, as the uninterrupted run would have written it.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

import torch

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"


def _scalar(name: str, value: Any) -> float | int | str | bool | None:
    """A JSON-ready scalar; tensors and numpy numbers become Python numbers, inf/nan null."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise TypeError(
                f"metric {name!r} must be a scalar, got a tensor of shape {tuple(value.shape)}"
            )
        value = value.item()
    elif hasattr(value, "item") and callable(value.item):  # numpy scalars
        value = value.item()
    if isinstance(value, (bool, int, str)) or value is None:
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    raise TypeError(f"metric {name!r} must be a number or string, got {type(value).__name__}")


def _read_records(path: Path) -> list[dict[str, Any]]:
    """Parseable records of a metrics file; a torn last line (crash mid-write) is skipped."""
    records = []
    with open(path) as f:
        for i, line in enumerate(f):
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                log.warning("%s line %d is not valid JSON (torn write?); skipped", path, i + 1)
    return records


def _truncate_after(path: Path, step: int) -> int:
    """Rewrite ``path`` keeping records with ``step <= step``; returns how many were dropped."""
    records = _read_records(path)
    kept = [r for r in records if r.get("step", 0) <= step]
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in kept)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return len(records) - len(kept)


def _end_torn_line(path: Path) -> None:
    """If a crash left a last line without its newline, end it so new records start clean."""
    if path.exists() and path.stat().st_size > 0:
        with open(path, "rb+") as f:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                f.write(b"\n")


class MetricsLogger:
    """Rank 0 appends records to ``run_dir/metrics.jsonl`` (and TensorBoard); other ranks no-op.

    ``enable_tensorboard``: None = use it when ``torch.utils.tensorboard`` imports (the
    ``tensorboard`` package is installed), else one info line; True = required; False = off.
    ``resume_from_step``: see the module docstring.
    """

    def __init__(
        self,
        run_dir: str | Path,
        *,
        rank: int,
        enable_tensorboard: bool | None = None,
        resume_from_step: int | None = None,
    ):
        self.path = Path(run_dir) / METRICS_FILE
        self.enabled = rank == 0
        self._file: TextIO | None = None
        self._tb = None
        if not self.enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_from_step is not None and self.path.exists():
            dropped = _truncate_after(self.path, resume_from_step)
            if dropped:
                log.info(
                    "dropped %d metric records logged after step %d (resumed run redoes them)",
                    dropped,
                    resume_from_step,
                )
        _end_torn_line(self.path)
        self._file = open(self.path, "a")  # noqa: SIM115 -- closed by close()
        if enable_tensorboard is not False:
            self._tb = _tensorboard_writer(
                self.path.parent / TENSORBOARD_DIR,
                required=enable_tensorboard is True,
                purge_step=None if resume_from_step is None else resume_from_step + 1,
            )

    def log(self, *, step: int, stage: str, **scalars: Any) -> None:
        """Append one record ``{"step", "stage", "time", **scalars}`` and flush it."""
        if not self.enabled:
            return
        if self._file is None:
            raise RuntimeError(f"MetricsLogger for {self.path} is closed")
        reserved = {"step", "stage", "time"} & set(scalars)
        if reserved:
            raise ValueError(f"metric names {sorted(reserved)} are reserved")
        values = {k: _scalar(k, v) for k, v in scalars.items()}
        record = {"step": int(step), "stage": stage, "time": time.time(), **values}
        self._file.write(json.dumps(record, allow_nan=False) + "\n")
        self._file.flush()
        if self._tb is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    self._tb.add_scalar(f"{stage}/{k}", v, global_step=int(step))

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    def __enter__(self) -> MetricsLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _tensorboard_writer(log_dir: Path, *, required: bool, purge_step: int | None):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as e:
        if required:
            raise ImportError(
                "enable_tensorboard=True but torch.utils.tensorboard cannot be imported; "
                "install the 'tensorboard' package"
            ) from e
        log.info("tensorboard is not installed; metrics go to %s only", METRICS_FILE)
        return None
    return SummaryWriter(log_dir=str(log_dir), purge_step=purge_step)


# ---- loss curves ------------------------------------------------------------------------------

# Panels of the stage plot: (title, metrics drawn on it); a panel appears if any of them does.
_PANELS = (("loss", ("loss", "lm_loss", "val_loss")), ("aux loss", ("aux_loss",)), ("lr", ("lr",)))


def plot_stage(metrics_jsonl: str | Path, stage_name: str, out_png: str | Path) -> Path:
    """Draw the loss (and aux loss, lr when logged) curves of one stage against step as a PNG.

    Uses matplotlib's Agg canvas directly, so it never touches the process's pyplot backend.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    records = [r for r in _read_records(Path(metrics_jsonl)) if r.get("stage") == stage_name]
    if not records:
        stages = sorted({str(r.get("stage")) for r in _read_records(Path(metrics_jsonl))})
        raise ValueError(
            f"{metrics_jsonl} has no records of stage {stage_name!r}; stages present: {stages}"
        )
    panels = [
        (t, [m for m in ms if any(r.get(m) is not None for r in records)]) for t, ms in _PANELS
    ]
    panels = [(t, ms) for t, ms in panels if ms]
    if not panels:
        raise ValueError(f"stage {stage_name!r} in {metrics_jsonl} has no loss, aux_loss or lr")
    fig = Figure(figsize=(8, 2.6 * len(panels)), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    for ax, (title, names) in zip(axes, panels, strict=True):
        for name in names:
            pts = [(r["step"], r[name]) for r in records if r.get(name) is not None]
            ax.plot(*zip(*pts, strict=True), label=name, marker="o" if len(pts) < 20 else None)
        ax.set_ylabel(title)
        ax.grid(alpha=0.3)
        if title == "lr":
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
        if len(names) > 1:
            ax.legend()
    axes[0].set_title(f"stage {stage_name}")
    axes[-1].set_xlabel("step")
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=100)
    return out_png


# ---- progress ---------------------------------------------------------------------------------


def _hms(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


class Progress:
    """Progress of a stage: a tqdm bar on a terminal, a plain line every ``log_every`` steps (and
    at the last) when ``file`` (default stdout) is not a TTY, e.g. CI logs.  Shows loss, lr,
    tokens/s (average since this process started the stage) and ETA.  ``enabled=False`` (ranks
    other than 0) makes every call a no-op.  ``initial`` is the step a resumed run starts from.
    """

    def __init__(
        self,
        total_steps: int,
        desc: str,
        enabled: bool,
        *,
        initial: int = 0,
        log_every: int = 10,
        file: TextIO | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.total, self.desc, self.enabled = total_steps, desc, enabled
        self.initial, self.step, self.log_every = initial, initial, max(1, log_every)
        self.file = file if file is not None else sys.stdout
        self._clock = clock
        self._start = clock()
        self._tokens = 0
        self._bar = None
        if enabled and self.file.isatty():
            from tqdm import tqdm

            self._bar = tqdm(
                total=total_steps, initial=initial, desc=desc, file=self.file, dynamic_ncols=True
            )

    def update(
        self, step: int, *, loss: float | None = None, lr: float | None = None, tokens: int = 0
    ) -> None:
        """Report that ``step`` (absolute, 1-based) is done and processed ``tokens`` tokens."""
        if not self.enabled:
            return
        self._tokens += tokens
        advanced, self.step = step - self.step, step
        elapsed = max(self._clock() - self._start, 1e-9)
        fields = {}
        if loss is not None:
            fields["loss"] = f"{loss:.4f}"
        if lr is not None:
            fields["lr"] = f"{lr:.2e}"
        fields["tok/s"] = f"{self._tokens / elapsed:,.0f}"
        if self._bar is not None:
            self._bar.set_postfix(fields, refresh=False)
            self._bar.update(advanced)
        elif step % self.log_every == 0 or step >= self.total:
            done = step - self.initial
            eta = (self.total - step) * elapsed / done if done > 0 else float("nan")
            eta_s = _hms(eta) if math.isfinite(eta) else "?"
            pct = 100.0 * step / max(self.total, 1)
            parts = " ".join(f"{k} {v}" for k, v in fields.items())
            print(
                f"{self.desc} step {step}/{self.total} ({pct:.1f}%) {parts} eta {eta_s}",
                file=self.file,
                flush=True,
            )

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
