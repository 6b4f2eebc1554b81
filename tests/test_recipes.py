"""Training presets: the paper's numbers are the defaults, and any change shows as a diff."""

from __future__ import annotations

import pytest

from mm15.config_json import to_dict
from mm15.data.config import CPTWeights, PretrainWeights, SFTWeights
from mm15.model.params import recipe_peak_lr
from mm15.train.recipes import TRAIN_PRESETS, get_train_preset
from tests.snapshot_util import check_snapshot


def test_every_training_preset_matches_its_snapshot():
    check_snapshot(
        "train_presets", {n: to_dict(get_train_preset(n)) for n in sorted(TRAIN_PRESETS)}
    )


@pytest.mark.parametrize("name", ["paper-1b", "paper-3b-moe", "paper-30b"])
def test_paper_recipe_numbers(name):
    cfg = get_train_preset(name)
    pre, cpt, sft = cfg.stages
    assert [s.steps for s in cfg.stages] == [200_000, 30_000, 23_000]  # §4, MM1 §4
    assert [s.batch_rows for s in cfg.stages] == [512, 256, 256]
    assert pre.lr is None and recipe_peak_lr(cfg.model) > 0  # MM1 Eq. 1
    assert (cpt.lr, sft.lr) == (1e-5, 2e-5)
    assert cpt.optim.kind == sft.optim.kind == "adafactor"
    w = pre.mixture.weights
    assert isinstance(w, PretrainWeights)
    assert (w.caption, w.interleaved, w.text) == (50, 10, 40)
    assert pre.image.split == "none" and pre.image.resolution == cfg.model.vision.image_size
    assert pre.packing.max_images_per_sequence == 16 and pre.packing.seq_len == 4096
    assert isinstance(cpt.mixture.weights, CPTWeights)
    assert cpt.mixture.weights.within == "equal" and len(cpt.mixture.sources) == 4
    a = sft.mixture.weights
    assert isinstance(a, SFTWeights)
    assert (a.alpha_science, a.alpha_math, a.alpha_code, a.alpha_refer_ground) == (
        0.1,
        0.5,
        0.2,
        2.0,
    )
    assert (a.w_single, a.w_multi, a.w_text) == (0.8, 0.1, 0.1)
    assert sft.image is None and (cfg.model.image.n_min, cfg.model.image.n_max) == (4, 9)


def test_video_sft_lifts_the_image_cap_for_24_frames():
    cfg = get_train_preset("video-sft-3b")
    assert (
        cfg.stages[0].packing.max_images_per_sequence is None and cfg.model.video.num_frames == 24
    )
    assert cfg.init_from.endswith("final")
