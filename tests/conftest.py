"""Shared fixtures: tiny pretrained parts in the real on-disk layouts, made by the tests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mm15.tokenizer import byte_tokenizer

TINY_CLIP = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    image_size=28,
    patch_size=14,
    hidden_act="quick_gelu",
)


def _perturb(model: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))


@pytest.fixture(scope="session")
def hf_clip_dir(tmp_path_factory) -> Path:
    """A tiny CLIPVisionModel saved with save_pretrained (HF layout)."""
    from transformers import CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(0)
    model = CLIPVisionModel(CLIPVisionConfig(**TINY_CLIP)).eval()
    _perturb(model, 1)
    path = tmp_path_factory.mktemp("clip")
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def hf_llama_dir(tmp_path_factory) -> Path:
    """A tiny LlamaForCausalLM whose vocabulary is the byte tokenizer's, with tokenizer files
    as HF releases ship them (tokenizer.json, tokenizer_config.json, generation_config.json)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = byte_tokenizer(special=("<|bos|>", "<|eos|>"))
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        initializer_range=0.1,
    )
    model = LlamaForCausalLM(cfg).eval()
    path = tmp_path_factory.mktemp("llama")
    model.save_pretrained(path)
    tok.tok.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(
        json.dumps({"bos_token": "<|bos|>", "eos_token": "<|eos|>"})
    )
    (path / "generation_config.json").write_text(
        json.dumps({"eos_token_id": tok.tok.token_to_id("<|eos|>")})
    )
    return path


@pytest.fixture(scope="session")
def tiny_ckpt_dir(tmp_path_factory) -> Path:
    """A randomly initialised tiny MM15 with the byte tokenizer, saved as an mm15 checkpoint
    directory (what `mm15 chat/eval/serve --model` load). Its answers are noise, but they are
    deterministic under greedy decoding."""
    from mm15.model.mm15 import MM15
    from mm15.presets import tiny
    from mm15.services.checkpoint import save_checkpoint

    tok = byte_tokenizer()
    cfg = tiny(vocab_size=len(tok))
    cfg.image_token_id = tok.image_token_id
    torch.manual_seed(0)
    model = MM15(cfg).eval()
    return save_checkpoint(model, tok, tmp_path_factory.mktemp("ckpt") / "tiny")
