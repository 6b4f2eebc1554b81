"""The checkpoint's Jinja chat template (tokenizer_config.json) against mm15's formatter.

Every conversation shape is rendered (a) by transformers' ``PreTrainedTokenizerFast
.from_pretrained(dir).apply_chat_template(messages, tokenize=True)`` and (b) by
:func:`mm15.data.pipeline.format_sample`, and the token ids must be identical.  The template writes
one ``<image>`` per image (per video frame) where mm15 expands the image into its tiles, so (b)
is compared two ways: on a model config whose images are exactly one token (one tile, 1 token per
tile, no indicators: the formatter's own output, nothing rewritten), and on the tiny preset with
each image's block (indicator texts and token runs, from its plan) collapsed to one token.
"""

from __future__ import annotations

import dataclasses
import io
import json

import numpy as np
import pytest
from PIL import Image
from transformers import PreTrainedTokenizerFast

from mm15.config import FormatConfig
from mm15.data.chat_template import TOKENIZER_CONFIG, sample_messages, write_hf_tokenizer_config
from mm15.data.layout import TextPiece
from mm15.data.pipeline import format_sample
from mm15.data.schema import Media, Message, Part, Region, Sample
from mm15.presets import tiny
from mm15.tokenizer import byte_tokenizer, train_bpe_tokenizer

TOK = byte_tokenizer()
BASE = dataclasses.replace(tiny(vocab_size=len(TOK)), image_token_id=TOK.image_token_id)
ONE_TOKEN = dataclasses.replace(
    BASE,
    connector=dataclasses.replace(BASE.connector, num_tokens=1),
    image=dataclasses.replace(BASE.image, split="none", indicator="none"),
)
FORMATS = {
    "default": FormatConfig(),
    "custom": FormatConfig(
        system_prefix="<<SYS>> ",
        user_prefix="### Human:\n",
        assistant_prefix="### Assistant:\n",
        turn_end="\n\n",
        add_bos=False,
        region_image_index="always",
    ),
    "odd": FormatConfig(
        user_prefix='Üser "q" {% raw %} %} {{ x }}: ',
        assistant_prefix="Bot> ",
        turn_end="<|end|>\n",
        region_image_index="auto",
    ),
}


