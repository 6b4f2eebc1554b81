"""Our Decoder against transformers' Llama/Qwen2 (pinned: transformers==5.23.0) on tiny random
models, the HF loader's config/key handling, and packed-sequence isolation."""

from __future__ import annotations

import json

import pytest
import torch
import transformers
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from mm15.config import LMConfig
from mm15.model.attention import document_causal_mask
from mm15.model.hf_lm import (
    hf_to_mm15_state_dict,
    lm_config_from_hf,
    load_hf_decoder,
    mm15_to_hf_state_dict,
)
from mm15.model.lm import Decoder

assert transformers.__version__ == "5.23.0", "parity tests are pinned to transformers 5.23.0"

BASE = dict(
    vocab_size=97,
    hidden_size=32,
    intermediate_size=56,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
    rms_norm_eps=1e-5,
    initializer_range=0.1,  # larger than default so attention is far from uniform
)
LLAMA3_ROPE = {
    "rope_type": "llama3",
    "rope_theta": 500000.0,
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 16,
}
CASES = {
    "llama_gqa": (LlamaConfig, LlamaForCausalLM, {}),
    "llama_head_dim": (LlamaConfig, LlamaForCausalLM, {"head_dim": 16}),
    "llama3_rope": (LlamaConfig, LlamaForCausalLM, {"rope_parameters": LLAMA3_ROPE}),
    "llama_tied": (LlamaConfig, LlamaForCausalLM, {"tie_word_embeddings": True}),
    "qwen2_bias": (Qwen2Config, Qwen2ForCausalLM, {"rope_parameters": {"rope_theta": 1e6}}),
    "qwen2_tied": (Qwen2Config, Qwen2ForCausalLM, {"tie_word_embeddings": True}),
}


def _hf_model(case: str, seed: int = 0):
    config_cls, model_cls, extra = CASES[case]
    torch.manual_seed(seed)
    model = model_cls(config_cls(**BASE, **extra)).eval()
    with torch.no_grad():  # HF zero-inits biases and unit-inits norms: randomise to test them
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    return model


def _hf_logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids, use_cache=False).logits


def _ours(path) -> Decoder:
    cfg, sd = load_hf_decoder(path)
    decoder = Decoder(cfg).eval()
    decoder.load_state_dict(sd, strict=True)
    return decoder


@pytest.mark.parametrize("case", list(CASES))
def test_logits_match_transformers(case, tmp_path):
    model = _hf_model(case)
    model.save_pretrained(tmp_path)
    decoder = _ours(tmp_path)
    ids = torch.randint(0, BASE["vocab_size"], (2, 40), generator=torch.Generator().manual_seed(1))
    ours = decoder(ids).logits
    ref = _hf_logits(model, ids)
    assert ours.shape == ref.shape
    assert (ours - ref).abs().max().item() < 1e-4
    if case == "llama_tied":
        assert decoder.output is None and not (tmp_path / "model.safetensors.index.json").exists()
    if case == "qwen2_bias":
        assert decoder.cfg.qkv_bias and decoder.layers[0].attn.wq.bias.abs().sum() > 0


def test_llama3_scaling_matters(tmp_path):
    """The llama3 case only tests scaling if scaling changes the logits at these positions."""
    model = _hf_model("llama3_rope")
    model.save_pretrained(tmp_path)
    cfg, sd = load_hf_decoder(tmp_path)
    assert cfg.rope_scaling is not None and cfg.rope_theta == 500000.0
    cfg.rope_scaling = None
    unscaled = Decoder(cfg).eval()
    unscaled.load_state_dict(sd)
    ids = torch.randint(0, BASE["vocab_size"], (1, 40), generator=torch.Generator().manual_seed(1))
    assert (unscaled(ids).logits - _hf_logits(model, ids)).abs().max().item() > 1e-2


