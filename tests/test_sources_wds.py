"""WebDataset tar readers: img2dataset caption shards, PDFA / IDL PDF pages (rasterised with
pypdfium2) and RenderedText, on shards the tests write in the real layouts
(on-disk layouts: mm15/data/registry.toml)."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pypdfium2 as pdfium
import pypdfium2.raw as pdfium_raw
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from mm15.data.schema import SampleError, sample_to_json
from mm15.data.sources.wds import CaptionShards, PdfOcrShards, RenderedTextShards

# A filled rectangle on page 0, given as PDFA's normalised [x, y, w, h] from the top-left.
RECT_XYWH = [0.25, 0.25, 0.5, 0.25]


def _img(fmt="JPEG", size=(64, 48)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (10, 200, 10)).save(buf, format=fmt)
    return buf.getvalue()


def write_shard(path: Path, members: list[tuple[str, bytes]]) -> Path:
    """A tar shard with members in the given order (``key.ext`` names, as webdataset writes)."""
    with tarfile.open(path, "w") as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def make_pdf(page_sizes_pt: list[tuple[float, float]]) -> bytes:
    """A real PDF, one page per size; page 0 gets a black rectangle at RECT_XYWH."""
    pdf = pdfium.PdfDocument.new()
    for k, (w, h) in enumerate(page_sizes_pt):
        page = pdf.new_page(w, h)
        if k == 0:  # PDF space has its origin at the bottom left
            x, y, rw, rh = RECT_XYWH
            rect = pdfium_raw.FPDFPageObj_CreateNewRect(x * w, (1 - y - rh) * h, rw * w, rh * h)
            pdfium_raw.FPDFPageObj_SetFillColor(rect, 0, 0, 0, 255)
            pdfium_raw.FPDFPath_SetDrawMode(rect, pdfium_raw.FPDF_FILLMODE_ALTERNATE, False)
            page.insert_obj(pdfium.PdfObject(rect))
            page.gen_content()
    buf = io.BytesIO()
    pdf.save(buf)
    pdf.close()
    return buf.getvalue()


def write_caption_shards(root: Path) -> list[Path]:
    """Two img2dataset shards: ``{key}.jpg/.txt/.json`` (key = shard id + in-shard index)."""
    meta = {
        "url": "https://x/a.jpg",
        "caption": "from json",
        "key": "000000001",
        "status": "success",
        "width": 64,
        "height": 48,
        "original_width": 128,
        "original_height": 96,
    }
    s0 = write_shard(
        root / "00000.tar",
        [
            ("000000000.jpg", _img()),
            ("000000000.txt", b"a river has burst its banks"),
            ("000000000.json", json.dumps({**meta, "key": "000000000"}).encode()),
            ("000000001.png", _img("PNG")),
            ("000000001.json", json.dumps(meta).encode()),
            ("000000002.txt", b"a caption without an image"),
            ("000000003.webp", _img("WEBP")),
            ("000000003.txt", b"   "),
            ("000000004.jpg", _img()),
            ("000000004.txt", b"ok"),
            ("000000004.json", b"{broken"),
        ],
    )
    s1 = write_shard(
        root / "00001.tar",
        [
            ("000010000.jpg", _img()),
            ("000010000.txt", "ünïcode caption".encode()),
            ("000010001.jpg", _img()),
            ("000010001.txt", b"\xff\xfe bad utf8"),
        ],
    )
    return [s0, s1]


def write_pdf_shard(root: Path) -> Path:
    """PDFA (``pages[].lines``) and IDL (``pages[].{text, bbox}``) documents in one shard."""
    pdfa = {
        "pages": [
            {
                "lines": {
                    "text": ["Annual report 2020", "", "Revenue"],
                    "bbox": [RECT_XYWH, [0.0, 0.0, 0.1, 0.1], [0.1, 0.6, 0.3, 0.1]],
                    "score": [1.0, 1.0, 0.9],
                    "word_slice": [[0, 3], [3, 3], [3, 4]],
                },
                "words": {"text": [], "bbox": [], "score": [], "line_pos": []},
                "images_bbox": [],
                "images_bbox_no_text_overlap": [],
            },
            {
                "lines": {
                    "text": ["Page two"],
                    "bbox": [[0.0, 0.0, 1.0, 0.5]],
                    "score": [1.0],
                    "word_slice": [[0, 2]],
                }
            },
            {
                "lines": {"text": ["Only in the json"], "bbox": [[0, 0, 1, 1]]}
            },  # the PDF has 2 pages
        ]
    }
    idl = {
        "pages": [
            {"text": ["IDL line"], "bbox": [[0.5, 0.5, 0.5, 0.5]], "score": [0.99]},
            {"text": [], "bbox": [], "score": []},
            {"text": ["off the page"], "bbox": [[0.8, 0.0, 0.5, 0.1]], "score": [1]},
        ]
    }
    return write_shard(
        root / "pdfa-eng-train-0000.tar",
        [
            ("0154727.pdf", make_pdf([(144, 72), (72, 144)])),
            ("0154727.json", json.dumps(pdfa).encode()),
            ("idl_abc.pdf", make_pdf([(72, 72)] * 3)),
            ("idl_abc.json", json.dumps(idl).encode()),
            ("idl_abc.tif", b"ignored"),
            ("broken.pdf", b"%PDF-1.7 not really"),
            ("broken.json", json.dumps(idl).encode()),
            ("nojson.pdf", make_pdf([(72, 72)])),
        ],
    )


def write_rendered_text_shard(root: Path) -> Path:
    """RenderedText: ``{key}.png`` + ``{key}.json`` with ``ocr_annotation.text`` and quads."""
    quad = [[0.1, 0.2], [0.5, 0.2], [0.5, 0.6], [0.1, 0.6]]  # TL, TR, BR, BL
    good = {
        "ocr_annotation": {
            "text": ["Dear Sir,", "thank you"],
            "line_bboxes": [quad, [[0, 0], [1, 0], [1, 1], [0, 1]]],
        }
    }
    return write_shard(
        root / "000000.tar",
        [
            ("a.png", _img("PNG", (100, 50))),
            ("a.json", json.dumps(good).encode()),
            ("b.png", _img("PNG", (100, 50))),
            ("b.json", json.dumps({"ocr_annotation": {"text": ["no boxes"]}}).encode()),
            ("c.png", _img("PNG", (100, 50))),
            (
                "c.json",
                json.dumps(
                    {"ocr_annotation": {"text": ["x"], "line_bboxes": [[0.1, 0.2]]}}
                ).encode(),
            ),
            ("d.png", _img("PNG", (100, 50))),
            ("d.json", json.dumps({"ocr_annotation": {}}).encode()),
        ],
    )


def _raises(reader, i, reason, *fragments):
    with pytest.raises(SampleError) as e:
        reader[i]
    assert e.value.reason == reason, str(e.value)
    for frag in fragments:
        assert frag in str(e.value)


def _caption(tmp_path):
    return CaptionShards(
        write_caption_shards(tmp_path), source="cc3m", category="caption", stage="pretrain"
    )


def test_caption_shards(tmp_path):
    r = _caption(tmp_path)
    assert len(r) == 7 and r.name == "cc3m"
    s = r[0]
    assert (s.id, s.category, s.stage) == ("000000000", "caption", "pretrain")
    assert s.messages[0].role == "document"
    assert [(p.type, p.text) for p in s.messages[0].content] == [
        ("media", None),
        ("text", "a river has burst its banks"),
    ]
    assert s.media[0].bytes == _img() and s.media[0].size is None
    assert s.meta == {"url": "https://x/a.jpg", "key": "000000000"}
    assert r[1].messages[0].content[1].text == "from json"  # no txt: json["caption"]
    assert r[5].id == "000010000" and r[5].messages[0].content[1].text == "ünïcode caption"
    _raises(r, 2, "missing", "00000.tar key 000000002", "no image member")
    _raises(r, 3, "empty", "00000.tar key 000000003")
    _raises(r, 4, "corrupt", "000000004.json")
    _raises(r, 6, "corrupt", "00001.tar key 000010001.txt")


def test_truncated_shard_keeps_what_was_indexed(tmp_path):
    full = write_shard(
        tmp_path / "full.tar",
        [("k0.jpg", _img()), ("k0.txt", b"first"), ("k1.jpg", b"x" * 3000), ("k1.txt", b"second")],
    )
    cut = tmp_path / "cut.tar"
    cut.write_bytes(full.read_bytes()[:4000])  # inside k1.jpg's data (bytes 3072..6072)
    with pytest.warns(UserWarning, match="index stops after 2 keys"):
        r = CaptionShards(cut, source="c", category="caption", stage="pretrain")
    assert len(r) == 2 and r[0].messages[0].content[1].text == "first"
    assert len(r.index.errors) == 1 and "cut.tar" in r.index.errors[0]
    with pytest.raises(SampleError, match="cut short, 928 of 3000 bytes") as e:
        r.index.read(1, "jpg")
    assert e.value.reason == "corrupt" and "cut.tar key k1.jpg" in str(e.value)
    _raises(r, 1, "empty", "cut.tar key k1")  # its txt member was lost with the tail
    with pytest.raises(ValueError, match="not a readable uncompressed tar"):
        bad = tmp_path / "bad.tar"
        bad.write_bytes(b"\x1f\x8b gzip or garbage" * 40)
        CaptionShards(bad, source="c", category="caption", stage="pretrain")


def _pdf(tmp_path, **kw):
    return PdfOcrShards(write_pdf_shard(tmp_path), source="pdfa", category="ocr", stage="cpt", **kw)


def test_pdf_pages_are_rasterised_with_boxes_in_pixels(tmp_path):
    r = _pdf(tmp_path)
    # pages per json: 3 PDFA + 3 IDL + 3 of the unrenderable PDF, + 1 entry for the json-less doc
    assert len(r) == 10
    s = r[0]
    assert s.id == "0154727/p0" and s.meta == {"page": 0, "num_pages": 3, "dpi": 100.0}
    assert s.media[0].size == (200, 100)  # 144×72 pt at 100 dpi
    page = np.asarray(Image.open(io.BytesIO(s.media[0].bytes)).convert("L"))
    assert page.shape == (100, 200)
    ys, xs = np.nonzero(page < 128)  # the drawn rectangle, where its normalised box says
    assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (50, 25, 150, 50)
    assert s.regions[0].box == (50.0, 25.0, 150.0, 50.0)
    assert [g.label for g in s.regions] == ["Annual report 2020", "Revenue"]  # empty line dropped
    assert s.regions[1].box == pytest.approx((20.0, 60.0, 80.0, 70.0))
    assert s.messages[0].content[1].text == "Annual report 2020\nRevenue"
    p1 = r[1]
    assert p1.media[0].size == (100, 200) and p1.regions[0].box == (0.0, 0.0, 100.0, 100.0)
    _raises(r, 2, "malformed", "0154727 page 2", "PDF has 2 pages")
    idl = r[3]
    assert idl.id == "idl_abc/p0" and idl.regions[0].box == (50.0, 50.0, 100.0, 100.0)
    assert idl.messages[0].content[1].text == "IDL line"
    _raises(r, 4, "empty", "idl_abc page 1")
    _raises(r, 5, "malformed", "idl_abc page 2", "bad box")
    _raises(r, 8, "corrupt", "pdfa-eng-train-0000.tar key broken page 2")
    _raises(r, 9, "missing", "key nojson", "no .json member")


def test_pdf_dpi_and_pixel_cap_keep_boxes_consistent(tmp_path):
    low = _pdf(tmp_path, dpi=50)[0]
    assert low.media[0].size == (100, 50) and low.regions[0].box == (25.0, 12.5, 75.0, 25.0)
    capped = PdfOcrShards(
        tmp_path / "pdfa-eng-train-0000.tar",
        source="p",
        category="ocr",
        stage="cpt",
        dpi=100,
        max_pixels=5000,
    )[0]
    w, h = capped.media[0].size
    assert w * h <= 5000 and w == 2 * h
    assert capped.regions[0].box == pytest.approx((w / 4, h / 4, 3 * w / 4, h / 2))


def test_rendered_text_quads(tmp_path):
    r = RenderedTextShards(
        write_rendered_text_shard(tmp_path), source="rendered_text", category="ocr", stage="cpt"
    )
    assert len(r) == 4
    s = r[0]
    assert s.media[0].size == (100, 50)
    assert s.regions[0].box == pytest.approx((10.0, 10.0, 50.0, 30.0))  # quad → its envelope
    assert s.regions[1].box == (0.0, 0.0, 100.0, 50.0)
    assert [g.label for g in s.regions] == ["Dear Sir,", "thank you"]
    assert s.messages[0].content[1].text == "Dear Sir,\nthank you"
    assert r[1].regions == [] and r[1].media[0].size is None
    _raises(r, 2, "malformed", "000000.tar key c", "line 0", "bad box")
    _raises(r, 3, "malformed", "000000.tar key d", "ocr_annotation.text")


@settings(
    max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(order=st.permutations(range(3)))
def test_random_access_is_order_independent(tmp_path_factory, order):
    root = tmp_path_factory.mktemp("wds")
    readers = [
        (_caption(root), (0, 1, 5)),
        (PdfOcrShards(write_pdf_shard(root), source="p", category="ocr", stage="cpt"), (0, 1, 3)),
    ]
    for r, good in readers:
        forward = [sample_to_json(r[i]) for i in good]
        assert {k: sample_to_json(r[good[k]]) for k in order} == dict(enumerate(forward))
