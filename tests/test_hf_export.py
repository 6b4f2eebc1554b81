"""``mm15 export --hf OUT --model DIR`` and the classes that load its output (issue 22).

What the directory holds and how its weights are named; ``import mm15`` registering the
classes lazily (no transformers import of its own, ``AutoConfig`` without remote code); the
``auto_map`` files loading in a fresh process with ``trust_remote_code``; bad inputs as one
``error:`` line with exit status 2.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from safetensors import safe_open

from mm15.cli import main
from mm15.presets import tiny
from mm15.tokenizer import byte_tokenizer
from tests.hf_fixtures import hf_export_fixture, make_checkpoint  # noqa: F401  (fixture)

REPO = Path(__file__).resolve().parents[1]


def _python(code: str, tmp_path: Path) -> subprocess.CompletedProcess:
    """``code`` in a fresh interpreter, offline, with its own transformers module cache."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"))
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=300,
    )


def test_the_export_directory(hf_export):
    _, out = hf_export("qwen2_moe")
    names = {p.name for p in out.iterdir()}
    assert {
        "config.json",
        "model.safetensors",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "chat_template.jinja",
        "processor_config.json",
        "configuration_mm15.py",
        "modeling_mm15.py",
        "processing_mm15.py",
    } <= names
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "mm15"
    assert config["auto_map"]["AutoModelForImageTextToText"].startswith("modeling_mm15.")
    text = config["text_config"]
    assert text["model_type"] == "qwen2_moe"
    assert (text["decoder_sparse_step"], text["num_experts_per_tok"]) == (2, 2)
    assert text["norm_topk_prob"] is True and text["shared_expert_intermediate_size"] == 0
    processor = json.loads((out / "processor_config.json").read_text())
    assert processor["auto_map"] == {"AutoProcessor": "processing_mm15.MM15Processor"}
    assert processor["tokens_per_tile"] == 16 and processor["image_config"]["n_max"] == 4
    generation = json.loads((out / "generation_config.json").read_text())
    assert generation["eos_token_id"] == [byte_tokenizer().eos_ids[0]]


def test_weight_names(hf_export):
    """mm15's own names for the towers; transformers' Qwen2-MoE checkpoint names (per-expert
    tensors, as save_pretrained writes them) for the decoder."""
    _, out = hf_export("qwen2_moe")
    with safe_open(out / "model.safetensors", "pt") as f:
        keys = set(f.keys())
        shapes = {k: f.get_slice(k).get_shape() for k in keys}
    assert "vision_tower.pos_embed" in keys and "connector.pos_emb" in keys
    assert "language_model.model.layers.0.mlp.gate_proj.weight" in keys  # dense layer 0
    moe = "language_model.model.layers.1.mlp."
    assert shapes[moe + "gate.weight"] == [4, 64]
    assert shapes[moe + "experts.3.gate_proj.weight"] == [128, 64]
    assert shapes[moe + "shared_expert.gate_proj.weight"] == [0, 64]
    assert "language_model.model.layers.1.self_attn.q_proj.bias" in keys  # zeros
    assert not any(k.startswith(("vision.", "lm.")) for k in keys)


def test_import_mm15_imports_no_transformers_and_registers_lazily(hf_export, tmp_path):
    _, out = hf_export("llama")
    r = _python(
        f"""
        import sys
        import mm15
        assert "transformers" not in sys.modules and "torch" not in sys.modules
        from transformers import AutoConfig
        config = AutoConfig.from_pretrained({str(out)!r})
        assert type(config).__name__ == "MM15Config", type(config)
        assert config.text_config.model_type == "llama"
        assert not any(m.startswith("transformers_modules") for m in sys.modules)
        print("ok")
        """,
        tmp_path,
    )
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-3000:]


def test_trust_remote_code_loads_the_auto_map_files(hf_export, tmp_path):
    """Without ``import mm15``: transformers imports the export's own code files (each
    auto_map entry), which import the installed mm15 package and so register its classes."""
    _, out = hf_export("qwen2")
    r = _python(
        f"""
        import json, sys
        from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor
        from transformers.dynamic_module_utils import get_class_from_dynamic_module
        path = {str(out)!r}
        config = AutoConfig.from_pretrained(path, trust_remote_code=True)
        model = AutoModelForImageTextToText.from_pretrained(path, trust_remote_code=True)
        processor = AutoProcessor.from_pretrained(path, trust_remote_code=True)
        remote = [m for m in sys.modules if m.startswith("transformers_modules")]
        assert any(m.endswith(".configuration_mm15") for m in remote), remote
        auto_map = {{**config.auto_map, **json.load(open(path + "/processor_config.json"))["auto_map"]}}
        for ref in auto_map.values():
            cls = get_class_from_dynamic_module(ref, path)
            assert cls in (type(config), type(model), type(processor)), ref
        batch = processor(text="<|bos|>Hello", return_tensors="pt")
        logits = model(**batch).logits
        print(type(model).__name__, type(processor).__name__, tuple(logits.shape))
        """,
        tmp_path,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.split() == [
        "MM15ForConditionalGeneration",
        "MM15Processor",
        "(1,",
        "6,",
        "260)",
    ]


def _refused(capsys, argv: list[str], *needles: str) -> str:
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    for needle in needles:
        assert needle in err, err
    return err


def test_export_refuses_a_missing_model_dir(capsys, tmp_path):
    _refused(
        capsys,
        ["export", "--model", str(tmp_path / "nope"), "--hf", str(tmp_path / "out")],
        "nope",
        "not an mm15 checkpoint",
    )
    assert not (tmp_path / "out").exists()


def test_export_refuses_an_out_dir_that_is_not_empty(capsys, tmp_path, tiny_ckpt_dir):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    argv = ["export", "--model", str(tiny_ckpt_dir), "--hf", str(out)]
    _refused(capsys, argv, str(out), "not empty")
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    (tmp_path / "file").write_text("x")
    argv = ["export", "--model", str(tiny_ckpt_dir), "--hf", str(tmp_path / "file")]
    _refused(capsys, argv, "not a directory")


def test_export_refuses_an_unsupported_decoder(capsys, tmp_path):
    """Head width × heads ≠ model width: mm15's decoder computes it, transformers' Llama config
    refuses it, so there is no native text_config to export."""
    cfg = tiny(vocab_size=len(byte_tokenizer()))
    cfg = dataclasses.replace(
        cfg, lm=dataclasses.replace(cfg.lm, n_heads=3, n_kv_heads=1, head_dim=16)
    )
    ckpt = make_checkpoint(tmp_path / "ckpt", cfg)
    argv = ["export", "--model", str(ckpt), "--hf", str(tmp_path / "out")]
    _refused(capsys, argv, "unsupported decoder", "llama", "heads 3/1")
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.tmp")]