def test_sharded_checkpoint(tmp_path):
    model = _hf_model("llama_gqa", seed=3)
    model.save_pretrained(tmp_path, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").exists()
    assert len(list(tmp_path.glob("model-*.safetensors"))) > 1
    ids = torch.randint(0, BASE["vocab_size"], (1, 17))
    assert (_ours(tmp_path)(ids).logits - _hf_logits(model, ids)).abs().max().item() < 1e-4


def test_state_dict_round_trip():
    model = _hf_model("qwen2_bias")
    hf_sd = model.state_dict()
    cfg = lm_config_from_hf(model.config.to_dict())
    back = mm15_to_hf_state_dict(hf_to_mm15_state_dict(hf_sd, cfg), cfg)
    assert set(back) == set(hf_sd)
    assert all(torch.equal(back[k], hf_sd[k]) for k in hf_sd)


def test_missing_and_unexpected_keys_are_listed():
    model = _hf_model("llama_gqa")
    cfg = lm_config_from_hf(model.config.to_dict())
    sd = dict(model.state_dict())
    del sd["model.layers.1.mlp.up_proj.weight"]
    with pytest.raises(ValueError, match=r"missing \['layers\.1\.ffn\.w3\.weight'\]"):
        hf_to_mm15_state_dict(sd, cfg)
    sd = dict(model.state_dict(), **{"model.layers.0.extra.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match=r"model\.layers\.0\.extra\.weight"):
        hf_to_mm15_state_dict(sd, cfg)
    untied = dict(model.state_dict())
    del untied["lm_head.weight"]
    with pytest.raises(ValueError, match=r"output\.weight"):
        hf_to_mm15_state_dict(untied, cfg)


def test_config_spellings_4x_and_5x():
    v5 = LlamaConfig(**BASE, rope_parameters=LLAMA3_ROPE).to_dict()
    v4 = {k: v for k, v in v5.items() if k != "rope_parameters"}
    v4["rope_theta"] = LLAMA3_ROPE["rope_theta"]
    v4["rope_scaling"] = {k: v for k, v in LLAMA3_ROPE.items() if k != "rope_theta"}
    assert lm_config_from_hf(v4) == lm_config_from_hf(v5)
    v4_old = dict(v4, rope_scaling=dict(v4["rope_scaling"], type="llama3"))
    del v4_old["rope_scaling"]["rope_type"]
    assert lm_config_from_hf(v4_old) == lm_config_from_hf(v5)
    qwen4 = {**BASE, "model_type": "qwen2", "rope_theta": 1e6, "rope_scaling": None}
    cfg = lm_config_from_hf(qwen4)
    assert cfg.qkv_bias and cfg.rope_theta == 1e6 and cfg.rope_scaling is None


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"model_type": "mistral"}, "unsupported model_type 'mistral'"),
        ({"rope_parameters": {"rope_type": "yarn", "factor": 2.0}}, "unsupported rope type 'yarn'"),
        ({"rope_scaling": {"type": "linear", "factor": 2.0}}, "unsupported rope type 'linear'"),
        ({"attention_bias": True}, "attention_bias"),
        ({"hidden_act": "gelu"}, "hidden_act"),
    ],
)
def test_unsupported_configs_are_rejected(change, message):
    hf = {**BASE, "model_type": "llama", **change}
    with pytest.raises(ValueError, match=message):
        lm_config_from_hf(hf)


def test_load_dir_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"config\.json"):
        load_hf_decoder(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**BASE, "model_type": "gemma"}))
    with pytest.raises(ValueError, match="gemma"):
        load_hf_decoder(tmp_path)


# ---------------------------------------------------------------------------------------------
# Packed sequences, padding and the mask rule (our decoder only)

TINY = LMConfig(vocab_size=61, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_hidden=48)


def test_packed_documents_are_isolated():
    torch.manual_seed(0)
    decoder = Decoder(TINY).eval()
    a, b = torch.randint(0, 61, (1, 5)), torch.randint(0, 61, (1, 7))
    packed = torch.cat([a, b], dim=1)
    doc = torch.tensor([[0] * 5 + [1] * 7])
    pos = torch.cat([torch.arange(5), torch.arange(7)])[None]
    out = decoder(packed, position_ids_BT=pos, document_ids_BT=doc).logits
    assert torch.allclose(out[:, :5], decoder(a).logits, atol=1e-5)
    assert torch.allclose(out[:, 5:], decoder(b).logits, atol=1e-5)
    # Without document ids the second document sees the first: the test can fail.
    leaky = decoder(packed, position_ids_BT=pos).logits
    assert not torch.allclose(leaky[:, 5:], decoder(b).logits, atol=1e-3)


def test_padding_gives_finite_outputs_and_no_leak():
    torch.manual_seed(0)
    decoder = Decoder(TINY).eval()
    ids = torch.randint(0, 61, (1, 6))
    padded = torch.cat([torch.zeros(1, 3, dtype=torch.long), ids], dim=1)
    doc = torch.tensor([[-1] * 3 + [0] * 6])
    pos = torch.tensor([[0] * 3 + list(range(6))])
    out = decoder(padded, position_ids_BT=pos, document_ids_BT=doc).logits
    assert torch.isfinite(out).all()
    assert torch.allclose(out[:, 3:], decoder(ids).logits, atol=1e-5)


def test_mask_rule():
    doc = torch.tensor([[-1, 0, 0, 1]])
    mask = document_causal_mask(doc, doc, 0)[0, 0]
    expected = torch.tensor(
        [[1, 0, 0, 0], [0, 1, 0, 0], [0, 1, 1, 0], [0, 0, 0, 1]], dtype=torch.bool
    )
    assert torch.equal(mask, expected)
    # Queries continuing a cache of 2 keys see the cached keys of their own document.
    cont = document_causal_mask(torch.tensor([[0, 0]]), torch.tensor([[0, 1, 0, 0]]), 2)[0, 0]
    assert torch.equal(cont, torch.tensor([[1, 0, 1, 0], [1, 0, 1, 1]], dtype=torch.bool))


def test_builds_on_meta_device():
    cfg = LMConfig(vocab_size=1000, dim=64, n_layers=3, n_heads=4, n_kv_heads=1, ffn_hidden=96)
    with torch.device("meta"):
        decoder = Decoder(cfg)
    assert all(p.is_meta for p in decoder.parameters())
    decoder.to_empty(device="cpu")
    decoder.init_weights()
    assert torch.isfinite(decoder(torch.randint(0, 1000, (1, 5))).logits).all()
