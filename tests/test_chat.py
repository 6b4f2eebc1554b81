"""Sample → tokens: chat template, loss masks, image expansion, regions, media, errors."""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from mm15.config import FormatConfig, ImageConfig
from mm15.data.image_io import open_image
from mm15.data.media import load_image, media_size
from mm15.data.pipeline import IGNORE_INDEX, format_sample
from mm15.data.sample_images import materialize_pixels
from mm15.data.schema import Media, Message, Part, Region, Sample, SampleError
from mm15.data.splitting import tile_image
from mm15.presets import tiny
from mm15.tokenizer import byte_tokenizer

TOK = byte_tokenizer()
CFG = tiny(vocab_size=len(TOK))  # 112 px tiles, (n_min, n_max) = (1, 4), 16 tokens per tile
CFG.image_token_id = TOK.image_token_id
FMT = FormatConfig()
IMG = TOK.image_token_id


def _png(w: int, h: int, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _fmt(sample: Sample, **kw):
    return format_sample(sample, tokenizer=TOK, model_cfg=CFG, fmt=kw.pop("fmt", FMT), **kw)


def _chat(*messages: Message, media=(), regions=(), sid="s") -> Sample:
    return Sample(
        id=sid,
        source="test",
        category="general",
        stage="sft",
        media=list(media),
        messages=list(messages),
        regions=list(regions),
    )


def _trained(ex) -> str:
    return TOK.decode(
        [i for i, lab in zip(ex.input_ids, ex.labels, strict=True) if lab != IGNORE_INDEX],
        skip_special=False,
    )


def _text(ex) -> str:
    text = TOK.decode(ex.input_ids, skip_special=False)
    return text.replace("<image>" * CFG.connector.num_tokens, "[T]")


def test_chat_template_and_loss_on_assistant_turns_only():
    s = _chat(
        Message("system", [Part.t("Be brief.")]),
        Message("user", [Part.m(0), Part.t("What is it?")]),
        Message("assistant", [Part.t("A cat.")]),
        Message("user", [Part.t("Sure?")]),
        Message("assistant", [Part.t("Yes.")]),
        media=[Media(bytes=_png(64, 64))],
    )
    ex = _fmt(s)
    assert _text(ex) == (
        "<|bos|>System: Be brief.\nUser: (0,1,1)[T]What is it?\n"
        "Assistant:\nA cat.<|eos|>\nUser: Sure?\nAssistant:\nYes.<|eos|>"
    )
    assert _trained(ex) == "A cat.<|eos|>Yes.<|eos|>"
    assert len(ex.input_ids) == len(ex.labels)
    assert all(lab in (IGNORE_INDEX, i) for i, lab in zip(ex.input_ids, ex.labels, strict=True))
    assert ex.sample_id == "s" and ex.category == "general" and ex.num_tiles == 1


def test_ignore_index_is_the_models():
    from mm15.model.mm15 import IGNORE_INDEX as MODEL_IGNORE

    assert IGNORE_INDEX == MODEL_IGNORE


def test_message_train_overrides_the_role_default():
    s = _chat(
        Message("user", [Part.t("quote me")], train=True),
        Message("assistant", [Part.t("no")], train=False),
        Message("assistant", [Part.t("yes")]),
    )
    assert _trained(_fmt(s)) == "quote meyes<|eos|>"


def test_pretraining_document_has_loss_on_all_text_but_not_on_images():
    doc = Sample(
        id="d",
        source="obelics",
        category="interleaved",
        stage="pretrain",
        media=[Media(bytes=_png(200, 100)), Media(bytes=_png(50, 50, 1))],
        messages=[
            Message(
                "document",
                [Part.t("Look: "), Part.m(0), Part.t(" and "), Part.m(1), Part.t(" end.")],
            )
        ],
    )
    ex = _fmt(doc)
    assert ex.input_ids[0] == TOK.bos_id and ex.labels[0] == IGNORE_INDEX
    assert ex.input_ids[-1] == TOK.eos_ids[0] and ex.labels[-1] == TOK.eos_ids[0]
    assert _trained(ex) == "Look:  and  end.<|eos|>"  # indicators and image tokens excluded
    n_img = sum(r.plan.image_tokens for r in ex.images)
    assert ex.input_ids.count(IMG) == n_img == ex.num_tiles * CFG.connector.num_tokens
    assert [r.plan.image_index for r in ex.images] == [0, 1]


def test_split_only_below_three_images_and_videos_count_as_frames(tmp_path: Path):
    wide = Media(bytes=_png(400, 100))
    two = _fmt(
        _chat(
            Message("user", [Part.m(0), Part.m(1)]),
            Message("assistant", [Part.t("a")]),
            media=[wide, Media(bytes=_png(30, 30))],
        )
    )
    assert two.images[0].allow_split and two.images[0].plan.grid == (1, 4)
    three = _chat(
        Message("user", [Part.m(0), Part.m(1), Part.m(2)]),
        Message("assistant", [Part.t("a")]),
        media=[wide] * 3,
    )
    assert [r.plan.grid for r in _fmt(three).images] == [(1, 1)] * 3
    frames = []
    for i in range(2):
        p = tmp_path / f"f{i}.png"
        p.write_bytes(_png(80, 60, i))
        frames.append(str(p))
    video = Media(kind="video", frames=frames)
    ex = _fmt(
        _chat(
            Message("user", [Part.m(0), Part.m(1)]),
            Message("assistant", [Part.t("a")]),
            media=[video, wide],
        )
    )
    # 2 frames + 1 image = 3 images shown: nothing is split, the image is image k = 2.
    assert [(r.frame, r.plan.grid, r.plan.image_index) for r in ex.images] == [
        (0, (1, 1), 0),
        (1, (1, 1), 1),
        (None, (1, 1), 2),
    ]
    px = materialize_pixels(ex, CFG)
    assert px.shape == (3, 3, 112, 112)
    assert torch.equal(
        px[0],
        tile_image(open_image(frames[0], cfg=CFG.image), CFG.image, allow_split=False).tiles[0],
    )


@pytest.mark.parametrize("ext", ["mp4", "mkv"])  # mkv: no frame count in the header
def test_video_file_plans_as_many_frames_as_it_decodes(ext, tmp_path: Path):
    path = tmp_path / f"clip.{ext}"
    codec = next(c for c in ("libx264", "mpeg4") if c in av.codecs_available)
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=10)
        stream.width, stream.height, stream.pix_fmt = 48, 32, "yuv420p"
        for i in range(20):
            frame = np.full((32, 48, 3), 10 * i, dtype=np.uint8)
            for pkt in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                out.mux(pkt)
        for pkt in stream.encode():
            out.mux(pkt)
    ex = _fmt(
        _chat(
            Message("user", [Part.m(0), Part.t("what happens?")]),
            Message("assistant", [Part.t("fade")]),
            media=[Media(kind="video", path=str(path))],
        )
    )
    n = CFG.video.num_frames
    assert [r.frame for r in ex.images] == list(range(n))
    assert [r.plan.image_index for r in ex.images] == list(range(n))
    assert materialize_pixels(ex, CFG).shape == (n, 3, 112, 112)
    assert ex.input_ids.count(IMG) == n * CFG.connector.num_tokens


