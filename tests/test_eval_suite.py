"""``mm15 eval --suite paper`` (mm15/eval/suite.py): the paper's numbers as transcribed, the
folder convention, and the suite end to end through the CLI on the tiny checkpoint (its answers
are noise; the plumbing, the reference column and the reporting are what is checked)."""

from __future__ import annotations

import json

import pytest

from mm15.cli.main import main
from mm15.config_json import save_json
from mm15.eval.paper_numbers import SIZES, load_paper_rows, reference, suite_tasks
from mm15.eval.suite import checkpoint_size, find_data, paper_size, paper_table
from mm15.eval.tasks import TASKS, get_task
from mm15.presets import paper_model
from tests.test_eval_icl import vlicl_root  # noqa: F401 (a fixture)
from tests.test_eval_runner import bench_root  # noqa: F401 (a fixture)
from tests.test_eval_tables import docdownstream, lvis_root


@pytest.fixture(scope="module")
def rows():
    return load_paper_rows()


# ---------------------------------------------------------------------------------------------
# The paper's numbers


@pytest.mark.parametrize(
    "key, table, size, value",
    [
        ("mme", "table4", "1B", 1611.4),  # Table 4: MME (SUM)
        ("docvqa", "table4", "3B", 87.7),
        ("ocrbench", "table4", "1B-MoE", 62.6),
        ("ai2d", "table5", "30B", 77.2),  # Table 5
        ("realworldqa", "table5", "3B-MoE", 60.7),
        ("wtq", "table6", "30B", 54.1),  # Table 6
        ("infovqa", "table6", "7B", 59.5),
        ("refcocop_testB", "table7", "30B", 83.5),  # Table 7
        ("lvis_ref_point", "table7", "3B-MoE", 54.5),
        ("ferret_bench", "table7", "7B", 72.6),
        ("vlicl_operator_induction_interleaved", "table8", "30B", 80.0),  # Table 8
        ("vlicl_avg", "table8", "3B-MoE", 59.6),
        ("muirbench", "table9", "30B", 58.2),  # Table 9
        ("nlvr2", "table9", "7B", 86.9),
        ("egoschema", "table10_sft", "7B", 57.2),  # Table 10
        ("vcgbench", "table10", "1B", 2.86),
        ("hound_ssv2", "table11", "7B", 30.4),  # Table 11
        ("widget_captioning", "table12", "7B", 149.7),  # Table 12
        ("ferretui_grd_a", "table12", "30B", 89.1),
    ],
)
def test_transcribed_numbers_match_the_paper(rows, key, table, size, value):
    assert rows[key].tables[table][size] == value


def test_mme_perception_cognition_and_units(rows):
    mme = rows["mme"]
    assert mme.unit == "sum" and mme.tables["table5_pc"]["30B"] == [1646.2, 405.7]
    assert reference(rows, "mme", "30B") == (2051.9, "5 (P + C)")
    assert reference(rows, "mme", "3B") == (1798.0, "4")
    assert rows["llava_w"].unit == rows["ferret_bench"].unit == "score"  # not %
    assert rows["screen2words"].unit == "cider" and rows["vcgbench"].unit == "score5"


def test_tables_agree_where_they_overlap(rows):
    """Table 4 repeats Tables 5-9 for 1B, 1B-MoE and 3B, and its averages are means of Table 7's
    splits: a transcription slip shows up as a disagreement."""
    checked = 0
    for key, row in rows.items():
        for size, value in row.tables.get("table4", {}).items():
            others = [v[size] for t, v in row.tables.items() if t != "table4" and size in v]
            if key == "mme":  # Table 5 gives perception / cognition
                others = [round(sum(pc), 1) for pc in others]
            assert others == [value] or (row.parts and not others), (key, size, others)
            if row.parts:  # RefCOCO, LVIS-Ref, VL-ICL (avg): the mean of Tables 7 / 8's parts
                parts = [next(iter(rows[p].tables.values()))[size] for p in row.parts]
                assert abs(sum(parts) / len(parts) - value) < 0.051, (key, size)
            checked += 1
    assert checked == 28 * 3  # Table 4: 28 benchmarks x (1B, 1B-MoE, 3B)
    # sizes Table 4 lacks come from the detailed tables, an average row's from its parts
    assert reference(rows, "refcoco_avg", "7B") == (86.56, "7 (mean, derived)")
    assert reference(rows, "lvis_ref_avg", "30B") == (73.15, "7 (mean, derived)")
    assert reference(rows, "videomme", "1B-MoE") == (None, None)  # Table 10 has no MoE


