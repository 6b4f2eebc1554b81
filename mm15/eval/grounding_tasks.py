"""Referring and grounding benchmarks (MM1.5 §4.1, Table 4, refer_ground: RefCOCO, RefCOCO+,
RefCOCOg, Flickr30k): the answer is a box, scored at IoU > 0.5 against the reference box (or any
of the phrase's boxes for Flickr30k).  Column names are those of the lmms-eval Parquet tables
(on-disk layouts: mm15/data/registry.toml)."""

from __future__ import annotations

from mm15.eval.task_spec import Columns, Row, TaskSpec

_REF = Columns(question=None, id="question_id", box="bbox", explode="answer")


def _refer(row: Row) -> str:
    return f"Where is {row['expression']}? Answer with a bounding box."


def _phrase(row: Row) -> str:
    return f'In the sentence "{row["caption"]}", where is "{row["question"]}"? Answer with a bounding box.'


def grounding_specs() -> list[TaskSpec]:
    """RefCOCO/+/g (one box each) and Flickr30k phrases (any of their boxes)."""
    return [
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
    ]
