"""Single-image benchmarks by MMBase category (MM1.5 §4.1, Table 4): text_rich (TextVQA, DocVQA,
InfoVQA, ChartQA, OCRBench), knowledge (AI2D, ScienceQA-IMG, MMMU) and general (SEED, RealWorldQA,
POPE, MME), with the prompts of their lmms-eval tasks.  Column names are those of the lmms-eval
Parquet tables (on-disk layouts: mm15/data/registry.toml)."""

from __future__ import annotations

from mm15.eval.task_spec import MC_POST, SHORT, Columns, Row, TaskSpec, lettered, mc_prompt

_QA = Columns(answer="answers", id="question_id")


def _mmmu(row: Row) -> str:
    if row.get("question_type") == "multiple-choice":
        return f"{row['question']}\n{lettered(row['options'])}\n\n{MC_POST.strip()}"
    return f"{row['question']}\n\n{SHORT.strip()}"


def _mme(row: Row) -> str:
    return row["question"].strip().replace(" Please answer yes or no.", "") + SHORT


def _pope(row: Row) -> str:
    return row["question"].strip() + SHORT


def text_rich_specs() -> list[TaskSpec]:
    """TextVQA, DocVQA, InfoVQA (ANLS), ChartQA (relaxed accuracy), OCRBench."""
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
            submission_id="questionId",  # the test split: a submission file
        ),
        TaskSpec(
            name="infovqa",
            category="text_rich",
            metric="anls",
            split="validation",
            config="InfographicVQA",
            columns=Columns(answer="answers", id="questionId"),
            submission_id="questionId",  # the test split: a submission file
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
    ]


def knowledge_specs() -> list[TaskSpec]:
    """AI2D and ScienceQA-IMG (answers are option indices), MMMU (multiple choice and open)."""
    return [
        TaskSpec(
            name="ai2d",
            category="knowledge",
            metric="mc",
            split="test",
            prompt=mc_prompt,
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
            prompt=mc_prompt,
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
    ]


def general_specs() -> list[TaskSpec]:
    """SEED (image rows), RealWorldQA, POPE (F1 over its splits), MME (perception + cognition)."""
    return [
        TaskSpec(
            name="seed",
            category="general",
            metric="mc",
            split="test",
            prompt=mc_prompt,
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
