"""Bad command-line inputs (issue 18's probe): one ``error: …`` line naming the file or flag,
exit status 2, no traceback, and nothing already written is lost.  Every case goes through the
verb's own argument parsing (``mm15.cli.main``)."""

from __future__ import annotations

import argparse
import io
import json
import shutil
from pathlib import Path

import pytest
import torch

from mm15.cli import main
from mm15.model.generate import GenerationResult
from mm15.services.chat_session import ChatSession
from tests.train_fixtures import train_config, write_corpus

SHEET = str(Path(__file__).parents[1] / "mm15" / "assets" / "order_sheet.png")


def _refused(capsys, argv: list[str], *needles: str) -> str:
    """Run ``mm15 ARGV``; it must exit 2 with one ``error:`` line holding every needle.

    Refusals at argument parsing raise SystemExit(2) after argparse's usage lines; the rest
    return 2 with exactly one line on stderr."""
    try:
        code = main(argv)
    except SystemExit as e:
        code, parsing = e.code, True
    else:
        parsing = False
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error: " in line]
    assert code == 2, err
    assert "Traceback" not in err and len(errors) == 1, err
    if not parsing:
        assert err.count("\n") == 1 and err.startswith("error: "), err
    for needle in needles:
        assert needle in errors[0], errors[0]
    assert "weights_only=False" not in err
    return errors[0]


# ---------------------------------------------------------------------------------------------
# Broken checkpoints (chat, eval and serve all load through mm15.services.checkpoint.load_checkpoint)


@pytest.fixture
def broken(tiny_ckpt_dir, tmp_path):
    """A fresh copy of the tiny checkpoint to break."""
    return Path(shutil.copytree(tiny_ckpt_dir, tmp_path / "ckpt"))


def _edit_config(ckpt: Path, part: str, key: str, value) -> dict:
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg[part][key] = value
    (ckpt / "config.json").write_text(json.dumps(cfg))
    return cfg


