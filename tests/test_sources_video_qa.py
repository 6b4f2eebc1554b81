"""VideoChat2-IT (``videochat2``) and ActivityNet-QA (``activitynet_qa``) readers on fixtures in
the real layouts (on-disk layouts: mm15/data/registry.toml)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from mm15.data.schema import SampleError
from mm15.data.sources import open_source
from mm15.data.sources.video_qa import ActivityNetQAReader, VideoChat2Reader


def _videochat2(root: Path) -> Path:
    vids = root / "videos"
    (vids / "ssv2").mkdir(parents=True)
    (vids / "ssv2/1.webm").write_bytes(b"\x1a\x45\xdf\xa3")  # existence only: never decoded
    Image.new("RGB", (32, 32)).save(vids / "coco.jpg")
    records = [
        {
            "video": "ssv2/1.webm",
            "start": 1.5,
            "end": 4.0,
            "QA": [
                {"i": "Watch the video and answer.", "q": "What is moved?", "a": "A cup."},
                {"i": "ignored", "q": "Where to?", "a": "Left."},
            ],
        },
        {"image": "coco.jpg", "QA": [{"i": "", "q": "What colour?", "a": "Black."}]},
        {"video": "ssv2/missing.mp4", "QA": [{"i": "", "q": "?", "a": "!"}]},
        {"video": "ssv2/1.webm", "QA": []},
        {"video": "ssv2/1.webm", "QA": [{"q": "no answer"}]},
        {"video": "ssv2/1.webm", "start": 5, "end": 2, "QA": [{"q": "When?", "a": "Now."}]},
    ]
    path = root / "video/classification/ssv2/train.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(records))
    return path


def test_videochat2_qa_list_becomes_a_multi_turn_video_chat(tmp_path):
    path = _videochat2(tmp_path)
    r = open_source(
        {
            "kind": "videochat2",
            "paths": [str(path)],
            "root": str(tmp_path / "videos"),
            "source": "videochat2",
            "category": "video",
            "stage": "sft",
        }
    )
    assert isinstance(r, VideoChat2Reader) and len(r) == 6
    s = r[0]
    assert [m.role for m in s.messages] == ["system", "user", "assistant", "user", "assistant"]
    assert s.messages[0].content[0].text == "Watch the video and answer."  # the first QA's i only
    assert [(p.type, p.media, p.text) for p in s.messages[1].content] == [
        ("media", 0, None),
        ("text", None, "What is moved?"),
    ]
    assert s.messages[4].content[0].text == "Left."
    assert (s.media[0].kind, s.media[0].path) == ("video", str(tmp_path / "videos/ssv2/1.webm"))
    assert s.meta == {"clip": [1.5, 4.0]} and s.id == "train.json:0"
    img = r[1]
    assert img.media[0].kind == "image" and [m.role for m in img.messages] == ["user", "assistant"]
    for i, reason in {2: "missing", 3: "empty", 4: "malformed", 5: "malformed"}.items():
        with pytest.raises(SampleError, match=rf"train\.json row {i}") as e:
            r[i]
        assert e.value.reason == reason


def _activitynet(root: Path) -> dict[str, Path]:
    vids = root / "videos"
    vids.mkdir(parents=True)
    (vids / "v_abc123.mp4").write_bytes(b"\x00")
    (vids / "v_def456.mkv").write_bytes(b"\x00")
    questions = [
        {
            "question": "is the athlete wearing trousers",
            "question_id": "v_abc123_1",
            "video_name": "abc123",
        },
        {
            "question": "what is the person doing",
            "question_id": "v_def456_3",
            "video_name": "def456",
        },
        {"question": "where is this", "question_id": "v_gone_0", "video_name": "gone"},
        {"question": "unanswered", "question_id": "v_abc123_9", "video_name": "abc123"},
    ]
    answers = [
        {"answer": "yes", "question_id": "v_abc123_1", "type": 3},
        {"answer": "skiing", "question_id": "v_def456_3", "type": 0},
        {"answer": "outdoors", "question_id": "v_gone_0", "type": 2},
    ]
    paths = {"q": root / "train_q.json", "a": root / "train_a.json"}
    paths["q"].write_text(json.dumps(questions))
    paths["a"].write_text(json.dumps(answers))
    table = pa.table(
        {
            "video_name": ["def456"],
            "question": ["what sport is it"],
            "answer": ["skiing"],
            "question_id": ["v_def456_4"],
            "type": [0],
        }
    )
    paths["lmms"] = root / "lmms-eval/test-00000-of-00001.parquet"
    paths["lmms"].parent.mkdir()
    pq.write_table(table, paths["lmms"])
    return paths


def test_activitynet_question_answer_join_and_video_lookup(tmp_path):
    paths = _activitynet(tmp_path)
    r = open_source(
        {
            "kind": "activitynet_qa",
            "paths": [str(paths["q"]), str(paths["lmms"])],
            "root": str(tmp_path / "videos"),
            "source": "activitynet_qa",
            "category": "video",
            "stage": "sft",
        }
    )
    assert len(r) == 5
    s = r[0]
    assert (s.id, s.answers, s.meta) == ("v_abc123_1", ["yes"], {"video_name": "abc123", "type": 3})
    assert (s.media[0].kind, s.media[0].path) == ("video", str(tmp_path / "videos/v_abc123.mp4"))
    assert [(p.type, p.text) for p in s.messages[0].content] == [
        ("media", None),
        ("text", "is the athlete wearing trousers"),
    ]
    assert s.messages[1].content[0].text == "yes"
    assert r[1].media[0].path.endswith("v_def456.mkv")  # the first extension that exists
    with pytest.raises(SampleError, match=r"no video v_gone\.\{mp4,mkv,webm\}") as e:
        r[2]
    assert e.value.reason == "missing" and "train_q.json row 2" in str(e.value)
    with pytest.raises(SampleError, match="no answer") as e:
        r[3]
    assert e.value.reason == "missing"
    lmms = r[4]
    assert lmms.id == "v_def456_4" and lmms.answers == ["skiing"]
    ev = ActivityNetQAReader(
        paths["lmms"],
        source="a",
        root=tmp_path / "videos",
        stage="eval",
        category="eval",
        prompt="{question}? Answer briefly.",
    )[0]
    assert [m.role for m in ev.messages] == ["user"] and ev.answers == ["skiing"]
    assert ev.messages[0].content[1].text == "what sport is it? Answer briefly."


def test_activitynet_bad_files_fail_at_open(tmp_path):
    paths = _activitynet(tmp_path)
    explicit = ActivityNetQAReader(paths["q"], source="a", root=tmp_path, answers=paths["a"])
    assert len(explicit) == 4
    paths["a"].unlink()
    with pytest.raises(ValueError, match=r"train_q\.json: its answer file .*train_a\.json"):
        ActivityNetQAReader(paths["q"], source="a", root=tmp_path)
    with pytest.raises(ValueError, match="answers"):
        ActivityNetQAReader(paths["q"], source="a", root=tmp_path, answers=[paths["a"]] * 2)
    bad = tmp_path / "x.parquet"
    pq.write_table(pa.table({"video_name": ["a"], "question": ["b"]}), bad)
    with pytest.raises(ValueError, match=r"x\.parquet: no column\(s\) \['answer', 'question_id'\]"):
        ActivityNetQAReader(bad, source="a", root=tmp_path)
    with pytest.raises(ValueError, match=r"\*_q\.json"):
        ActivityNetQAReader(tmp_path / "questions.json", source="a", root=tmp_path)
