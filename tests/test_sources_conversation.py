"""Conversation JSON/JSONL reader (LLaVA, DocStruct4M, Mantis, Ferret GRIT, video), canonical
JSONL round trips, header sizes and the ``open_source`` factory, on fixtures in the real layouts
(on-disk layouts: mm15/data/registry.toml)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from mm15.config import ImageConfig
from mm15.data.image_io import open_image
from mm15.data.schema import Part, SampleError, sample_to_json
from mm15.data.sources import open_source
from mm15.data.sources.canonical import CanonicalReader, header_size, write_canonical
from mm15.data.sources.conversation import ConversationFormat, ConversationReader

FERRET_BOX = [445, 524, 692, 632]


def _image(path: Path, size=(64, 48), color=(200, 30, 30)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)


def _turns(*pairs):
    return [{"from": f, "value": v} for f, v in pairs]


def write_conversation_fixture(root: Path) -> dict[str, Path]:
    """LLaVA list JSON, a JSONL with bad rows, Ferret GRIT, Mantis, DocStruct4M and video files,
    with images under ``root/images`` laid out as LLaVA's image_folder."""
    img = root / "images"
    _image(img / "coco/train2017/000000033471.jpg")
    _image(img / "gqa/images/1.png", (32, 32))
    _image(img / "vg/2.jpg", (200, 100))
    _image(img / "vg/big.jpg", (1170, 2532))
    _image(img / "nlvr2/a.png", (10, 10))
    _image(img / "nlvr2/b.png", (12, 10))
    (img / "videos").mkdir()
    (img / "videos/clip.mp4").write_bytes(b"\x00" * 16)  # existence only: never decoded here
    for k in range(3):
        _image(img / f"videos/frames_v1/{k:03d}.jpg", (16, 16))
    llava = [
        {
            "id": "000000033471",
            "image": "coco/train2017/000000033471.jpg",
            "conversations": _turns(
                ("human", "<image>\nWhat are the colors of the bus?"), ("gpt", "White and red.")
            ),
        },
        {"id": 7, "conversations": _turns(("human", "Tell me a joke."), ("gpt", "No."))},
        {
            "id": "noplace",
            "image": "gqa/images/1.png",
            "conversations": _turns(("human", "Describe it."), ("gpt", "A square.")),
        },
        {
            "id": "atend",
            "image": "gqa/images/1.png",
            "conversations": _turns(
                ("system", "Be brief."), ("human", "What is this?\n<image>"), ("gpt", "Red.")
            ),
        },
    ]
    paths = {"llava": root / "llava.json"}
    paths["llava"].write_text(json.dumps(llava))
    bad = [
        json.dumps(llava[0]),
        '{"id": "broken", "conversations": [',  # corrupt JSON
        json.dumps(
            {"id": "gone", "image": "coco/nope.jpg", "conversations": llava[0]["conversations"]}
        ),
        json.dumps(
            {
                "id": "twice",
                "image": "gqa/images/1.png",
                "conversations": _turns(("human", "<image> vs <image>"), ("gpt", "same")),
            }
        ),
        json.dumps({"id": "role", "conversations": _turns(("robot", "hi"), ("gpt", "hello"))}),
        json.dumps({"id": "none", "conversations": []}),
        "",  # a blank line is not a row
        json.dumps({"id": "blank", "conversations": _turns(("human", "  "), ("gpt", ""))}),
    ]
    paths["bad"] = root / "bad.jsonl"
    paths["bad"].write_text("\n".join(bad) + "\n")
    ferret = [
        {
            "id": 0,
            "image": "vg/big.jpg",
            "image_w": 1170,
            "image_h": 2532,
            "conversations": _turns(
                ("human", "<image>\nWhat is the object <bbox_location0>?"),
                ("gpt", "A bus <bbox_location0> next to <bbox_location1>."),
            ),
            "box_x1y1x2y2": [[FERRET_BOX], [FERRET_BOX, [0, 0, 1170, 2532]]],
        },
        {
            "id": 1,
            "image": "vg/2.jpg",  # no image_w/h: the header's (200, 100) is used
            "conversations": _turns(("human", "<image>\nWhere? <bbox_location0>"), ("gpt", "ok")),
            "box_x1y1x2y2": [[[20, 10, 60, 50]], []],
        },
        {
            "id": 2,
            "image": "vg/2.jpg",
            "image_w": 200,
            "image_h": 100,
            "conversations": _turns(("human", "<image> <bbox_location1>"), ("gpt", "ok")),
            "box_x1y1x2y2": [[[20, 10, 60, 50]], []],
        },  # refers to a box that is not there
        {
            "id": 3,
            "image": "vg/2.jpg",
            "image_w": 200,
            "image_h": 100,
            "conversations": _turns(("human", "<image> <bbox_location0>"), ("gpt", "ok")),
            "box_x1y1x2y2": [[[60, 10, 20, 50]], []],
        },  # x1 > x2
        {
            "id": 4,
            "image": "vg/2.jpg",
            "image_w": 1170,
            "image_h": 2532,  # not this image's size
            "conversations": _turns(("human", "<image> <bbox_location0>"), ("gpt", "ok")),
            "box_x1y1x2y2": [[FERRET_BOX], []],
        },
    ]
    paths["ferret"] = root / "ferret.json"
    paths["ferret"].write_text(json.dumps(ferret))
    mantis = {
        "id": "nlvr2_1",
        "images": [{"path": "nlvr2/a.png"}, "nlvr2/b.png"],
        "conversations": _turns(("human", "<image><image> Is the left one red?"), ("gpt", "True")),
    }
    docowl = {
        "image": ["./gqa/images/1.png"],
        "task_name": "ocr",
        "messages": [
            {"role": "user", "content": "<|image|>Read the text."},
            {"role": "assistant", "content": "<ocr>Total</ocr>"},
        ],
    }
    paths["mixed"] = root / "mixed.jsonl"
    paths["mixed"].write_text(json.dumps(mantis) + "\n" + json.dumps(docowl) + "\n")
    video = [
        {
            "id": "v0",
            "video": "videos/clip.mp4",
            "conversations": _turns(("human", "<video>\nWhat happens?"), ("gpt", "A clip.")),
        },
        {
            "id": "v1",
            "video": "videos/frames_v1",
            "conversations": _turns(("human", "Describe."), ("gpt", "Frames.")),
        },
        {
            "id": "v2",
            "video": "videos/lost",
            "conversations": _turns(("human", "<video>"), ("gpt", "?")),
        },
    ]
    paths["video"] = root / "video.jsonl"
    paths["video"].write_text("\n".join(json.dumps(v) for v in video) + "\n")
    return paths


