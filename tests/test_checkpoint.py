"""`mm15 init` assembles a checkpoint from pretrained parts; checkpoints load back exactly."""

from __future__ import annotations

import os

import pytest
import torch

from mm15.presets import tiny
from mm15.services.checkpoint import init_from_parts, load_checkpoint, save_checkpoint


@pytest.fixture(scope="module")
def ckpt(hf_clip_dir, hf_llama_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("ckpt") / "model"
    init_from_parts(vision=hf_clip_dir, llm=hf_llama_dir, preset=tiny(), out=out, seed=3)
    return out


def test_parts_keep_their_pretrained_behaviour(ckpt, hf_clip_dir, hf_llama_dir):
    from transformers import CLIPVisionModel, LlamaForCausalLM

    model, tok = load_checkpoint(ckpt)
    # The tokenizer gained <image>; the decoder grew one embedding row for it.
    assert tok.image_token_id == model.cfg.image_token_id == model.cfg.lm.vocab_size - 1
    ids = torch.tensor([tok.encode("grounded answers <12,34,56,78>")])
    hf_lm = LlamaForCausalLM.from_pretrained(hf_llama_dir).eval()
    with torch.no_grad():
        ours = model.lm(ids).logits
        ref = hf_lm(ids).logits
    assert (ours[..., : ref.shape[-1]] - ref).abs().max() < 1e-4
    hf_vit = CLIPVisionModel.from_pretrained(hf_clip_dir).eval()
    x = torch.randn(2, 3, 56, 56)  # tiles larger than the native 28 px: interpolated positions
    with torch.no_grad():
        ref_v = hf_vit(x, interpolate_pos_encoding=True).last_hidden_state
        assert (model.vision(x) - ref_v).abs().max() < 1e-4


def test_loading_back_gives_identical_outputs(ckpt, tmp_path):
    model, tok = load_checkpoint(ckpt)
    r = model.cfg.image.resolution
    pixels = torch.randn(2, 3, r, r)
    k = model.cfg.connector.num_tokens
    ids = torch.tensor([[tok.bos_id] + [tok.image_token_id] * (2 * k) + tok.encode("hi")])
    with torch.no_grad():
        a = model(ids, pixels_NCHW=pixels).logits
    again = save_checkpoint(model, tok, tmp_path / "copy")
    model2, _ = load_checkpoint(again)
    with torch.no_grad():
        b = model2(ids, pixels_NCHW=pixels).logits
    assert torch.equal(a, b)


def test_upcycled_moe_matches_the_dense_decoder(hf_clip_dir, hf_llama_dir, tmp_path, ckpt):
    out = tmp_path / "moe"
    init_from_parts(
        vision=hf_clip_dir,
        llm=hf_llama_dir,
        preset=tiny(moe=True),
        out=out,
        seed=3,
        upcycle_moe=True,
    )
    moe, tok = load_checkpoint(out)
    dense, _ = load_checkpoint(ckpt)
    assert moe.cfg.lm.moe is not None and dense.cfg.lm.moe is None
    ids = torch.tensor([tok.encode("experts start as copies of the dense FFN")])
    with torch.no_grad():
        assert (moe.lm(ids).logits - dense.lm(ids).logits).abs().max() < 1e-5


def test_upcycle_needs_an_moe_preset(hf_clip_dir, hf_llama_dir, tmp_path):
    with pytest.raises(ValueError, match="MoE layout"):
        init_from_parts(
            vision=hf_clip_dir,
            llm=hf_llama_dir,
            preset=tiny(),
            out=tmp_path / "x",
            upcycle_moe=True,
        )
    assert not (tmp_path / "x").exists()


def test_failed_save_keeps_the_previous_checkpoint(ckpt, tmp_path, monkeypatch):
    model, tok = load_checkpoint(ckpt)
    target = save_checkpoint(model, tok, tmp_path / "keep")
    before = sorted(os.listdir(target))

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr("mm15.services.checkpoint.save_tensors", boom)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(model, tok, target)
    assert sorted(os.listdir(target)) == before
    assert [p.name for p in tmp_path.iterdir()] == ["keep"]  # no temporary left behind
    load_checkpoint(target)


def test_mismatched_weights_are_an_error(ckpt, tmp_path):
    from safetensors.torch import load_file, save_file

    model, tok = load_checkpoint(ckpt)
    bad = save_checkpoint(model, tok, tmp_path / "bad")
    sd = load_file(str(bad / "model.safetensors"))
    sd.pop(next(k for k in sd if k.startswith("connector.")))
    sd["lm.extra.weight"] = torch.zeros(1)
    save_file(sd, str(bad / "model.safetensors"))
    with pytest.raises(ValueError, match=r"missing \['connector.*unexpected \['lm.extra.weight"):
        load_checkpoint(bad)


def test_not_a_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="not an mm15 checkpoint"):
        load_checkpoint(tmp_path)
