"""A tiny decoder with sharp next-token distributions, shared by the generation tests."""

from __future__ import annotations

import torch

from mm15.config import LMConfig
from mm15.model.lm import Decoder

PROMPTS = [[3, 14, 15, 9, 26, 5], [35, 8], [9, 7, 9, 32]]
NEW = 12


def lm_config(max_seq_len: int = 64) -> LMConfig:
    return LMConfig(
        vocab_size=50,
        dim=32,
        n_layers=2,
        n_heads=4,
        n_kv_heads=2,
        ffn_hidden=48,
        max_seq_len=max_seq_len,
    )


def sharp_decoder(cfg: LMConfig, seed: int = 0) -> Decoder:
    torch.manual_seed(seed)
    decoder = Decoder(cfg).eval()
    decoder.init_weights(std=0.3)  # sharp distributions: varied, well-separated greedy choices
    return decoder


def tokens(results) -> list[list[int]]:
    return [r.tokens for r in results]
