"""A stage's mixture carries only the weights of its own rule (mm15/data/config.py), through every
config path: the presets, ``--print-config``, ``--set`` (pydantic), ``--config FILE`` (the JSON
codec), and mixture configs saved in the earlier layout (all rules' weights beside ``rule``)."""

from __future__ import annotations

import dataclasses
import json

import pytest

from mm15.cli import main
from mm15.config_json import from_dict, to_dict
from mm15.data.config import (
    CPTWeights,
    FlatWeights,
    MixtureConfig,
    PretrainWeights,
    SFTWeights,
    SourceConfig,
)
from mm15.data.mixture import mixture_weights
from mm15.train.recipes import TRAIN_PRESETS, get_train_preset

RULES = {"pretrain": PretrainWeights, "cpt": CPTWeights, "sft": SFTWeights, "flat": FlatWeights}
# The rule each preset's stages mix by (MM1.5 §4 stages 1–3; video §5 and UI §6 SFT are flat).
PAPER = ["pretrain", "cpt", "sft"]


def _expected_rules(preset: str) -> list[str]:
    return PAPER if preset.startswith("paper-") else ["flat"]


def _fields(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


@pytest.mark.parametrize("preset", sorted(TRAIN_PRESETS))
def test_each_stage_carries_only_its_own_rules_weights(preset):
    cfg = get_train_preset(preset)
    assert [s.mixture.weights.rule for s in cfg.stages] == _expected_rules(preset)
    for stage in to_dict(cfg)["stages"]:
        mixture = stage["mixture"]
        assert set(mixture) == {"weights", "sources", "seed"}, stage["name"]
        assert set(mixture["weights"]) == _fields(RULES[mixture["weights"]["rule"]])


def _printed(capsys, *argv: str) -> dict:
    assert main(["train", *argv, "--print-config"]) == 0
    return json.loads(capsys.readouterr().out)


def _one_error(capsys, *argv: str) -> str:
    assert main(["train", *argv, "--print-config"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err, err
    return err


def test_print_config_shows_one_rules_weights_per_stage(capsys):
    stages = _printed(capsys, "--preset", "paper-3b")["stages"]
    assert [s["mixture"]["weights"] for s in stages] == [
        to_dict(PretrainWeights()),
        to_dict(CPTWeights()),
        to_dict(SFTWeights()),
    ]
    assert stages[1]["mixture"]["weights"] == {
        "rule": "cpt",
        "ocr": 1.0,
        "synthetic_caption": 0.0,
        "within": "equal",
    }


def test_set_changes_one_weight_or_switches_the_rule_whole(capsys):
    base = _printed(capsys, "--preset", "paper-1b")
    one = _printed(
        capsys, "--preset", "paper-1b", "--set", "stages.2.mixture.weights.alpha_math=0.3"
    )
    assert one["stages"][2]["mixture"]["weights"] == {
        **base["stages"][2]["mixture"]["weights"],
        "alpha_math": 0.3,
    }
    switched = _printed(
        capsys, "--preset", "paper-1b", "--set", 'stages.0.mixture.weights={"rule":"cpt"}'
    )
    assert switched["stages"][0]["mixture"]["weights"] == to_dict(CPTWeights())
    given = _printed(
        capsys,
        "--preset",
        "finetune",
        "--set",
        'stages.0.mixture.weights={"rule":"sft","w_text":0}',
    )
    assert given["stages"][0]["mixture"]["weights"] == to_dict(SFTWeights(w_text=0.0))


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        (
            'stages.0.mixture.weights={"rule":"bogus"}',
            "stages.0.mixture.weights: Input tag 'bogus'",
        ),
        ('stages.0.mixture.weights={"ocr":2}', "stages.0.mixture.weights: Unable to extract tag"),
        ("stages.1.mixture.weights.alpha_math=0.3", "stages.1.mixture.weights.alpha_math: no such"),
        (
            'stages.1.mixture.weights={"rule":"cpt","alpha_math":0.3}',
            "stages.1.mixture.weights: CPTWeights has no ['alpha_math']",
        ),
        ("stages.1.mixture.weights.rule=sft", "stages.1.mixture.weights: SFTWeights has no ['ocr'"),
        ("stages.1.mixture.weights.ocr=lots", "stages.1.mixture.weights.cpt.ocr"),
        ('stages.1.mixture={"rule":"cpt"}', "stages.1.mixture: MixtureConfig has no ['rule']"),
    ],
)
def test_a_bad_rule_or_another_rules_weight_is_one_error(capsys, override, needle):
    assert needle in _one_error(capsys, "--preset", "paper-1b", "--set", override)


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        (
            {"rule": "bogus"},
            r"MixtureConfig\.weights\.rule must be one of .*'bogus' \(at weights\.rule\)",
        ),
        ({"ocr": 2.0}, r"MixtureConfig\.weights needs 'rule'"),
        (
            {"rule": "cpt", "alpha_math": 0.3},
            r"unknown CPTWeights keys at weights: \['alpha_math'\]",
        ),
        ({"rule": "sft", "w_text": "x"}, r"SFTWeights\.w_text must be a number"),
        ([], r"MixtureConfig\.weights must be an object"),
    ],
)
def test_the_codec_picks_the_member_by_rule_and_names_the_field(weights, message):
    assert from_dict(MixtureConfig, {"weights": {"rule": "flat"}}).weights == FlatWeights()
    with pytest.raises(ValueError, match=message):
        from_dict(MixtureConfig, {"weights": weights})


