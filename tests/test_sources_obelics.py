"""OBELICS interleaved reader: aligned ``images``/``texts`` lists, URL → local file lookups
(dict, JSON, img2dataset-style Parquet), dropped images and documents, on Parquet the tests
write in the real layout (on-disk layouts: mm15/data/registry.toml)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from mm15.data.schema import SampleError, sample_to_json
from mm15.data.sources.obelics import ObelicsReader, load_url_map

U = "https://example.org/{}.jpg".format


def write_obelics_fixture(root: Path) -> dict[str, Path]:
    """``data/train-0000{0,1}.parquet`` with OBELICS' columns (metadata as JSON strings),
    downloaded images under ``root/store``, and the URL index as JSON and as Parquet."""
    store = root / "store"
    store.mkdir()
    for name in ("a", "b", "c"):
        Image.new("RGB", (8, 8), "gray").save(store / f"{name}.jpg")
    docs = [
        ([U("a"), None, None], [None, "Paragraph one.", "Paragraph two."]),
        ([None, U("b"), U("dead"), None, U("c")], ["Intro", None, None, "Middle", None]),
        ([U("dead"), None, U("gone")], [None, "All images dead.", None]),
        ([None], ["Text only document."]),
        ([U("a"), None], [None, "Misaligned", "extra"]),
        ([U("a"), "both?"], [None, "x"]),
        ([U("a"), None], [None, "   "]),
    ]
    meta = [
        json.dumps([{"src": u, "alt_text": ""} if u else None for u in imgs]) for imgs, _ in docs
    ]
    general = [
        json.dumps(
            {
                "url": f"https://page/{k}",
                "warc_filename": "w",
                "warc_record_offset": k,
                "warc_record_length": 1,
            }
        )
        for k in range(len(docs))
    ]
    table = pa.table(
        {
            "images": pa.array([d[0] for d in docs], pa.list_(pa.string())),
            "texts": pa.array([d[1] for d in docs], pa.list_(pa.string())),
            "metadata": meta,
            "general_metadata": general,
        }
    )
    (root / "data").mkdir()
    paths = {
        "shard0": root / "data/train-00000.parquet",
        "shard1": root / "data/train-00001.parquet",
    }
    pq.write_table(table.slice(0, 4), paths["shard0"], row_group_size=3)
    pq.write_table(table.slice(4), paths["shard1"])
    lookup = {U("a"): "a.jpg", U("b"): "b.jpg", U("c"): "c.jpg", U("gone"): "gone.jpg"}
    paths["json"] = store / "url_index.json"
    paths["json"].write_text(json.dumps(lookup))
    paths["parquet"] = store / "00000.parquet"  # img2dataset metadata + the saved path
    pq.write_table(
        pa.table(
            {
                "url": [*lookup, U("dead")],
                "key": ["0", "1", "2", "3", "4"],
                "status": ["success"] * 4 + ["failed_to_download"],
                "path": [*lookup.values(), None],
            }
        ),
        paths["parquet"],
    )
    return paths


@pytest.fixture
def fx(tmp_path):
    return write_obelics_fixture(tmp_path), tmp_path


def _reader(paths, urls, **kw):
    return ObelicsReader(
        [paths["shard0"], paths["shard1"]],
        urls=urls,
        source="obelics",
        category="interleaved",
        stage="pretrain",
        **kw,
    )


def _summary(sample):
    return [(p.type, p.text if p.type == "text" else p.media) for p in sample.messages[0].content]


def test_documents_follow_the_aligned_lists(fx):
    paths, root = fx
    r = _reader(paths, paths["json"])
    assert len(r) == 7 and r.name == r.source == "obelics"
    d0 = r[0]
    assert (d0.id, d0.category, d0.stage) == ("train-00000.parquet:0", "interleaved", "pretrain")
    assert [m.role for m in d0.messages] == ["document"]
    assert _summary(d0) == [("media", 0), ("text", "Paragraph one.\n\nParagraph two.")]
    assert d0.media[0].path == str(root / "store/a.jpg") and d0.media[0].size is None
    d1 = r[1]  # the dead image is dropped and counted; the texts around it stay apart
    assert _summary(d1) == [("text", "Intro"), ("media", 0), ("text", "Middle"), ("media", 1)]
    assert [Path(m.path).name for m in d1.media] == ["b.jpg", "c.jpg"]
    assert d1.meta == {"dropped_images": 1, "num_images": 3}


def test_bad_documents_raise_with_reason_file_and_row(fx):
    paths, _ = fx
    r = _reader(paths, paths["json"])
    cases = {
        2: ("missing", "train-00000.parquet row 2"),
        3: ("missing", "train-00000.parquet row 3"),
        4: ("malformed", "train-00001.parquet row 0"),
        5: ("malformed", "train-00001.parquet row 1"),
        6: ("empty", "train-00001.parquet row 2"),
    }
    for i, (reason, where) in cases.items():
        with pytest.raises(SampleError) as e:
            r[i]
        assert e.value.reason == reason and where in str(e.value), str(e.value)
    with pytest.raises(SampleError, match="no image left \\(2 URL"):
        r[2]  # one URL unknown, one known but its file is gone
    with pytest.raises(SampleError, match="images 2, texts 3"):
        r[4]


def test_text_only_documents_when_images_are_not_required(fx):
    paths, _ = fx
    r = _reader(paths, paths["json"], require_images=False)
    assert _summary(r[3]) == [("text", "Text only document.")] and r[3].media == []
    assert _summary(r[2]) == [("text", "All images dead.")]
    assert r[2].meta == {"dropped_images": 2, "num_images": 2}


def test_url_lookups_agree(fx):
    paths, root = fx
    from_json = load_url_map(paths["json"])
    from_parquet = load_url_map(paths["parquet"])  # the failed download (path null) is left out
    as_dict = load_url_map(
        {U("a"): "a.jpg", U("b"): "b.jpg", U("c"): "c.jpg", U("gone"): "gone.jpg"},
        root=root / "store",
    )
    assert from_json == from_parquet == as_dict and U("dead") not in from_parquet
    assert from_json[U("b")] == root / "store/b.jpg"
    r_json, r_pq = _reader(paths, paths["json"]), _reader(paths, paths["parquet"])
    assert sample_to_json(r_json[1]) == sample_to_json(r_pq[1])
    bad = root / "bad_index.json"
    bad.write_text(json.dumps([U("a")]))
    with pytest.raises(ValueError, match=r"bad_index\.json"):
        load_url_map(bad)
    with pytest.raises(ValueError, match="cannot read columns"):
        load_url_map(paths["shard0"])  # no url/path columns


@settings(
    max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(order=st.permutations(range(2)))
def test_random_access_is_order_independent(fx, order):
    paths, _ = fx
    r = _reader(paths, paths["json"])
    forward = [sample_to_json(r[i]) for i in range(2)]
    fresh = _reader(paths, paths["json"])
    assert {i: sample_to_json(fresh[i]) for i in order} == dict(enumerate(forward))
