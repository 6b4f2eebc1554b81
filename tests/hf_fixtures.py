"""Tiny mm15 checkpoints of each decoder family and their transformers exports, for the
tests/test_hf_*.py files.  Exports go through the verb's own parsing (``mm15 export``)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mm15.cli import main
from mm15.config import ModelConfig, RopeScalingConfig
from mm15.model.mm15 import MM15
from mm15.presets import tiny
from mm15.services.checkpoint import save_checkpoint
from mm15.tokenizer import byte_tokenizer


def _qwen2(cfg: ModelConfig) -> ModelConfig:
    """QKV biases (→ Qwen2), tied embeddings and Llama-3 RoPE scaling that reaches short
    sequences (original context 32)."""
    lm = dataclasses.replace(
        cfg.lm,
        qkv_bias=True,
        tie_embeddings=True,
        rope_theta=500_000.0,
        rope_scaling=RopeScalingConfig(original_max_position_embeddings=32),
    )
    return dataclasses.replace(cfg, lm=lm)


# decoder family → the tiny mm15 config exported as it
VARIANTS = {
    "llama": lambda vocab: tiny(vocab_size=vocab),
    "qwen2": lambda vocab: _qwen2(tiny(vocab_size=vocab)),
    "qwen2_moe": lambda vocab: tiny(moe=True, vocab_size=vocab),
}


def make_checkpoint(path: Path, cfg: ModelConfig, seed: int = 0) -> Path:
    """A random MM15 of ``cfg`` with every weight perturbed (norms ≠ 1, biases ≠ 0, so a
    mis-mapped tensor shows in the logits), saved as an mm15 checkpoint."""
    tok = byte_tokenizer()
    cfg = dataclasses.replace(cfg, image_token_id=tok.image_token_id)
    torch.manual_seed(seed)
    model = MM15(cfg).eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return save_checkpoint(model, tok, path)


def export(ckpt: Path, out: Path) -> Path:
    assert main(["export", "--model", str(ckpt), "--hf", str(out)]) == 0
    return out


# family → (checkpoint, export): one export per family and test process, whichever module asks
_MADE: dict[str, tuple[Path, Path]] = {}


@pytest.fixture(scope="session", name="hf_export")
def hf_export_fixture(tmp_path_factory):
    """family → (mm15 checkpoint dir, its transformers export dir), made once per process.
    Test modules import this function; the fixture is named ``hf_export``."""

    def get(family: str) -> tuple[Path, Path]:
        if family not in _MADE:
            root = tmp_path_factory.mktemp(f"hf-{family}")
            ckpt = make_checkpoint(root / "ckpt", VARIANTS[family](len(byte_tokenizer())))
            _MADE[family] = (ckpt, export(ckpt, root / "hf"))
        return _MADE[family]

    return get


def picture(w: int, h: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
