"""The exported transformers model computes what mm15 computes (issue 22).

For each decoder family (Llama, Qwen2 with QKV bias + tied embeddings + Llama-3 RoPE scaling,
Qwen2-MoE), on tiny random fp32 checkpoints exported by ``mm15 export --hf``:
``AutoModelForImageTextToText.from_pretrained`` gives mm15's logits within 1e-5 on a chat with
one image, with two images, text-only, and an image with a video; greedy ``generate`` gives
mm15's tokens; the
processor's ``apply_chat_template`` and ``__call__`` give the ids and tiles of mm15's input
pipeline (:func:`mm15.data.prompt_encoding.encode_sample` / ``encode_prompt``).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

import mm15  # noqa: F401  (registers the mm15 classes)
from mm15.data.prompt_encoding import encode_prompt, encode_sample
from mm15.data.schema import Media, Message, Part, Sample
from mm15.hf.processing import MM15Processor
from mm15.services.checkpoint import load_checkpoint
from mm15.services.inference import GenerationSettings, generate_encoded
from tests.hf_fixtures import VARIANTS, hf_export_fixture, picture  # noqa: F401  (fixture)

WIDE, SMALL = picture(200, 90, 0), picture(60, 50, 1)
# name → (images, question): a split image, two images (a region-free multi-image chat), no image
PROMPTS = {
    "one_image": ([WIDE], "What is in the picture?"),
    "two_images": ([WIDE, SMALL], "Compare them."),
    "text_only": ([], "Tell me a story."),
}
NEW_TOKENS = 8


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def pair(request, hf_export):
    """(mm15 model, mm15 tokenizer, HF model, HF processor) of one decoder family."""
    ckpt, out = hf_export(request.param)
    model, tok = load_checkpoint(ckpt)
    hf = AutoModelForImageTextToText.from_pretrained(out).eval()
    assert hf.config.text_config.model_type == request.param
    return model, tok, hf, AutoProcessor.from_pretrained(out)


def _chat(images, question) -> tuple[Sample, list[dict]]:
    """The same user turn as an mm15 sample and as Hugging Face messages."""
    parts = [Part.m(i) for i in range(len(images))] + [Part.t(question)]
    sample = Sample(
        id="q",
        source="test",
        category="eval",
        stage="eval",
        media=[Media(decoded=im) for im in images],
        messages=[Message("user", parts)],
    )
    content = [{"type": "image", "image": im} for im in images]
    messages = [{"role": "user", "content": [*content, {"type": "text", "text": question}]}]
    return sample, messages


def _hf_inputs(processor, messages):
    return processor.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )


@pytest.mark.parametrize("prompt", sorted(PROMPTS))
def test_logits_and_inputs_match_mm15(pair, prompt):
    model, tok, hf, processor = pair
    sample, messages = _chat(*PROMPTS[prompt])
    ref = encode_sample(sample, tokenizer=tok, model_cfg=model.cfg)
    batch = _hf_inputs(processor, messages)
    assert batch["input_ids"][0].tolist() == ref.input_ids
    if ref.pixels is None:
        assert "pixel_values" not in batch
    else:
        assert torch.equal(batch["pixel_values"], ref.pixels)
    with torch.no_grad():
        want = model(torch.tensor([ref.input_ids]), pixels_NCHW=ref.pixels).logits
        got = hf(**batch).logits
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def _until_eos(tokens: list[int], eos: list[int]) -> list[int]:
    cut = [i for i, t in enumerate(tokens) if t in eos]
    return tokens[: cut[0]] if cut else tokens


@pytest.mark.parametrize("prompt", ["one_image", "text_only"])
def test_greedy_generate_matches_mm15(pair, prompt):
    model, tok, hf, processor = pair
    sample, messages = _chat(*PROMPTS[prompt])
    ref = encode_sample(sample, tokenizer=tok, model_cfg=model.cfg)
    want = generate_encoded(model, tok, [ref], GenerationSettings(max_new_tokens=NEW_TOKENS))
    batch = _hf_inputs(processor, messages)
    out = hf.generate(**batch, max_new_tokens=NEW_TOKENS, do_sample=False)
    got = out[0, batch["input_ids"].shape[1] :].tolist()
    assert _until_eos(got, tok.eos_ids) == want[0].tokens


def test_batched_generate_left_padded(hf_export):
    """Two prompts of different lengths in one left-padded batch: each row generates what it
    generates alone in mm15 (HF derives positions from the attention mask)."""
    ckpt, out = hf_export("llama")
    model, tok = load_checkpoint(ckpt)
    hf = AutoModelForImageTextToText.from_pretrained(out).eval()
    processor = AutoProcessor.from_pretrained(out)
    chats = [_chat(*PROMPTS["one_image"]), _chat(*PROMPTS["text_only"])]
    refs = [encode_sample(s, tokenizer=tok, model_cfg=model.cfg) for s, _ in chats]
    want = generate_encoded(model, tok, refs, GenerationSettings(max_new_tokens=NEW_TOKENS))
    texts = [processor.apply_chat_template(m, add_generation_prompt=True) for _, m in chats]
    batch = processor(text=texts, images=[[WIDE], []], padding_side="left", return_tensors="pt")
    assert batch["attention_mask"][1, 0] == 0  # the text-only row is the padded one
    gen = hf.generate(**batch, max_new_tokens=NEW_TOKENS, do_sample=False)
    width = batch["input_ids"].shape[1]
    for row, w in enumerate(want):
        assert _until_eos(gen[row, width:].tolist(), tok.eos_ids) == w.tokens


def test_processor_on_plain_text_is_encode_prompt(pair):
    """A document (no chat template) with two placeholders: the processor's ids and tiles are
    ``encode_prompt``'s (the text carries its BOS; the processor adds nothing)."""
    model, tok, _, processor = pair
    text = "Left <image> and right <image> differ in"
    ref = encode_prompt(text, [WIDE, SMALL], tokenizer=tok, cfg=model.cfg)
    got = processor(text=processor.tokenizer.bos_token + text, images=[WIDE, SMALL])
    assert got["input_ids"][0] == ref.input_ids
    assert torch.equal(got["pixel_values"], ref.pixels)


