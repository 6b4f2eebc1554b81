"""COCO captions JSON (``coco_captions``) and RefCOCO-family Parquet copies (``refcoco``) on
fixtures in the real layouts (on-disk layouts: mm15/data/registry.toml)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from mm15.config import FormatConfig
from mm15.data.pipeline import format_sample
from mm15.data.schema import SampleError
from mm15.data.sources import open_source
from mm15.data.sources.coco import CocoCaptionsReader, RefCocoReader
from mm15.presets import tiny
from mm15.tokenizer import byte_tokenizer

IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def _png(size=(200, 100)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (5, 50, 150)).save(buf, format="PNG")
    return buf.getvalue()


def _coco(root: Path) -> Path:
    (root / "train2017").mkdir(parents=True)
    (root / "train2017/000000391895.jpg").write_bytes(_png())
    data = {
        "info": {},
        "licenses": [],
        "images": [
            {"id": 391895, "file_name": "000000391895.jpg", "width": 200, "height": 100},
            {"id": 7, "file_name": "000000000007.jpg", "width": 1, "height": 1},
        ],
        "annotations": [
            {"id": 1, "image_id": 391895, "caption": "A man riding a bike. "},
            {"id": 2, "image_id": 391895, "caption": "Someone on a bicycle."},
            {"id": 3, "image_id": 7, "caption": "Not downloaded."},
            {"id": 4, "image_id": 99, "caption": "No such image."},
            {"id": 5, "image_id": 391895, "caption": ""},
            {"id": 6, "image_id": 391895, "caption": ["a list"]},
        ],
    }
    path = root / "annotations/captions_train2017.json"
    path.parent.mkdir()
    path.write_text(json.dumps(data))
    return path


def test_coco_one_caption_sample_per_annotation(tmp_path):
    path = _coco(tmp_path)
    r = open_source(
        {
            "kind": "coco_captions",
            "paths": [str(path)],
            "source": "coco",
            "category": "caption",
            "stage": "pretrain",
            "root": str(tmp_path / "train2017"),
        }
    )
    assert len(r) == 6
    s = r[0]
    assert (s.id, s.category, s.meta) == ("1", "caption", {"image_id": 391895})
    assert s.media[0].path == str(tmp_path / "train2017/000000391895.jpg")
    assert [m.role for m in s.messages] == ["document"]
    assert [(p.type, p.text) for p in s.messages[0].content] == [
        ("media", None),
        ("text", "A man riding a bike."),
    ]
    assert r[1].messages[0].content[1].text == "Someone on a bicycle."
    expected = {2: "missing", 3: "missing", 4: "empty", 5: "malformed"}
    for i, reason in expected.items():
        with pytest.raises(SampleError, match=rf"captions_train2017\.json annotation {i}") as e:
            r[i]
        assert e.value.reason == reason
    chat = CocoCaptionsReader(
        path,
        source="c",
        root=tmp_path / "train2017",
        stage="sft",
        category="general",
        prompt="Describe the image briefly.",
    )[0]
    assert [m.role for m in chat.messages] == ["user", "assistant"]


def test_coco_bad_files_fail_at_open(tmp_path):
    bad = tmp_path / "captions_val2017.json"
    bad.write_text(json.dumps({"images": []}))
    with pytest.raises(ValueError, match=r"captions_val2017\.json: .*'annotations'"):
        CocoCaptionsReader(bad, source="c", root=tmp_path)
    bad.write_text("{")
    with pytest.raises(ValueError, match=r"captions_val2017\.json"):
        CocoCaptionsReader(bad, source="c", root=tmp_path)


def _lmms_lab(root: Path) -> Path:
    """lmms-lab/RefCOCO layout: image struct, answer list, bbox COCO xywh pixels."""
    table = pa.table(
        {
            "question_id": ["q0", "q1", "q2", "q3"],
            "image": pa.array([{"bytes": _png(), "path": None}] * 4, IMAGE),
            "question": ["Please carefully observe the area circled in the image."] * 4,
            "answer": [["man on left", "guy in red"], [], ["cat"], ["dog"]],
            "bbox": [
                [20.0, 10.0, 40.0, 50.0],
                [0.0, 0.0, 1.0, 1.0],
                [190.0, 0.0, 20.0, 10.0],
                None,
            ],
            "file_name": ["COCO_train2014_000000000001_1.jpg"] * 4,
        }
    )
    path = root / "RefCOCO/val-00000-of-00001.parquet"
    path.parent.mkdir(parents=True)
    pq.write_table(table, path)
    return path


def _jxu124(root: Path) -> Path:
    """jxu124/refcoco layout: image_path under the COCO folder, bbox xyxy, captions,
    sentences."""
    (root / "coco/train2014").mkdir(parents=True)
    (root / "coco/train2014/COCO_train2014_000000000009.jpg").write_bytes(_png((100, 200)))
    sent = pa.list_(
        pa.struct([("raw", pa.string()), ("sent", pa.string()), ("sent_id", pa.int64())])
    )
    table = pa.table(
        {
            "ref_id": [11, 12],
            "image_path": [
                "coco/train2014/COCO_train2014_000000000009.jpg",
                "coco/train2014/none.jpg",
            ],
            "bbox": [[10.0, 20.0, 60.0, 120.0], [0.0, 0.0, 5.0, 5.0]],
            "captions": [["woman in blue", "left woman"], ["x"]],
            "sentences": pa.array(
                [
                    [
                        {"raw": "Woman in blue", "sent": "woman in blue", "sent_id": 1},
                        {"raw": "Left woman", "sent": "left woman", "sent_id": 2},
                    ],
                    [{"raw": "X", "sent": "x", "sent_id": 3}],
                ],
                sent,
            ),
            "split": ["train", "train"],
        }
    )
    path = root / "refcoco/data/train-00000-of-00001.parquet"
    path.parent.mkdir(parents=True)
    pq.write_table(table, path)
    return path


def test_refcoco_lmms_lab_one_grounding_sample_per_expression(tmp_path):
    r = RefCocoReader(_lmms_lab(tmp_path), source="refcoco", stage="sft")
    assert r.layout == "lmms_lab" and len(r) == 5  # 2 + (1 empty) + 1 + 1
    s = r[0]
    assert (s.id, s.category) == ("q0#0", "refer_ground")
    assert s.media[0].size == (200, 100)
    assert s.regions[0].box == (20.0, 10.0, 60.0, 60.0) and s.regions[0].label == "man on left"
    assert [(p.type, p.text) for p in s.messages[0].content] == [
        ("media", None),
        ("text", "Where is man on left? Answer with a bounding box."),
    ]
    assert [(p.type, p.region) for p in s.messages[1].content] == [("region", 0)]
    assert r[1].messages[0].content[1].text.startswith("Where is guy in red?")
    tok = byte_tokenizer()
    ex = format_sample(s, tokenizer=tok, model_cfg=tiny(vocab_size=len(tok)), fmt=FormatConfig())
    trained = tok.decode([t for t, lab in zip(ex.input_ids, ex.labels, strict=True) if lab >= 0])
    assert trained.startswith("<100,100,299,599>")  # the box, in mm15's language, with loss
    for i, (reason, match) in {
        2: ("empty", "no referring"),
        3: ("malformed", "bad box"),
        4: ("missing", "no box"),
    }.items():
        with pytest.raises(SampleError, match=match) as e:
            r[i]
        assert e.value.reason == reason and "val-00000-of-00001.parquet row" in str(e.value)


def test_refcoco_jxu124_layout_is_detected(tmp_path):
    path = _jxu124(tmp_path)
    r = open_source(
        {
            "kind": "refcoco",
            "paths": [str(path)],
            "root": str(tmp_path),
            "source": "refcoco_train",
            "category": "refer_ground",
            "stage": "sft",
        }
    )
    assert r.layout == "jxu124" and len(r) == 3
    s = r[1]
    assert s.id == "11#1" and s.media[0].path.endswith("COCO_train2014_000000000009.jpg")
    assert s.regions[0].box == (10.0, 20.0, 60.0, 120.0) and s.regions[0].label == "left woman"
    with pytest.raises(SampleError) as e:
        r[2]
    assert e.value.reason == "missing"
    by_sentences = RefCocoReader(path, source="r", root=tmp_path, phrase_column="sentences")
    assert by_sentences[0].regions[0].label == "woman in blue"


def test_refcoco_bad_options_fail_at_open(tmp_path):
    path = _jxu124(tmp_path)
    with pytest.raises(
        ValueError, match=r"train-00000-of-00001\.parquet: no column\(s\) \['answer'\]"
    ):
        RefCocoReader(path, source="r", layout="jxu124", phrase_column="answer")
    with pytest.raises(ValueError, match="phrase"):
        RefCocoReader(path, source="r", prompt="Find {thing}")
    with pytest.raises(ValueError, match="layout"):
        RefCocoReader(path, source="r", layout="refer_pickle")
