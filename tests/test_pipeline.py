"""One input pipeline (mm15.data.pipeline): the server, ``mm15 chat``, the inference API, the
lmms-eval plugin and the training formatter turn the same conversation into the same ids and
tiles; pixels decoded elsewhere travel in the sample (``Media.decoded``)."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

import mm15.services.inference as inference
from mm15.data.coords import Box, format_box
from mm15.data.media import load_image, media_size, video_frame_count
from mm15.data.pipeline import format_sample
from mm15.data.prompt_encoding import (
    encode_prompt,
    encode_sample,
    media_placeholder_parts,
    placeholder_parts,
)
from mm15.data.sample_images import materialize_pixels
from mm15.data.schema import Media, Message, Part, Region, Sample, sample_to_json
from mm15.eval.lmms_plugin import request_sample
from mm15.serve.engine import SamplingParams
from mm15.serve.fetch import Fetcher
from mm15.serve.prepare import prepare_prompt
from mm15.serve.schemas import ChatRequest
from mm15.services.chat_session import ChatSession, load_media, parse_visual_prompt
from mm15.services.checkpoint import load_checkpoint
from tests.serve_fixtures import config, data_url, png_bytes

BOX = (20.0, 10.0, 150.0, 90.0)  # pixels of the 200x100 image
QUESTION = ("What is in ", "?")


@pytest.fixture(scope="module")
def ckpt(tiny_ckpt_dir):
    return load_checkpoint(tiny_ckpt_dir)


@pytest.fixture
def png(tmp_path):
    path = tmp_path / "a.png"
    data = png_bytes((200, 100), (90, 160, 30))
    path.write_bytes(data)
    return path, data


def _training_sample(path) -> Sample:
    user = [Part.m(0), Part.t(QUESTION[0]), Part.r(0), Part.t(QUESTION[1])]
    return Sample(
        id="s",
        source="t",
        category="refer_ground",
        stage="sft",
        media=[Media(path=str(path))],
        regions=[Region(media=0, box=BOX)],
        messages=[Message("system", [Part.t("Be brief.")]), Message("user", user)],
    )


def test_every_entry_point_gives_the_training_formatters_ids_and_tiles(ckpt, png, monkeypatch):
    model, tok = ckpt
    cfg = model.cfg
    path, data = png
    # training / evaluation: the formatter and the tiles of its plans
    ex = format_sample(_training_sample(path), tokenizer=tok, model_cfg=cfg, for_generation=True)
    want_ids, want_px = ex.input_ids, materialize_pixels(ex, cfg)
    assert ex.images and want_px.shape[0] == ex.num_tiles
    box_text = format_box(Box(*BOX, image=0), (200, 100), image_index=cfg.format.region_image_index)
    question = QUESTION[0] + box_text + QUESTION[1]

    # the inference API
    seen = []
    monkeypatch.setattr(inference, "_generate", lambda m, t, enc, s, cb=None: seen.extend(enc))
    inference.generate_for_samples(model, tok, [_training_sample(path)])
    # the server: an OpenAI request with the image as a data URL and the box written as text
    req = ChatRequest.model_validate(
        {
            "model": "tiny",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": data_url(data)}},
                        {"type": "text", "text": question},
                    ],
                },
            ],
        }
    )
    served = prepare_prompt(
        req, SamplingParams(max_tokens=4), config(), cfg, tok, Fetcher(config().media)
    ).encoded
    # mm15 chat: the image from disk and the box as a visual prompt
    session = ChatSession(
        model,
        tok,
        load_media([path], cfg=cfg),
        visual_prompts=[parse_visual_prompt(",".join(map(str, BOX)), "box")],
    )
    chat_ex = format_sample(
        _chat_sample(session, QUESTION[0] + "<region>" + QUESTION[1]),
        tokenizer=tok,
        model_cfg=cfg,
        for_generation=True,
    )
    # the lmms-eval plugin (a PIL image, no system turn: compared without it)
    lmms = encode_sample(request_sample(question, [Image.open(path)]), tokenizer=tok, model_cfg=cfg)

    for got_ids, got_px in [
        (seen[0].input_ids, seen[0].pixels),
        (served.input_ids, served.pixels),
        (chat_ex.input_ids, session.pixels(chat_ex)),
    ]:
        assert got_ids == want_ids
        assert torch.equal(got_px, want_px)
    assert served.plans == [r.plan for r in ex.images]
    plain = _training_sample(path)
    plain.messages = plain.messages[1:]
    plain_ex = format_sample(plain, tokenizer=tok, model_cfg=cfg, for_generation=True)
    assert lmms.input_ids == plain_ex.input_ids and torch.equal(lmms.pixels, want_px)


def _chat_sample(session: ChatSession, text: str) -> Sample:
    """The chat session's sample with the system turn the other entry points have."""
    sample = session.sample(text)
    sample.messages.insert(0, Message("system", [Part.t("Be brief.")]))
    return sample


