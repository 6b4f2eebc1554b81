"""Table reader with a column map: the Cauldron, Mantis-Instruct, benchmarks, text-only
instruction sets; Parquet (several row groups), Arrow IPC, JSON and JSONL, on fixtures in the
real layouts (on-disk layouts: mm15/data/registry.toml)."""

from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from mm15.data.schema import SampleError, sample_to_json
from mm15.data.sources import open_source
from mm15.data.sources.rows import RowStore
from mm15.data.sources.table import COLUMN_MAPS, ColumnMap, TableReader

IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])  # HF datasets' Image
TEXTS = pa.list_(
    pa.struct([("user", pa.string()), ("assistant", pa.string()), ("source", pa.string())])
)


def _png(size=(100, 80), color=(0, 128, 255)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def write_table_fixture(root: Path) -> dict[str, Path]:
    """Cauldron and Mantis Parquet, a RefCOCO/AI2D-style benchmark table, text-only sets as
    Parquet, JSONL, JSON and an Arrow IPC stream (the ``datasets`` cache layout)."""
    a, b = _png(), _png((30, 20), (255, 0, 0))
    cauldron = pa.table(
        {
            "images": pa.array(
                [
                    [{"bytes": a, "path": None}],
                    [{"bytes": a, "path": None}, {"bytes": b, "path": "x.png"}],
                    [],
                    [{"bytes": None, "path": "nowhere.png"}],
                    [{"bytes": b, "path": None}],
                ],
                pa.list_(IMAGE),
            ),
            "texts": pa.array(
                [
                    [
                        {
                            "user": "Question: What is the total?",
                            "assistant": "42",
                            "source": "chartqa",
                        }
                    ],
                    [
                        {"user": "Same?", "assistant": "No.", "source": "nlvr2"},
                        {"user": "Which is red?", "assistant": "The right.", "source": "nlvr2"},
                    ],
                    [{"user": "Text only?", "assistant": "Yes.", "source": "x"}],
                    [{"user": "Lost?", "assistant": "Yes.", "source": "x"}],
                    [],
                ],
                TEXTS,
            ),
        }
    )
    paths = {"cauldron": root / "cauldron/chartqa/train-00000-of-00001.parquet"}
    paths["cauldron"].parent.mkdir(parents=True)
    pq.write_table(cauldron, paths["cauldron"], row_group_size=2)  # 3 row groups
    (root / "mantis_images/nlvr2").mkdir(parents=True)
    (root / "mantis_images/nlvr2/l.png").write_bytes(a)
    (root / "mantis_images/nlvr2/r.png").write_bytes(b)
    conv = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
    mantis = pa.table(
        {
            "id": ["nlvr2_1", "nlvr2_2"],
            "images": pa.array(
                [
                    [
                        {"bytes": None, "path": "nlvr2/l.png"},
                        {"bytes": None, "path": "nlvr2/r.png"},
                    ],
                    [{"bytes": None, "path": "nlvr2/l.png"}],
                ],
                pa.list_(IMAGE),
            ),
            "conversation": pa.array(
                [
                    [
                        {"role": "user", "content": "<image><image> Is the left one blue?"},
                        {"role": "assistant", "content": "True"},
                    ],
                    [
                        {"role": "user", "content": "<image> and <image>?"},
                        {"role": "assistant", "content": "?"},
                    ],
                ],
                conv,
            ),
            "source": ["nlvr2", "nlvr2"],
        }
    )
    paths["mantis"] = root / "mantis.parquet"
    pq.write_table(mantis, paths["mantis"])
    bench = pa.table(
        {
            "question_id": ["q0", "q1", "q2", "q3"],
            "image": pa.array(
                [{"bytes": a, "path": None}] * 3 + [{"bytes": b"junk", "path": None}], IMAGE
            ),
            "question": ["Find the dog.", "Find the cat.", "Find the bird.", "Find it."],
            "answer": [["a dog", "dog"], ["cat"], ["bird"], ["it"]],
            "bbox": [
                [10.0, 20.0, 30.0, 40.0],
                None,
                [90.0, 20.0, 30.0, 40.0],
                [1.0, 1.0, 2.0, 2.0],
            ],
            "options": [["A", "B"], ["C"], None, None],
        }
    )
    paths["bench"] = root / "refcoco_val.parquet"
    pq.write_table(bench, paths["bench"])
    orca = pa.table(
        {
            "id": ["o1", "o2"],
            "system_prompt": ["Be helpful.", ""],
            "question": ["2+2?", "Capital of France?"],
            "response": ["4", "Paris"],
        }
    )
    paths["orca"] = root / "orca.parquet"
    pq.write_table(orca, paths["orca"])
    alpaca = [
        {"instruction": "Give a tip.", "input": "", "output": "Sleep."},
        {"instruction": "Translate.", "input": "Hallo", "output": "Hello"},
        {"instruction": "", "input": "", "output": "orphan"},
        {"instruction": ["not", "text"], "input": "", "output": "x"},
        {"instruction": "No output column"},
    ]
    paths["alpaca"] = root / "alpaca.jsonl"
    paths["alpaca"].write_text("\n".join(json.dumps(r) for r in alpaca) + "\n")
    paths["prompts"] = root / "prompts.json"
    paths["prompts"].write_text(json.dumps([{"prompt": "Hi?", "response": "Hello."}]))
    paths["arrow"] = root / "data-00000-of-00001.arrow"
    qa = pa.table({"question": ["Q1", "Q2", "Q3"], "answer": ["A1", "A2", "A3"]})
    with pa.ipc.new_stream(str(paths["arrow"]), qa.schema) as w:
        w.write_table(qa, max_chunksize=2)
    return paths


@pytest.fixture
def fx(tmp_path):
    return write_table_fixture(tmp_path), tmp_path


def _reader(path, columns, **kw):
    kw.setdefault("category", "general")
    kw.setdefault("stage", "sft")
    return TableReader(path, columns=columns, source="test", **kw)


def _summary(msg):
    return [(p.type, p.text if p.type == "text" else p.media) for p in msg.content]


def test_cauldron_images_all_go_to_the_first_user_turn(fx):
    paths, _ = fx
    r = _reader(paths["cauldron"], COLUMN_MAPS["cauldron"])
    assert len(r) == 5 and len(r.rows._parts) == 3  # row groups of 2, 2, 1
    s = r[0]
    assert [m.role for m in s.messages] == ["user", "assistant"]
    assert _summary(s.messages[0]) == [("media", 0), ("text", "Question: What is the total?")]
    assert s.media[0].bytes == _png() and s.media[0].size is None  # not even the header read
    assert s.meta == {"source": "chartqa"} and s.id == "train-00000-of-00001.parquet:0"
    multi = r[1]  # two images, two QA pairs: both images before the first question, in order
    assert [m.bytes for m in multi.media] == [_png(), _png((30, 20), (255, 0, 0))]
    assert [m.role for m in multi.messages] == ["user", "assistant"] * 2
    assert _summary(multi.messages[0]) == [("media", 0), ("media", 1), ("text", "Same?")]
    assert _summary(multi.messages[2]) == [("text", "Which is red?")]
    assert r[2].media == [] and _summary(r[2].messages[1]) == [("text", "Yes.")]
    for row, reason in ((3, "missing"), (4, "empty")):
        with pytest.raises(SampleError) as e:
            r[row]
        assert e.value.reason == reason and f"row {row}" in str(e.value)
        assert "train-00000-of-00001.parquet" in str(e.value)


def test_mantis_paths_resolve_against_the_image_root(fx):
    paths, root = fx
    r = _reader(paths["mantis"], COLUMN_MAPS["mantis"], root=root / "mantis_images")
    s = r[0]
    assert s.id == "nlvr2_1" and s.meta == {"source": "nlvr2"}
    assert [m.path for m in s.media] == [
        str(root / "mantis_images/nlvr2/l.png"),
        str(root / "mantis_images/nlvr2/r.png"),
    ]
    assert _summary(s.messages[0]) == [
        ("media", 0),
        ("media", 1),
        ("text", "Is the left one blue?"),
    ]
    with pytest.raises(SampleError, match="2 image placeholders but 1 images") as e:
        r[1]
    assert e.value.reason == "malformed"
    with pytest.raises(SampleError) as e:  # no image root: the relative paths dangle (§8.3)
        _reader(paths["mantis"], COLUMN_MAPS["mantis"])[0]
    assert e.value.reason == "missing" and "mantis.parquet row 0" in str(e.value)


def test_benchmark_box_lands_on_the_right_pixels(fx):
    paths, _ = fx
    cols = dataclasses.replace(COLUMN_MAPS["refcoco_eval"], options="options")
    r = _reader(paths["bench"], cols, category="eval", stage="eval")
    s = r[0]
    assert s.id == "q0" and s.answers == ["a dog", "dog"] and s.options == ["A", "B"]
    assert [m.role for m in s.messages] == ["user"]  # eval: the prompt only
    assert s.media[0].size == (100, 80)  # header of the 100×80 PNG, read because of the box
    assert s.regions[0].box == (10.0, 20.0, 40.0, 60.0) and s.regions[0].media == 0  # xywh → xyxy
    assert r[1].regions == [] and r[1].media[0].size is None
    with pytest.raises(SampleError, match="outside") as e:  # x + w = 120 > W = 100
        r[2]
    assert e.value.reason == "malformed" and "column 'bbox'" in str(e.value)
    with pytest.raises(SampleError) as e:
        r[3]
    assert e.value.reason == "corrupt" and "refcoco_val.parquet row 3" in str(e.value)


def test_text_only_sets_with_differing_column_names(fx):
    paths, _ = fx
    orca = _reader(paths["orca"], COLUMN_MAPS["orca"], category="text_only")
    assert [m.role for m in orca[0].messages] == ["system", "user", "assistant"]
    assert [m.content[0].text for m in orca[0].messages] == ["Be helpful.", "2+2?", "4"]
    assert [m.role for m in orca[1].messages] == ["user", "assistant"]  # empty system dropped
    alpaca = _reader(paths["alpaca"], COLUMN_MAPS["alpaca"], category="text_only")
    assert len(alpaca) == 5
    assert alpaca[0].messages[0].content[0].text == "Give a tip."
    assert alpaca[1].messages[0].content[0].text == "Translate.\n\nHallo"
    assert alpaca[1].id == "alpaca.jsonl:1" and alpaca[1].media == []
    for row, reason in ((2, "empty"), (3, "malformed"), (4, "malformed")):
        with pytest.raises(SampleError) as e:
            alpaca[row]
        assert e.value.reason == reason and f"alpaca.jsonl row {row}" in str(e.value)
    prompts = _reader(paths["prompts"], COLUMN_MAPS["prompt_response"], category="text_only")
    assert [m.content[0].text for m in prompts[0].messages] == ["Hi?", "Hello."]


def test_several_files_arrow_stream_and_length(fx):
    paths, _ = fx
    qa = COLUMN_MAPS["qa"]
    r = _reader([paths["arrow"], paths["orca"]], ColumnMap(question=("question",)))
    assert len(r) == 5
    assert [r[i].messages[0].content[0].text for i in (0, 2, 3, 4)] == [
        "Q1",
        "Q3",
        "2+2?",
        "Capital of France?",
    ]
    assert r[4].id == "orca.parquet:1"
    assert _reader(paths["arrow"], qa)[2].messages[1].content[0].text == "A3"
    with pytest.raises(IndexError):
        r[5]
    with pytest.raises(ValueError, match=r"orca\.parquet: no column\(s\) \['answer'\]"):
        _reader(paths["orca"], qa)
    with pytest.raises(ValueError, match="exactly one of"):
        ColumnMap(images=("image",))
    bad = paths["orca"].with_name("bad.parquet")
    bad.write_bytes(b"PAR1 not really")
    with pytest.raises(ValueError, match=r"bad\.parquet"):
        _reader(bad, qa)


@settings(
    max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(order=st.permutations(range(3)))
def test_random_access_is_order_independent(fx, order):
    paths, _ = fx
    r = _reader(paths["cauldron"], COLUMN_MAPS["cauldron"])
    forward = [sample_to_json(r[i]) for i in range(3)]
    fresh = _reader(paths["cauldron"], COLUMN_MAPS["cauldron"])
    assert {i: sample_to_json(fresh[i]) for i in order} == dict(enumerate(forward))


def test_reader_pickles_without_open_handles(fx):
    import pickle

    paths, _ = fx
    r = _reader(paths["cauldron"], COLUMN_MAPS["cauldron"])
    first = sample_to_json(r[0])
    clone = pickle.loads(pickle.dumps(r))  # DataLoader workers get a copy like this
    assert clone.rows._handles == {} and sample_to_json(clone[0]) == first


def test_open_source_table_with_named_or_inline_columns(fx):
    paths, _ = fx
    base = {
        "kind": "table",
        "paths": [str(paths["orca"])],
        "source": "orca",
        "category": "text_only",
        "stage": "sft",
    }
    named = open_source({**base, "columns": "orca"})
    inline = open_source({**base, "columns": {"question": ["question"], "answer": "response"}})
    assert named[1].messages[1].content[0].text == inline[1].messages[1].content[0].text == "Paris"
    with pytest.raises(ValueError, match="unknown column map"):
        open_source({**base, "columns": "nope"})


def test_row_store_optional_columns_lines_and_bad_row_groups(tmp_path, monkeypatch):
    """The row access the eval reader shares: optional columns are read where a file has them,
    a JSONL row names its line (blank lines counted), and an unreadable row group makes each of
    its rows a ``corrupt`` SampleError naming the row, read once, the other groups intact."""
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"q": list("abcde"), "extra": [1] * 5}), path, row_group_size=2)
    rows = RowStore([path], ["q"], optional=["id", "extra", "q"])
    assert rows.row(4) == ({"q": "e", "extra": 1}, f"{path} row 4", "t.parquet:4")
    calls = []
    real = pq.ParquetFile.read_row_group

    def read(self, rg, **kw):
        calls.append(rg)
        if rg == 1:
            raise pa.ArrowInvalid("bad page")
        return real(self, rg, **kw)

    monkeypatch.setattr(pq.ParquetFile, "read_row_group", read)
    rows = RowStore([path], ["q"])
    for i in (2, 3):
        with pytest.raises(SampleError, match=rf"row {i}: row group 1 unreadable: bad page"):
            rows.row(i)
    assert rows.row(0)[0] == {"q": "a"} and calls == [1, 0]
    jsonl = tmp_path / "t.jsonl"
    jsonl.write_text('{"q": 1}\n\n\n{oops\n{"q": 3}\n')
    rows = RowStore([jsonl], ["q"])
    assert rows.row(2)[1:] == (f"{jsonl} row 2 (line 5)", "t.jsonl:2")
    with pytest.raises(SampleError, match=r"t\.jsonl row 1 \(line 4\): undecodable JSON"):
        rows.row(1)