@pytest.fixture
def fx(tmp_path):
    return write_conversation_fixture(tmp_path), tmp_path / "images"


def _reader(path, root, **kw):
    kw.setdefault("category", "general")
    return ConversationReader(path, source="test", stage="sft", root=root, **kw)


def _summary(msg):
    return [
        (p.type, p.text if p.type == "text" else p.media if p.type == "media" else p.region)
        for p in msg.content
    ]


def test_llava_roles_placeholders_and_text_only_rows(fx):
    paths, root = fx
    r = _reader(paths["llava"], root)
    assert len(r) == 4 and r.name == r.source == "test"
    s = r[0]
    assert (s.id, s.category, s.stage, s.source) == ("000000033471", "general", "sft", "test")
    assert [m.role for m in s.messages] == ["user", "assistant"]
    assert _summary(s.messages[0]) == [("media", 0), ("text", "What are the colors of the bus?")]
    assert _summary(s.messages[1]) == [("text", "White and red.")]
    assert s.media[0].path == str(root / "coco/train2017/000000033471.jpg")
    assert s.media[0].size is None and s.media[0].bytes is None  # nothing read without regions
    text_only = r[1]
    assert text_only.id == "7" and text_only.media == [] and text_only.num_images() == 0
    prepended = r[2]  # no <image> in the text: the image goes in front of the first user turn
    assert _summary(prepended.messages[0]) == [("media", 0), ("text", "Describe it.")]
    at_end = r[3]  # the placeholder stays where the data put it; the system turn is kept
    assert [m.role for m in at_end.messages] == ["system", "user", "assistant"]
    assert _summary(at_end.messages[1]) == [("text", "What is this?"), ("media", 0)]


def test_bad_rows_raise_with_reason_file_and_row(fx):
    paths, root = fx
    r = _reader(paths["bad"], root)
    assert len(r) == 7  # the blank line is not a row
    assert r[0].id == "000000033471"
    expected = {1: "corrupt", 2: "missing", 3: "malformed", 4: "malformed", 5: "empty", 6: "empty"}
    for row, reason in expected.items():
        with pytest.raises(SampleError) as e:
            r[row]
        assert e.value.reason == reason, (row, str(e.value))
        assert f"bad.jsonl row {row}" in str(e.value)
    with pytest.raises(SampleError, match="2 image placeholders but 1 images"):
        r[3]
    with pytest.raises(SampleError, match="unknown role 'robot'"):
        r[4]


def test_ferret_boxes_become_pixel_regions(fx):
    paths, root = fx
    r = _reader(paths["ferret"], root, category="refer_ground")
    s = r[0]
    assert s.media[0].size == (1170, 2532)
    assert [g.box for g in s.regions] == [tuple(FERRET_BOX), tuple(FERRET_BOX), (0, 0, 1170, 2532)]
    assert all(g.media == 0 for g in s.regions)
    assert _summary(s.messages[0]) == [
        ("media", 0),
        ("text", "What is the object "),
        ("region", 0),
        ("text", "?"),
    ]
    assert _summary(s.messages[1]) == [
        ("text", "A bus "),
        ("region", 1),
        ("text", " next to "),
        ("region", 2),
        ("text", "."),
    ]
    assert r[1].media[0].size == (200, 100)  # from the JPEG header
    assert r[1].regions[0].box == (20, 10, 60, 50)
    for row, match in ((2, "has no such box"), (3, "bad box"), (4, "but .*2.jpg is 200x100")):
        with pytest.raises(SampleError, match=match) as e:
            r[row]
        assert e.value.reason == "malformed" and f"ferret.json row {row}" in str(e.value)