def test_every_entry_names_a_task_or_says_why_not(rows):
    top = [r for r in rows.values() if r.parent is None]
    for row in rows.values():
        assert bool(row.tasks) + bool(row.parts) + bool(row.no_task) == 1, row.key
        for task in row.tasks:  # a known task whose registry category is the paper's group
            assert get_task(task)[0].category == row.category, (row.key, task)
        assert all(rows[p].parent == row.key for p in row.parts)
    assert [r.category for r in top].count("general") == 6  # Table 4's rows per group
    assert sum(1 for r in top if r.category in ("text_rich", "knowledge")) == 11
    assert [r.key for r in rows.values() if r.no_task] == [
        "taperception",
        *(f"ferretui_{k}" for k in ("ref_i", "ref_a", "grd_i", "grd_a")),
    ]
    # every task of the registry (but the demo's own) scores some row of the paper's tables
    named = {t.partition(":")[0] for t in suite_tasks(rows)}
    assert named == set(TASKS) - {"synthetic"}
    assert "refcoco+:testB" in suite_tasks(rows) and "intentqa:val" in suite_tasks(rows)


def test_rows_in_the_papers_units(rows):
    """mm15's scores (in [0, 1]) shown in the paper's unit, averaged on one 0-100 scale."""
    results = {
        "mme": {
            "status": "scored",
            "score": 0.5,
            "details": {"perception": 1000, "cognition": 400},
        },
        "vcgbench": {"status": "scored", "score": 0.6, "details": {}},
        "pope": {"status": "scored", "score": 0.8, "details": {}},
        "seed": {"status": "no data"},
    }
    table = paper_table(rows, "3B", results)
    by_key = {r["key"]: r for r in table["rows"]}
    assert by_key["mme"]["mm15"] == 1400 and by_key["mme"]["mm15_avg_scale"] == 50
    assert by_key["mme"]["paper_avg_scale"] == pytest.approx(1798.0 / 28)
    assert by_key["vcgbench"]["mm15"] == pytest.approx(3.0)  # of 5, as the paper's 3.04
    assert by_key["vcgbench"]["paper_avg_scale"] == pytest.approx(60.8)
    assert table["categories"]["general"]["mm15"] == pytest.approx(65)  # (50 + 80) / 2
    assert table["categories"]["general"]["paper"] == pytest.approx((1798.0 / 28 + 88.1) / 2)
    assert table["categories"]["video"]["mm15"] == pytest.approx(60)
    assert by_key["seed"]["status"] == "no data" and by_key["mmvet"]["status"] == "not run"
    assert table["mmbase"]["mm15"] == pytest.approx(65)  # only the general category ran


def test_sizes_and_the_data_convention(tmp_path, tiny_ckpt_dir):
    assert paper_size(None, "3b-moe") == "3B-MoE" and paper_size(None, "30B") == "30B"
    with pytest.raises(ValueError, match="no 30B-MoE model"):
        paper_size(None, "30B-MoE")
    with pytest.raises(ValueError, match="give --paper-size"):
        paper_size(tiny_ckpt_dir, None)  # the tiny decoder is no paper size
    for preset, moe, want in (("3b", True, "3B-MoE"), ("30b", False, "30B"), ("7b", True, None)):
        (tmp_path / preset).mkdir(exist_ok=True)
        save_json(paper_model(preset, moe=moe), str(tmp_path / preset / "config.json"))
        assert checkpoint_size(tmp_path / preset) == want  # no 7B-MoE in the paper
    assert set(SIZES) == {"1B", "1B-MoE", "3B", "3B-MoE", "7B", "30B"}
    (tmp_path / "refcoco").mkdir()
    (tmp_path / "pope.jsonl").write_text("")
    assert find_data(tmp_path, "refcoco:testA") == tmp_path / "refcoco"
    assert find_data(tmp_path, "pope") == tmp_path / "pope.jsonl"
    assert find_data(tmp_path, "mme") is None


