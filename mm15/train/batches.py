"""Each training step's batches: the stage's next rows from the rank-identical stream
(:class:`mm15.train.data.StageStream`), turned into this rank's tensors, optionally with the
next step's pixels decoded in a background thread while this step trains."""

from __future__ import annotations

import os
from concurrent.futures import Future, ThreadPoolExecutor

import torch

from mm15.train.data import StageStream, rank_batches
from mm15.train.parallel import DistInfo


class StepBatches:
    """The stage's next step: its rows from the stream and this rank's tensors of them.  With
    ``prefetch`` the following step's rows are peeked (they stay in the resume state) and their
    pixels are decoded in a background thread while this step trains."""

    def __init__(self, stream: StageStream, info: DistInfo, prefetch: bool):
        self.stream, self.info, self.prefetch = stream, info, prefetch
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="mm15-pixels")
        self.ahead: tuple[list, Future] | None = None  # the next rows, their pixels in progress

    def __enter__(self) -> StepBatches:
        return self

    def __exit__(self, *exc) -> None:
        self.pool.shutdown(wait=True)

    def _pixels(self, rows: list) -> tuple[list[dict[str, torch.Tensor]], int]:
        stage, info = self.stream.stage, self.info
        return rank_batches(
            rows,
            rank=info.rank,
            world_size=info.world_size,
            micro_rows=stage.micro_rows,
            model_cfg=self.stream.model_cfg,
            device=info.device,
        )

    def __call__(self, *, last: bool) -> tuple[list[dict[str, torch.Tensor]], int]:
        n = self.stream.stage.batch_rows
        rows = self.stream.next_rows(n)
        if self.ahead is not None:
            if not all(a is b for a, b in zip(self.ahead[0], rows, strict=True)):
                raise RuntimeError("prefetched rows are not the stream's next rows")
            out = self.ahead[1].result()
        else:
            out = self._pixels(rows)
        self.ahead = None
        if self.prefetch and not last:
            upcoming = self.stream.peek_rows(n)
            self.ahead = (upcoming, self.pool.submit(self._pixels, upcoming))
        return out


def use_prefetch(setting: str, device: torch.device) -> bool:
    """Whether to decode the next step's pixels in a background thread (``TrainConfig.prefetch``):
    under "auto", when the step does not run on the CPU or leaves one of its cores free."""
    if setting != "auto":
        return setting == "on"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return device.type != "cpu" or torch.get_num_threads() < (cores or 1)
