"""Multi-image benchmarks (MM1.5 §4.1, Table 4, multi_image: BLINK, MuirBench, Q-Bench2, Mantis,
NLVR2), with the prompts of their lmms-eval tasks.  Column names are those of the lmms-eval
Parquet tables (on-disk layouts: mm15/data/registry.toml)."""

from __future__ import annotations

from mm15.eval.task_spec import MC_POST, SHORT, Columns, Row, TaskSpec, lettered, mc_prompt

_MULTI = ("image_1", "image_2", "image_3", "image_4")


def _mantis(row: Row) -> str:  # the options are part of Mantis-Eval's question text
    return row["question"] + (MC_POST if row.get("question_type") == "multi-choice" else SHORT)


def _blink(row: Row) -> str:
    letters = ", ".join(chr(ord("A") + i) for i in range(len(row["options"])))
    return (
        f"Note: You only need to respond with {letters} without providing any additional "
        f"information.\n{row['question']}"
    )


def _nlvr2(row: Row) -> str:
    return (
        f"{row['question']}\nIs this statement true or false for the images?\n"
        f"{lettered(row['options'])}{MC_POST}"
    )


def multi_image_specs() -> list[TaskSpec]:
    """Every multi-image benchmark, one spec each."""
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
            prompt=mc_prompt,
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
            prompt=mc_prompt,
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
    ]
