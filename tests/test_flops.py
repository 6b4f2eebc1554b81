"""FLOP counts checked by hand on the tiny preset and against torch's FlopCounterMode on the real
modules, MFU arithmetic, and the MFU the training loop logs and prints."""

from __future__ import annotations

import json

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from mm15.model.mm15 import MM15
from mm15.presets import get_preset, tiny
from mm15.train.flops import (
    PEAK_BF16_FLOPS,
    batch_flops,
    connector_flops_per_tile,
    decoder_active_params,
    decoder_flops_per_token,
    mfu,
    mfu_line,
    peak_flops,
    training_flops,
    utilisation,
    vision_flops_per_tile,
)
from tests.train_fixtures import tiny_batch, train_config, write_corpus


def test_decoder_by_hand():
    """tiny: d 64, 4 layers, 4 heads / 2 KV heads of 16, FFN 128, vocab 512 (untied head).
    Per layer: wq, wo 64·64 each, wk, wv 64·32 each = 12,288; SwiGLU 3·64·128 = 24,576.
    N = 4·(12,288 + 24,576) + 64·512 (head; the embedding lookup is not counted) = 180,224."""
    cfg = tiny().lm
    assert decoder_active_params(cfg) == 180_224
    # 6·N + 12·L·H·Dh·T at T = 32: 1,081,344 + 12·4·4·16·32 = 1,081,344 + 98,304
    assert decoder_flops_per_token(cfg, 32) == 1_179_648
    cfg.tie_embeddings = True  # a tied head is still a d·V matmul per token
    assert decoder_active_params(cfg) == 180_224


def test_moe_decoder_by_hand():
    """tiny-moe: layers 2 and 4 hold 4 experts, top-2.  Active per MoE layer: router 64·4 +
    2 experts · 24,576 = 49,408.  N = 4·12,288 + 2·24,576 + 2·49,408 + 64·512 = 229,888."""
    assert decoder_active_params(tiny(moe=True).lm) == 229_888


def test_image_tower_by_hand():
    """ViT (width 64, MLP 128, 2 blocks, patch 14) on a 112-px tile: 64 patches, L = 65 tokens.
    Patch conv 64·3·14²·64 = 2,408,448 MACs; per block 65·(4·64² + 2·64·128) + 2·65²·64
    = 2,129,920 + 540,800.  Training = 6 × (2,408,448 + 2·2,670,720) = 46,499,328."""
    cfg = tiny()
    assert vision_flops_per_tile(cfg.vision, 112) == 46_499_328
    # C-Abstractor (hidden 64, depth 1, 16 tokens, SE 0.25 → 16 channels) on the 8×8 grid:
    # bottleneck per pixel 64·64 + 9·64 + 64·64 = 8,768, SE 2·64·16 = 2,048;
    # stage 1: 64 px · 8,768 + 2,048 = 563,200; stage 2: 16 px · 8,768 + 2,048 = 142,336;
    # readout 16·(64·64 + 64·64) = 131,072.  Training = 6 × 836,608 = 5,019,648.
    flops = connector_flops_per_tile(cfg.connector, enc_width=64, grid=8, out_dim=64)
    assert flops == 5_019_648


def _matmul_flops(fc: FlopCounterMode) -> int:
    """Matmul and convolution FLOPs (CPU attention kernels are not counted by FlopCounterMode)."""
    ops = fc.get_flop_counts()["Global"]
    return sum(n for op, n in ops.items() if "attention" not in str(op))


@pytest.mark.parametrize("moe", [False, True])
def test_counts_match_flop_counter_on_the_real_modules(moe):
    """Our forward count (training / 3) equals torch's count of every matmul and convolution the
    modules run; attention is added from its formula (4·B·T²·H·Dh per decoder layer)."""
    cfg = tiny(moe=moe)
    torch.manual_seed(0)
    model = MM15(cfg)
    B, T, N, lm_cfg = 2, 32, 3, cfg.lm  # N tiles of 112 px: 65 ViT tokens each
    with FlopCounterMode(display=False) as fc:
        feats = model.vision(torch.randn(N, 3, 112, 112))
    vit_attention = N * len(model.vision.blocks) * 4 * 65 * 65 * cfg.vision.width
    assert 3 * (_matmul_flops(fc) + vit_attention) == N * vision_flops_per_tile(cfg.vision, 112)
    with FlopCounterMode(display=False) as fc:
        model.connector(feats)
    per_tile = connector_flops_per_tile(cfg.connector, enc_width=64, grid=8, out_dim=64)
    assert 3 * _matmul_flops(fc) == N * per_tile
    with FlopCounterMode(display=False) as fc:
        model.lm(torch.randint(0, 500, (B, T)), document_ids_BT=torch.zeros(B, T, dtype=torch.long))
    attention = lm_cfg.n_layers * 4 * B * T * T * lm_cfg.n_heads * lm_cfg.resolved_head_dim
    assert 3 * (_matmul_flops(fc) + attention) == B * T * decoder_flops_per_token(lm_cfg, T)


def test_batch_flops_counts_positions_and_tiles():
    cfg = get_preset("tiny")
    cfg.image_token_id = cfg.lm.vocab_size - 1
    mb = tiny_batch(cfg, batch=2, seq=24)  # 2 rows × 24 positions, 2 tiles of 56 px
    text_only = {k: v for k, v in mb.items() if k != "pixels_NCHW"}
    got = batch_flops(cfg, [mb, text_only])
    assert got.decoder == 2 * 48 * decoder_flops_per_token(cfg.lm, 24)
    assert got.vision == 2 * vision_flops_per_tile(cfg.vision, 56)  # the text-only one adds none
    assert got.connector == 2 * connector_flops_per_tile(
        cfg.connector, enc_width=64, grid=4, out_dim=64
    )
    assert got.total == got.decoder + got.vision + got.connector
    one = training_flops(cfg, tokens=48, seq_len=24, tiles=2, tile_hw=(56, 56))
    assert got.total == 2 * one.decoder + one.vision + one.connector


