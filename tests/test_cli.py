"""The `mm15` command line: split, info, init, as a user runs them."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from PIL import Image

from mm15.cli import main
from mm15.cli.split import ASSETS


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_split_reproduces_the_papers_numbers(tmp_path, capsys):
    square, long = tmp_path / "square.png", tmp_path / "long.png"
    Image.new("RGB", (2016, 2016), "white").save(square)
    Image.new("RGB", (6048, 672), "white").save(long)
    code, out, _ = _run(
        capsys,
        "split",
        str(square),
        str(long),
        "--n-min",
        "4",
        "--n-max",
        "9",
        "--resolution",
        "672",
        "--json",
    )
    assert code == 0
    rows = json.loads(out)
    # §3.5: up to 4 MP, ~2016×2016 square or 6048×672 long, fully covered with no padding.
    assert [tuple(r["grid"]) for r in rows] == [(3, 3), (1, 9)]
    assert [r["n_tiles"] for r in rows] == [10, 10]
    assert [r["image_tokens"] for r in rows] == [1440, 1440]  # Table 1: 144/1440
    assert [r["padding_fraction"] for r in rows] == [0.0, 0.0]


def test_split_table_static_and_token_settings(tmp_path, capsys):
    img = tmp_path / "a.png"
    Image.new("RGB", (800, 600), "white").save(img)
    code, out, _ = _run(capsys, "split", str(img), "--split", "static", "--json")
    assert json.loads(out)[0]["image_tokens"] == 720  # Table 1: 144/720, 5 sub-images
    code, out, _ = _run(
        capsys,
        "split",
        str(img),
        "--n-min",
        "9",
        "--n-max",
        "9",
        "--tokens-per-tile",
        "81",
        "--json",
    )
    assert json.loads(out)[0]["image_tokens"] == 810  # Table 1: 81/810
    code, out, _ = _run(
        capsys, "split", str(ASSETS / "order_sheet.png"), "--save-tiles", str(tmp_path / "tiles")
    )
    assert code == 0 and "order_sheet" in out
    assert (tmp_path / "tiles" / "order_sheet.tiles.png").exists()


def test_split_reports_a_bad_file_and_keeps_going(tmp_path, capsys):
    good, bad = tmp_path / "good.png", tmp_path / "bad.png"
    Image.new("RGB", (100, 100)).save(good)
    bad.write_bytes(b"not an image at all")
    code, out, _ = _run(capsys, "split", str(bad), str(good), "--json")
    rows = json.loads(out)
    assert code == 1
    assert "error" in rows[0] and "bad.png" in rows[0]["error"]
    assert rows[1]["grid"] == [2, 2]


def test_split_rejects_inverted_bounds(capsys):
    with pytest.raises(SystemExit, match="n_min <= n_max"):
        main(["split", str(ASSETS / "order_sheet.png"), "--n-min", "9", "--n-max", "4"])


def test_info_json_and_text(capsys):
    code, out, _ = _run(capsys, "info", "--preset", "3b-moe", "--json")
    data = json.loads(out)
    assert code == 0 and abs(data["params"]["total"] - 64e9) / 64e9 < 0.15
    assert data["config"]["lm"]["moe"]["num_experts"] == 64
    code, out, _ = _run(capsys, "info", "--preset", "3b", "--encoder", "vit-l14-336")
    assert code == 0 and "ViT 1024w×24L patch 14 @ 336px" in out
    code, _, err = _run(capsys, "info", "--preset", "nope")
    assert code == 2 and "unknown preset" in err


def test_init_builds_a_loadable_checkpoint(hf_clip_dir, hf_llama_dir, tmp_path, capsys):
    out = tmp_path / "ckpt"
    code, _stdout, _ = _run(
        capsys,
        "init",
        "--vision",
        str(hf_clip_dir),
        "--llm",
        str(hf_llama_dir),
        "--preset",
        "tiny",
        "--out",
        str(out),
    )
    assert code == 0 and (out / "config.json").exists() and (out / "tokenizer.json").exists()
    code, _, err = _run(
        capsys,
        "init",
        "--vision",
        str(tmp_path / "none"),
        "--llm",
        str(hf_llama_dir),
        "--preset",
        "tiny",
        "--out",
        str(tmp_path / "x"),
    )
    assert code == 2 and "none" in err and not (tmp_path / "x").exists()


def test_console_script_help_is_fast_and_lists_verbs():
    r = subprocess.run(
        [sys.executable, "-m", "mm15.cli", "--help"], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0
    for verb in ("demo", "split", "info", "init"):
        assert verb in r.stdout
