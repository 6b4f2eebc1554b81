"""Plain-text corpora (``text``) and Synthdog (``synthdog``) readers on fixtures in the real
layouts (on-disk layouts: mm15/data/registry.toml), and that a text document gets loss when
formatted."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from mm15.config import FormatConfig
from mm15.data.pipeline import IGNORE_INDEX, format_sample
from mm15.data.schema import SampleError
from mm15.data.sources import open_source
from mm15.data.sources.synthdog import SynthdogReader
from mm15.data.sources.text import TextReader, cut
from mm15.presets import tiny
from mm15.tokenizer import byte_tokenizer

IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def _png(size=(40, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (9, 99, 199)).save(buf, format="PNG")
    return buf.getvalue()


def _text_files(root: Path) -> dict[str, Path]:
    """FineWeb-style Parquet (two row groups), DCLM-style JSONL and a JSON list."""
    paths = {
        "parquet": root / "fineweb/000_00000.parquet",
        "jsonl": root / "dclm/shard.jsonl",
        "json": root / "corpus.json",
    }
    paths["parquet"].parent.mkdir(parents=True)
    paths["jsonl"].parent.mkdir(parents=True)
    table = pa.table(
        {
            "text": ["The first document.", "Second one.", "", None],
            "id": ["<urn:1>", "<urn:2>", "<urn:3>", "<urn:4>"],
            "url": ["http://a", "http://b", None, None],
        }
    )
    pq.write_table(table, paths["parquet"], row_group_size=2)
    rows = [{"text": "A DCLM page about rivers."}, {"text": 7}, {"text": "   "}]
    paths["jsonl"].write_text("\n".join(json.dumps(r) for r in rows) + "\n{broken\n")
    paths["json"].write_text(json.dumps([{"content": "Custom column."}]))
    return paths


def test_text_rows_become_documents(tmp_path):
    paths = _text_files(tmp_path)
    r = TextReader(paths["parquet"], source="fineweb", id_column="id", meta_columns=["url"])
    assert len(r) == 4 and (r.category, r.stage) == ("text", "pretrain")
    s = r[0]
    assert (s.id, s.category, s.source, s.media) == ("<urn:1>", "text", "fineweb", [])
    assert [m.role for m in s.messages] == ["document"]
    assert [p.text for p in s.messages[0].content] == ["The first document."]
    assert s.meta == {"url": "http://a"}
    with pytest.raises(ValueError, match=r"shard\.jsonl: no column\(s\) \['id', 'url'\]"):
        TextReader(
            [paths["parquet"], paths["jsonl"]], source="x", id_column="id", meta_columns=["url"]
        )
    r = TextReader([paths["parquet"], paths["jsonl"]], source="fineweb")
    assert len(r) == 8
    assert r[4].messages[0].content[0].text == "A DCLM page about rivers."
    assert (r[0].id, r[4].id) == ("000_00000.parquet:0", "shard.jsonl:0")
    expected = {2: "empty", 3: "empty", 5: "malformed", 6: "empty", 7: "corrupt"}
    for i, reason in expected.items():
        with pytest.raises(SampleError) as e:
            r[i]
        assert e.value.reason == reason, (i, e.value)
    with pytest.raises(SampleError, match=r"000_00000\.parquet row 2"):
        r[2]


def test_text_column_name_and_truncation(tmp_path):
    paths = _text_files(tmp_path)
    r = open_source(
        {
            "kind": "text",
            "paths": [str(paths["json"])],
            "column": "content",
            "source": "c",
            "category": "text",
            "stage": "pretrain",
            "max_chars": 9,
        }
    )
    s = r[0]
    assert s.messages[0].content[0].text == "Custom" and s.meta == {"truncated": True}
    assert cut("abcdefghij", 4) == "abcd"  # no whitespace: a hard cut


def test_text_missing_column_is_one_clear_error(tmp_path):
    paths = _text_files(tmp_path)
    for path in (paths["parquet"], paths["json"]):
        with pytest.raises(ValueError, match=rf"{path.name}.*no column\(s\) \['body'\]"):
            TextReader(path, source="x", column="body")
    with pytest.raises(ValueError, match="max_chars"):
        TextReader(paths["json"], source="x", column="content", max_chars=0)


def test_text_document_gets_loss_on_all_its_text(tmp_path):
    tok = byte_tokenizer()
    cfg = tiny(vocab_size=len(tok))
    s = TextReader(_text_files(tmp_path)["parquet"], source="t")[0]
    ex = format_sample(s, tokenizer=tok, model_cfg=cfg, fmt=FormatConfig())
    trained = [t for t in ex.labels if t != IGNORE_INDEX]
    assert ex.num_trainable > 0 and not ex.images
    # every text token and the EOS carry loss; only the BOS does not
    assert tok.decode(trained[:-1]) == "The first document."
    assert trained[-1] == tok.eos_ids[0] and ex.labels[0] == IGNORE_INDEX


def _synthdog(root: Path) -> Path:
    gt0 = json.dumps({"gt_parse": {"text_sequence": "Hello synthetic world"}})
    gt = [
        gt0,
        json.dumps({"gt_parses": [{"text_sequence": "second form"}]}),
        "{not json",
        json.dumps({"gt_parse": {}}),
        gt0,
    ]
    images = [{"bytes": _png(), "path": "image_0.jpg"}] * 4 + [{"bytes": None, "path": "gone.png"}]
    path = root / "synthdog-en/data/train-00000-of-00084.parquet"
    path.parent.mkdir(parents=True)
    pq.write_table(pa.table({"image": pa.array(images, IMAGE), "ground_truth": gt}), path)
    return path


def test_synthdog_rows_become_ocr_samples(tmp_path):
    path = _synthdog(tmp_path)
    r = open_source(
        {
            "kind": "synthdog",
            "paths": [str(path)],
            "source": "synthdog_en",
            "category": "ocr",
            "stage": "cpt",
            "root": str(tmp_path),
        }
    )
    s = r[0]
    assert s.media[0].bytes == _png() and s.media[0].size is None
    assert [m.role for m in s.messages] == ["document"]
    assert [(p.type, p.media, p.text) for p in s.messages[0].content] == [
        ("media", 0, None),
        ("text", None, "Hello synthetic world"),
    ]
    assert r[1].messages[0].content[1].text == "second form"
    for i, reason in {2: "corrupt", 3: "malformed", 4: "missing"}.items():
        with pytest.raises(SampleError, match=rf"train-00000-of-00084\.parquet row {i}") as e:
            r[i]
        assert e.value.reason == reason
    chat = SynthdogReader(
        path, source="s", stage="sft", category="text_rich", prompt="Read the text."
    )[0]
    assert [m.role for m in chat.messages] == ["user", "assistant"]
    assert chat.messages[1].content[0].text == "Hello synthetic world"


def test_synthdog_empty_text_and_missing_column(tmp_path):
    path = tmp_path / "one.parquet"
    gt = json.dumps({"gt_parse": {"text_sequence": "  "}})
    pq.write_table(
        pa.table(
            {"image": pa.array([{"bytes": _png(), "path": None}], IMAGE), "ground_truth": [gt]}
        ),
        path,
    )
    with pytest.raises(SampleError) as e:
        SynthdogReader(path, source="s")[0]
    assert e.value.reason == "empty"
    pq.write_table(pa.table({"image": pa.array([{"bytes": _png(), "path": None}], IMAGE)}), path)
    with pytest.raises(ValueError, match=r"one\.parquet: no column\(s\) \['ground_truth'\]"):
        SynthdogReader(path, source="s")
