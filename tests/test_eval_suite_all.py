"""``mm15 eval --suite paper`` with data for every task of the paper's tables (issue 23): a few
rows per benchmark in its release's on-disk layout under one root, the judged tasks graded by
a stub OpenAI-compatible endpoint, run through the CLI on the tiny checkpoint.  Its answers are
noise; what is checked is that every paper row with a task gets a score, and the table, the
averages and the files."""

from __future__ import annotations

import json
import math

import pytest

from mm15.cli.main import main
from mm15.eval.judged_tasks import JUDGED_METRICS
from mm15.eval.open_video_tasks import HOUND_SETS
from mm15.eval.paper_numbers import CATEGORIES, load_paper_rows, suite_tasks
from mm15.eval.tasks import get_task
from tests.eval_fixtures import (
    hound_release,
    mvbench_release,
    screen2words_release,
    video_mc_release,
    videomme_release,
    vlicl_tasks,
    widget_captions_release,
    write_lmms_tasks,
)
from tests.judge_fixtures import StubJudge, readable_grade, write_benchmarks
from tests.test_eval_icl import vlicl_root  # noqa: F401 (a fixture)
from tests.test_eval_open_video import roots  # noqa: F401 (a fixture)
from tests.test_eval_runner import bench_root  # noqa: F401 (a fixture)
from tests.test_eval_submission import lmms_docvqa
from tests.test_eval_tables import docdownstream, lvis_root


@pytest.fixture(scope="module")
def all_root(tmp_path_factory, bench_root, vlicl_root, roots):  # noqa: F811
    """ROOT/<task> for every task the suite runs; tasks that share a release link to it, as
    docs/evaluation.md suggests (ROOT/docvqa and ROOT/infovqa → lmms-lab/DocVQA, ...)."""
    root, src = tmp_path_factory.mktemp("all"), tmp_path_factory.mktemp("releases")
    write_lmms_tasks(root)  # single- and multi-image Parquet snapshots, RefCOCO/+/g splits
    write_benchmarks(root)  # mmvet, llava_bench, mathvista, ferret_bench
    mvbench_release(root / "mvbench")
    videomme_release(root / "videomme", ["a cat", "a dog", "a bird", "a fish"])
    screen2words_release(root / "screen2words")
    widget_captions_release(root / "widget_captioning")
    hound = hound_release(src / "hound", others=tuple(s for s in HOUND_SETS if s != "msvd"))
    vlicl = vlicl_tasks(src / "VL-ICL")
    links = {
        **{t: bench_root / t for t in ("textvqa", "pope")},
        **dict.fromkeys(("docvqa", "infovqa"), lmms_docvqa(src / "DocVQA")),
        **dict.fromkeys(("wtq", "tabfact"), docdownstream(src / "DocDownstream-1.0")),
        **dict.fromkeys(("lvis_ref_box", "lvis_ref_point"), lvis_root(src / "lvis")),
        **dict.fromkeys(("egoschema", "nextqa", "intentqa"), video_mc_release(src / "mc")),
        **{f"llava_hound_{s}": hound for s in HOUND_SETS},
        "activitynetqa": roots["anet"],
        "vcgbench": roots["vcg"],
        "vlicl_operator_induction": vlicl_root,
    }
    for task in (p.name for p in vlicl.iterdir()):
        links[f"vlicl_{task}"] = vlicl
    for task, target in links.items():
        (root / task).symlink_to(target)
    return root


def test_cli_suite_scores_every_paper_row(tiny_ckpt_dir, all_root, tmp_path, capsys):
    rows = load_paper_rows()
    tasks = suite_tasks(rows)
    assert sorted(p.name for p in all_root.iterdir()) == sorted(
        {t.partition(":")[0] for t in tasks}
    )
    out = tmp_path / "out"
    with StubJudge(readable_grade) as stub:
        argv = ["eval", "--suite", "paper", "--model", str(tiny_ckpt_dir), "--data",
                str(all_root), "--paper-size", "1B", "--out", str(out), "--limit", "2",
                "--batch-size", "4", "--max-new-tokens", "3", "--device", "cpu",
                "--set", f"judge.url={stub.url}", "--set", "judge.model=stub",
                "--set", "judge.api_key_env=null", "--set", "judge.max_retries=0"]  # fmt: skip
        assert main(argv) == 0
        assert stub.calls > 0
    printed = capsys.readouterr()
    assert "warning:" not in printed.err, printed.err
    table = json.loads((out / "paper_table.json").read_text())
    assert table["paper_size"] == "1B" and set(table["tasks"]) == set(tasks)
    # every task read its data (at most --limit items, not all error items) and was scored
    for task, res in table["tasks"].items():
        assert res["status"] == "scored", (task, res)
        assert 1 <= res["n"] <= 2 and math.isfinite(res["score"]), (task, res)
        assert res["n_errors"] < res["n"], (task, res)  # the model answered some item
        task_out = out / "tasks" / task.replace(":", "-")
        summary = json.loads((task_out / "summary.json").read_text())
        assert summary["benchmarks"][task]["score"] == res["score"]
        items = (task_out / "items.jsonl").read_text().splitlines()
        assert len(items) == res["n"] and (task_out / "summary.md").is_file()
        if get_task(task)[0].metric in JUDGED_METRICS:  # the stub's grades were read
            assert res["details"]["n_judged"] >= 1, (task, res["details"])
    # every paper row with tasks (or parts) has mm15's number and no status; the others say why
    by_key = {r["key"]: r for r in table["rows"]}
    assert list(by_key) == list(rows)
    for key, row in rows.items():
        got = by_key[key]
        if row.no_task:
            assert got["mm15"] is None and got["status"] == "no task", got
            assert f"Note: {row.name}: {row.no_task}." in printed.out
            assert f"| {row.name} |  | – |" in printed.out
        else:
            assert isinstance(got["mm15"], float) and got["status"] == "", got
    assert by_key["mme"]["mm15"] == pytest.approx(
        sum(table["tasks"]["mme"]["details"][k] for k in ("perception", "cognition"))
    )
    assert by_key["refcoco_avg"]["mm15"] == pytest.approx(
        (by_key["refcoco_testA"]["mm15"] + by_key["refcoco_testB"]["mm15"]) / 2
    )
    # each category's average over all its rows; MMBase over the first three
    cats = table["categories"]
    assert set(cats) == set(CATEGORIES)
    for cat, c in cats.items():
        top = [r for r in rows.values() if r.category == cat and r.parent is None]
        scored = [r for r in top if not r.no_task]
        assert c["rows"] == len(top) and c["rows_scored"] == len(scored) > 0, (cat, c)
        assert c["mm15"] is not None and c["paper"] is not None, (cat, c)
    base = [cats[c]["mm15"] for c in ("general", "text_rich", "knowledge")]
    assert table["mmbase"]["mm15"] == pytest.approx(sum(base) / 3)
    assert table["mmbase"]["paper"] is not None
    # the printed table is the file's; the figure and the runner's summary are there
    md = (out / "paper_table.md").read_text()
    assert md in printed.out and "No data under" not in md and "Failed:" not in md
    assert f"Tasks: {len(tasks)} scored." in md
    assert f"| | **MMBase** | | {table['mmbase']['mm15']:.1f} |" in md
    assert (out / "paper_table.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    runner = json.loads((out / "summary.json").read_text())
    assert set(runner["benchmarks"]) == set(tasks)