def test_side_box_convention_is_converted_once(fx, tmp_path):
    """Ferret-style text ints 0..1000 on a 200×100 image: <500,250,1000,1000> → (100,25,200,100)."""
    _, root = fx
    rec = {
        "image": "vg/2.jpg",
        "image_w": 200,
        "image_h": 100,
        "conversations": _turns(("human", "<image> <bbox_location0>"), ("gpt", "ok")),
        "box_x1y1x2y2": [[[500, 250, 1000, 1000]], []],
    }
    f = tmp_path / "ints.jsonl"
    f.write_text(json.dumps(rec) + "\n")
    fmt = ConversationFormat(box_convention="int1000")
    assert _reader(f, root, fmt=fmt)[0].regions[0].box == (100.0, 25.0, 200.0, 100.0)
    with pytest.raises(SampleError, match="outside") as e:  # read as pixels: off the image
        _reader(f, root)[0]
    assert e.value.reason == "malformed"


def test_multi_image_docowl_and_video(fx):
    paths, root = fx
    mixed = _reader(paths["mixed"], root, category="multi_image")
    mantis = mixed[0]
    assert [m.path for m in mantis.media] == [str(root / "nlvr2/a.png"), str(root / "nlvr2/b.png")]
    assert _summary(mantis.messages[0]) == [
        ("media", 0),
        ("media", 1),
        ("text", "Is the left one red?"),
    ]
    docowl = mixed[1]
    assert docowl.id == "mixed.jsonl:1"
    assert _summary(docowl.messages[0]) == [("media", 0), ("text", "Read the text.")]
    assert _summary(docowl.messages[1]) == [("text", "<ocr>Total</ocr>")]
    video = _reader(paths["video"], root, category="video")
    v0, v1 = video[0], video[1]
    assert (v0.media[0].kind, v0.media[0].path) == ("video", str(root / "videos/clip.mp4"))
    assert _summary(v0.messages[0]) == [("media", 0), ("text", "What happens?")]
    assert v1.media[0].kind == "video" and Path(v1.media[0].path).is_dir()
    assert v0.num_images() == 0
    with pytest.raises(SampleError, match=r"video\.jsonl row 2") as e:
        video[2]
    assert e.value.reason == "missing"


@settings(
    max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(order=st.permutations(range(4)))
def test_random_access_is_order_independent(fx, order):
    paths, root = fx
    r = _reader(paths["llava"], root)
    forward = [sample_to_json(r[i]) for i in range(len(r))]
    assert {i: sample_to_json(r[i]) for i in order} == dict(enumerate(forward))


def test_header_size_follows_exif_orientation(tmp_path):
    path = tmp_path / "rot.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° on display
    Image.new("RGB", (40, 20), "white").save(path, exif=exif)
    assert header_size(path, where="x") == (20, 40) == open_image(path, cfg=ImageConfig()).size
    with pytest.raises(SampleError) as e:
        header_size(b"not an image", where="shard.tar key 3")
    assert e.value.reason == "corrupt" and "shard.tar key 3" in str(e.value)


def test_canonical_round_trip_and_safe_write(fx, tmp_path):
    paths, root = fx
    samples = [_reader(paths["ferret"], root)[i] for i in (0, 1)]
    samples.append(_reader(paths["llava"], root)[1])
    out = tmp_path / "canon.jsonl"
    assert write_canonical(samples, out).written == 3
    back = CanonicalReader(out, category="eval")
    assert len(back) == 3 and back.name == "canon"
    for a, b in zip(samples, [back[i] for i in range(3)], strict=True):
        a.category = "eval"
        assert sample_to_json(a) == sample_to_json(b)
    broken = _reader(paths["llava"], root)[0]
    broken.messages[0].content.append(Part.m(5))
    before = out.read_bytes()
    with pytest.raises(ValueError, match="refers to media 5"):
        write_canonical([samples[0], broken], out)
    assert out.read_bytes() == before and not (tmp_path / "canon.jsonl.tmp").exists()
    stats = write_canonical([samples[0], broken, samples[1]], out, on_invalid="skip")
    assert stats.written == 2 and len(stats.skipped) == 1 and "000000033471" in stats.skipped[0]
    out.write_text(out.read_text() + '{not json\n{"id": "x"}\n')
    for row, reason in ((2, "corrupt"), (3, "malformed")):
        with pytest.raises(SampleError) as e:
            CanonicalReader(out)[row]
        assert e.value.reason == reason and "canon.jsonl line" in str(e.value)


def test_open_source_builds_readers(fx):
    paths, root = fx
    spec = {
        "kind": "conversation",
        "paths": [str(paths["llava"])],
        "root": str(root),
        "source": "llava",
        "category": "general",
        "stage": "sft",
        "fmt": {"image_tokens": ["<image>"]},
    }
    r = open_source(spec)
    assert isinstance(r, ConversationReader) and len(r) == 4 and r[0].source == "llava"
    with pytest.raises(ValueError, match="kind 'nope'"):
        open_source({**spec, "kind": "nope"})
