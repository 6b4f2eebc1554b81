"""One configuration culture (issue 21): every verb resolves a typed config from its shorthand
flags and ``--set``, prints it with ``--print-config``, and eval/serve/chat/split apply
inference-time image settings (Table 2) through one function."""

from __future__ import annotations

import dataclasses
import json
import socket

import pytest
import uvicorn
from PIL import Image

import mm15.eval.runner
import mm15.serve.app
from mm15.cli import build_parser, main
from mm15.cli.chat import ChatConfig
from mm15.cli.eval import EvalConfig
from mm15.cli.serve import config_from_args
from mm15.cli.split import SplitConfig
from mm15.config_json import from_dict
from mm15.data.layout import plan_image
from mm15.presets import tiny
from mm15.serve.config import ServeConfig
from mm15.services.image_settings import with_image_settings

WIDE = (112 * 16, 112)  # the tiny preset's tiles are 112 px: a 1x16 grid when n_max allows


def _tiles(image_cfg) -> int:
    return plan_image(WIDE, image_cfg, tokens_per_tile=16).n_tiles


def _one_error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err, err
    return err


@pytest.fixture
def captured(monkeypatch):
    """Run serve and eval up to the model they would use, and keep it."""
    seen = {}

    def create_app(model, tokenizer, cfg, **kw):
        seen["model"], seen["cfg"] = model, cfg
        return object()

    def run_eval(model, tokenizer, pairs, out, settings):
        seen["model"] = model
        raise SystemExit(0)

    monkeypatch.setattr(mm15.serve.app, "create_app", create_app)
    monkeypatch.setattr("mm15.serve.server.uvicorn_config", lambda *a, **kw: None)
    monkeypatch.setattr(uvicorn.Server, "__init__", lambda self, config: None)
    monkeypatch.setattr(uvicorn.Server, "run", lambda self: None)
    monkeypatch.setattr(mm15.eval.runner, "run_eval", run_eval)
    return seen


def _free_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def _eval_argv(ckpt, tmp_path) -> list[str]:
    corpus = tmp_path / "corpus"
    corpus.mkdir(exist_ok=True)
    (corpus / "index.json").write_text('{"seed": 0, "files": []}')
    return [
        "eval",
        "--model",
        str(ckpt),
        "--task",
        "synthetic",
        "--data",
        str(corpus),
        "--out",
        str(tmp_path / "out"),
        "--device",
        "cpu",
    ]


# ---------------------------------------------------------------------------------------------
# The shared image function


def test_with_image_settings_replaces_fields_and_leaves_the_original():
    cfg = tiny()
    wider = with_image_settings(cfg, {"n_max": 16, "indicator": "seps"})
    assert (wider.image.n_max, wider.image.indicator, cfg.image.n_max) == (16, "seps", 4)
    assert _tiles(cfg.image) == 5 and _tiles(wider.image) == 17  # 1x4 + overview; 1x16 + overview
    assert with_image_settings(cfg, {}) is cfg


@pytest.mark.parametrize(
    ("settings", "needle"),
    [
        ({"n_maxx": 3}, "unknown ImageConfig keys"),
        ({"n_max": "many"}, "n_max must be an integer"),
        ({"overview": "middle"}, "overview must be one of"),
        ({"n_min": 5}, "need 1 <= n_min <= n_max"),
        ({"resolution": 0}, "image.resolution must be a positive integer"),
        ({"resolution": 8}, "smaller than one 14px patch"),
    ],
)
def test_with_image_settings_refuses_bad_values(settings, needle):
    with pytest.raises(ValueError, match=needle):
        with_image_settings(tiny(), settings)


# ---------------------------------------------------------------------------------------------
# eval and serve: --set image.n_max=16 reaches the model they run


@pytest.mark.parametrize(
    "how", [["--set", "image.n_max=16"], ["--n-max", "16"], ["--set", 'image={"n_max": 16}']]
)
def test_eval_plans_images_with_the_image_settings(tiny_ckpt_dir, tmp_path, captured, how):
    with pytest.raises(SystemExit):
        main([*_eval_argv(tiny_ckpt_dir, tmp_path), *how])
    image = captured["model"].cfg.image
    assert image.n_max == 16 and _tiles(image) == 17


