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

from mm15.data.coord_conventions import BoxConvention, PointConvention
from mm15.data.coords import Box
from mm15.data.schema import Sample

Metric = Literal[
    "vqa",
    "anls",
    "relaxed",
    "ocrbench",
    "mc",
    "pope",
    "mme",
    "box",
    "any_box",
    "synthetic",
    "wtq",
    "tabfact",
    "lvis_ref",
    "best_option",  # video MC after "Best Option: (" (mm15.eval.video_tasks)
    "cider",  # UI captioning (mm15.eval.ui_tasks)
    "vlicl",  # VL-ICL's answer matching (mm15.eval.icl)
    # scored by a judge model (mm15.eval.judged_tasks)
    "mathvista_judge",
    "mmvet_judge",
    "llava_judge",
    "ferret_judge",
    "videoqa_judge",
    "vcgbench_judge",  # VCGBench's five dimensions (mm15.eval.open_video_tasks)
    "hound_judge",  # LLaVA-Hound video QA
]
BenchCategory = Literal[
    "general",
    "text_rich",
    "knowledge",
    "refer_ground",
    "multi_image",
    "synthetic",
    "video",
    "ui",
    "icl",
]
Row = dict[str, Any]  # question, options, hint, expression, plus the task's ``keep`` columns

SHORT = "\nAnswer the question using a single word or phrase."
MC_POST = "\nAnswer with the option's letter from the given choices directly."
REGION_MARK = "<region>"  # where a prompt shows Columns.region, written as in training


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
    region: str | None = None  # a region shown in the prompt: {"box": [4]} or {"point": [2]}


@dataclass(frozen=True, kw_only=True)
class NestedRows:
    """Rows whose fields are nested (DocOwl's chat rows, Ferret's LVIS objects): the file's
    columns to read, and ``flatten(row, where, k)`` (``k``: the row's number in its file),
    which returns a row under the task's :class:`Columns` names or raises ``SampleError`` for a
    row it cannot use.  Image paths are
    relative to the file's folder, or to the folder above it (``images_from="parent"``:
    DocDownstream-1.0's ``test/*.jsonl`` name images under the dataset root)."""

    reads: tuple[str, ...]
    flatten: Callable[[Row, str, int], Row]
    images_from: Literal["file", "parent"] = "file"


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
    box_convention: BoxConvention = "px_xywh"  # of Columns.box and Columns.region boxes
    answer_is_index: bool = False  # MC answers are option indices (AI2D, ScienceQA)
    fixed_options: tuple[str, ...] = ()  # options when the data has none (NLVR2: True / False)
    options_from_question: bool = False  # RealWorldQA: "A. …" lines of the question
    mc_if: tuple[str, str] | None = None  # rows are multiple choice only when column == value
    point_convention: PointConvention = "px"  # of Columns.region points
    files: str | None = None  # in a directory, only files whose name matches this glob
    nested: NestedRows | None = None  # rows that are not flat columns (DocOwl, Ferret)
    submission_id: str | None = None  # unanswered files → a test-server file keyed by this column
    # a task that reads its own layout (videos, UI, VL-ICL): (spec, data, *, split, limit) →
    # an mm15.eval.item_stream.ItemStream, used in place of mm15.eval.readers.ItemReader
    reader: Callable[..., Any] | None = None


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
    unanswered: bool = False  # a test split without references: predicted, not scored


def lettered(options: Sequence[str]) -> str:
    return "\n".join(f"{chr(ord('A') + i)}. {o}" for i, o in enumerate(options))


def mc_prompt(row: Row) -> str:
    hint = f"Context: {row['hint']}\n" if row.get("hint") else ""
    return f"{hint}{row['question']}\n{lettered(row['options'])}{MC_POST}"