def test_regions_render_on_the_original_size_with_the_image_index_when_multi_image():
    m0, m1 = Media(bytes=_png(200, 100), size=(200, 100)), Media(bytes=_png(50, 80, 1))
    regions = [Region(media=0, box=(20, 10, 100, 50)), Region(media=1, point=(25, 40))]
    single = _chat(
        Message("user", [Part.m(0), Part.t("find")]),
        Message("assistant", [Part.t("at "), Part.r(0)]),
        media=[m0],
        regions=regions[:1],
    )
    assert _trained(_fmt(single)) == "at <100,100,499,499><|eos|>"
    multi = _chat(
        Message("user", [Part.m(0), Part.m(1), Part.t("point "), Part.r(1)]),
        Message("assistant", [Part.r(0)]),
        media=[m0, m1],
        regions=regions,
    )
    ex = _fmt(multi)
    assert "point <1:500,500>\n" in _text(ex)
    assert _trained(ex) == "<0:100,100,499,499><|eos|>"


def test_generation_prompt_is_a_prefix_of_the_training_example():
    media = [Media(bytes=_png(120, 90))]
    q = Message("user", [Part.m(0), Part.t("Describe.")])
    gen = _fmt(_chat(q, media=media), for_generation=True)
    train = _fmt(_chat(q, Message("assistant", [Part.t("Noise.")]), media=media))
    assert _text(gen).endswith("Describe.\nAssistant:\n")
    assert train.input_ids[: len(gen.input_ids)] == gen.input_ids
    assert set(gen.labels) == {IGNORE_INDEX}


