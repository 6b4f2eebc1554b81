"""`mm15 demo --ablate NAME` (issue 24): both arms per seed from shared, cached early stages,
the report with the spread and the verdict, and its bad inputs.  The runs here are tiny, so
they check the wiring, not the trends: those are measured with the full demo (docs/demo.md)."""

from __future__ import annotations

import json

import pytest

from mm15.cli import main
from mm15.demo.ablate import ABLATIONS, Ablation, Arm, arm_key
from mm15.demo.ablate_report import summarize

TINY = [
    "corpus.train_per_task=12",
    "corpus.test_per_task=3",
    "encoder.steps=2",
    "bind.steps=2",
    "align.steps=2",
    "pretrain.steps=2",
    "cpt.steps=2",
    "sft.steps=3",
    "batch_rows=2",
    "seq_len=384",
    "tokenizer.vocab_size=600",
    "threads=1",
]


def _ablate(name: str, out, seeds: str = "0,1") -> int:
    args = ["demo", "--ablate", name, "--seeds", seeds, "--out", str(out)]
    return main([*args, *(a for kv in TINY for a in ("--set", kv))])


def test_ablations_share_the_seeds_early_stages_and_the_default_arm(tmp_path, capsys):
    assert _ablate("refer_ground_data", tmp_path) == 0
    first = capsys.readouterr().out
    assert first.count("stages before SFT trained") == 2  # once per seed
    report = json.loads((tmp_path / "ablation-refer_ground_data.json").read_text())
    assert report["category"] == "refer_ground" and report["seeds"] == [0, 1]
    arms = report["arms"]
    assert list(arms) == ["with refer&ground data", "without refer&ground data"]
    for a in arms.values():
        assert len(a["scores"]) == 2 and a["min"] <= a["mean"] <= a["max"]
        assert all(set(c) >= {"refer_ground", "general", "text_rich"} for c in a["all_categories"])
    assert report["holds"] == (report["margin"] > report["spread"])
    assert (tmp_path / "ablation-refer_ground_data.png").read_bytes()[:4] == b"\x89PNG"
    md = (tmp_path / "ablation-refer_ground_data.md").read_text()
    assert "seed spread" in md and md in first
    without = json.loads(
        next(
            p.read_text()
            for p in (tmp_path / "seed0").glob("arm-*/scores.json")
            if "without" in p.read_text()
        )
    )
    assert "refer_ground/box" not in without["sft_tasks"]

    assert _ablate("multi_image_data", tmp_path) == 0
    second = capsys.readouterr().out
    assert "stages before SFT trained" not in second
    assert second.count("stages before SFT: cached") == 2
    assert second.count("with multi-image data: cached") == 2  # the default arm, shared
    assert second.count("without multi-image data: SFT in") == 2

    # The grid ablation trains its own arms from the same cached stages and scores each at
    # the training grid, then at (3, 3) and (1, 4).
    assert _ablate("inference_grid", tmp_path) == 0
    third = capsys.readouterr().out
    assert "stages before SFT trained" not in third
    assert third.count("at grid (3, 3):") == third.count("at grid (1, 4):") == 4  # 2 arms × 2
    report = json.loads((tmp_path / "ablation-inference_grid.json").read_text())
    assert report["regrid"] == [3, 3] and report["other_grids"] == [[1, 4]]
    assert report["category"] == "refer_ground"
    for a in report["arms"].values():
        trained, one_tile = a["training_grid"], a["other_grids"]["1,4"]
        assert len(a["scores"]) == len(trained["scores"]) == len(one_tile["scores"]) == 2
        assert a["drop"] == pytest.approx(trained["mean"] - a["mean"])
        assert set(a["reread"]) == {"3,3", "1,4"}
    mm15_arm = report["arms"]["image coordinates (mm15)"]
    for grid in ("3,3", "1,4"):  # mm15's frame is the image on every grid: nothing moves
        assert mm15_arm["reread"][grid]["scores"] == mm15_arm["training_grid"]["scores"]
    md = (tmp_path / "ablation-inference_grid.md").read_text()
    assert all(s in md for s in ("training grid", "grid (3, 3)", "grid (1, 4)", "Drop from"))
    arms = [p.parent for p in (tmp_path / "seed0").glob("arm-*/scores.json")]
    grids = [
        [g["grid"] for g in json.loads((a / "scores.json").read_text()).get("regrids", [])]
        for a in arms
    ]
    assert sorted(grids) == [[], [], [], [[3, 3], [1, 4]], [[3, 3], [1, 4]]]
    assert all((a / "model" / "config.json").is_file() for a in arms)  # kept for later grids
    trained_coords = sorted(
        json.loads((a / "model" / "config.json").read_text())["format"]["coords"]
        for a, g in zip(arms, grids, strict=True)
        if g
    )
    assert trained_coords == ["grid", "image"]  # the control trained (and recorded) its canvas

    # A grid asked for later is evaluated on the kept model, without training again.
    import mm15.demo.ablate as ablate

    ab = ablate.ABLATIONS["inference_grid"]
    later = ablate.Ablation(ab.name, ab.trend, ab.category, ab.expected, ab.other, ((2, 3),))
    ablate.ABLATIONS["inference_grid"] = later
    try:
        assert _ablate("inference_grid", tmp_path) == 0
    finally:
        ablate.ABLATIONS["inference_grid"] = ab
    fourth = capsys.readouterr().out
    assert "SFT in" not in fourth and fourth.count("at grid (2, 3):") == 4