SOURCES = [
    {"name": "a", "category": "ocr", "size": 30},
    {"name": "b", "category": "ocr", "size": 10},
]


def _old_layout(rule: str, **blocks) -> dict:
    """A mixture as configs were saved before: every rule's weights beside ``rule``."""
    return {
        "rule": rule,
        "pretrain": to_dict(PretrainWeights()),
        "cpt": to_dict(CPTWeights()),
        "sft": to_dict(SFTWeights()),
        "flat_within": "by_size",
        "sources": SOURCES,
        "seed": 5,
        **blocks,
    }


@pytest.mark.parametrize(
    ("old", "weights"),
    [
        (
            _old_layout("cpt", cpt={"ocr": 2.0, "within": "by_size"}),
            CPTWeights(ocr=2.0, within="by_size"),
        ),
        (_old_layout("flat", flat_within="equal"), FlatWeights(within="equal")),
        (_old_layout("sft", sft={"alpha_math": 0.3}), SFTWeights(alpha_math=0.3)),
        ({"rule": "pretrain"}, PretrainWeights()),
        ({"cpt": {"ocr": 3.0}}, SFTWeights()),  # the old default rule was sft
    ],
)
def test_a_mixture_saved_in_the_old_layout_loads_with_its_active_rules_weights(old, weights):
    cfg = from_dict(MixtureConfig, json.loads(json.dumps(old)))
    assert cfg.weights == weights
    assert cfg.seed == old.get("seed", 0)
    assert list(to_dict(cfg)) == ["weights", "sources", "seed"]


def test_an_old_train_config_file_loads_and_mixes_as_before(capsys, tmp_path):
    saved = _printed(capsys, "--preset", "paper-1b")
    for stage in saved["stages"]:
        new = stage["mixture"]
        rule = new["weights"].pop("rule")
        old = _old_layout(rule, **{rule: new["weights"]})
        stage["mixture"] = {**old, "sources": new["sources"], "seed": new["seed"]}
    path = tmp_path / "old.json"
    path.write_text(json.dumps(saved))
    loaded = _printed(capsys, "--config", str(path))
    assert loaded == _printed(capsys, "--preset", "paper-1b")
    cfg = get_train_preset("paper-1b")
    for stage, printed in zip(cfg.stages, loaded["stages"], strict=True):
        sizes = {s.name: 7 + len(s.name) for s in stage.mixture.sources}
        again = from_dict(MixtureConfig, printed["mixture"])
        assert mixture_weights(again, sizes) == mixture_weights(stage.mixture, sizes)


def test_old_and_new_keys_together_are_refused():
    mixed = {"weights": {"rule": "cpt"}, "rule": "cpt", "sources": [], "seed": 0}
    with pytest.raises(ValueError, match=r"unknown MixtureConfig keys: \['rule'\]"):
        from_dict(MixtureConfig, mixed)


def test_flat_mixture_weighs_sources_by_its_own_within():
    cfg = MixtureConfig(
        weights=FlatWeights(within="equal"),
        sources=[SourceConfig(name=s["name"], category=s["category"]) for s in SOURCES],
    )
    assert mixture_weights(cfg, {"a": 30, "b": 10}) == pytest.approx({"a": 0.5, "b": 0.5})