def _png(w: int, h: int, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _shapes(root) -> dict[str, tuple[Sample, bool]]:
    """Name → (sample, for_generation): ≥ 20 conversation shapes."""
    frames = []
    for i in range(3):
        (root / f"f{i}.png").write_bytes(_png(40, 30, i))
        frames.append(str(root / f"f{i}.png"))
    wide, small, tall = (
        Media(bytes=_png(300, 100)),
        Media(bytes=_png(50, 40, 1)),
        Media(bytes=_png(60, 200, 2)),
    )
    video = Media(kind="video", frames=frames)
    U = lambda *p: Message("user", list(p))  # noqa: E731
    A = lambda *p: Message("assistant", list(p))  # noqa: E731
    S = lambda *p: Message("system", list(p))  # noqa: E731
    t, m, r = Part.t, Part.m, Part.r

    def s(*msgs, media=(), regions=()):
        return Sample(
            id="x",
            source="t",
            category="general",
            stage="sft",
            media=list(media),
            messages=list(msgs),
            regions=list(regions),
        )

    box0, pt0 = Region(media=0, box=(10.0, 5.0, 150.5, 80.0)), Region(media=0, point=(299.0, 0.0))
    box1, pt1 = Region(media=1, box=(0.0, 0.0, 50.0, 40.0)), Region(media=1, point=(3.3, 7.7))
    return {
        "text_single": (s(U(t("Hi")), A(t("Hello."))), False),
        "text_system": (s(S(t("Be brief.")), U(t("Hi")), A(t("Hello."))), False),
        "text_multi_turn": (s(U(t("a")), A(t("b")), U(t("c")), A(t("d"))), False),
        "gen_single": (s(U(t("What?"))), True),
        "gen_system": (s(S(t("sys")), U(t("What?"))), True),
        "gen_multi_turn": (s(U(t("a")), A(t("b")), U(t("c"))), True),
        "gen_after_assistant": (s(U(t("a")), A(t("b"))), True),
        "unicode_newlines": (s(U(t("Ünï\ncødé «»\n\n 😀")), A(t(" spaced \t"))), False),
        "image_first": (s(U(m(0), t("Describe.")), A(t("A wide image."))), False, [wide]),
        "image_last": (s(U(t("Describe: "), m(0)), A(t("ok"))), False, [wide]),
        "image_middle": (s(U(t("before "), m(0), t(" after")), A(t("ok"))), False, [small]),
        "image_only_turn": (s(U(m(0)), A(t("ok"))), True, [small]),
        "two_images": (s(U(m(0), m(1), t("Same?")), A(t("No."))), False, [wide, small]),
        "images_across_turns": (
            s(U(m(0), t("a")), A(t("b")), U(t("and"), m(1), m(2))),
            True,
            [wide, small, tall],
        ),
        "image_in_answer": (s(U(t("Show me.")), A(t("Here: "), m(0))), False, [small]),
        "video": (s(U(m(0), t("What happens?")), A(t("It moves."))), False, [video]),
        "video_and_image": (s(U(m(0), t("and"), m(1))), True, [video, small]),
        "box_single": (
            s(U(m(0), t("What is in "), r(0), t("?")), A(t("A cat."))),
            False,
            [wide],
            [box0],
        ),
        "point_answer_single": (
            s(U(m(0), t("Where?")), A(t("At "), r(0), t("."))),
            False,
            [wide],
            [pt0],
        ),
        "box_second_image": (
            s(U(m(0), m(1), t("Find it.")), A(r(0))),
            False,
            [wide, small],
            [box1],
        ),
        "point_and_box_multi": (
            s(U(m(0), m(1), t("Compare "), r(0), t(" and "), r(1))),
            True,
            [wide, small],
            [box0, pt1],
        ),
        "region_after_video": (
            s(U(m(0), m(1), t("Where in the image?")), A(r(0))),
            False,
            [video, small],
            [box1],
        ),
        "region_gen_system": (
            s(S(t("Ground.")), U(m(0), t("this "), r(0))),
            True,
            [tall],
            [Region(media=0, box=(1.0, 2.0, 59.0, 199.0))],
        ),
    }


def _sample(shape) -> tuple[Sample, bool]:
    sample, gen, *rest = shape
    if rest:
        sample.media = list(rest[0])
        sample.regions = list(rest[1]) if len(rest) > 1 else []
    return sample, gen


def _hf_dir(path, tok, cfg) -> PreTrainedTokenizerFast:
    """The tokenizer files a checkpoint holds (what save_checkpoint writes), loaded by HF."""
    tok.save(path)
    write_hf_tokenizer_config(path, tok, cfg)
    return PreTrainedTokenizerFast.from_pretrained(path)


def _collapse(ex, tok) -> list[int]:
    """``ex.input_ids`` with each image's block (its plan's indicator texts and token runs) as
    one image token; the blocks are found in order of appearance."""
    ids, out, pos, img = ex.input_ids, [], 0, tok.image_token_id
    for ref in ex.images:
        block = []
        for seg in ref.plan.segments:
            block += tok.encode(seg.text) if isinstance(seg, TextPiece) else [img] * seg.num_tokens
        at = next(i for i in range(pos, len(ids)) if ids[i : i + len(block)] == block)
        out += [*ids[pos:at], img]
        pos = at + len(block)
    return out + ids[pos:]


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    return {name: _sample(shape) for name, shape in _shapes(root).items()}


@pytest.mark.parametrize("fmt_name", sorted(FORMATS))
def test_template_and_formatter_give_the_same_token_ids(shapes, fmt_name, tmp_path):
    fmt = FORMATS[fmt_name]
    one, base = (dataclasses.replace(c, format=fmt) for c in (ONE_TOKEN, BASE))
    hf = _hf_dir(tmp_path, TOK, base)
    assert len(shapes) >= 20
    for name, (sample, gen) in shapes.items():
        messages = sample_messages(sample, base)
        got = hf.apply_chat_template(messages, tokenize=True, add_generation_prompt=gen)
        got = got["input_ids"]
        ex1 = format_sample(sample, tokenizer=TOK, model_cfg=one, for_generation=gen)
        assert got == ex1.input_ids, f"{fmt_name}/{name}: one-token images differ"
        ex = format_sample(sample, tokenizer=TOK, model_cfg=base, for_generation=gen)
        assert got == _collapse(ex, TOK), f"{fmt_name}/{name}: collapsed images differ"
        text = hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)
        assert text == TOK.decode(ex1.input_ids, skip_special=False), name