def test_the_verdict_needs_a_margin_above_the_seed_spread():
    ab = Ablation("x", "a trend", "ui", Arm("a"), Arm("b"))

    def runs(a, b):
        cat = lambda v: {"categories": {"ui": {"score": v, "chance": 0.1, "n": 50}}}  # noqa: E731
        return {"a": [cat(v) for v in a], "b": [cat(v) for v in b]}

    r = summarize(ab, [0, 1, 2], runs([0.6, 0.7, 0.8], [0.2, 0.3, 0.2]), seconds=1.0)
    assert r["margin"] == pytest.approx(0.7 - 0.7 / 3)
    assert r["spread"] == pytest.approx(0.2) and r["holds"]
    assert r["per_seed_margins"] == pytest.approx([0.4, 0.4, 0.6])
    r = summarize(ab, [0, 1, 2], runs([0.6, 0.2, 0.8], [0.2, 0.3, 0.2]), seconds=1.0)
    assert r["spread"] == pytest.approx(0.6) and not r["holds"]


def test_the_grid_verdict_needs_the_control_to_lose_more_than_the_spread():
    ab = Ablation("g", "a trend", "refer_ground", Arm("a"), Arm("b"), regrids=((1, 4),))

    def run(trained, changed):
        cat = lambda v: {"refer_ground": {"score": v, "chance": 0.1, "n": 50}}  # noqa: E731
        at = {"grid": [1, 4], "categories": cat(changed), "reread": cat(trained)}
        return {"categories": cat(trained), "regrids": [at]}

    def runs(a, b):
        return {"a": [run(*v) for v in a], "b": [run(*v) for v in b]}

    # mm15 keeps its grounding, the control loses it: holds
    r = summarize(ab, [0, 1], runs([(0.6, 0.55), (0.6, 0.6)], [(0.6, 0.1), (0.5, 0.1)]), seconds=1)
    assert r["margin"] == pytest.approx(0.475) and r["spread"] == pytest.approx(0.1)
    assert r["arms"]["b"]["drop"] == pytest.approx(0.45) and r["holds"]
    # the control never learnt to ground: a margin at the new grid, but no loss from the change
    r = summarize(ab, [0, 1], runs([(0.6, 0.55), (0.6, 0.6)], [(0.1, 0.1), (0.1, 0.1)]), seconds=1)
    assert r["margin"] > r["spread"] and not r["holds"]


def test_an_arms_key_names_its_settings_and_prefix_not_where_out_is(tmp_path):
    """Every setting and the prefix's folder name (its settings' key) are in an arm's key; the
    path of ``--out`` is not, so a cache moved elsewhere is still found."""
    from mm15.demo.config import DemoConfig
    from mm15.overrides import apply_overrides

    cfg = DemoConfig()
    prefix = tmp_path / "seed0" / "prefix-abc" / "model"
    moved = tmp_path / "elsewhere" / "seed0" / "prefix-abc" / "model"
    assert arm_key(prefix, cfg) == arm_key(moved, cfg)
    assert arm_key(prefix, cfg) != arm_key(tmp_path / "seed0" / "prefix-abd" / "model", cfg)
    for sets in (["sft.grid=[2,2]"], ["sft.coords=grid"], ["sft.steps=7"], ["seed=1"]):
        assert arm_key(prefix, apply_overrides(cfg, sets)) != arm_key(prefix, cfg)


def test_the_default_arm_is_the_demo_at_the_same_seed(tmp_path, capsys):
    """An arm's SFT starts from the cached stages before it and draws its data as the demo's
    SFT does (seed + the stage's index in the demo), with the demo's threads: the default arm
    is `mm15 demo` at that seed, loss for loss and score for score."""
    sets = [a for kv in TINY for a in ("--set", kv)]
    assert main(["demo", "--out", str(tmp_path / "demo"), "--set", "seed=1", *sets]) == 0
    assert _ablate("multi_image_data", tmp_path / "abl", seeds="1,2") == 0
    capsys.readouterr()

    def sft_losses(run):
        rows = map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
        return [(r["stage"], r["loss"]) for r in rows if "loss" in r and r["stage"] == "sft"]

    arm = next(
        p.parent
        for p in (tmp_path / "abl" / "seed1").glob("arm-*/scores.json")
        if json.loads(p.read_text())["arm"] == "with multi-image data"
    )
    demo = json.loads((tmp_path / "demo" / "report.json").read_text())
    losses = sft_losses(arm / "run")
    assert len(losses) == 3 and losses == sft_losses(tmp_path / "demo" / "run")
    scores = json.loads((arm / "scores.json").read_text())["categories"]
    assert {k: v["score"] for k, v in scores.items()} == {
        k: v["score"] for k, v in demo["categories"].items()
    }
    assert not (arm / "run" / "checkpoints").exists()  # the model is kept, not the checkpoints


@pytest.mark.parametrize(
    "args, message",
    [
        (["--ablate", "grid"], "unknown ablation 'grid'"),
        (["--ablate", "splitting", "--seeds", "0"], "at least two seeds"),
        (["--seeds", "0,1"], "--seeds goes with --ablate"),
        (["--ablate", "splitting", "--seeds", "0,x"], "comma-separated integers"),
        (["--ablate", "splitting", "--seeds", "1,1"], "repeats a seed"),
    ],
)
def test_bad_ablation_flags_are_one_line_errors(tmp_path, capsys, args, message):
    assert main(["demo", "--out", str(tmp_path / "o"), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()  # refused before any work


def test_help_names_every_ablation(capsys):
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert all(name in text for name in ABLATIONS)