# ---------------------------------------------------------------------------------------------
# End to end


@pytest.fixture(scope="module")
def suite_root(tmp_path_factory, bench_root, vlicl_root):  # noqa: F811
    """ROOT/<task>: textvqa and pope (the runner's fixtures), wtq and tabfact (DocDownstream),
    lvis_ref_box (Ferret's LVIS), vlicl_operator_induction (a VL-ICL root); broken: mme (a
    Parquet file that is not one) and refcoco (only a val file: the paper's testA/testB are not there)."""
    root = tmp_path_factory.mktemp("suite")
    for task in ("textvqa", "pope"):
        (root / task).symlink_to(bench_root / task)
    (root / "refcoco").mkdir()  # lmms-eval's layout, but only the val split
    (root / "refcoco" / "val-00000-of-00001.parquet").symlink_to(bench_root / "refcoco.parquet")
    docdownstream(root / "wtq")
    (root / "tabfact").symlink_to(root / "wtq")
    lvis_root(root / "lvis_ref_box")
    (root / "vlicl_operator_induction").symlink_to(vlicl_root)
    (root / "mme").mkdir()
    (root / "mme" / "test-00000-of-00001.parquet").write_bytes(b"not parquet at all")
    return root


def _argv(ckpt, root, out, *extra):
    return ["eval", "--model", str(ckpt), "--suite", "paper", "--data", str(root),
            "--out", str(out), "--limit", "2", "--batch-size", "2", "--max-new-tokens", "3",
            "--device", "cpu", *extra]  # fmt: skip


