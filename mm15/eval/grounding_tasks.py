"""Referring and grounding benchmarks (MM1.5 §4.1, Table 4, refer_ground: RefCOCO, RefCOCO+,
RefCOCOg, Flickr30k): the answer is a box, scored at IoU > 0.5 against the reference box (or any
of the phrase's boxes for Flickr30k).  Column names are those of the lmms-eval Parquet tables
(on-disk layouts: mm15/data/registry.toml).

LVIS-Ref (box and point) is the other way round, Ferret's referring object classification:
the prompt shows a region (as a box, or as a point sampled in the object) and asks which of
two LVIS classes it is; the answer must name the right one (Ferret's ``eval_lvis.py``,
:func:`mm15.eval.benchmarks.lvis_ref_match`).  The data is Ferret's ``lvis_eval.jsonl``
(lmms-eval has no LVIS-Ref task), one object per line with ``image_path``, ``name``,
``synonyms``, ``neg_class``, ``bbox_norm`` (0-1 x1, y1, x2, y2) and ``sample_point`` (pixels),
its COCO val2017 images in ``val2017/`` beside it."""

from __future__ import annotations

import posixpath

from mm15.data.schema import SampleError
from mm15.eval.task_spec import REGION_MARK, Columns, NestedRows, Row, TaskSpec

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


_LVIS_QUESTION = f"Is the object {REGION_MARK} of the image a {{}} or a {{}}?"  # Ferret's


def ferret_lvis_row(row: Row, where: str, k: int, region: str) -> Row:
    """A Ferret LVIS object → the prompt (the true class first on even rows, as Ferret
    alternates), references ``[name, *synonyms]``, the image under ``val2017/`` and the region
    (``bbox_norm`` or ``sample_point``)."""
    name, neg, syn = row.get("name"), row.get("neg_class"), row.get("synonyms")
    if not isinstance(name, str) or not name.strip() or not isinstance(neg, str) or not neg:
        raise SampleError("empty", f"{where}: no class in 'name' / 'neg_class'")
    if not isinstance(syn, list) or not all(isinstance(x, str) for x in syn):
        raise SampleError("malformed", f"{where}: 'synonyms' is not a list of strings")
    image = row.get("image_path")
    if not isinstance(image, str) or not image:
        raise SampleError("missing", f"{where}: no 'image_path'")
    key = "bbox_norm" if region == "box" else "sample_point"
    if row.get(key) is None:
        raise SampleError("empty", f"{where}: no region in {key!r}")
    pair = (name, neg) if k % 2 == 0 else (neg, name)
    return {
        "question": _LVIS_QUESTION.format(*(c.replace("_", " ") for c in pair)),
        "answer": [name, *syn],
        "image": "val2017/" + posixpath.basename(image.replace("\\", "/")),
        "region": {region: row[key]},
        "id": row.get("id"),
        "neg_class": neg,
    }


def lvis_ref_specs() -> list[TaskSpec]:
    """LVIS-Ref with the region given as a box, and as a point (Ferret's two settings)."""
    common = ("image_path", "name", "synonyms", "neg_class")
    return [
        TaskSpec(
            name=f"lvis_ref_{region}",
            category="refer_ground",
            metric="lvis_ref",
            files="lvis*",
            nested=NestedRows(
                reads=(*common, "bbox_norm" if region == "box" else "sample_point"),
                flatten=lambda r, w, k, region=region: ferret_lvis_row(r, w, k, region),
            ),
            columns=Columns(answer="answer", region="region", id="id", keep=("neg_class",)),
            prompt=lambda r: r["question"],
            box_convention="norm01_xyxy",
            point_convention="px",
        )
        for region in ("box", "point")
    ]
