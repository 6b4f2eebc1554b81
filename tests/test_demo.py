"""`mm15 demo` end to end at a tiny budget: the report's shape and the saved model.

The full-size demo's scores are measured by running `mm15 demo` (docs/demo.md), not here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mm15.demo import DemoConfig, run_demo
from mm15.demo.config import BindStage, CorpusSizes, DecoderKnobs, PretrainStage, SftStage
from mm15.overrides import apply_overrides
from mm15.services.checkpoint import load_checkpoint


def test_demo_writes_report_and_a_loadable_model(tmp_path, capsys):
    cfg = apply_overrides(
        DemoConfig(),
        [
            "corpus.train_per_task=20",
            "corpus.test_per_task=4",
            "encoder.steps=2",
            "align.steps=2",
            "pretrain.steps=3",
            "cpt.steps=2",
            "bind.steps=2",
            "sft.steps=4",
            "batch_rows=2",
            "seq_len=384",
            "tokenizer.vocab_size=1200",
        ],
    )
    run_demo(out=tmp_path, cfg=cfg)  # scores at this budget are near chance: no assertion on them
    report = json.loads((tmp_path / "report.json").read_text())
    cats = report["categories"]
    assert set(cats) == {
        "general",
        "text_rich",
        "refer_ground",
        "math",
        "multi_image",
        "video",
        "ui",
        "text_only",
    }
    for c in cats.values():
        assert 0.0 <= c["score"] <= 1.0 and 0.0 < c["chance"] < 1.0 and c["n"] > 0
    assert (tmp_path / "report.md").read_text().startswith("# mm15 demo report")
    assert (tmp_path / "scores.png").stat().st_size > 0
    assert (tmp_path / "loss_sft.png").stat().st_size > 0
    assert list((tmp_path / "grounded").glob("*.png"))
    model, tok = load_checkpoint(tmp_path / "model")
    assert model.cfg.lm.vocab_size == len(tok) and model.cfg.lm.init_std == cfg.lm.init_std
    assert "[demo 4/4]" in capsys.readouterr().out
    _check_the_docs_comparison(tmp_path)


def _check_the_docs_comparison(out: Path) -> None:
    """docs/demo.md's command that compares two demo outputs, run as the page gives it: equal on
    a copy of ``out``, and it sees one changed loss."""
    import re
    import shutil
    import subprocess
    import sys

    page = (Path(__file__).parents[1] / "docs" / "demo.md").read_text()
    script = re.search(r"python3 - A B <<'EOF'\n(.*?)\nEOF\n", page, re.S).group(1)
    copy = out.parent / f"{out.name}-copy"
    for rel in ("report.json", "items.jsonl", "run/metrics.jsonl"):
        (copy / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(out / rel, copy / rel)

    def compare() -> str:
        run = subprocess.run(
            [sys.executable, "-", str(out), str(copy)], input=script, capture_output=True, text=True
        )
        assert run.returncode == 0, run.stderr
        return run.stdout

    assert compare().startswith(
        "report.json equal: True | items.jsonl equal: True | losses equal: True"
    )
    metrics = copy / "run" / "metrics.jsonl"
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    first = next(r for r in rows if "loss" in r)
    first["loss"] += 1e-6
    metrics.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert "losses equal: False" in compare()


def test_demo_cli_rejects_bad_settings_before_doing_any_work(tmp_path, capsys):
    from mm15.cli import main

    for bad in (
        "nope=1",
        "sft_steps=10",  # the flat names before issue 21 are gone (docs/demo.md maps them)
        "tokenizer.max_digits=4",
        "lm.init_std=0",
        'sft.freeze=["decoder"]',
        "encoder.steps=-1",
        'sft.tasks=["general/nope"]',
        "sft.tasks=[]",
        'sft.weights={"general/nope": 2}',
        'sft.weights={"general/colour": 0}',
        "sft.lr=0",
        "sft.steps=-1",
        'encoder.heads=["colour", "depth"]',
        "encoder.heads=[]",
        "encoder.lr=0",
        'pretrain.tasks=["general/colour"]',
        "pretrain.tasks=[]",
        'cpt.tasks=["caption/shapes"]',
        "cpt.tasks=[]",
        "align.steps=-1",
        "lm.layers=0",
        "bind.steps=-1",
        'bind.tasks=["refer_ground/nope"]',
        "bind.steps=10 bind.tasks=[]",
        'bind.freeze=["projector"]',
        "bind.rows=0",
        "bind.at=middle",
        "lr=0",
    ):
        sets = [a for kv in bad.split(" ") for a in ("--set", kv)]
        assert main(["demo", "--out", str(tmp_path / "d"), *sets]) == 2, bad
        assert "error:" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


def test_sft_tasks_subset_sizes_the_corpus():
    from mm15.demo.data.tasks import SFT_TASKS
    from mm15.demo.recipe import corpus_sizes

    pick = ["general/colour", "video/direction"]
    sizes = corpus_sizes(DemoConfig(sft=SftStage(tasks=pick), bind=BindStage(steps=0)))
    on = {t for t in SFT_TASKS if sizes[t] and sizes[f"test/{t}"]}
    assert on == set(pick)
    assert all(sizes[t] == 0 == sizes[f"test/{t}"] for t in set(SFT_TASKS) - on)
    # With the default bind stage its region task is trained, never tested.
    sizes = corpus_sizes(DemoConfig(sft=SftStage(tasks=pick)))
    assert (sizes["refer_ground/region"], sizes["test/refer_ground/region"]) == (3000, 0)


def test_pretrain_tasks_are_the_pretraining_stage_sources(tmp_path):
    from mm15.demo.data.corpus import generate_corpus
    from mm15.demo.recipe import corpus_sizes, demo_train_config

    cfg = DemoConfig(
        pretrain=PretrainStage(tasks=["caption/grounded", "text/facts"]),
        sft=SftStage(tasks=["text_only/add"]),
        corpus=CorpusSizes(train_per_task=2, test_per_task=1),
    )
    sizes = corpus_sizes(cfg)
    assert sizes["caption/grounded"] and sizes["text/facts"] and not sizes["caption/shapes"]
    corpus = generate_corpus(tmp_path / "c", seed=0, sizes={k: min(v, 2) for k, v in sizes.items()})
    stages = {
        s.name: s
        for s in demo_train_config(cfg, corpus, tmp_path / "t", tmp_path / "r", 300).stages
    }
    assert [d.name for d in stages["pretrain"].datasets] == ["caption/grounded", "text/facts"]
    assert [d.name for d in stages["align"].datasets] == ["caption/object"]
    assert [d.name for d in stages["cpt"].datasets] == ["ocr/pages", "ocr/words"]


def test_sft_weights_scale_each_tasks_share_of_the_sft_mixture(tmp_path):
    from mm15.data.mixture import mixture_weights
    from mm15.demo.data.corpus import generate_corpus
    from mm15.demo.recipe import corpus_sizes, demo_train_config

    tasks = ["general/colour", "refer_ground/box", "text_only/add"]
    cfg = DemoConfig(
        sft=SftStage(tasks=tasks, weights={"refer_ground/box": 2.0, "text_only/add": 0.5}),
        corpus=CorpusSizes(train_per_task=6, test_per_task=1),
    )
    corpus = generate_corpus(tmp_path / "c", seed=0, sizes=corpus_sizes(cfg))
    sft = demo_train_config(cfg, corpus, tmp_path / "tok", tmp_path / "run", 300).stages[-1]
    weights = mixture_weights(sft.mixture, {t: 6 for t in tasks})
    assert weights == pytest.approx(
        {"general/colour": 1 / 3.5, "refer_ground/box": 2 / 3.5, "text_only/add": 0.5 / 3.5}
    )


def test_bind_stage_trains_its_tasks_first_or_before_sft_and_only_when_asked(tmp_path):
    from mm15.demo.data.corpus import generate_corpus
    from mm15.demo.recipe import corpus_sizes, demo_train_config

    base = dict(
        sft=SftStage(tasks=["text_only/add"]),
        lm=DecoderKnobs(layers=2),
        corpus=CorpusSizes(train_per_task=2, test_per_task=1),
    )
    off = DemoConfig(**base, bind=BindStage(steps=0))
    on = DemoConfig(
        **base,
        bind=BindStage(steps=7, at="before_sft", tasks=["refer_ground/region", "general/colour"]),
    )
    assert corpus_sizes(off)["refer_ground/region"] == 0
    sizes = corpus_sizes(on)
    assert sizes["refer_ground/region"] == 2 == sizes["general/colour"]
    assert sizes["test/refer_ground/region"] == 0  # trained, not evaluated (not in sft.tasks)
    corpus = generate_corpus(tmp_path / "c", seed=0, sizes=sizes)
    names = [
        s.name for s in demo_train_config(off, corpus, tmp_path / "t", tmp_path / "r", 300).stages
    ]
    assert names == ["align", "pretrain", "cpt", "sft"]
    tc = demo_train_config(on, corpus, tmp_path / "t", tmp_path / "r", 300)
    assert [s.name for s in tc.stages] == ["align", "pretrain", "cpt", "bind", "sft"]
    bind = tc.stages[3]
    assert (bind.kind, bind.steps, bind.freeze) == ("sft", 7, ["vision", "connector"])
    assert tc.stages[4].freeze == ["vision"]  # the main SFT trains the connector again
    # small steps at a constant LR after warmup; the main SFT keeps its rows and cosine decay
    assert (bind.batch_rows, bind.min_lr_ratio) == (3, 1.0)
    assert (tc.stages[4].batch_rows, tc.stages[4].min_lr_ratio) == (8, 0.05)
    # The default: first, on the fresh decoder (the lookup is not learnt after pre-training).
    default = DemoConfig(**base)
    assert (default.bind.at, default.bind.steps) == ("start", 1000)
    first = demo_train_config(default, corpus, tmp_path / "t", tmp_path / "r", 300)
    assert [s.name for s in first.stages] == ["bind", "align", "pretrain", "cpt", "sft"]
    own = DemoConfig(**base, bind=BindStage(steps=7, freeze=[], at="before_sft"))
    assert (
        demo_train_config(own, corpus, tmp_path / "t", tmp_path / "r", 300).stages[3].freeze == []
    )
    assert [d.name for d in bind.datasets] == ["refer_ground/region", "general/colour"]
    assert tc.model.lm.n_layers == 2
    # Python callers get the same checks as --set (which also type-checks the Literal).
    for bad, key in (({"at": "middle"}, "bind.at"), ({"rows": 0}, "bind.rows")):
        with pytest.raises(ValueError, match=key):
            DemoConfig(bind=BindStage(**bad))


def test_renamed_flat_fields_name_their_nested_paths(capsys):
    """Issue 21: each flat field of before maps to a path `--set` takes, as docs/demo.md lists."""
    from mm15.cli import main
    from mm15.demo.config import RENAMED
    from mm15.overrides import declared_type

    assert len(RENAMED) == 23  # every prefixed field of the flat DemoConfig
    table = (Path(__file__).parents[1] / "docs" / "demo.md").read_text()
    for old, new in RENAMED.items():
        assert declared_type(DemoConfig, new.split(".")) is not None, new
        row = next(line for line in table.splitlines() if f"`{old}`" in line and "|" in line)
        assert f"`{new}`" in row, (old, new)
    assert main(["demo", "--set", "bind_at=before_sft", "--print-config"]) == 2
    assert "bind_at is now bind.at" in capsys.readouterr().err
