"""What a benchmark task is: where its fields live in a row (:class:`Columns`), its prompt,
metric and MMBase category (:class:`TaskSpec`, MM1.5 §4.1, Table 4), and one question read from
it (:class:`EvalItem`).  The tasks themselves are listed by family in
:mod:`mm15.eval.single_image_tasks`, :mod:`mm15.eval.multi_image_tasks` and
:mod:`mm15.eval.grounding_tasks`, and looked up in :mod:`mm15.eval.tasks`.

Prompts follow lmms-eval's default ``doc_to_text`` (short answer: :data:`SHORT`; multiple
choice: lettered options, then :data:`MC_POST`, as :func:`mc_prompt` writes them).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from mm15.data.coord_conventions import BoxConvention
from mm15.data.coords import Box
from mm15.data.schema import Sample

Metric = Literal[
    "vqa", "anls", "relaxed", "ocrbench", "mc", "pope", "mme", "box", "any_box", "synthetic"
]
BenchCategory = Literal[
    "general", "text_rich", "knowledge", "refer_ground", "multi_image", "synthetic"
]
Row = dict[str, Any]  # question, options, hint, expression, plus the task's ``keep`` columns

SHORT = "\nAnswer the question using a single word or phrase."
MC_POST = "\nAnswer with the option's letter from the given choices directly."


@dataclass(frozen=True, kw_only=True)
class Columns:
    """Where a task's fields live in a row."""

    question: str | None = "question"
    images: tuple[str, ...] = ("image",)  # each cell: an image, a list of images, or null
    images_optional: bool = False  # null cells allowed (BLINK image_3, MMMU image_2..7)
    answer: str | None = None  # references: a string, a list of strings, an option index, a bool
    options: tuple[str, ...] = ()  # one list column (or a Python-literal string), or one per option
    hint: str | None = None
    id: str | None = None  # default: "file:row"
    box: str | None = None  # grounding reference: one box, or a list of boxes (any_box)
    explode: str | None = None  # a list column: one item per element (RefCOCO expressions)
    keep: tuple[str, ...] = ()  # copied into EvalItem.meta (POPE split, MME subtask, ...)
    where: tuple[str, str] | None = None  # keep only rows whose column equals the value


@dataclass(frozen=True, kw_only=True)
class TaskSpec:
    name: str
    category: BenchCategory
    metric: Metric
    columns: Columns = field(default_factory=Columns)
    prompt: Callable[[Row], str] = lambda row: row["question"] + SHORT
    split: str | None = None  # default split when --data is a directory (lmms-eval test_split)
    config: str | None = None  # HF config sub-folder (lmms-lab/DocVQA holds DocVQA, InfographicVQA)
    max_new_tokens: int | None = 32  # None: the task sizes it (synthetic: its longest answer)
    box_convention: BoxConvention = "px_xywh"
    answer_is_index: bool = False  # MC answers are option indices (AI2D, ScienceQA)
    fixed_options: tuple[str, ...] = ()  # options when the data has none (NLVR2: True / False)
    options_from_question: bool = False  # RealWorldQA: "A. …" lines of the question
    mc_if: tuple[str, str] | None = None  # rows are multiple choice only when column == value


@dataclass
class EvalItem:
    """One evaluation question: the prompt as a schema sample and what to score it against.

    An item that could not be read or run has ``sample=None`` (or keeps its sample) and
    ``error = "reason: detail"``; it still counts, with score 0.
    """

    task: str
    id: str
    sample: Sample | None
    references: list[str] = field(default_factory=list)  # MC: the answer letter
    options: list[str] | None = None
    boxes: list[Box] = field(default_factory=list)  # grounding references (pixels, image 0)
    sizes: list[tuple[int, int]] = field(default_factory=list)  # (W, H) of each image shown
    meta: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


def lettered(options: Sequence[str]) -> str:
    return "\n".join(f"{chr(ord('A') + i)}. {o}" for i, o in enumerate(options))


def mc_prompt(row: Row) -> str:
    hint = f"Context: {row['hint']}\n" if row.get("hint") else ""
    return f"{hint}{row['question']}\n{lettered(row['options'])}{MC_POST}"
