"""The checkpoint's Jinja chat template (tokenizer_config.json) against mm15's formatter.

Every conversation shape is rendered (a) by transformers' ``PreTrainedTokenizerFast
.from_pretrained(dir).apply_chat_template(messages, tokenize=True)`` and (b) by
:func:`mm15.data.pipeline.format_sample`, and the token ids must be identical, with the byte
tokenizer and with a BPE vocabulary whose merges cross role prefixes.  The template writes
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

from mm15.config import LEGACY_ASSISTANT_PREFIX, FormatConfig
from mm15.data.chat_template import TOKENIZER_CONFIG, sample_messages, write_hf_tokenizer_config
from mm15.data.layout import TextPiece
from mm15.data.pipeline import format_sample
from mm15.data.schema import Media, Message, Part, Region, Sample
from mm15.data.token_stream import prefix_merges
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
    "legacy": FormatConfig(assistant_prefix=LEGACY_ASSISTANT_PREFIX),  # ends in a space
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


def U(*parts: Part) -> Message:
    return Message("user", list(parts))


def A(*parts: Part) -> Message:
    return Message("assistant", list(parts))


def S(*parts: Part) -> Message:
    return Message("system", list(parts))


t, m, r = Part.t, Part.m, Part.r


def s(*msgs: Message) -> Sample:
    return Sample(id="x", source="t", category="general", stage="sft", messages=list(msgs))


def _text_shapes() -> dict[str, tuple]:
    return {
        "text_single": (s(U(t("Hi")), A(t("Hello."))), False),
        "text_system": (s(S(t("Be brief.")), U(t("Hi")), A(t("Hello."))), False),
        "text_multi_turn": (s(U(t("a")), A(t("b")), U(t("c")), A(t("d"))), False),
        "gen_single": (s(U(t("What?"))), True),
        "gen_system": (s(S(t("sys")), U(t("What?"))), True),
        "gen_multi_turn": (s(U(t("a")), A(t("b")), U(t("c"))), True),
        "gen_after_assistant": (s(U(t("a")), A(t("b"))), True),
        "unicode_newlines": (s(U(t("Ünï\ncødé «»\n\n 😀")), A(t(" spaced \t"))), False),
    }


def _image_shapes(wide: Media, small: Media, tall: Media, video: Media) -> dict[str, tuple]:
    return {
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
    }


def _region_shapes(wide: Media, small: Media, tall: Media, video: Media) -> dict[str, tuple]:
    box0, pt0 = Region(media=0, box=(10.0, 5.0, 150.5, 80.0)), Region(media=0, point=(299.0, 0.0))
    box1, pt1 = Region(media=1, box=(0.0, 0.0, 50.0, 40.0)), Region(media=1, point=(3.3, 7.7))
    return {
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


def _shapes(root) -> dict[str, tuple]:
    """Name → (sample, for_generation[, media[, regions]]): ≥ 20 conversation shapes."""
    frames = []
    for i in range(3):
        (root / f"f{i}.png").write_bytes(_png(40, 30, i))
        frames.append(str(root / f"f{i}.png"))
    media = (
        Media(bytes=_png(300, 100)),
        Media(bytes=_png(50, 40, 1)),
        Media(bytes=_png(60, 200, 2)),
        Media(kind="video", frames=frames),
    )
    return {**_text_shapes(), **_image_shapes(*media), **_region_shapes(*media)}


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
    assert render(one, add_generation_prompt=True) == "<|bos|>User: <image><1,2,3,4>\nAssistant:\n"
    video = [
        {"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "?"}]},
        {"role": "assistant", "content": "Left."},
    ]
    n = BASE.video.num_frames
    assert render(video) == f"<|bos|>User: {'<image>' * n}?\nAssistant:\nLeft.<|eos|>"
    strings = [{"role": "system", "content": "S"}, {"role": "user", "content": "<image>hi"}]
    assert render(strings) == "<|bos|>System: S\nUser: <image>hi\n"
    with pytest.raises(Exception, match="unknown role"):
        render([{"role": "tool", "content": "x"}])
    with pytest.raises(Exception, match="single-image chat"):
        render([{"role": "user", "content": [{"type": "image"}, regions[2]]}])


BPE_CORPUS = ["User: what is in the image? Assistant: A cat on a mat. " * 3, "System: Be brief."]


@pytest.fixture(scope="module")
def bpe():
    """A real BPE vocabulary whose merges cross a role prefix into the content: after
    ``Assistant:`` the answer's first word carries the prefix's space (``" A"``)."""
    tok = train_bpe_tokenizer(BPE_CORPUS, vocab_size=400).with_image_token()
    assert tok.encode("Assistant: A") != tok.encode("Assistant: ") + tok.encode("A")
    return tok


def _bpe_configs(tok, fmt):
    return tuple(
        dataclasses.replace(c, image_token_id=tok.image_token_id, format=fmt)
        for c in (ONE_TOKEN, BASE)
    )


@pytest.mark.parametrize("fmt_name", sorted(FORMATS))
def test_bpe_tokenizer_gives_the_template_ids_on_every_shape(shapes, bpe, fmt_name, tmp_path):
    """mm15 tokenises the text between special tokens and images whole, as the template's
    rendering is tokenised (mm15.data.token_stream), so the ids equal apply_chat_template's on
    every shape, also where a merge crosses from a role prefix into the content."""
    one, base = _bpe_configs(bpe, FORMATS[fmt_name])
    hf = _hf_dir(tmp_path, bpe, base)
    assert len(shapes) >= 20
    for name, (sample, gen) in shapes.items():
        msgs = sample_messages(sample, base)
        got = hf.apply_chat_template(msgs, add_generation_prompt=gen)["input_ids"]
        ex1 = format_sample(sample, tokenizer=bpe, model_cfg=one, for_generation=gen)
        assert got == ex1.input_ids, f"{fmt_name}/{name}: one-token images differ"
        ex = format_sample(sample, tokenizer=bpe, model_cfg=base, for_generation=gen)
        assert got == _collapse(ex, bpe), f"{fmt_name}/{name}: collapsed images differ"


def _trained_runs(ex, tok) -> list[str]:
    """The text of each maximal run of tokens that carry loss."""
    runs, run = [], []
    for i, label in zip(ex.input_ids, ex.labels, strict=True):
        if label == i:
            run.append(i)
        elif run:
            runs, run = [*runs, tok.decode(run, skip_special=False)], []
    return runs + ([tok.decode(run, skip_special=False)] if run else [])


@pytest.mark.parametrize("fmt_name", sorted(FORMATS))
def test_bpe_labels_train_what_the_byte_tokenizer_trains(shapes, bpe, fmt_name):
    """The loss covers the same text with either vocabulary: each run of trained tokens is the
    byte tokenizer's run (assistant content and EOS), except that a BPE token straddling the
    prefix and the content (``" A"``) is trained, so the run may start with the end of the
    assistant prefix and nothing else."""
    fmt = FORMATS[fmt_name]
    one_bpe, _ = _bpe_configs(bpe, fmt)
    one_byte = dataclasses.replace(ONE_TOKEN, format=fmt)
    straddles = 0
    for name, (sample, gen) in shapes.items():
        ex_bpe = format_sample(sample, tokenizer=bpe, model_cfg=one_bpe, for_generation=gen)
        ex_byte = format_sample(sample, tokenizer=TOK, model_cfg=one_byte, for_generation=gen)
        runs_bpe, runs_byte = _trained_runs(ex_bpe, bpe), _trained_runs(ex_byte, TOK)
        assert len(runs_bpe) == len(runs_byte), name
        for got, want in zip(runs_bpe, runs_byte, strict=True):
            extra = got[: len(got) - len(want)]
            assert got.endswith(want) and fmt.assistant_prefix.endswith(extra), (name, got, want)
            straddles += bool(extra)
    # Only a prefix ending in a space the vocabulary joins to the answer straddles ("Bot> ",
    # the legacy "Assistant: "); the default and "### Assistant:\n" end at a newline.
    assert bool(straddles) == prefix_merges(bpe, fmt.assistant_prefix), fmt_name
    assert prefix_merges(bpe, fmt.assistant_prefix) == (fmt_name in ("legacy", "odd"))


def test_data_check_reports_an_assistant_prefix_that_merges_into_answers(bpe):
    """`mm15 data check` names the stage whose format would make generation prompts end on a
    token that no answer followed in training (the legacy "Assistant: " with this BPE)."""
    from mm15.data.check import check_config
    from mm15.overrides import apply_overrides
    from mm15.train.recipes import get_train_preset

    base = get_train_preset("finetune")
    legacy = apply_overrides(
        base, [f"model.format.assistant_prefix={json.dumps(LEGACY_ASSISTANT_PREFIX)}"]
    )
    merging = [p for p in check_config(legacy, tokenizer=bpe).problems if "merges" in p]
    assert len(merging) == len(legacy.stages) and "'Assistant: '" in merging[0]
    assert not [p for p in check_config(base, tokenizer=bpe).problems if "merges" in p]
    assert not [p for p in check_config(legacy, tokenizer=TOK).problems if "merges" in p]