def test_cli_suite_end_to_end(tiny_ckpt_dir, suite_root, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(_argv(tiny_ckpt_dir, suite_root, out, "--paper-size", "3b")) == 0
    printed = capsys.readouterr()
    table = json.loads((out / "paper_table.json").read_text())
    by_key = {r["key"]: r for r in table["rows"]}
    tasks = table["tasks"]
    assert table["paper_size"] == "3B"
    # the reference column is the paper's 3B number, in the paper's unit
    assert [by_key[k]["paper"] for k in ("mme", "textvqa", "wtq", "refcoco_avg", "vlicl_avg")] == [
        1798.0,
        76.5,
        41.8,
        85.6,
        56.3,
    ]
    assert by_key["screen2words"]["paper"] == 103.3 and by_key["screen2words"]["table"] == "12 (UI)"
    # scored tasks: each one's outputs in tasks/<task>/, its score in its row
    for task in ("textvqa", "pope", "wtq", "tabfact", "lvis_ref_box", "vlicl_operator_induction"):
        assert tasks[task]["status"] == "scored", (task, tasks[task])
        summary = json.loads((out / "tasks" / task / "summary.json").read_text())
        score = summary["benchmarks"][task]["score"]
        assert tasks[task]["score"] == score and (out / "tasks" / task / "items.jsonl").is_file()
    assert by_key["textvqa"]["mm15"] == pytest.approx(100 * tasks["textvqa"]["score"])
    assert by_key["textvqa"]["status"] == ""
    # absent folders are "no data"; broken ones are errors and the suite went on past them
    assert tasks["ai2d"]["status"] == "no data" and by_key["ai2d"]["status"] == "no data"
    assert tasks["ai2d"]["data"] == str(suite_root / "ai2d")
    assert tasks["mme"]["status"] == "error" and "mme" in by_key["mme"]["status"]
    assert (
        tasks["refcoco:testA"]["status"] == "error" and "testA" in tasks["refcoco:testA"]["error"]
    )
    assert (
        by_key["refcoco_avg"]["status"].startswith("error")
        and by_key["refcoco_avg"]["mm15"] is None
    )
    assert by_key["taperception"]["status"] == "no task" and by_key["taperception"]["paper"] == 80.4
    # an average row over the parts mm15 ran, flagged as partial
    vlicl = by_key["vlicl_avg"]
    assert vlicl["mm15"] == pytest.approx(100 * tasks["vlicl_operator_induction"]["score"])
    assert vlicl["status"] == "partial: 1 of 6 parts"
    # category averages over the rows mm15 scored, the paper's over the same rows; MMBase
    text_rich = [100 * tasks[t]["score"] for t in ("wtq", "tabfact", "textvqa")]
    cats = table["categories"]
    assert cats["text_rich"]["mm15"] == pytest.approx(sum(text_rich) / 3)
    assert cats["text_rich"]["paper"] == pytest.approx((41.8 + 72.9 + 76.5) / 3)
    assert cats["text_rich"]["rows_scored"] == 3 and cats["text_rich"]["rows"] == 7
    assert cats["general"]["paper"] == pytest.approx(88.1)  # POPE: the only general row scored
    assert cats["knowledge"]["mm15"] is None and cats["knowledge"]["paper"] is None
    assert table["mmbase"]["mm15"] == pytest.approx(
        (cats["general"]["mm15"] + cats["text_rich"]["mm15"]) / 2
    )
    assert table["mmbase"]["paper"] == pytest.approx((88.1 + (41.8 + 72.9 + 76.5) / 3) / 2)
    runner = json.loads((out / "summary.json").read_text())  # the runner's own view agrees
    assert runner["mmbase"] == pytest.approx(table["mmbase"]["mm15"] / 100)
    # the printed table, the files
    md = (out / "paper_table.md").read_text()
    assert md in printed.out
    assert "| General | MME (sum) | mme | – | 1798.0 | 4 | error: mme |" in md
    assert (
        "| Refer&Ground | ↳ RefCOCO testB | refcoco:testB | – | 86.1 | 7 | error: refcoco:testB |"
        in md
    )
    assert (
        "| Refer&Ground | RefCOCO (avg) |  | – | 85.6 | 4 | error: refcoco:testA, refcoco:testB |"
        in md
    )
    assert "| Refer&Ground | ↳ RefCOCO+ testB | refcoco+:testB | – | 75.9 | 7 | no data |" in md
    assert "Failed: mme: ValueError: " in md and "not a readable Parquet" in md
    assert "Note: Ferret-UI Ref-i: not implemented: " in md
    assert "| UI | Taperception (TaP) |  | – | 80.4 | 12 (UI) | no task |" in md
    assert f"| Text-rich | **average** | | {cats['text_rich']['mm15']:.1f} | 63.7 |" in md
    assert f"No data under {suite_root}: " in md and "ai2d" in md.split("No data under")[1]
    assert (out / "paper_table.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "warning: mme: " in printed.err and "(the suite goes on)" in printed.err


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--paper-size", "2B"], "--paper-size '2B': the paper reports MM1.5 at 1B, 1B-MoE"),
        (["--paper-size", "30B-MoE"], "(the paper has no 30B-MoE model)"),
        ([], "give --paper-size (1B|1B-MoE|3B|3B-MoE|7B|30B)"),  # the tiny model has no size
        (["--paper-size", "1B", "--task", "pope"], "--suite and --task are exclusive"),
    ],
)
def test_cli_suite_refuses_in_one_line(tiny_ckpt_dir, suite_root, tmp_path, capsys, extra, message):
    assert main(_argv(tiny_ckpt_dir, suite_root, tmp_path / "o", *extra)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "o").exists()  # refused before anything ran


def test_cli_suite_with_no_data_under_the_root(tiny_ckpt_dir, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    argv = _argv(tiny_ckpt_dir, tmp_path / "empty", tmp_path / "o", "--paper-size", "1B")
    assert main(argv) == 2
    assert "no task's data is there; the suite reads ROOT/<task>" in capsys.readouterr().err