@pytest.mark.parametrize("how", [["--set", "image.n_max=16"], ["--n-max", "16"]])
def test_serve_plans_images_with_the_image_settings(tiny_ckpt_dir, captured, how):
    assert main(["serve", "--model", str(tiny_ckpt_dir), "--port", _free_port(), *how]) == 0
    assert _tiles(captured["model"].cfg.image) == 17
    assert captured["cfg"].image == {"n_max": 16}


BAD_IMAGE = [
    (["--set", "image.n_max=0"], "need 1 <= n_min <= n_max, got (1, 0)"),
    (["--set", "image.n_min=9"], "need 1 <= n_min <= n_max, got (9, 4)"),
    (["--set", "image.n_maxx=16"], "unknown ImageConfig keys"),
    (["--set", "image.indicator=stars"], "indicator must be one of"),
    (["--set", "image=16"], "image"),
]


@pytest.mark.parametrize(("flags", "needle"), BAD_IMAGE, ids=lambda x: str(x))
@pytest.mark.parametrize("verb", ["eval", "serve", "chat", "split"])
def test_bad_image_settings_are_one_error_line(
    tiny_ckpt_dir, tmp_path, capsys, monkeypatch, captured, verb, flags, needle
):
    import mm15.services.checkpoint

    def never(*a, **kw):
        raise AssertionError("weights were loaded")

    monkeypatch.setattr(mm15.services.checkpoint, "load_checkpoint", never)
    ckpt = str(tiny_ckpt_dir)
    argv = {
        "eval": _eval_argv(ckpt, tmp_path),
        "serve": ["serve", "--model", ckpt, "--port", _free_port()],
        "chat": ["chat", "--model", ckpt, "--device", "cpu", "Hi"],
        "split": ["split", "--preset", "tiny", str(tmp_path / "x.png")],
    }[verb]
    try:
        code = main([*argv, *flags])
    except SystemExit as e:  # split refuses bad n_min/n_max like a usage error, as it always did
        code = e.code
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: ") and needle in err, err


# ---------------------------------------------------------------------------------------------
# Shorthands and --set go through one mechanism; --print-config shows the result


def test_serve_shorthands_and_set_resolve_one_config(tiny_ckpt_dir, monkeypatch):
    monkeypatch.delenv("MM15_API_KEY", raising=False)
    parse = build_parser().parse_args
    cfg = config_from_args(
        parse(
            [
                "serve",
                "--model",
                str(tiny_ckpt_dir),
                "--port",
                "9001",
                "--set",
                "port=9002",
                "--max-batch",
                "3",
                "--set",
                "limits.max_images=2",
                "--no-web-ui",
            ]
        )
    )
    assert (cfg.port, cfg.engine.max_batch, cfg.limits.max_images, cfg.web_ui) == (
        9002,
        3,
        2,
        False,
    )
    assert cfg.model_name == tiny_ckpt_dir.name and cfg.api_key is None
    # What is left unset is derived as before: the default max_tokens within the limit, the
    # allowed Host names from the bind address (also when --set moved it).
    cfg = config_from_args(
        parse(["serve", "--model", "m", "--set", "limits.max_tokens=100", "--set", "host=0.0.0.0"])
    )
    assert (cfg.limits.default_max_tokens, cfg.http.allowed_hosts) == (100, ("*",))
    cfg = config_from_args(
        parse(["serve", "--model", "m", "--max-tokens-limit", "100", "--default-max-tokens", "500"])
    )
    assert cfg.limits.default_max_tokens == 100  # clamped, as the flags always were