def test_paper_preset_magnitudes():
    """1b (d 2048, 18 layers, 16 heads of 128, 8 KV heads, FFN 5632, tied vocab 100,352):
    N = 18·(2048·128·48 + 3·2048·5632) + 2048·100,352 = 849.3M + 205.5M ≈ 1.055B, so at 4096
    6·N + 12·18·2048·4096 ≈ 6.33 + 1.81 = 8.14 GFLOP per token.  ViT-H/14 on a 672-px tile
    (2305 tokens): 32·(2305·(4·1280² + 2·1280·5120) + 2·2305²·1280) ≈ 1.885T MACs, i.e.
    ≈ 11.3 TFLOP per tile fwd+bwd: a 4096-token SFT row with ~18 tiles spends ~6× more in the
    encoder than in the decoder."""
    cfg = get_preset("1b")
    assert 1.05e9 < decoder_active_params(cfg.lm) < 1.06e9
    assert 8.1e9 < decoder_flops_per_token(cfg.lm, 4096) < 8.2e9
    assert 1.12e13 < vision_flops_per_tile(cfg.vision, 672) < 1.14e13


def test_peak_and_mfu():
    assert peak_flops("cpu") is None
    assert peak_flops("cpu", override_tflops=2.0) == 2e12
    names = dict(PEAK_BF16_FLOPS)
    assert names["H100"] == names["H200"] == 989e12
    assert mfu(5e11, 1.0, 1e12) == 0.5
    with pytest.raises(ValueError, match="positive seconds"):
        mfu(1.0, 0.0, 1e12)
    util = utilisation(
        training_flops(tiny(), tokens=64, seq_len=32, tiles=1, tile_hw=(112, 112)), 2.0, 1e9
    )
    assert util["mfu_total"] > util["mfu_decoder"] > 0
    assert util["mfu_decoder"] == pytest.approx(util["tflops_decoder"] * 1e12 / 1e9)
    assert mfu_line("[sft]", 3, util).startswith("[sft] step 3 mfu decoder ")
    no_peak = utilisation(
        training_flops(tiny(), tokens=1, seq_len=1, tiles=0, tile_hw=(1, 1)), 1.0, None
    )
    assert "mfu_total" not in no_peak and mfu_line("[sft]", 3, no_peak) is None


def test_training_loop_logs_and_prints_both_mfus(tmp_path, capsys):
    from mm15.train.loop import train

    write_corpus(tmp_path / "corpus")
    cfg = train_config(tmp_path / "corpus", tmp_path / "run", steps=2)
    cfg.stages = cfg.stages[:1]
    cfg.parallel.peak_tflops = 1e-3  # a made-up CPU peak: 1 GFLOP/s
    train(cfg)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    assert len(records) == 2
    rows, seq = cfg.stages[0].batch_rows, cfg.stages[0].packing.seq_len
    decoder = rows * seq * decoder_flops_per_token(cfg.model.lm, seq)
    for r in records:
        assert r["lr"] <= cfg.stages[0].lr and r["skipped_steps"] == 0  # MFU leaves training be
        assert r["tflops_decoder"] * 1e12 * r["step_seconds"] == pytest.approx(decoder)
        assert r["mfu_decoder"] == pytest.approx(r["tflops_decoder"] / 1e-3)
        assert r["mfu_total"] > r["mfu_decoder"]  # the pre-training rows carry image tiles
    printed = [line for line in capsys.readouterr().out.splitlines() if "mfu decoder" in line]
    assert [line.split(" mfu")[0] for line in printed] == ["[pretrain] step 1", "[pretrain] step 2"]


def test_train_bench_runs_on_cpu_and_keeps_the_recipe_share(tmp_path, capsys, monkeypatch):
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).parents[1] / "benchmarks" / "train_bench.py"
    spec = importlib.util.spec_from_file_location("train_bench", path)
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "train_bench", bench)  # its dataclass looks itself up
    spec.loader.exec_module(bench)
    # tiny (16 tokens per tile, rows of 455) packs the paper's rows (144, 4096) scaled by 16/144
    shares = []
    for k, seq in ((144, 4096), (16, 455)):
        rows = bench.synthetic_rows(300, seq, k, seed=0)
        used = [(t * k, t * k + x) for r in rows for t, x in r.samples]
        shares.append(sum(i for i, _ in used) / sum(u for _, u in used))
        assert all(sum(t * k + x for t, x in r.samples) <= seq for r in rows)
    assert 0.6 < shares[0] < 0.9 and abs(shares[0] - shares[1]) < 0.02
    out = tmp_path / "bench.json"
    assert (
        bench.main(
            [
                "--preset",
                "tiny",
                "--steps",
                "1",
                "--warmup",
                "0",
                "--peak-tflops",
                "1e-3",
                "--json",
                str(out),
            ]
        )
        == 0
    )
    result = json.loads(out.read_text())
    assert result["tokens_per_s"] > 0 and result["mfu_total"] > result["mfu_decoder"] > 0
    assert "| MFU total " in capsys.readouterr().out
