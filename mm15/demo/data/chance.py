"""Chance baselines of the synthetic SFT tasks (:mod:`mm15.demo.data.tasks`).

Exact and multiple-choice tasks draw their answer uniformly from ``Task.vocab``, so their chance
is ``1 / |vocab|`` exactly; grounding (``iou50``) chance is estimated by Monte Carlo.
"""

from __future__ import annotations

import functools
import random

import numpy as np

from mm15.demo.data.tasks import SFT_TASKS, TASKS


def _normalised_boxes(task: str, n: int, seed: str) -> np.ndarray:
    """``(n, 4)`` reference boxes of ``task``'s test distribution in [0, 1] coordinates."""
    out = []
    for i in range(n):
        d = TASKS[task].build(random.Random(f"{seed}/{i}"))
        reg = d.regions[d.answer_region]
        w, h = d.images[reg.media].size
        out.append([reg.box[0] / w, reg.box[1] / h, reg.box[2] / w, reg.box[3] / h])
    return np.asarray(out)


def _iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``(len(a), len(b))`` IoU of xyxy boxes."""
    a, b = a[:, None, :], b[None, :, :]
    lo, hi = np.maximum(a[..., :2], b[..., :2]), np.minimum(a[..., 2:], b[..., 2:])
    inter = np.clip(hi - lo, 0, None).prod(-1)
    area = lambda x: (x[..., 2:] - x[..., :2]).prod(-1)  # noqa: E731
    return inter / (area(a) + area(b) - inter)


@functools.cache
def _iou50_chance(task: str, n_guesses: int = 300, n_refs: int = 1500) -> float:
    """Best answer-independent box guess for an ``iou50`` task, by Monte Carlo (fixed seeds).

    Candidate guesses are ``n_guesses`` boxes drawn from the task's own box distribution,
    written in the coordinate language (1000 bins, :mod:`mm15.data.coords`), each scored
    against ``n_refs`` fresh references (IoU ≥ 0.5); the best candidate's hit rate is returned.
    It is ≥ the hit rate of guessing a random box from the distribution (the mean candidate);
    the standard error is about 0.01.
    """
    guesses = _normalised_boxes(task, n_guesses, "chance-guess")
    q1 = np.clip(np.floor(guesses[:, :2] * 1000 + 1e-6), 0, 999)
    q2 = np.clip(np.ceil(guesses[:, 2:] * 1000 - 1e-6) - 1, q1, 999)
    written = np.concatenate([q1, q2 + 1], axis=1) / 1000  # what parsing the tag gives back
    refs = _normalised_boxes(task, n_refs, "chance-ref")
    return float((_iou_matrix(written, refs) >= 0.5).mean(axis=1).max())


def chance_baseline(name: str, *, weights: dict[str, int] | None = None) -> float:
    """Chance score of an SFT task (``TASKS`` key) or category (e.g. "math").

    exact / mc: ``1 / |vocab|`` exactly (answers are uniform; the best constant answer and a
    uniform random answer both score this).  iou50: :func:`_iou50_chance`.  A category's chance
    is the mean over its tasks weighted by ``weights[task]`` (test-set sizes; equal by default),
    matching how :func:`mm15.eval.metrics.category_scores` averages items.
    """
    if name in TASKS:
        task = TASKS[name]
        if task.metric is None:
            raise ValueError(f"task {name!r} is {task.stage} data and has no evaluation")
        return _iou50_chance(name) if task.metric == "iou50" else 1.0 / len(task.vocab)
    tasks = [t for t in SFT_TASKS if TASKS[t].category == name]
    if not tasks:
        cats = sorted({TASKS[t].category for t in SFT_TASKS})
        raise ValueError(f"{name!r} is neither an SFT task nor a category; categories: {cats}")
    w = [(weights or {}).get(t, 1) for t in tasks]
    return sum(wi * chance_baseline(t) for wi, t in zip(w, tasks, strict=True)) / sum(w)