def test_chat_session_prompt_equals_the_formatter_on_its_sample(ckpt, png):
    model, tok = ckpt
    path, _ = png
    vp = parse_visual_prompt(",".join(map(str, BOX)), "box")
    session = ChatSession(model, tok, load_media([path], cfg=model.cfg), visual_prompts=[vp])
    text = QUESTION[0] + "<region>" + QUESTION[1]
    sample = session.sample(text)
    assert sample.media[0].decoded is session.media.visuals[0]  # handed over, not re-decoded
    ex = session.example(text)
    want = _training_sample(path)
    want.messages = want.messages[1:]
    assert (
        ex.input_ids
        == format_sample(want, tokenizer=tok, model_cfg=model.cfg, for_generation=True).input_ids
    )


def test_decoded_media_answer_from_their_pixels(tmp_path):
    from mm15.config import ImageConfig, VideoConfig

    im = Image.new("RGB", (30, 20))
    media = Media(path=str(tmp_path / "absent.png"), size=(1, 1), decoded=im)
    assert media_size(media, ImageConfig()) == (30, 20) and load_image(media, ImageConfig()) is im
    video = Media(kind="video", decoded=[im] * 3)
    assert video_frame_count(video, VideoConfig(num_frames=2), ImageConfig()) == 3
    sample = Sample(
        id="x",
        source="t",
        category="eval",
        stage="eval",
        media=[media],
        messages=[Message("user", [Part.m(0)])],
    )
    with pytest.raises(ValueError, match="do not serialise"):
        sample_to_json(sample)


def test_encode_prompt_is_a_document_to_continue(ckpt):
    model, tok = ckpt
    cfg = model.cfg
    images = [Image.new("RGB", (200, 100), (9, 9, 9)), Image.new("RGB", (40, 40), (200, 0, 0))]
    enc = encode_prompt("A<image>B <image>", images, tokenizer=tok, cfg=cfg)
    sample = Sample(
        id="d",
        source="t",
        category="eval",
        stage="eval",
        media=[Media(decoded=im) for im in images],
        messages=[Message("document", [Part.t("A"), Part.m(0), Part.t("B "), Part.m(1)])],
    )
    doc = format_sample(sample, tokenizer=tok, model_cfg=cfg)
    assert enc.input_ids == doc.input_ids[:-1] and doc.input_ids[-1] in tok.eos_ids  # no EOS
    assert torch.equal(enc.pixels, materialize_pixels(doc, cfg))
    assert [p.image_index for p in enc.plans] == [0, 1]
    assert enc.input_ids.count(tok.image_token_id) == sum(p.image_tokens for p in enc.plans)
    with pytest.raises(ValueError, match=r"^text has 3 <image> placeholders but 2 images"):
        encode_prompt("<image><image><image>", images, tokenizer=tok, cfg=cfg)
    frames = encode_prompt("<image><image>", images, tokenizer=tok, cfg=cfg, video_frames=True)
    assert [p.n_tiles for p in frames.plans] == [1, 1] and frames.pixels.shape[0] == 2


def test_placeholder_parts():
    assert placeholder_parts("A<image>B <image>", 2, "<image>") == [
        Part.t("A"),
        Part.m(0),
        Part.t("B "),
        Part.m(1),
    ]
    assert placeholder_parts("<image>", 2, "<image>") is None
    with pytest.raises(ValueError):
        placeholder_parts("x", 0, "")


def test_media_placeholder_parts_keeps_the_kinds_in_order():
    parts, kinds = media_placeholder_parts("<video>A<image><image>B<video>", ["<image>", "<video>"])
    assert parts == [Part.m(0), Part.t("A"), Part.m(1), Part.m(2), Part.t("B"), Part.m(3)]
    assert kinds == [1, 0, 0, 1]
    assert media_placeholder_parts("no media", ["<image>"]) == ([Part.t("no media")], [])
    with pytest.raises(ValueError, match="non-empty"):
        media_placeholder_parts("x", ["<image>", ""])
