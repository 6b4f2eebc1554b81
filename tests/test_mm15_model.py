"""The assembled model: image features at placeholder positions, packing, loss, generation."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from mm15.data.prompt_encoding import encode_prompt
from mm15.model.mm15 import IGNORE_INDEX, MM15, next_token_loss
from mm15.presets import tiny
from mm15.services.inference import GenerationSettings, Prompt, generate_text, prompt_embeddings
from mm15.tokenizer import byte_tokenizer


@pytest.fixture(scope="module")
def setup():
    tok = byte_tokenizer()
    cfg = tiny(vocab_size=len(tok), moe=True)
    cfg.image_token_id = tok.image_token_id
    torch.manual_seed(0)
    model = MM15(cfg).eval()
    model.init_weights()
    return model, tok


def _image(w: int, h: int, seed: int) -> Image.Image:
    g = torch.Generator().manual_seed(seed)
    return Image.fromarray(torch.randint(0, 256, (h, w, 3), generator=g, dtype=torch.uint8).numpy())


def test_image_features_fill_exactly_the_placeholder_positions(setup):
    model, tok = setup
    enc = encode_prompt(
        "look: <image> and <image>!",
        [_image(300, 120, 0), _image(40, 90, 1)],
        tokenizer=tok,
        cfg=model.cfg,
    )
    ids = torch.tensor([enc.input_ids])
    is_img = ids[0] == tok.image_token_id
    assert int(is_img.sum()) == sum(p.image_tokens for p in enc.plans) == enc.pixels.shape[0] * 16
    with torch.no_grad():
        emb = model.embed(ids, enc.pixels)[0]
        feats = model.encode_tiles(enc.pixels).reshape(-1, model.cfg.lm.dim)
        text = model.lm.embed(ids)[0]
    assert torch.equal(emb[is_img], feats)
    assert torch.equal(emb[~is_img], text[~is_img])


def test_token_feature_mismatch_names_both_numbers(setup):
    model, tok = setup
    ids = torch.tensor([[tok.image_token_id] * 15])
    with pytest.raises(ValueError, match=r"15 image-token positions but 1 tiles × 16 tokens = 16"):
        model.embed(ids, torch.zeros(1, 3, 112, 112))


def test_packed_multimodal_documents_are_isolated(setup):
    model, tok = setup
    a = encode_prompt("<image> first doc", [_image(200, 100, 2)], tokenizer=tok, cfg=model.cfg)
    b = encode_prompt("second <image>", [_image(64, 64, 3)], tokenizer=tok, cfg=model.cfg)
    ids = torch.tensor([a.input_ids + b.input_ids])
    docs = torch.tensor([[0] * len(a.input_ids) + [1] * len(b.input_ids)])
    pos = torch.tensor([list(range(len(a.input_ids))) + list(range(len(b.input_ids)))])
    with torch.no_grad():
        packed = model(
            ids,
            pixels_NCHW=torch.cat([a.pixels, b.pixels]),
            position_ids_BT=pos,
            document_ids_BT=docs,
        ).logits[0]
        la = model(torch.tensor([a.input_ids]), pixels_NCHW=a.pixels).logits[0]
        lb = model(torch.tensor([b.input_ids]), pixels_NCHW=b.pixels).logits[0]
    assert (packed - torch.cat([la, lb])).abs().max() < 1e-4


def test_loss_selects_labels_and_never_crosses_documents():
    torch.manual_seed(0)
    logits = torch.randn(1, 6, 11)
    labels = torch.tensor([[1, 2, IGNORE_INDEX, 4, 5, 6]])
    docs = torch.tensor([[0, 0, 0, 1, 1, 1]])
    # Targets: t=0→2, t=1→ignored, t=2→4 crosses documents (dropped), t=3→5, t=4→6.
    lp = logits.log_softmax(-1)[0]
    expected = -(lp[0, 2] + lp[3, 5] + lp[4, 6]) / 3
    assert torch.allclose(next_token_loss(logits, labels, docs), expected)
    assert next_token_loss(logits, torch.full_like(labels, IGNORE_INDEX)) == 0


def test_training_loss_includes_moe_aux_loss(setup):
    model, tok = setup
    ids = torch.tensor([tok.encode("a b c d e f")])
    out = model(ids, labels_BT=ids)
    assert out.aux_loss is not None and out.aux_loss > 0
    assert torch.allclose(out.loss, out.lm_loss + out.aux_loss)
    out.loss.backward()
    assert model.lm.layers[1].ffn.router.weight.grad is not None
    model.zero_grad()


def test_generation_cached_equals_uncached_and_batched_equals_single(setup):
    model, tok = setup
    prompts = [
        Prompt("<image> describe", [_image(300, 200, 4)]),
        Prompt("two: <image><image>", [_image(50, 60, 5), _image(90, 30, 6)]),
        Prompt("text only, a longer prompt than the others"),
        Prompt(
            "<image><image><image> three images: no split", [_image(500, 300, s) for s in (7, 8, 9)]
        ),
    ]
    for settings in (
        GenerationSettings(max_new_tokens=8),
        GenerationSettings(max_new_tokens=8, temperature=1.0, top_k=20, seed=5),
    ):
        cached = generate_text(model, tok, prompts, settings)
        uncached = generate_text(
            model, tok, prompts, GenerationSettings(**{**settings.__dict__, "use_cache": False})
        )
        assert [r.tokens for r in cached] == [r.tokens for r in uncached]
    greedy = generate_text(model, tok, prompts, GenerationSettings(max_new_tokens=8))
    for p, r in zip(prompts, greedy, strict=True):
        assert (
            generate_text(model, tok, [p], GenerationSettings(max_new_tokens=8))[0].tokens
            == r.tokens
        )


def test_three_images_are_not_split_and_video_frames_are_one_tile_each(setup):
    model, tok = setup
    three = encode_prompt(
        "<image><image><image>",
        [_image(900, 300, s) for s in range(3)],
        tokenizer=tok,
        cfg=model.cfg,
    )
    assert [p.n_tiles for p in three.plans] == [1, 1, 1]
    two = encode_prompt(
        "<image><image>", [_image(900, 300, s) for s in range(2)], tokenizer=tok, cfg=model.cfg
    )
    assert all(p.n_tiles > 1 for p in two.plans)
    frames = encode_prompt(
        "<image>" * 4,
        [_image(900, 300, s) for s in range(4)],
        tokenizer=tok,
        cfg=model.cfg,
        video_frames=True,
    )
    assert frames.pixels.shape[0] == 4
    with torch.no_grad():
        assert prompt_embeddings(model, [frames])[0].shape == (
            len(frames.input_ids),
            model.cfg.lm.dim,
        )


def test_n_max_can_be_raised_at_inference(setup):
    """Table 2: inference may use a larger (n_min, n_max) than training, with no retraining."""
    import dataclasses

    model, tok = setup
    big = _image(1000, 1000, 11)  # 112-px tiles: (1, 4) allows 2×2, (1, 16) reaches 4×4 and more
    trained = encode_prompt("<image>", [big], tokenizer=tok, cfg=model.cfg)
    wider_cfg = dataclasses.replace(model.cfg, image=dataclasses.replace(model.cfg.image, n_max=16))
    wider = encode_prompt("<image>", [big], tokenizer=tok, cfg=wider_cfg)
    assert trained.plans[0].grid == (2, 2) and wider.plans[0].grid == (4, 4)
    with torch.no_grad():
        out = model(torch.tensor([wider.input_ids]), pixels_NCHW=wider.pixels)
    assert out.logits.shape[1] == len(wider.input_ids) and torch.isfinite(out.logits).all()


@pytest.mark.parametrize("std", [0.02, 0.1])
def test_decoder_init_follows_lm_init_std(std):
    cfg = tiny(vocab_size=4096)
    cfg.lm.init_std = std
    torch.manual_seed(0)
    lm = MM15(cfg).lm
    # Embedding and q projections are N(0, std); residual outputs std / sqrt(2 · n_layers).
    assert abs(lm.embed.weight.std().item() - std) < 0.05 * std
    assert abs(lm.layers[0].attn.wq.weight.std().item() - std) < 0.1 * std
    out_std = std / (2 * cfg.lm.n_layers) ** 0.5
    assert abs(lm.layers[0].ffn.w2.weight.std().item() - out_std) < 0.1 * out_std
