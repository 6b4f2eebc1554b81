"""The dataset registry, ``mm15 data list/check``, and every training preset on real layouts.

The presets are run through their own dataset entries: only ``data_root`` is set (plus the
tiny model in place of the paper's, two steps per stage, and small batches), on fixtures that
tests/registry_fixtures.py writes in each dataset's real on-disk layout.
"""

from __future__ import annotations

import dataclasses
import json
import typing

import pytest
from registry_fixtures import BUILDERS, write_registry_fixtures

from mm15.cli import main
from mm15.data.config import PackingConfig
from mm15.data.coord_conventions import BoxConvention
from mm15.data.registry import builtin_entries, registry
from mm15.data.schema import Category
from mm15.data.sources import KINDS
from mm15.presets import get_preset
from mm15.train.config import TrainConfig
from mm15.train.recipes import TRAIN_PRESETS, get_train_preset

PRESET_STAGE = {"paper": {"pretrain", "cpt", "sft"}, "video": {"video"}, "ui": {"ui"}}
# Every preset that names datasets; `finetune` names none (docs/finetune.md runs it).
RECIPES = sorted(n for n in TRAIN_PRESETS if n.split("-")[0] in PRESET_STAGE)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    write_registry_fixtures(root)
    return root


def test_registry_entries_are_complete_and_consistent():
    entries = builtin_entries()
    names = [e.name for e in entries]
    assert len(names) == len(set(names))
    categories = set(typing.get_args(Category))
    conventions = {*typing.get_args(BoxConvention), "none"}
    for e in entries:
        assert e.kind in KINDS, e.name
        assert e.kind in BUILDERS, f"{e.name}: no fixture builder for kind {e.kind}"
        assert e.category in categories, e.name
        assert e.coords in conventions, e.name
        assert e.files and e.source and e.paper, e.name
    # MM1.5 §3–4: the stage-1 groups, the four OCR sets, the video sets and every SFT category.
    by_stage = {s: {e.category for e in entries if e.stage == s} for s in PRESET_STAGE["paper"]}
    assert by_stage["pretrain"] == {"caption", "interleaved", "text"}
    assert {e.name for e in entries if e.stage == "cpt"} == {
        "pdfa",
        "idl",
        "renderedtext",
        "docstruct4m",
    }
    assert by_stage["sft"] == {
        "general",
        "text_rich",
        "refer_ground",
        "science",
        "math",
        "code",
        "multi_image",
        "text_only",
    }
    assert {e.name for e in entries if e.stage == "video"} == {
        "sharegptvideo",
        "videochat2",
        "activitynet_qa",
    }


@pytest.mark.parametrize("name", RECIPES)
def test_every_preset_names_registry_datasets_only(name):
    cfg = get_train_preset(name)
    known = registry()
    family = name.split("-")[0]
    for stage in cfg.stages:
        for d in stage.datasets:
            assert d.name in known and known[d.name].stage in PRESET_STAGE[family], d.name
            assert (d.kind, d.paths, d.category, d.options) == (None, [], None, {}), d.name
        sources = {s.name: s.category for s in stage.mixture.sources}
        assert sources == {d.name: known[d.name].category for d in stage.datasets}


def test_data_list_prints_the_registry(capsys):
    assert main(["data", "list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [e["name"] for e in listed] == [e.name for e in builtin_entries()]
    assert main(["data", "list", "--stage", "cpt"]) == 0
    out = capsys.readouterr().out
    assert "docstruct4m" in out and "cc12m" not in out and "4 datasets" in out


def _small(cfg: TrainConfig, data_root, run_dir) -> TrainConfig:
    """The preset with the tiny model, two steps per stage and small rows; datasets untouched."""
    model = get_preset("tiny-moe" if cfg.model.lm.moe is not None else "tiny")
    stages = []
    for s in cfg.stages:
        image = (
            None
            if s.image is None
            else dataclasses.replace(
                model.image, split=s.image.split, resolution=model.vision.image_size
            )
        )
        packing = PackingConfig(
            seq_len=640, max_images_per_sequence=s.packing.max_images_per_sequence
        )
        stages.append(
            dataclasses.replace(
                s, steps=2, batch_rows=2, warmup_steps=0, image=image, packing=packing
            )
        )
    return dataclasses.replace(
        cfg,
        model=model,
        stages=stages,
        data_root=str(data_root),
        run_dir=str(run_dir),
        init_from=None,
        allow_random_init=True,
        ckpt_every=1000,
        log_every=1,
    )


@pytest.mark.parametrize("name", RECIPES)
def test_every_preset_checks_and_trains_two_steps_per_stage(name, data_root, tmp_path, capsys):
    from mm15.train.loop import train

    # The dry run, through the CLI with only data_root set: every dataset opens and formats.
    argv = [
        "data",
        "check",
        "--preset",
        name,
        "--set",
        f"data_root={data_root}",
        "--set",
        "init_from=null",
        "--set",
        "allow_random_init=true",
        "--samples",
        "8",
        "--out",
        str(tmp_path / "check"),
    ]
    assert main(argv) == 0, capsys.readouterr()
    report = json.loads((tmp_path / "check/data_check.json").read_text())
    for stage in report["stages"]:
        for d in stage["datasets"]:
            assert d["samples"] >= 4 and d["read"] >= 4, (stage["name"], d)
            assert d["tokens_per_sample"] > 0 and d["trainable_per_sample"] > 0, d
    cfg = _small(get_train_preset(name), data_root, tmp_path / "run")
    result = train(cfg)
    assert result.final_model is not None
    for stage in cfg.stages:
        audit = json.loads((tmp_path / f"run/audit_{stage.name}.json").read_text())
        assert audit["missing"] == []
        assert audit["mixture"]["draws"] > 0
        if stage.name == "pretrain":  # stage-1 text is trained with loss, at its 40% share
            text = audit["mixture"]["categories"]["text"]
            assert text["configured_share"] == pytest.approx(0.4)
            assert audit["mixture"]["sources"]["fineweb-edu"]["trained"] > 0


def test_data_check_benchmark_runs_through_the_cli():
    """benchmarks/data_check_bench.py (docs/training.md quotes its full-size run), small."""
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    cmd = [sys.executable, "benchmarks/data_check_bench.py", "--samples-per-source", "20"]
    run = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(run.stdout)
    datasets = report["stages"][0]["datasets"]
    assert len(datasets) == 15 and all(d["samples"] >= 20 for d in datasets), datasets
    assert "ratio to the 60 s target" in run.stderr
