"""Every bad data configuration is one ``error:`` line and exit 2, before step 1 where it can be
(issue 20): through ``mm15 train`` / ``mm15 data check`` and their own argument parsing."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from registry_fixtures import save_png

from mm15.cli import main
from mm15.overrides import apply_overrides
from mm15.train.recipes import get_train_preset

TINY = [
    "--set",
    "allow_random_init=true",
    "--set",
    "stages.0.steps=1",
    "--set",
    "stages.0.batch_rows=1",
    "--set",
    "stages.0.packing.seq_len=400",
]


def _one_error(capsys, argv: list[str], *fragments: str) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def _finetune(tmp_path, datasets: list[dict], *extra: str) -> list[str]:
    spec = tmp_path / "datasets.json"
    spec.write_text(json.dumps(datasets))
    return [
        "train",
        "--preset",
        "finetune",
        "--set",
        f"stages.0.datasets=@{spec}",
        "--set",
        f"run_dir={tmp_path / 'run'}",
        "--set",
        "model=@" + str(_tiny(tmp_path)),
        "--set",
        "stages.0.epochs=null",
        *TINY,
        *extra,
    ]


def _tiny(tmp_path):
    from mm15.config_json import to_dict
    from mm15.presets import get_preset

    path = tmp_path / "tiny.json"
    if not path.exists():
        path.write_text(json.dumps(to_dict(get_preset("tiny"))))
    return path


def test_a_paper_preset_without_init_from_refuses_to_start(capsys, tmp_path):
    _one_error(
        capsys,
        ["train", "--preset", "paper-1b", "--set", f"run_dir={tmp_path}"],
        "init_from",
        "allow_random_init=true",
    )
    assert not (tmp_path / "checkpoints").exists()


def test_obelics_without_its_url_index_is_one_line(capsys, tmp_path):
    pq.write_table(pa.table({"images": [[None]], "texts": [["x"]]}), tmp_path / "d.parquet")
    bad = {
        "name": "docs",
        "kind": "obelics",
        "category": "interleaved",
        "paths": [str(tmp_path / "d.parquet")],
    }
    _one_error(
        capsys,
        _finetune(tmp_path, [bad]),
        "stage sft",
        "dataset docs (obelics)",
        "options",
        "'urls'",
    )


def test_a_table_without_columns_is_one_line(capsys, tmp_path):
    pq.write_table(pa.table({"prompt": ["q"], "response": ["a"]}), tmp_path / "t.parquet")
    bad = {
        "name": "mine",
        "kind": "table",
        "category": "text_only",
        "paths": [str(tmp_path / "t.parquet")],
    }
    _one_error(capsys, _finetune(tmp_path, [bad]), "dataset mine (table)", "'columns'")
    bad["options"] = {"columns": {"question": ["question"], "answer": "response"}}
    _one_error(capsys, _finetune(tmp_path, [bad]), "dataset mine (table)", "question")


def test_unknown_dataset_and_unmatched_files_are_one_line(capsys, tmp_path):
    _one_error(
        capsys,
        _finetune(tmp_path, [{"name": "my_set"}]),
        "my_set",
        "not in the registry",
        "kind, category, paths",
    )
    _one_error(
        capsys,
        _finetune(tmp_path, [{"name": "cauldron/chartqa"}], "--set", f"data_root={tmp_path}"),
        "stage sft",
        "dataset cauldron/chartqa (table)",
        "paths",
        "the_cauldron/chartqa/train-*.parquet",
    )
    _one_error(capsys, _finetune(tmp_path, []), "stage sft: no datasets")


def test_a_later_stage_misconfigured_fails_before_anything_is_built(capsys, tmp_path):
    """Stages 1 and 2 have their data, stage 3 has none: the paper-size run stops in seconds,
    before its 1.7B-parameter model is built or a file is written."""
    from registry_fixtures import write_registry_fixtures

    from mm15.data.registry import builtin_entries

    write_registry_fixtures(
        tmp_path, tuple(e for e in builtin_entries() if e.stage in ("pretrain", "cpt"))
    )
    argv = [
        "train",
        "--preset",
        "paper-1b",
        "--set",
        f"data_root={tmp_path}",
        "--set",
        "allow_random_init=true",
        "--set",
        f"run_dir={tmp_path / 'run'}",
    ]
    _one_error(capsys, argv, "stage sft", "dataset cauldron/vqav2")
    assert not (tmp_path / "run").exists()


def test_a_dataset_that_mostly_fails_stops_the_run_naming_it(capsys, tmp_path):
    """One set's image folder is missing: the run stops naming the set and a file, even though
    the other set keeps the stage's overall skip rate under the limit."""
    good, broken = tmp_path / "good", tmp_path / "broken"
    rows = []
    for k in range(40):
        save_png(good / f"images/{k}.png", k=k)
        rows.append(
            {
                "id": str(k),
                "image": f"{k}.png",
                "conversations": [
                    {"from": "human", "value": "<image>\nWhat?"},
                    {"from": "gpt", "value": "A square."},
                ],
            }
        )
    (good / "train.json").write_text(json.dumps(rows))
    broken.mkdir()
    (broken / "train.json").write_text(json.dumps(rows))  # no images/ folder here
    datasets = [
        {
            "name": n,
            "kind": "conversation",
            "category": "general",
            "paths": [str(d / "train.json")],
            "options": {"root": str(d / "images")},
        }
        for n, d in (("good", good), ("broken", broken))
    ]
    argv = _finetune(
        tmp_path, datasets, "--set", "stages.0.steps=30", "--set", "max_skipped_fraction=0.6"
    )
    line = _one_error(capsys, argv, "before step 1", "dataset broken", "'missing': 16")
    assert "broken/images" in line and "dataset good" not in line
    assert not (tmp_path / "run").exists()
    # Without the check before step 1, the run itself stops once the set's skips pile up.
    line = _one_error(
        capsys,
        [*argv, "--set", "preflight_samples=0"],
        "dataset broken",
        "samples skipped",
        "missing",
    )
    assert "broken/images" in line