@pytest.fixture
def verbs(tmp_path):
    """The argv of chat and eval on a checkpoint (eval on a stub corpus: loading comes first)."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "index.json").write_text('{"seed": 0, "files": []}')

    def argv(verb: str, ckpt: Path) -> list[str]:
        if verb == "chat":
            return ["chat", "--model", str(ckpt), "--device", "cpu", "Hi"]
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

    return argv


@pytest.mark.parametrize("verb", ["chat", "eval"])
def test_truncated_safetensors_names_the_file(broken, verbs, capsys, verb):
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    _refused(capsys, verbs(verb, broken), str(weights), "truncated or corrupt")


def test_garbage_safetensors_header_names_the_file(broken, verbs, capsys):
    (broken / "model.safetensors").write_bytes(b"garbage!")
    _refused(capsys, verbs("chat", broken), "model.safetensors", "truncated or corrupt")


@pytest.mark.parametrize("verb", ["chat", "eval"])
def test_tensor_shapes_checked_against_config_json(broken, verbs, capsys, verb):
    cfg = _edit_config(broken, "lm", "ffn_hidden", 96)  # the weights were saved at 128
    dim = cfg["lm"]["dim"]
    _refused(
        capsys,
        verbs(verb, broken),
        str(broken / "model.safetensors"),
        f"tensor lm.layers.0.ffn.w1.weight has shape [128, {dim}]",
        f"{broken / 'config.json'} implies [96, {dim}]",
    )


@pytest.mark.parametrize(
    "part, key, value, needle",
    [
        ("lm", "dim", -4, "lm.dim must be a positive integer, got -4"),
        ("lm", "n_layers", "x", "must be an integer, got 'x' (at lm.n_layers)"),
        ("vision", "patch_size", 0, "vision.patch_size must be a positive integer"),
        ("connector", "num_tokens", 2.5, "must be an integer, got 2.5 (at connector.num_tokens)"),
    ],
)
def test_bad_sizes_in_config_json_name_the_field(broken, verbs, capsys, part, key, value, needle):
    _edit_config(broken, part, key, value)
    _refused(capsys, verbs("chat", broken), str(broken / "config.json"), needle)


def test_config_json_that_is_not_json_names_the_file(broken, verbs, capsys):
    (broken / "config.json").write_text("{not json")
    _refused(capsys, verbs("eval", broken), str(broken / "config.json"), "not valid JSON")


@pytest.mark.parametrize(
    "name, text, needle",
    [
        ("tokenizer.json", "{not json", "not a readable tokenizers file"),
        ("tokenizer.json", '{"model": 3}', "not a readable tokenizers file"),
        ("mm15_tokenizer.json", "{not json", "not valid JSON"),
        ("mm15_tokenizer.json", '{"image": "<image>"}', "unknown keys ['image']"),
        ("mm15_tokenizer.json", "[1, 2]", "expected a JSON object"),
        ("mm15_tokenizer.json", '{"eos_tokens": "<|eos|>"}', "eos_tokens must be a list"),
        ("mm15_tokenizer.json", '{"bos_token": "<nope>"}', "no ids for special tokens"),
    ],
)
def test_corrupt_tokenizer_names_the_file(broken, verbs, capsys, name, text, needle):
    (broken / name).write_text(text)
    _refused(capsys, verbs("chat", broken), str(broken / name), needle)


def test_pickle_with_objects_is_refused_without_unsafe_advice(broken, verbs, capsys):
    (broken / "model.safetensors").unlink()
    state = {"w": torch.zeros(2), "extra": argparse.Namespace(a=1)}
    torch.save(state, broken / "model.pt")
    line = _refused(
        capsys,
        verbs("chat", broken),
        str(broken / "model.pt"),
        "pickled objects other than tensors",
        "argparse.Namespace",
        "refused for safety",
        "safetensors",
    )
    assert "weights_only" not in line


def test_unreadable_pickle_names_the_file(broken, verbs, capsys):
    (broken / "model.safetensors").unlink()
    (broken / "model.bin").write_bytes(b"not a pickle")
    _refused(capsys, verbs("eval", broken), str(broken / "model.bin"), "not a readable")


# ---------------------------------------------------------------------------------------------
# Devices


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("verb", ["chat", "eval"])
def test_cuda_on_a_cpu_machine_says_so(tiny_ckpt_dir, verbs, capsys, verb):
    argv = [a if a != "cpu" else "cuda" for a in verbs(verb, tiny_ckpt_dir)]
    needle = "no CUDA" if torch.version.cuda is None else "no CUDA device is visible"
    _refused(capsys, argv, "cuda was asked for", needle, "use --device cpu")


@pytest.mark.parametrize("verb", ["chat", "eval"])
def test_unknown_device_name(tiny_ckpt_dir, verbs, capsys, verb):
    argv = [a if a != "cpu" else "gpu" for a in verbs(verb, tiny_ckpt_dir)]
    _refused(capsys, argv, "device 'gpu'", "use cpu, cuda")


# ---------------------------------------------------------------------------------------------
# Numeric flags refused while parsing


@pytest.mark.parametrize(
    "flag, value",
    [
        ("--temperature", "nan"),
        ("--temperature", "inf"),
        ("--temperature", "-1"),
        ("--max-new-tokens", "0"),
        ("--n-max", "0"),
    ],
)
def test_chat_numeric_flags(tiny_ckpt_dir, capsys, flag, value):
    _refused(capsys, ["chat", "--model", str(tiny_ckpt_dir), flag, value, "Hi"], flag, value)


@pytest.mark.parametrize(
    "flag, value", [("--batch-size", "0"), ("--limit", "-1"), ("--max-new-tokens", "nan")]
)
def test_eval_numeric_flags(tiny_ckpt_dir, tmp_path, capsys, flag, value):
    argv = ["eval", "--model", str(tiny_ckpt_dir), "--task", "synthetic", "--data", str(tmp_path)]
    _refused(capsys, [*argv, flag, value], flag, value)


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--resolution", "0"], "--resolution"),
        (["--resolution", "-5"], "--resolution"),
        (["--tokens-per-tile", "0"], "--tokens-per-tile"),
        (["--n-min", "0"], "--n-min"),
        (["--n-min", "5", "--n-max", "4"], "need 1 <= n_min <= n_max"),
    ],
)
def test_split_sizes(capsys, args, needle):
    _refused(capsys, ["split", SHEET, *args], needle)


def test_split_save_tiles_onto_a_file_keeps_the_file(tmp_path, capsys):
    target = tmp_path / "tiles"
    target.write_text("mine")
    _refused(capsys, ["split", SHEET, "--save-tiles", str(target)], str(target))
    assert target.read_text() == "mine"


# ---------------------------------------------------------------------------------------------
# Interactive chat: a line that is not UTF-8 is reported and the session goes on


def test_interactive_chat_survives_a_line_that_is_not_utf8(tiny_ckpt_dir, capsys, monkeypatch):
    prompts = []

    def generate(self, ex):
        prompts.append(self.tokenizer.decode(ex.input_ids, skip_special=False))
        return GenerationResult([], "stop", "ok")

    monkeypatch.setattr(ChatSession, "generate", generate)
    raw = b"caf\xe9 \xff\xfe\nhello\n"  # latin-1 bytes, then a valid prompt, then end of input
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(raw), encoding="utf-8"))
    code = main(["chat", "--model", str(tiny_ckpt_dir), "--device", "cpu"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "error: input line 1 is not valid utf-8 (byte 0xe9 at offset 3)" in err
    assert "Traceback" not in err and out.splitlines() == ["ok"]
    assert len(prompts) == 1 and prompts[0].endswith("User: hello\nAssistant:\n")


def test_one_shot_prompt_that_is_not_utf8(tiny_ckpt_dir, capsys):
    prompt = b"hi \xff".decode("utf-8", "surrogateescape")  # how Python hands over such argv
    _refused(
        capsys, ["chat", "--model", str(tiny_ckpt_dir), prompt], "the prompt is not valid UTF-8"
    )


# ---------------------------------------------------------------------------------------------
# train --config and dataset paths


@pytest.mark.parametrize(
    "make, needle",
    [
        (lambda p: p.mkdir(), "is a directory"),
        (lambda p: None, "no such file"),
        (lambda p: p.write_text('{"stages": [}'), "is not valid JSON"),
        (
            lambda p: p.write_text('{"stages": 3}'),
            "TrainConfig.stages must be a list, got 3 (at stages)",
        ),
        (lambda p: p.write_text('{"stages": [], "bogus": 1}'), "unknown TrainConfig keys"),
    ],
)
def test_train_config_file(tmp_path, capsys, make, needle):
    path = tmp_path / "train.json"
    make(path)
    _refused(capsys, ["train", "--config", str(path)], f"--config {path}", needle)


def test_train_dataset_path_that_is_a_directory(tmp_path, capsys):
    corpus = tmp_path / "corpus"
    write_corpus(corpus, n=2)
    (corpus / "folder").mkdir()
    cfg = json.loads(json.dumps(_as_json(train_config(corpus, tmp_path / "run", steps=1))))
    for stage in cfg["stages"]:
        for ds in stage["datasets"]:
            ds["paths"] = [str(corpus / "folder")]
    path = tmp_path / "train.json"
    path.write_text(json.dumps(cfg))
    _refused(
        capsys,
        ["train", "--config", str(path)],
        str(corpus / "folder"),
        "is a directory; list the data files",
    )


def _as_json(cfg):
    from mm15.config_json import to_dict

    return to_dict(cfg)


# ---------------------------------------------------------------------------------------------
# eval: data and output paths checked before the model loads; nothing written is lost


@pytest.mark.parametrize(
    "make, needle",
    [
        (lambda p: p.write_text("{}"), "is a file; the synthetic suite wants the corpus directory"),
        (lambda p: (p / "index.json").mkdir(parents=True), "index.json is a directory"),
        (lambda p: p.mkdir(), "index.json is missing"),
        (lambda p: p.mkdir() or (p / "index.json").write_text("{}"), "is not a corpus index"),
    ],
)
def test_eval_synthetic_data_path(tiny_ckpt_dir, tmp_path, capsys, make, needle):
    data = tmp_path / "corpus"
    make(data)
    argv = [
        "eval",
        "--model",
        str(tiny_ckpt_dir),
        "--task",
        "synthetic",
        "--data",
        str(data),
        "--out",
        str(tmp_path / "out"),
    ]
    _refused(capsys, argv, f"--data {data}", needle)


def test_eval_out_that_is_a_file_is_refused_before_running(tiny_ckpt_dir, tmp_path, capsys):
    rows = tmp_path / "vqa.jsonl"
    rows.write_text(json.dumps({"question": "q", "answers": ["a"], "image": "none.png"}) + "\n")
    out = tmp_path / "results"
    out.write_text("earlier results")
    argv = [
        "eval",
        "--model",
        str(tiny_ckpt_dir),
        "--task",
        "textvqa",
        "--data",
        str(rows),
        "--out",
        str(out),
        "--device",
        "cpu",
    ]
    _refused(capsys, argv, f"--out {out}", "is a file, not a directory")
    assert out.read_text() == "earlier results"


# ---------------------------------------------------------------------------------------------
# init: an --out that is not a checkpoint is never replaced


@pytest.mark.parametrize("kind", ["file", "folder"])
def test_init_never_replaces_what_is_not_a_checkpoint(
    hf_clip_dir, hf_llama_dir, tmp_path, capsys, kind
):
    out = tmp_path / "out"
    if kind == "file":
        out.write_text("notes")
    else:
        out.mkdir()
        (out / "notes.txt").write_text("notes")
    argv = [
        "init",
        "--vision",
        str(hf_clip_dir),
        "--llm",
        str(hf_llama_dir),
        "--preset",
        "tiny",
        "--out",
        str(out),
    ]
    _refused(capsys, argv, str(out), "refusing to replace it")
    assert (out if kind == "file" else out / "notes.txt").read_text() == "notes"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary left behind


# ---------------------------------------------------------------------------------------------
# Programming errors keep their traceback


def test_unexpected_errors_are_not_swallowed(monkeypatch):
    import mm15.cli.model

    def boom(args):
        raise RuntimeError("a bug")

    monkeypatch.setattr(mm15.cli.model, "cmd_info", boom)
    with pytest.raises(RuntimeError, match="a bug"):
        main(["info", "--preset", "tiny"])