@pytest.mark.parametrize(
    ("verb", "cls", "argv", "expect"),
    [
        (
            "eval",
            EvalConfig,
            [
                "--model",
                "m",
                "--task",
                "pope",
                "--data",
                "d",
                "--batch-size",
                "2",
                "--set",
                "limit=5",
                "--n-max",
                "16",
            ],
            {"tasks": ["pope"], "batch_size": 2, "limit": 5, "image": {"n_max": 16}},
        ),
        (
            "serve",
            ServeConfig,
            ["--model", "m", "--port", "9000", "--set", "engine.max_queue=3"],
            {"port": 9000, "model_name": "m"},
        ),
        (
            "chat",
            ChatConfig,
            ["--model", "m", "--temperature", "0.5", "--set", "top_p=0.9"],
            {"temperature": 0.5, "top_p": 0.9, "max_new_tokens": 256},
        ),
        (
            "split",
            SplitConfig,
            ["--preset", "tiny", "--overview", "none", "--set", "image.static_grid=[3,3]"],
            {"preset": "tiny", "image": {"overview": "none", "static_grid": [3, 3]}},
        ),
    ],
)
def test_print_config_shows_the_resolved_config(capsys, verb, cls, argv, expect):
    assert main([verb, *argv, "--print-config"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert {k: data[k] for k in expect} == expect
    assert dataclasses.is_dataclass(from_dict(cls, data))  # the one JSON codec reads it back


def test_demo_prints_its_config(capsys):
    assert main(["demo", "--set", "sft.steps=7", "--print-config"]) == 0
    assert json.loads(capsys.readouterr().out)["sft"]["steps"] == 7


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (
            ["eval", "--model", "m", "--task", "pope", "--data", "d", "--set", "batch_size=0"],
            "batch_size must be >= 1",
        ),
        (["eval", "--model", "m", "--data", "d"], "give --task NAME"),
        (["chat", "--model", "m", "--set", "top_p=2", "Hi"], "top_p must be in (0, 1]"),
        (["chat", "--model", "m", "--set", "temperatur=1", "Hi"], "no such setting"),
        (["serve", "--model", "m", "--set", "engine.max_batch=0"], "max_batch >= 1"),
        (["serve", "--set", "port=1"], "give --model DIR"),
    ],
)
def test_bad_settings_are_one_error_line(capsys, argv, needle):
    assert needle in _one_error(capsys, argv)


def test_split_set_reaches_the_plan(tmp_path, capsys):
    wide = tmp_path / "wide.png"
    Image.new("RGB", WIDE, "white").save(wide)
    assert main(["split", str(wide), "--preset", "tiny", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["grid"] == [1, 4]
    assert main(["split", str(wide), "--preset", "tiny", "--set", "image.n_max=16", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["grid"] == [1, 16]


# --config FILE: every verb starts from a saved config (as --print-config writes it)

SAVED = {
    "eval": ["--model", "m", "--task", "pope", "--data", "d", "--set", "limit=5", "--n-max", "16"],
    "serve": ["--model", "m", "--port", "9000", "--set", "engine.max_queue=3"],
    "chat": ["--model", "m", "--temperature", "0.5", "--set", "top_p=0.9"],
    "split": ["--preset", "tiny", "--set", "image.static_grid=[3,3]"],
    "demo": ["--set", "sft.steps=7"],
}


def _printed(capsys, argv: list[str]) -> dict:
    assert main([*argv, "--print-config"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("verb", sorted(SAVED))
def test_config_file_round_trips_and_flags_apply_on_top(capsys, tmp_path, verb):
    saved = _printed(capsys, [verb, *SAVED[verb]])
    f = tmp_path / f"{verb}.json"
    f.write_text(json.dumps(saved))
    assert _printed(capsys, [verb, "--config", str(f)]) == saved
    # A --set on top changes one field and keeps the rest of the file.
    key, value = {
        "chat": ("seed", 3),
        "demo": ("seed", 3),
        "eval": ("limit", 7),
        "serve": ("port", 9001),
        "split": ("tokens_per_tile", 9),
    }[verb]
    again = _printed(capsys, [verb, "--config", str(f), "--set", f"{key}={value}"])
    assert again == {**saved, key: value}


def test_serve_runs_from_a_config_file(tiny_ckpt_dir, tmp_path, captured, capsys):
    cfg = _printed(capsys, ["serve", "--model", str(tiny_ckpt_dir), "--n-max", "16"])
    cfg["port"] = int(_free_port())
    f = tmp_path / "serve.json"
    f.write_text(json.dumps(cfg))
    assert main(["serve", "--config", str(f)]) == 0
    assert _tiles(captured["model"].cfg.image) == 17


@pytest.mark.parametrize("verb", ["eval", "serve", "chat", "split", "demo"])
@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (None, "no such file"),
        ("dir", "is a directory"),
        ("{not json", "is not valid JSON"),
        ('{"no_such_field": 1}', "no_such_field"),
    ],
)
def test_bad_config_files_are_one_error_line(capsys, tmp_path, verb, content, needle):
    f = tmp_path / "cfg.json"
    if content == "dir":
        f.mkdir()
    elif content is not None:
        f.write_text(content)
    err = _one_error(capsys, [verb, "--config", str(f), "--print-config"])
    assert needle in err and str(f) in err