@pytest.mark.parametrize(
    ("sample", "reason", "match"),
    [
        (_chat(Message("user", [Part.t("hi")])), "empty", "no token with loss"),
        (_chat(Message("assistant", [Part.m(3)])), "malformed", "refers to media 3"),
        (
            _chat(Message("assistant", [Part.t("x")]), media=[Media(bytes=b"")]),
            "malformed",
            r"media \[0\] never shown",
        ),
        (
            _chat(
                Message("user", [Part.m(0), Part.m(0)]),
                Message("assistant", [Part.t("x")]),
                media=[Media(bytes=_png(8, 8))],
            ),
            "malformed",
            "more than once",
        ),
        (_chat(Message("assistant", [Part.t("an <image> here")])), "malformed", "image token"),
        (
            _chat(Message("document", [Part.t("x")]), Message("assistant", [Part.t("y")])),
            "malformed",
            "mixes document and chat",
        ),
        (
            _chat(
                Message("user", [Part.m(0)]),
                Message("assistant", [Part.t("x")]),
                media=[Media(path="/nonexistent/a.png")],
            ),
            "missing",
            "not found",
        ),
        (
            _chat(
                Message("user", [Part.m(0)]),
                Message("assistant", [Part.t("x")]),
                media=[Media(bytes=b"not an image")],
            ),
            "corrupt",
            "allowed format",
        ),
        (
            _chat(
                Message("user", [Part.m(0)]),
                Message("assistant", [Part.r(0)]),
                media=[Media(bytes=_png(10, 10))],
                regions=[Region(media=0, box=(0, 0, 50, 5))],
            ),
            "malformed",
            "outside",
        ),
        (
            _chat(
                Message("user", [Part.m(0)]),
                Message("assistant", [Part.r(0)]),
                media=[Media(bytes=_png(10, 10))],
                regions=[Region(media=0, box=(0, 0, 5))],
            ),
            "malformed",
            "3 coordinates",
        ),
    ],
)
def test_bad_samples_raise_sample_errors_with_a_reason(sample, reason, match):
    with pytest.raises(SampleError, match=match) as err:
        _fmt(sample)
    assert err.value.reason == reason


def test_image_token_id_mismatch_is_a_config_error():
    cfg = dataclasses.replace(CFG, image_token_id=IMG + 1)
    with pytest.raises(ValueError, match="image_token_id"):
        format_sample(
            _chat(Message("assistant", [Part.t("x")])), tokenizer=TOK, model_cfg=cfg, fmt=FMT
        )


def test_media_size_reads_the_header_with_exif_orientation(tmp_path: Path):
    path = tmp_path / "rot.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90°: the decoded image is 40 wide, 70 high
    Image.new("RGB", (70, 40), (10, 200, 30)).save(path, "JPEG", exif=exif)
    cfg = ImageConfig()
    assert (
        media_size(Media(path=str(path)), cfg)
        == (40, 70)
        == load_image(Media(path=str(path)), cfg).size
    )
    assert media_size(Media(path=str(path), size=(7, 9)), cfg) == (7, 9)
    with pytest.raises(SampleError) as err:
        media_size(Media(bytes=_png(100, 100)), dataclasses.replace(cfg, max_pixels=99))
    assert err.value.reason == "corrupt" and "max_pixels" in str(err.value)


def test_pixels_follow_the_plan_and_a_wrong_declared_size_is_caught():
    data = _png(300, 120)
    ex = _fmt(
        _chat(
            Message("user", [Part.m(0)]),
            Message("assistant", [Part.t("x")]),
            media=[Media(bytes=data)],
        )
    )
    px = materialize_pixels(ex.images, CFG)
    expected = tile_image(Image.open(io.BytesIO(data)).convert("RGB"), CFG.image).tiles
    assert px.shape[0] == ex.num_tiles == ex.input_ids.count(IMG) // CFG.connector.num_tokens
    assert torch.equal(px, expected)
    lying = _fmt(
        _chat(
            Message("user", [Part.m(0)]),
            Message("assistant", [Part.t("x")]),
            media=[Media(bytes=data, size=(120, 300))],
        )
    )
    with pytest.raises(SampleError, match="planned") as err:
        materialize_pixels(lying, CFG)
    assert err.value.reason == "malformed"


_part = st.one_of(
    st.text(alphabet="ab .?", min_size=1, max_size=6).map(Part.t),
    st.tuples(st.integers(8, 300), st.integers(8, 300)),
)


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["user", "assistant", "system"]),
            st.lists(_part, min_size=1, max_size=4),
        ),
        min_size=1,
        max_size=4,
    )
)
def test_random_chats_keep_labels_aligned_and_count_image_tokens_once(turns):
    media, messages = [], []
    for role, parts in turns:
        content = []
        for p in parts:
            if isinstance(p, tuple):
                content.append(Part.m(len(media)))
                media.append(Media(bytes=b"", size=p))  # sizes declared: no decoding needed
            else:
                content.append(p)
        messages.append(Message(role, content))
    messages.append(Message("assistant", [Part.t("ok")]))
    ex = _fmt(_chat(*messages, media=media))
    assert len(ex.input_ids) == len(ex.labels)
    is_img = [i == IMG for i in ex.input_ids]
    assert sum(is_img) == sum(r.plan.image_tokens for r in ex.images)
    assert all(lab == IGNORE_INDEX for lab, img in zip(ex.labels, is_img, strict=True) if img)
    assert all(lab in (IGNORE_INDEX, i) for i, lab in zip(ex.input_ids, ex.labels, strict=True))
    assert [r.plan.image_index for r in ex.images] == list(range(len(media)))
    assert all(r.allow_split == (len(media) < 3) for r in ex.images)
