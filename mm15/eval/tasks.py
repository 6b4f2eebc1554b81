"""The benchmark registry: for each task, which columns to read, the prompt, the metric, and the
MMBase category (MM1.5 §4.1, Tables 4–14; MM1.5 Table 4).

Column names are those of the lmms-eval Parquet tables (on-disk layouts: mm15/data/registry.toml); a plain
JSONL copy uses the same field names, with image fields holding paths relative to the JSONL
file.  Prompts follow lmms-eval's default ``doc_to_text`` (short answer: "Answer the question
using a single word or phrase."; multiple choice: lettered options, then "Answer with the
option's letter from the given choices directly.").

Categories (Table 4): general (SEED, POPE, MME, RealWorldQA), text_rich (TextVQA, DocVQA,
InfoVQA, ChartQA, OCRBench), knowledge (AI2D, ScienceQA-IMG, MMMU), refer_ground (RefCOCO/+/g,
Flickr30k), multi_image (Q-Bench2, Mantis, NLVR2, BLINK, MuirBench); the synthetic suite of the
demo is its own category and never enters MMBase.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from mm15.data.coords import Box, BoxConvention
from mm15.data.schema import Sample
from mm15.eval import benchmarks as bm
from mm15.eval.metrics import box_iou50, exact_match, mc_accuracy

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


def _mc(row: Row) -> str:
    hint = f"Context: {row['hint']}\n" if row.get("hint") else ""
    return f"{hint}{row['question']}\n{lettered(row['options'])}{MC_POST}"


def _mmmu(row: Row) -> str:
    if row.get("question_type") == "multiple-choice":
        return f"{row['question']}\n{lettered(row['options'])}\n\n{MC_POST.strip()}"
    return f"{row['question']}\n\n{SHORT.strip()}"


def _mantis(row: Row) -> str:  # the options are part of Mantis-Eval's question text
    return row["question"] + (MC_POST if row.get("question_type") == "multi-choice" else SHORT)


def _blink(row: Row) -> str:
    letters = ", ".join(chr(ord("A") + i) for i in range(len(row["options"])))
    return (
        f"Note: You only need to respond with {letters} without providing any additional "
        f"information.\n{row['question']}"
    )


def _mme(row: Row) -> str:
    return row["question"].strip().replace(" Please answer yes or no.", "") + SHORT


def _pope(row: Row) -> str:
    return row["question"].strip() + SHORT


def _nlvr2(row: Row) -> str:
    return (
        f"{row['question']}\nIs this statement true or false for the images?\n"
        f"{lettered(row['options'])}{MC_POST}"
    )


def _refer(row: Row) -> str:
    return f"Where is {row['expression']}? Answer with a bounding box."


def _phrase(row: Row) -> str:
    return f'In the sentence "{row["caption"]}", where is "{row["question"]}"? Answer with a bounding box.'


_QA = Columns(answer="answers", id="question_id")
_REF = Columns(question=None, id="question_id", box="bbox", explode="answer")
_MULTI = ("image_1", "image_2", "image_3", "image_4")


def _single_image_specs() -> list[TaskSpec]:
    return [
        TaskSpec(
            name="textvqa",
            category="text_rich",
            metric="vqa",
            columns=_QA,
            prompt=lambda r: r["question"].capitalize() + SHORT,
            split="validation",
        ),
        TaskSpec(
            name="docvqa",
            category="text_rich",
            metric="anls",
            split="validation",
            config="DocVQA",
            columns=Columns(answer="answers", id="questionId"),
        ),
        TaskSpec(
            name="infovqa",
            category="text_rich",
            metric="anls",
            split="validation",
            config="InfographicVQA",
            columns=Columns(answer="answers", id="questionId"),
        ),
        TaskSpec(
            name="chartqa",
            category="text_rich",
            metric="relaxed",
            split="test",
            columns=Columns(answer="answer", keep=("type",)),
            max_new_tokens=16,
            prompt=lambda r: r["question"] + "\nAnswer the question with a single word.",
        ),
        TaskSpec(
            name="ocrbench",
            category="text_rich",
            metric="ocrbench",
            split="test",
            columns=Columns(answer="answer", keep=("dataset", "question_type")),
            prompt=lambda r: r["question"].strip(),
            max_new_tokens=128,
        ),
        TaskSpec(
            name="ai2d",
            category="knowledge",
            metric="mc",
            split="test",
            prompt=_mc,
            columns=Columns(answer="answer", options=("options",)),
            max_new_tokens=16,
            answer_is_index=True,
        ),
        TaskSpec(
            name="scienceqa_img",
            category="knowledge",
            metric="mc",
            split="test",
            config="ScienceQA-IMG",
            prompt=_mc,
            max_new_tokens=16,
            answer_is_index=True,
            columns=Columns(
                answer="answer", options=("choices",), hint="hint", images_optional=True
            ),
        ),
        TaskSpec(
            name="mmmu",
            category="knowledge",
            metric="mc",
            split="validation",
            prompt=_mmmu,
            max_new_tokens=128,
            mc_if=("question_type", "multiple-choice"),
            columns=Columns(
                images=tuple(f"image_{k}" for k in range(1, 8)),
                images_optional=True,
                answer="answer",
                options=("options",),
                id="id",
                keep=("question_type",),
            ),
        ),
        TaskSpec(
            name="seed",
            category="general",
            metric="mc",
            split="test",
            prompt=_mc,
            columns=Columns(
                answer="answer",
                id="question_id",
                where=("data_type", "image"),
                options=("choice_a", "choice_b", "choice_c", "choice_d"),
            ),
            max_new_tokens=16,
        ),
        TaskSpec(
            name="realworldqa",
            category="general",
            metric="mc",
            split="test",
            columns=Columns(answer="answer"),
            prompt=lambda r: r["question"].strip(),
            options_from_question=True,
            max_new_tokens=16,
        ),
        TaskSpec(
            name="pope",
            category="general",
            metric="pope",
            split="test",
            prompt=_pope,
            columns=Columns(answer="answer", id="question_id", keep=("category",)),
        ),
        TaskSpec(
            name="mme",
            category="general",
            metric="mme",
            split="test",
            prompt=_mme,
            columns=Columns(answer="answer", keep=("question_id", "category")),
            max_new_tokens=16,
        ),
    ]


def _multi_image_and_grounding_specs() -> list[TaskSpec]:
    return [
        TaskSpec(
            name="blink",
            category="multi_image",
            metric="mc",
            split="val",
            prompt=_blink,
            columns=Columns(
                question="prompt",
                images=_MULTI,
                images_optional=True,
                answer="answer",
                options=("choices",),
                id="idx",
                keep=("sub_task",),
            ),
        ),
        TaskSpec(
            name="muirbench",
            category="multi_image",
            metric="mc",
            split="test",
            prompt=_mc,
            columns=Columns(
                images=("image_list",),
                answer="answer",
                options=("options",),
                id="idx",
                keep=("task",),
            ),
        ),
        TaskSpec(
            name="qbench2",
            category="multi_image",
            metric="mc",
            split="dev",
            prompt=_mc,
            columns=Columns(
                images=("image1", "image2"),
                answer="correct_choice",
                id="id",
                options=("option0", "option1", "option2", "option3"),
            ),
        ),
        TaskSpec(
            name="mantis",
            category="multi_image",
            metric="mc",
            split="test",
            prompt=_mantis,
            max_new_tokens=16,
            mc_if=("question_type", "multi-choice"),
            columns=Columns(
                images=("images",),
                answer="answer",
                options=("options",),
                id="id",
                keep=("question_type",),
            ),
        ),
        TaskSpec(
            name="nlvr2",
            category="multi_image",
            metric="mc",
            prompt=_nlvr2,
            columns=Columns(question="sentence", images=("images",), answer="label"),
            fixed_options=("True", "False"),
            max_new_tokens=16,
        ),
        *(
            TaskSpec(
                name=n,
                category="refer_ground",
                metric="box",
                split="val",
                prompt=_refer,
                columns=_REF,
            )
            for n in ("refcoco", "refcoco+", "refcocog")
        ),
        TaskSpec(
            name="flickr30k",
            category="refer_ground",
            metric="any_box",
            prompt=_phrase,
            columns=Columns(question="phrase", box="boxes", keep=("caption",)),
            box_convention="px_xyxy",
        ),
        TaskSpec(name="synthetic", category="synthetic", metric="synthetic", max_new_tokens=None),
    ]


TASKS: dict[str, TaskSpec] = {
    s.name: s for s in _single_image_specs() + _multi_image_and_grounding_specs()
}


def get_task(name: str) -> tuple[TaskSpec, str | None]:
    """``"name"`` or ``"name:split"`` → (spec, split or None)."""
    base, _, split = name.partition(":")
    if base not in TASKS:
        raise ValueError(f"unknown task {base!r}; known tasks: {', '.join(sorted(TASKS))}")
    return TASKS[base], split or None


# ---------------------------------------------------------------------------------------------
# Scoring and aggregation


def score_item(spec: TaskSpec, item: EvalItem, pred: str) -> float:
    """The per-item score of ``pred`` (error items are scored 0 by the caller)."""
    refs, m = item.references, spec.metric
    if m == "vqa":
        return bm.vqa_accuracy(pred, refs)
    if m == "anls":
        return bm.anls(pred, refs)
    if m == "relaxed":
        return max(bm.relaxed_accuracy(pred, r) for r in refs)
    if m == "ocrbench":
        return bm.ocrbench_match(pred, refs, item.meta.get("dataset"))
    if m == "mc":
        if item.options:
            return mc_accuracy(pred, item.options, refs[0])
        if spec.name == "mmmu":  # MMMU open questions
            return bm.mmmu_open_match(pred, refs)
        return exact_match(pred, refs)  # short-answer rows of MC benchmarks (Mantis, RWQA)
    if m == "pope":
        return float(bm.pope_label(pred) == refs[0])
    if m == "mme":
        return float(bm.mme_label(pred) == refs[0])
    if m == "box":
        return box_iou50(pred, item.boxes[0], item.sizes)
    if m == "any_box":
        return bm.any_box_iou50(pred, item.boxes, item.sizes)
    raise ValueError(f"task {spec.name}: metric {m!r} is not scored per item")


def aggregate(spec: TaskSpec, rows: Sequence[dict[str, Any]]) -> tuple[float, dict[str, Any]]:
    """(benchmark score in [0, 1], details) from the written item rows (``score``,
    ``prediction`` (None for errors), ``reference``, ``meta``).

    Mean item score, except POPE (mean F1 over its splits; an error item counts as the wrong
    label) and MME (perception + cognition, normalised by 200 per subtask present: 2800 for the
    full benchmark).  Error items whose reference or split could not be read cannot enter
    those two; they are counted in ``details["n_unplaced"]`` (and in the item mean).
    """
    if not rows:
        return 0.0, {}
    mean = sum(r["score"] for r in rows) / len(rows)
    if spec.metric == "pope":  # a POPE copy without the split column is one split, "all"
        placed = [r for r in rows if r["reference"]]
        summary = bm.pope_summary(
            (
                (r["meta"] or {}).get("category") or "all",
                r["reference"][0],
                None if r["prediction"] is None else bm.pope_label(r["prediction"]),
            )
            for r in placed
        )
        return summary["mean_f1"], {
            **summary,
            "item_accuracy": mean,
            "n_unplaced": len(rows) - len(placed),
        }
    if spec.metric == "mme":
        placed = [
            r
            for r in rows
            if r["reference"]
            and (r["meta"] or {}).get("category")
            and (r["meta"] or {}).get("question_id") is not None
        ]
        summary = bm.mme_summary(
            (r["meta"]["category"], str(r["meta"]["question_id"]), r["score"]) for r in placed
        )
        return summary["normalized"], {
            **summary,
            "item_accuracy": mean,
            "n_unplaced": len(rows) - len(placed),
        }
    if spec.metric == "ocrbench":
        return mean, {"final_score": sum(r["score"] for r in rows), "out_of": len(rows)}
    return mean, {}
