"""`mm15 demo` end to end at a tiny budget: the report's shape and the saved model.

The full-size demo's scores are measured by running `mm15 demo` (docs/demo.md), not here."""

from __future__ import annotations

import json

from mm15.checkpoint import load_checkpoint
from mm15.demo import DemoConfig, run_demo


def test_demo_writes_report_and_a_loadable_model(tmp_path, capsys):
    cfg = DemoConfig(train_per_sft_task=20, test_per_task=4, align_steps=2, pretrain_steps=3, cpt_steps=2,
                     sft_steps=4, batch_rows=2, seq_len=384, vocab_size=1200)  # fmt: skip
    run_demo(out=tmp_path, cfg=cfg)  # scores at this budget are near chance: no assertion on them
    report = json.loads((tmp_path / "report.json").read_text())
    cats = report["categories"]
    assert set(cats) == {"general", "text_rich", "refer_ground", "math", "multi_image", "video",
                         "ui", "text_only"}  # fmt: skip
    for c in cats.values():
        assert 0.0 <= c["score"] <= 1.0 and 0.0 < c["chance"] < 1.0 and c["n"] > 0
    assert (tmp_path / "report.md").read_text().startswith("# mm15 demo report")
    assert (tmp_path / "scores.png").stat().st_size > 0
    assert (tmp_path / "loss_sft.png").stat().st_size > 0
    assert list((tmp_path / "grounded").glob("*.png"))
    model, tok = load_checkpoint(tmp_path / "model")
    assert model.cfg.lm.vocab_size == len(tok)
    assert "[demo 4/4]" in capsys.readouterr().out
