"""Synthetic corpus for ``mm15 demo``: every training stage and SFT category (MM1.5 §3–5).

The tasks are small enough for a CPU-sized model to learn in minutes, yet honest: answers come
from what was drawn, text-rich codes are legible only at tile resolution, grounding references
are the drawn pixels' boxes.  ``TASKS`` lists them; :mod:`mm15.demo.data.chance` gives each
exact chance.

Conventions (decided here):

* **Determinism.** Sample ``i`` of task ``t``, split ``s`` under ``seed`` is drawn from
  ``random.Random(f"{seed}/{t}/{s}/{i}")`` (CPython hashes str seeds with SHA-512, independent of
  ``PYTHONHASHSEED``), so no sample depends on how many others are drawn, and PNG bytes repeat.
  Train and test draw from disjoint streams.  ``text_only/reverse`` also keeps a quarter of its
  words for the test split (``Task.held_out``), so it tests reversing, not recall;
  ``text_only/add`` has only 100 prompts, so its test prompts do occur in training: it tests
  learnt facts.
* **Answer first.** Every exact / multiple-choice task draws its answer uniformly from
  ``Task.vocab`` and then builds a scene consistent with it, so the best answer-independent guess
  scores exactly ``1 / |vocab|``: that is its chance baseline.  Grounding (``iou50``) chance is
  estimated by Monte Carlo (:func:`mm15.demo.data.chance.chance_baseline`).
* **Samples.** Train SFT: a user message (media + question) and an assistant message (the answer
  text, or a region part for a box).  Test: ``stage="eval"``, the task's SFT category (so scores
  group per category), the user message only, references in ``answers`` / ``options`` /
  ``regions[meta["answer_region"]]``, and ``meta["metric"]`` in ``exact | mc | iou50``.
* **Media.** :func:`make_samples` embeds PNG bytes; :func:`mm15.demo.data.corpus.generate_corpus` writes PNG files and
  sets ``Media.path`` relative to the corpus root (``CorpusIndex.load`` makes them absolute).
  ``Media.size`` is always set.
* **Video** is emitted as its frames: 4 image media (one tile each, since splitting is off for
  ≥ 3 images, exactly how §5 feeds video as multi-image input) with ``meta["video"] = True``;
  on disk the frames of a sample share a folder (``meta["frames_dir"]``) that
  :func:`mm15.data.video.load_video_frames` can also read as a video.
"""

from __future__ import annotations

import io
import random
from collections.abc import Callable
from dataclasses import dataclass

from PIL import Image

from mm15.data.coords import Box, format_box
from mm15.data.schema import Category, Media, Message, Part, Sample, Stage
from mm15.demo.data import images as si
from mm15.demo.data.drafts import (
    DIRECTIONS,
    LETTERS,
    REGIONS,
    SIGN_WORDS,
    UI_LABELS,
    Draft,
    Metric,
    Split,
    _held_out_word,
)
from mm15.demo.data.pretrain_builders import (
    _caption,
    _facts,
    _grounded_caption,
    _interleaved,
    _object_caption,
    _ocr_page,
    _ocr_words,
)
from mm15.demo.data.sft_builders import (
    _add_image,
    _add_text,
    _colour_q,
    _common_colour,
    _count,
    _direction,
    _find_image,
    _ground,
    _refer,
    _region,
    _rev_held_out,
    _reverse,
    _shape_q,
    _sign,
    _sign_word,
    _ui_find,
    _ui_read,
    _ui_read_colour,
    _ui_read_selected,
)


@dataclass(frozen=True)
class Task:
    name: str  # "category/what"
    stage: Stage
    category: Category
    build: Callable[[random.Random], Draft]
    metric: Metric | None = None
    vocab: tuple[str, ...] | None = None  # test answers, each drawn with probability 1/|vocab|
    # Content reserved for the test split: train redraws while it is True, test while False.
    held_out: Callable[[Draft], bool] | None = None


