"""Boxes written inside conversation text (DocOwl ``<bbox>`` 0..999, LLaVA-665k floats on the
padded square) become regions at the right pixels, rendered in mm15's one coordinate language
(on-disk layouts: mm15/data/registry.toml)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from mm15.config import FormatConfig
from mm15.data.pipeline import format_sample
from mm15.data.schema import SampleError
from mm15.data.sources import open_source
from mm15.data.sources.conversation import ConversationReader
from mm15.presets import tiny
from mm15.tokenizer import byte_tokenizer


def _write(root: Path) -> dict[str, Path]:
    """A 200×100 page image, DocStruct4M JSONL rows and LLaVA-665k list rows."""
    (root / "imgs").mkdir(parents=True)
    Image.new("RGB", (200, 100), "white").save(root / "imgs/doc.png")
    Image.new("RGB", (100, 200), "white").save(root / "imgs/tall.png")

    def doc(user, answer, image=("./imgs/doc.png",)):
        return {
            "image": list(image),
            "messages": [
                {"role": "user", "content": user},
                {"role": "assistant", "content": answer},
            ],
        }

    docowl = [
        doc(
            "<|image|>Recognize the text in the bounding box <bbox>0,0,999,499</bbox>",
            "<ocr>Total</ocr>",
        ),
        doc(
            "<|image|>Predict the bounding box of the text <ocr>Total</ocr>",
            "<bbox>100, 200,300,400</bbox> and <bbox>0,0,999,999</bbox>",
        ),
        doc("<|image|>Where? <bbox>1,2,3</bbox>", "x"),  # not four ints
        doc("<|image|>Where? <bbox>0,0,1000,5</bbox>", "x"),  # off the 0..999 grid
        doc(
            "<|image|><|image|>Where? <bbox>1,2,3,4</bbox>",
            "x",
            ("./imgs/doc.png", "./imgs/tall.png"),
        ),  # which image?
    ]
    llava = [
        {
            "id": "vg",
            "image": "imgs/doc.png",
            "conversations": [
                {
                    "from": "human",
                    "value": "<image>\nPlease provide a short description for this "
                    "region: [0.1, 0.25, 0.5, 0.75].",
                },
                {"from": "gpt", "value": "A white area."},
            ],
        },
        {
            "id": "ref",
            "image": "imgs/tall.png",
            "conversations": [
                {
                    "from": "human",
                    "value": "<image>\nPlease provide the bounding box coordinate of "
                    "the region this sentence describes: the page.",
                },
                {"from": "gpt", "value": "[0.25, 0.0, 0.75, 1.0]"},
            ],
        },
        {
            "id": "text",
            "conversations": [
                {"from": "human", "value": "Sort [0.3, 0.1, 0.2, 0.9]."},
                {"from": "gpt", "value": "[0.1, 0.2, 0.3, 0.9]"},
            ],
        },
        {
            "id": "pad",
            "image": "imgs/doc.png",
            "conversations": [
                {"from": "human", "value": "<image>\nDescribe [0.1, 0.0, 0.5, 0.2]."},
                {"from": "gpt", "value": "Padding."},
            ],
        },  # y on the padding band: not on the image
    ]
    paths = {"docowl": root / "multi_grained_text_localization.jsonl", "llava": root / "mix.json"}
    paths["docowl"].write_text("\n".join(json.dumps(r) for r in docowl) + "\n")
    paths["llava"].write_text(json.dumps(llava))
    return paths


def _reader(path: Path, root: Path, **kw) -> ConversationReader:
    return ConversationReader(path, source="t", category="ocr", stage="cpt", root=root, **kw)


def _parts(msg):
    return [(p.type, p.text if p.type == "text" else p.region) for p in msg.content]


def _rendered(sample) -> str:
    tok = byte_tokenizer()
    ex = format_sample(
        sample, tokenizer=tok, model_cfg=tiny(vocab_size=len(tok)), fmt=FormatConfig()
    )
    return tok.decode([t for t in ex.input_ids if t != tok.image_token_id])


def test_docowl_bbox_becomes_a_region_in_pixels(tmp_path):
    paths = _write(tmp_path)
    r = _reader(paths["docowl"], tmp_path, text_boxes="docowl_bbox")
    s = r[0]
    assert s.media[0].size == (200, 100)
    assert s.regions[0].box == pytest.approx((0.0, 0.0, 200.0, 499 / 999 * 100))
    assert _parts(s.messages[0])[1:] == [
        ("text", "Recognize the text in the bounding box "),
        ("region", 0),
    ]
    assert _parts(s.messages[1]) == [("text", "<ocr>Total</ocr>")]  # not a coordinate: kept
    s = r[1]
    assert _parts(s.messages[1]) == [("region", 0), ("text", " and "), ("region", 1)]
    assert s.regions[0].box == pytest.approx(
        (100 / 999 * 200, 20.02, 300 / 999 * 200, 40.04), abs=0.01
    )
    assert s.regions[1].box == (0.0, 0.0, 200.0, 100.0)
    text = _rendered(s)
    assert "<bbox>" not in text and "<0,0,999,999>" in text  # mm15's one language
    for i, match in ((2, "not four integers"), (3, "bad box"), (4, "exactly one image")):
        with pytest.raises(SampleError, match=match) as e:
            r[i]
        assert e.value.reason == "malformed" and f"localization.jsonl row {i}" in str(e.value)


def test_bbox_left_in_text_without_the_option_is_malformed(tmp_path):
    paths = _write(tmp_path)
    r = _reader(paths["docowl"], tmp_path)
    with pytest.raises(SampleError, match="text_boxes='docowl_bbox'") as e:
        r[0]
    assert e.value.reason == "malformed"
    with pytest.raises(ValueError, match="text_boxes"):
        _reader(paths["docowl"], tmp_path, text_boxes="ferret")


def test_llava_floats_on_the_padded_square_land_on_the_original_pixels(tmp_path):
    paths = _write(tmp_path)
    r = open_source(
        {
            "kind": "conversation",
            "paths": [str(paths["llava"])],
            "root": str(tmp_path),
            "source": "llava665k",
            "category": "general",
            "stage": "sft",
            "text_boxes": "llava_square",
        }
    )
    vg = r[0]  # 200×100 padded to 200×200 with 50 px above: y 0.25..0.75 of the square = 0..100
    assert vg.regions[0].box == pytest.approx((20.0, 0.0, 100.0, 100.0))
    assert _parts(vg.messages[0])[1:] == [
        ("text", "Please provide a short description for this region: "),
        ("region", 0),
        ("text", "."),
    ]
    assert "[0." not in _rendered(vg) and "<100,0,499,999>" in _rendered(vg)
    ref = r[1]  # 100×200 padded to 200×200 with 50 px left: x 0.25..0.75 = 0..100
    assert ref.regions[0].box == pytest.approx((0.0, 0.0, 100.0, 200.0))
    assert _parts(ref.messages[1]) == [("region", 0)]
    text = r[2]  # no image: numbers, not coordinates
    assert text.regions == [] and _parts(text.messages[1]) == [("text", "[0.1, 0.2, 0.3, 0.9]")]
    with pytest.raises(SampleError, match="outside") as e:
        r[3]
    assert e.value.reason == "malformed" and "mix.json row 3" in str(e.value)
    plain = _reader(paths["llava"], tmp_path)[0]  # without the option the text is as written
    assert plain.regions == [] and "[0.1, 0.25, 0.5, 0.75]" in plain.messages[0].content[1].text