def test_a_tokenizer_without_bos_and_a_checkpoint_directory(shapes, tiny_ckpt_dir, tmp_path):
    """No BOS token (Qwen2-like): neither side writes one; the saved checkpoint's own
    tokenizer_config.json renders the default format."""
    tok = byte_tokenizer(special=("<|pad|>", "<|eos|>", "<image>"))
    cfg = dataclasses.replace(ONE_TOKEN, image_token_id=tok.image_token_id)
    hf = _hf_dir(tmp_path, tok, cfg)
    ckpt = PreTrainedTokenizerFast.from_pretrained(tiny_ckpt_dir)
    assert json.loads((tiny_ckpt_dir / TOKENIZER_CONFIG).read_text())["chat_template"]
    for name in ("text_system", "gen_multi_turn", "two_images", "point_and_box_multi"):
        sample, gen = shapes[name]
        msgs = sample_messages(sample, cfg)
        ex = format_sample(sample, tokenizer=tok, model_cfg=cfg, for_generation=gen)
        assert hf.apply_chat_template(msgs, add_generation_prompt=gen)["input_ids"] == ex.input_ids
        assert tok.bos_id is None and ex.input_ids[0] != TOK.bos_id
        ex = format_sample(sample, tokenizer=TOK, model_cfg=ONE_TOKEN, for_generation=gen)
        assert (
            ckpt.apply_chat_template(msgs, add_generation_prompt=gen)["input_ids"] == ex.input_ids
        )


def test_messages_written_by_hand(tmp_path):
    """The documented message convention, literally: string content, region parts, videos."""
    hf = _hf_dir(tmp_path, TOK, BASE)

    def render(messages, **kw):
        return hf.apply_chat_template(messages, tokenize=False, **kw)

    regions = [
        {"type": "region", "box": [1, 2, 3, 4]},
        {"type": "text", "text": " and "},
        {"type": "region", "point": [500, 999], "image": 1},
    ]
    two = [{"role": "user", "content": [{"type": "image"}, {"type": "image"}, *regions]}]
    assert render(two) == "<|bos|>User: <image><image><0:1,2,3,4> and <1:500,999>\n"
    one = [{"role": "user", "content": [{"type": "image"}, regions[0]]}]
    assert render(one, add_generation_prompt=True) == "<|bos|>User: <image><1,2,3,4>\nAssistant: "
    video = [
        {"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "?"}]},
        {"role": "assistant", "content": "Left."},
    ]
    n = BASE.video.num_frames
    assert render(video) == f"<|bos|>User: {'<image>' * n}?\nAssistant: Left.<|eos|>"
    strings = [{"role": "system", "content": "S"}, {"role": "user", "content": "<image>hi"}]
    assert render(strings) == "<|bos|>System: S\nUser: <image>hi\n"
    with pytest.raises(Exception, match="unknown role"):
        render([{"role": "tool", "content": "x"}])
    with pytest.raises(Exception, match="single-image chat"):
        render([{"role": "user", "content": [{"type": "image"}, regions[2]]}])


def test_bpe_tokenizer_same_text_and_ids_where_spans_agree(shapes, tmp_path):
    """A real BPE vocabulary: the rendered text is always mm15's.  The token ids agree except
    where mm15 tokenises separately what the template renders as one string: an earlier
    assistant turn's content is encoded apart from its role prefix (its loss mask differs),
    so a merge across that boundary differs (a limit of any template, not of this one)."""
    corpus = ["User: what is in the image? Assistant: A cat on a mat. " * 3, "System: Be brief."]
    tok = train_bpe_tokenizer(corpus, vocab_size=400).with_image_token()
    cfg = dataclasses.replace(ONE_TOKEN, image_token_id=tok.image_token_id)
    hf = _hf_dir(tmp_path, tok, cfg)
    for name, (sample, gen) in shapes.items():
        msgs = sample_messages(sample, cfg)
        ex = format_sample(sample, tokenizer=tok, model_cfg=cfg, for_generation=gen)
        assert hf.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen) == (
            tok.decode(ex.input_ids, skip_special=False)
        ), name
        has_answer = any(m.role == "assistant" for m in sample.messages)
        if not has_answer:  # no assistant content: every span is split where HF splits it
            got = hf.apply_chat_template(msgs, add_generation_prompt=gen)["input_ids"]
            assert got == ex.input_ids, name