def test_processor_refuses_a_count_mismatch_and_urls(pair):
    processor = pair[3]
    with pytest.raises(ValueError, match="1 <image> placeholders but 2 images"):
        processor(text="<image> only one", images=[WIDE, SMALL])
    with pytest.raises(ValueError, match="nothing is downloaded"):
        processor(text="<image>", images=["https://example.com/a.png"])


def test_a_wrong_image_token_count_names_both_numbers(pair):
    _, _, hf, processor = pair
    batch = processor(text="<image> x", images=[WIDE], return_tensors="pt")
    with pytest.raises(ValueError, match=r"image-token positions but 2 tiles"):
        hf(input_ids=batch["input_ids"], pixel_values=batch["pixel_values"][:2])


def _clip(folder, n_frames: int = 12) -> np.ndarray:
    """A clip of ``n_frames`` random 80x60 frames, also written as PNG files to ``folder``."""
    frames = np.stack([np.asarray(picture(80, 60, 10 + f)) for f in range(n_frames)])
    folder.mkdir()
    for f, frame in enumerate(frames):
        Image.fromarray(frame).save(folder / f"{f:03d}.png")
    return frames


@pytest.mark.parametrize("given_as", ["array", "frames", "folder"])
def test_a_video_matches_mm15(pair, tmp_path, given_as):
    """A chat with an image and a video: the export's template writes one ``<video>``, the
    processor shows the frames mm15's sampler picks (8 of 12, one tile each, MM1.5 §5), and
    the logits and greedy answer are mm15's on the same clip read from its frame folder."""
    model, tok, hf, processor = pair
    frames = _clip(tmp_path / "clip")
    video = {"array": frames, "frames": list(frames), "folder": str(tmp_path / "clip")}[given_as]
    sample = Sample(
        id="v",
        source="test",
        category="eval",
        stage="eval",
        media=[Media(decoded=SMALL), Media(kind="video", path=str(tmp_path / "clip"))],
        messages=[Message("user", [Part.m(0), Part.t("Is it in"), Part.m(1), Part.t("?")])],
    )
    ref = encode_sample(sample, tokenizer=tok, model_cfg=model.cfg)
    assert sum(p.n_tiles for p in ref.plans) == 1 + model.cfg.video.num_frames
    content = [{"type": "image"}, {"type": "text", "text": "Is it in"}, {"type": "video"}]
    messages = [{"role": "user", "content": [*content, {"type": "text", "text": "?"}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    assert text.count("<video>") == 1
    batch = processor(text=text, images=[SMALL], videos=[video], return_tensors="pt")
    assert batch["input_ids"][0].tolist() == ref.input_ids
    assert torch.equal(batch["pixel_values"], ref.pixels)
    with torch.no_grad():
        want = model(torch.tensor([ref.input_ids]), pixels_NCHW=ref.pixels).logits
        got = hf(**batch).logits
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    gen = generate_encoded(model, tok, [ref], GenerationSettings(max_new_tokens=NEW_TOKENS))
    out = hf.generate(**batch, max_new_tokens=NEW_TOKENS, do_sample=False)
    assert _until_eos(out[0, batch["input_ids"].shape[1] :].tolist(), tok.eos_ids) == gen[0].tokens


def test_processor_refuses_bad_videos(pair, tmp_path):
    processor = pair[3]
    frames = _clip(tmp_path / "clip", n_frames=3)
    with pytest.raises(ValueError, match="1 <video> placeholders but 2 videos"):
        processor(text="<video> x", videos=[frames, frames])
    with pytest.raises(ValueError, match=r"must be \(frames, H, W, 3\)"):
        processor(text="<video>", videos=[frames[0, :, :, 0]])
    with pytest.raises(ValueError, match="takes local videos"):
        processor(text="<video>", videos=["https://example.com/a.mp4"])
    old = MM15Processor(
        processor.tokenizer,
        image_config=processor.image_config,
        video_config=processor.video_config,
        format_config=processor.format_config,
        tokens_per_tile=processor.tokens_per_tile,
    )  # as exported before mm15 took videos: no video token
    with pytest.raises(ValueError, match="export the checkpoint again"):
        old(text="<video>", videos=[frames])
