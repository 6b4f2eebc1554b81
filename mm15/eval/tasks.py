"""The benchmark registry (MM1.5 §4.1, Tables 4–14): every task by name, and how its items are
scored and its score aggregated.

A task (:class:`~mm15.eval.task_spec.TaskSpec`) says which columns to read, the prompt, the metric
and the MMBase category (Table 4).  The tasks are listed by family: general, text_rich and
knowledge in :mod:`mm15.eval.single_image_tasks` (SEED, POPE, MME, RealWorldQA; TextVQA, DocVQA,
InfoVQA, ChartQA, OCRBench; AI2D, ScienceQA-IMG, MMMU), multi_image in
:mod:`mm15.eval.multi_image_tasks` (Q-Bench2, Mantis, NLVR2, BLINK, MuirBench), refer_ground in
:mod:`mm15.eval.grounding_tasks` (RefCOCO/+/g, Flickr30k, LVIS-Ref box / point), the table
benchmarks WTQ and TabFact (text_rich) in :mod:`mm15.eval.table_tasks`; the synthetic suite of
the demo is its own category and never enters MMBase.

Column names are those of the lmms-eval Parquet tables (on-disk layouts:
mm15/data/registry.toml); a plain JSONL copy uses the same field names, with image fields holding
paths relative to the JSONL file.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mm15.eval import benchmarks as bm
from mm15.eval.grounding_tasks import grounding_specs, lvis_ref_specs
from mm15.eval.icl import icl_specs, vlicl_match
from mm15.eval.judge_scores import aggregate_judged
from mm15.eval.judged_tasks import JUDGED_METRICS, judged_specs
from mm15.eval.metrics import box_iou50, exact_match, mc_accuracy
from mm15.eval.multi_image_tasks import multi_image_specs
from mm15.eval.open_video_tasks import open_video_specs
from mm15.eval.single_image_tasks import general_specs, knowledge_specs, text_rich_specs
from mm15.eval.table_metrics import tabfact_accuracy, wtq_accuracy
from mm15.eval.table_tasks import table_specs
from mm15.eval.task_spec import EvalItem, TaskSpec
from mm15.eval.ui_tasks import cider_aggregate, ui_specs
from mm15.eval.video_tasks import best_option_score, video_specs

_SYNTHETIC = TaskSpec(
    name="synthetic", category="synthetic", metric="synthetic", max_new_tokens=None
)

TASKS: dict[str, TaskSpec] = {
    s.name: s
    for s in [
        *text_rich_specs(),
        *knowledge_specs(),
        *general_specs(),
        *multi_image_specs(),
        *grounding_specs(),
        *table_specs(),
        *lvis_ref_specs(),
        *video_specs(),
        *ui_specs(),
        *icl_specs(),
        *judged_specs(),
        *open_video_specs(),
        _SYNTHETIC,
    ]
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
    if m == "wtq":
        return wtq_accuracy(pred, refs)
    if m == "tabfact":
        return tabfact_accuracy(pred, refs[0])
    if m == "lvis_ref":
        return bm.lvis_ref_match(pred, refs[0], refs[1:])
    if m == "best_option":
        return best_option_score(pred, item.options or [], refs[0])
    if m == "vlicl":
        return vlicl_match(spec.name.removeprefix("vlicl_"), pred, refs[0])
    if m == "cider":  # a corpus metric: aggregate() writes each item's CIDEr
        return 0.0
    if m in JUDGED_METRICS:  # the runner's judge_rows scores it after generation
        return 0.0
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
    if spec.metric == "cider":  # UI captioning (Table 12): also sets each row's score
        return cider_aggregate(rows)
    if spec.metric in JUDGED_METRICS:  # MathVista, MM-Vet, LLaVA-Bench, Ferret-Bench, video QA
        return aggregate_judged(spec, list(rows))
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
