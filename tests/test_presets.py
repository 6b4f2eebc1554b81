"""Presets: snapshot of every resolved config, and the paper's stated sizes (MM1 §3.3)."""

import json

import pytest

from mm15.config import ModelConfig
from mm15.config_json import from_dict, to_dict
from mm15.model.params import count_params, mm1_peak_lr, recipe_peak_lr
from mm15.presets import PRESETS, get_preset
from tests.snapshot_util import check_snapshot


def test_every_preset_matches_its_snapshot():
    """Any change to a default shows up here as a diff; MM15_UPDATE_SNAPSHOTS=1 rewrites it."""
    check_snapshot("presets", {name: to_dict(get_preset(name)) for name in sorted(PRESETS)})


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_config_round_trips_through_json(name):
    cfg = get_preset(name)
    assert from_dict(ModelConfig, json.loads(json.dumps(to_dict(cfg)))) == cfg


def test_unknown_config_key_is_an_error():
    data = to_dict(get_preset("tiny"))
    data["lm"]["n_layer"] = 3
    with pytest.raises(ValueError, match="n_layer"):
        from_dict(ModelConfig, data)


@pytest.mark.parametrize(("name", "stated"), [("3b-moe", 64e9), ("7b-moe", 47e9)])
def test_moe_totals_match_mm1(name, stated):
    total = count_params(get_preset(name)).total
    assert abs(total - stated) / stated < 0.15, (
        f"{name}: {total / 1e9:.1f}B vs stated {stated / 1e9:.0f}B"
    )


@pytest.mark.parametrize(
    ("name", "low", "high"),
    [("1b", 0.9e9, 1.3e9), ("3b", 2.6e9, 3.4e9), ("7b", 6.3e9, 7.7e9), ("30b", 27e9, 33e9)],
)
def test_dense_decoders_have_the_named_sizes(name, low, high):
    lm = count_params(get_preset(name)).lm
    assert low < lm < high, f"{name}: decoder {lm / 1e9:.2f}B"


def test_counts_are_consistent():
    c = count_params(get_preset("3b-moe"))
    assert c.total == c.vision + c.connector + c.lm
    assert c.lm == c.lm_embedding + c.lm_non_embedding
    # top-2 of 64 experts active: the inactive share is 62/64 of all expert weights.
    assert c.total - c.active_per_token == c.lm_experts * 62 // 64
    dense = count_params(get_preset("3b"))
    assert dense.total == dense.active_per_token and dense.lm_experts == 0
    assert c.vision == dense.vision and c.connector == dense.connector


def test_vit_h14_378_parameter_count_by_hand():
    # patch conv 3·14·14·1280 + class 1280 + 730 positions ·1280 + ln_pre 2·1280
    # + 32 blocks × (2 LNs 2·2·1280 + qkv 3·1280² + 3·1280 + out 1280² + 1280
    #                + fc1 1280·5120 + 5120 + fc2 5120·1280 + 1280) + ln_post 2·1280
    block = 4 * 1280 + 4 * 1280**2 + 4 * 1280 + 2 * 1280 * 5120 + 5120 + 1280
    expected = 3 * 14 * 14 * 1280 + 1280 + 730 * 1280 + 2 * 1280 + 32 * block + 2 * 1280
    assert count_params(get_preset("3b")).vision == expected == 631_371_520


def test_mm1_eq1_peak_lr():
    # MM1 Eq. 1 at N = 1.2B (its largest grid-search size): exp(-0.4214 ln N - 0.5535).
    assert mm1_peak_lr(1_200_000_000) == pytest.approx(8.5e-5, rel=0.02)


def test_encoder_swap_and_errors():
    assert get_preset("3b", encoder="vit-l14-336").vision.width == 1024
    with pytest.raises(ValueError, match="unknown preset"):
        get_preset("2b")


def test_moe_takes_the_dense_backbones_learning_rate():
    assert recipe_peak_lr(get_preset("3b-moe")) == recipe_peak_lr(get_preset("3b"))
    assert recipe_peak_lr(get_preset("3b")) == mm1_peak_lr(
        count_params(get_preset("3b")).lm_non_embedding
    )