def _task_list() -> list[Task]:
    colours, sums, counts = tuple(si.COLOURS), tuple(map(str, range(19))), tuple("123456")
    codes = tuple(map(str, range(100, 1000)))
    words = [a + b + c for a in LETTERS for b in LETTERS for c in LETTERS]
    rev = tuple(w[::-1] for w in words if _held_out_word(w))  # answers of held-out words
    return [
        Task("caption/shapes", "pretrain", "caption", _caption),
        Task("caption/object", "pretrain", "caption", _object_caption),
        Task("caption/grounded", "pretrain", "caption", _grounded_caption),
        Task("interleaved/shapes", "pretrain", "interleaved", _interleaved),
        Task("text/facts", "pretrain", "text", _facts),
        Task("ocr/pages", "cpt", "ocr", _ocr_page),
        Task("ocr/words", "cpt", "ocr", _ocr_words),
        Task("general/colour", "sft", "general", _colour_q, "exact", colours),
        Task("general/shape", "sft", "general", _shape_q, "exact", si.SHAPES),
        Task("text_rich/sign", "sft", "text_rich", _sign, "exact", codes),
        Task("text_rich/word", "sft", "text_rich", _sign_word, "exact", SIGN_WORDS),
        Task("refer_ground/box", "sft", "refer_ground", _ground, "iou50"),
        Task("refer_ground/region", "sft", "refer_ground", _region, "exact", REGIONS),
        Task("refer_ground/point", "sft", "refer_ground", _refer, "exact", si.SHAPES),
        Task("math/count", "sft", "math", _count, "exact", counts),
        Task("math/add", "sft", "math", _add_image, "exact", sums),
        Task("multi_image/find", "sft", "multi_image", _find_image, "mc", tuple("ABCD")),
        Task("multi_image/common", "sft", "multi_image", _common_colour, "exact", colours),
        Task("video/direction", "sft", "video", _direction, "exact", DIRECTIONS),
        Task("ui/find_button", "sft", "ui", _ui_find, "iou50"),
        Task("ui/read_button", "sft", "ui", _ui_read, "exact", UI_LABELS),
        Task("ui/read_colour", "sft", "ui", _ui_read_colour, "exact", UI_LABELS),
        Task("ui/read_selected", "sft", "ui", _ui_read_selected, "exact", UI_LABELS),
        Task("text_only/add", "sft", "text_only", _add_text, "exact", sums),
        Task("text_only/reverse", "sft", "text_only", _reverse, "exact", rev, _rev_held_out),
    ]


TASKS: dict[str, Task] = {t.name: t for t in _task_list()}
SFT_TASKS: tuple[str, ...] = tuple(n for n, t in TASKS.items() if t.stage == "sft")


# ---- assembling samples -----------------------------------------------------------------------


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=1)  # fast; still lossless and deterministic
    return buf.getvalue()


def _assemble(task: Task, draft: Draft, split: Split, index: int) -> Sample:
    """A schema :class:`Sample` (media bytes embedded) from a builder's draft."""
    media = [Media(kind="image", bytes=png_bytes(im), size=im.size) for im in draft.images]
    meta = {"task": task.name, **draft.meta}
    sample = Sample(
        id=f"{task.name.replace('/', '_')}-{split}-{index:06d}",
        source=f"synthetic/{task.name}",
        category=task.category,
        stage=task.stage,
        media=media,
        regions=list(draft.regions),
        meta=meta,
    )
    if task.stage != "sft":
        sample.messages = [Message("document", draft.prompt)]
    elif split == "train":
        if draft.answer is not None:
            reply = [Part.t(draft.answer_lead + draft.answer)]
        else:
            lead = [Part.t(draft.answer_lead)] if draft.answer_lead else []
            reply = [*lead, Part.r(draft.answer_region)]
        sample.messages = [Message("user", draft.prompt), Message("assistant", reply)]
    else:
        sample.stage, sample.options = "eval", draft.options
        sample.messages = [Message("user", draft.prompt)]
        sample.meta.update(metric=task.metric, split="test")
        if draft.answer_region is not None:
            reg = draft.regions[draft.answer_region]
            sample.meta["answer_region"] = draft.answer_region
            box = format_box(Box(*reg.box), draft.images[reg.media].size)
            sample.answers = [draft.answer_lead + box]
        else:
            sample.answers = [draft.answer_lead + draft.answer]
        if draft.answer_lead:
            sample.meta["answer_lead"] = draft.answer_lead
    sample.validate()
    return sample


def make_samples(
    task: str, n: int, seed: int, *, split: Split = "train", start: int = 0
) -> list[Sample]:
    """``n`` samples ``start … start + n − 1`` of ``task`` (a ``TASKS`` key), PNG bytes embedded.

    ``split="test"`` gives evaluation samples of an SFT task (see the module docstring).
    """
    if task not in TASKS:
        raise ValueError(f"unknown synthetic task {task!r}; tasks: {sorted(TASKS)}")
    spec = TASKS[task]
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if split == "test" and spec.stage != "sft":
        raise ValueError(f"task {task!r} is {spec.stage} data; only SFT tasks have test sets")
    return [_assemble(spec, _draw(spec, seed, split, i), split, i) for i in range(start, start + n)]


def _draw(spec: Task, seed: int, split: Split, i: int) -> Draft:
    """Draft ``i`` of a split, redrawn (same stream) until it is on its side of ``held_out``."""
    rng = random.Random(f"{seed}/{spec.name}/{split}/{i}")
    while True:
        draft = spec.build(rng)
        if spec.held_out is None or spec.held_out(draft) == (split == "test"):
            return draft
