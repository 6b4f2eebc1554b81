"""The built-in synthetic evaluation suite: held-out test sets of the demo corpus, per category.

Zero-shot greedy decoding (MM1.5 §4.1, Tables 4–14) with the chat template the model was trained with; each item
is scored by its task's metric (exact match, multiple choice, Acc@IoU>0.5) and every category is
reported beside its chance baseline, computed exactly from the task definitions
(:func:`mm15.demo.data.chance.chance_baseline`).
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from mm15.data.sample_images import region_frames
from mm15.demo.data.chance import chance_baseline
from mm15.demo.data.corpus import CorpusIndex
from mm15.demo.data.tasks import SFT_TASKS, TASKS
from mm15.eval.metrics import category_scores, score_sample
from mm15.model.mm15 import MM15
from mm15.services.inference import GenerationSettings, generate_for_samples
from mm15.tokenizer import MM15Tokenizer

# Tokens generated beyond the longest reference answer, so that a longer wrong answer is read
# whole (and scored 0) rather than cut into something that might parse.
ANSWER_SLACK = 8


@dataclass
class SuiteResult:
    items: list[dict[str, Any]]  # per item: id, task, category, prediction, references, score
    categories: dict[str, dict[str, float]]  # name → score, chance, n
    mmbase: float | None
    seconds: float
    samples: dict[str, Any] = field(default_factory=dict)  # id → Sample (for drawing)
    max_new_tokens: int = 0  # the generation budget used
    # id → per media, the (W, H) the model's coordinates were read against (region_frames)
    frames: dict[str, list[tuple[float, float]]] = field(default_factory=dict)

    def report(self) -> dict[str, Any]:
        return {
            "categories": self.categories,
            "mmbase": self.mmbase,
            "seconds": round(self.seconds, 2),
            "n_items": len(self.items),
            "max_new_tokens": self.max_new_tokens,
        }


def answer_budget(
    tokenizer: MM15Tokenizer, samples: Sequence[Any], max_new_tokens: int | None = None
) -> int:
    """Tokens to generate so that no reference answer of ``samples`` is cut.

    ``None``: the longest reference plus :data:`ANSWER_SLACK`.  An explicit budget shorter than
    the longest reference raises: it would score a correct answer 0 (a box of four 3-digit
    coordinates is 17 tokens when numbers are tokenised digit by digit).
    """
    longest = max((len(tokenizer.encode(a)) for s in samples for a in s.answers or ()), default=0)
    if max_new_tokens is None:
        return longest + ANSWER_SLACK
    if max_new_tokens < longest:
        raise ValueError(
            f"max_new_tokens={max_new_tokens} would cut reference answers of "
            f"{longest} tokens; give at least {longest} or leave it unset"
        )
    return max_new_tokens


def evaluate_synthetic(
    model: MM15,
    tokenizer: MM15Tokenizer,
    corpus: CorpusIndex,
    *,
    tasks: Sequence[str] = SFT_TASKS,
    limit: int | None = None,
    batch_size: int = 32,
    max_new_tokens: int | None = None,
    on_batch: Callable[[int, int], None] | None = None,
) -> SuiteResult:
    """Score ``model`` on the test split of every task in ``tasks`` (at most ``limit`` each),
    generating up to ``max_new_tokens`` per item (default and bound: :func:`answer_budget`)."""
    t0 = time.perf_counter()
    work = [(task, s) for task in tasks for s in corpus.load(task, "test")[:limit]]
    budget = answer_budget(tokenizer, [s for _, s in work], max_new_tokens)
    settings = GenerationSettings(max_new_tokens=budget)
    items, samples, frames = [], {}, {}
    for start in range(0, len(work), batch_size):
        batch = work[start : start + batch_size]
        outs = generate_for_samples(model, tokenizer, [s for _, s in batch], settings)
        for (task, sample), out in zip(batch, outs, strict=True):
            pred = out.text if out.text is not None else tokenizer.decode(out.tokens)
            frames[sample.id] = region_frames(sample, model.cfg)
            items.append(
                {
                    "id": sample.id,
                    "task": task,
                    "category": sample.category,
                    "prediction": pred,
                    "references": sample.answers,
                    "score": score_sample(sample, pred, frames[sample.id]),
                }
            )
            samples[sample.id] = sample
        if on_batch is not None:
            on_batch(min(start + batch_size, len(work)), len(work))
    scores = category_scores(items)
    per_task = Counter(i["task"] for i in items)
    by_cat: dict[str, dict[str, int]] = defaultdict(dict)
    for task in SFT_TASKS:  # every task of an evaluated category, weighted by its items (0 if none)
        by_cat[TASKS[task].category][task] = per_task.get(task, 0)
    by_cat = {c: w for c, w in by_cat.items() if sum(w.values())}
    categories = {
        cat: {
            "score": scores[cat],
            "chance": chance_baseline(cat, weights=weights),
            "n": sum(weights.values()),
        }
        for cat, weights in sorted(by_cat.items())
    }
    return SuiteResult(
        items, categories, scores.get("mmbase"), time.perf_counter() - t0, samples, budget, frames
    )
