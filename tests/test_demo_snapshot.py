"""`mm15 demo` gives the same report, item for item, as the snapshot: every test item's prediction
and score, every category's score and chance, every stage's first and last loss, on a short
configuration.  Taken before the demo became a package of its own (issue 21), it held through
the move and the module splits; it was retaken once, when text began to be tokenised as the chat
template renders it and the default assistant prefix became ``"Assistant:\n"`` (same scores:
4 of 48 items, the same categories).

One thread (``DemoConfig.threads``), so that the float sums (and so the greedy answers) do not
depend on the machine's core count.  MM15_UPDATE_SNAPSHOTS=1 rewrites the snapshot; review the diff before keeping it."""

from __future__ import annotations

import json
import os

import torch

from mm15.demo import DemoConfig, run_demo
from mm15.overrides import apply_overrides
from tests.snapshot_util import SNAPSHOTS

# Enough steps for the answers to be words, numbers and boxes rather than empty (~20 s).  Before
# issue 21 this was DemoConfig(train_per_sft_task=40, test_per_task=6, encoder_steps=5,
# align_steps=3, pretrain_steps=3, cpt_steps=3, bind_steps=5, sft_steps=60, batch_rows=4,
# seq_len=384, vocab_size=1200, lr=3e-3), which wrote tests/snapshots/demo_short.json.
SHORT = [
    "corpus.train_per_task=40",
    "corpus.test_per_task=6",
    "encoder.steps=5",
    "align.steps=3",
    "pretrain.steps=3",
    "cpt.steps=3",
    "bind.steps=5",
    "sft.steps=60",
    "batch_rows=4",
    "seq_len=384",
    "tokenizer.vocab_size=1200",
    "lr=3e-3",
]


def short_config() -> DemoConfig:
    return apply_overrides(DemoConfig(), SHORT)  # the paths of `mm15 demo --set`


def comparable(out) -> dict:
    """The report less its wall times, paths and config (whose layout issue 21 changed)."""
    report = json.loads((out / "report.json").read_text())
    items = [json.loads(line) for line in (out / "items.jsonl").read_text().splitlines()]
    keep = ("categories", "mmbase", "tasks", "train", "skipped_steps", "model_params")
    return {
        **{k: report[k] for k in keep},
        "items": items,
        "report_md": _md_without_times((out / "report.md").read_text()),
    }


def _md_without_times(md: str) -> list[str]:
    """The report's markdown less its wall times and the machine it ran on."""
    return [line for line in md.splitlines() if not line.startswith(("Wall time:", "Environment:"))]


def test_short_demo_reproduces_the_snapshot(tmp_path):
    cfg = short_config()
    cfg.threads = 1  # as the snapshot was taken
    threads = torch.get_num_threads()
    run_demo(out=tmp_path, cfg=cfg)
    assert torch.get_num_threads() == threads  # the demo's setting does not leak
    assert json.loads((tmp_path / "report.json").read_text())["environment"]["threads"] == 1
    current = comparable(tmp_path)
    path = SNAPSHOTS / "demo_short.json"
    if os.environ.get("MM15_UPDATE_SNAPSHOTS"):
        path.write_text(json.dumps(current, indent=1, sort_keys=True) + "\n")
    stored = json.loads(path.read_text())
    assert sorted(stored) == sorted(current)
    assert len(stored["items"]) == len(current["items"]) > 0
    for old, new in zip(stored["items"], current["items"], strict=True):
        assert old == new, f"item {old['id']} changed"
    for key in stored:
        assert stored[key] == current[key], f"{key} changed"