def test_data_check_lists_every_problem_and_exits_2(capsys, tmp_path):
    assert main(["data", "check", "--preset", "paper-1b", "--set", f"data_root={tmp_path}"]) == 2
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if line.startswith("error:")]
    from mm15.data.registry import builtin_entries

    paper = [e for e in builtin_entries() if e.stage in ("pretrain", "cpt", "sft")]
    assert len(errors) == 1 + len(paper)  # init_from, then each of the recipe's datasets
    assert errors[0].startswith("error: init_from")
    assert "Traceback" not in captured.err


def test_set_accepts_a_json_file_and_a_new_reader_option(tmp_path):
    spec = tmp_path / "ds.json"
    spec.write_text(json.dumps([{"name": "dolly"}]))
    cfg = apply_overrides(
        get_train_preset("finetune"),
        [
            f"stages.0.datasets=@{spec}",
            "stages.0.datasets.0.options.root=/mnt/img",
        ],
    )
    assert cfg.stages[0].datasets[0].options == {"root": "/mnt/img"}
    with pytest.raises(ValueError, match="no such setting"):
        apply_overrides(cfg, ["stages.0.datasets.0.optionz.root=/x"])
    with pytest.raises(ValueError, match="cannot read"):
        apply_overrides(cfg, [f"registry=@{tmp_path / 'nope.json'}"])


def test_missing_datasets_skip_trains_without_them_and_names_them(capsys, tmp_path):
    """Holding part of the data: with missing_datasets=skip a dataset without files is left
    out (named at the stage's start and under `missing` in the audit); by default it stops."""
    photos = tmp_path / "photos"
    rows = []
    for k in range(6):
        save_png(photos / f"{k}.png", k=k)
        rows.append(
            {
                "id": str(k),
                "image": f"{k}.png",
                "conversations": [
                    {"from": "human", "value": "<image>\nWhat?"},
                    {"from": "gpt", "value": "A square."},
                ],
            }
        )
    (photos / "train.json").write_text(json.dumps(rows))
    datasets = [
        {
            "name": "photos",
            "kind": "conversation",
            "category": "general",
            "paths": [str(photos / "train.json")],
            "options": {"root": str(photos)},
        },
        {
            "name": "gone",
            "kind": "conversation",
            "category": "general",
            "paths": [str(tmp_path / "nowhere/*.json")],
        },
    ]
    _one_error(capsys, _finetune(tmp_path, datasets), "dataset gone", "no files match")
    assert main([*_finetune(tmp_path, datasets), "--set", "missing_datasets=skip"]) == 0
    assert "training without datasets that have no files" in capsys.readouterr().out
    audit = json.loads((tmp_path / "run/audit_sft.json").read_text())
    assert audit["missing"] == ["gone"] and list(audit["mixture"]["sources"]) == ["photos"]
