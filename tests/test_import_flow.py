"""Imports flow one way (STYLE.md): model/ → torch + config; data/ never imports model/.  One
input pipeline (mm15.data.pipeline and its modules, PIPELINE_MODULES): nothing else plans image
tokens, cuts tiles or decodes media for the model, and every entry point goes through it."""

import ast
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "mm15"
THIRD_PARTY_MODEL = {"torch", "safetensors"}


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("path", sorted((PKG / "model").rglob("*.py")), ids=lambda p: p.name)
def test_model_imports_only_torch_and_config(path):
    for name in _imports(path):
        top = name.split(".")[0]
        if top == "mm15":
            assert name == "mm15.config" or name.startswith("mm15.model"), f"{path.name}: {name}"
        else:
            assert top in THIRD_PARTY_MODEL or top in sys.stdlib_module_names, (
                f"{path.name}: {name}"
            )


@pytest.mark.parametrize("path", sorted((PKG / "data").rglob("*.py")), ids=lambda p: p.name)
def test_data_never_imports_model(path):
    bad = [n for n in _imports(path) if n.startswith("mm15.model")]
    assert not bad, f"{path.name} imports {bad}"


# The input pipeline's modules (the rooms of mm15.data.pipeline's docstring).
PIPELINE_MODULES = {
    "mm15.data.pipeline": "a sample → ids, labels and image plans",
    "mm15.data.sample_images": "the plans and tiles of the images a sample shows",
    "mm15.data.token_stream": "text, special tokens and image blocks → ids and loss mask",
    "mm15.data.prompt_encoding": "prompts to generate from: ids and tiles",
}
# The primitives of planning, tiling and decoding media for the model, by defining module.
PIPELINE_ONLY = {
    "mm15.data.layout": {"plan_image", "plan_sample", "plan_video", "sample_allows_split"},
    "mm15.data.splitting": {"tile_image", "load_tiles"},
    "mm15.data.media": {"load_image", "load_video", "media_size", "video_frame_count"},
}
# Modules that use a primitive for something other than feeding the model, and why.
PIPELINE_EXCEPTIONS = {
    **{m.removeprefix("mm15.").replace(".", "/") + ".py": "the pipeline" for m in PIPELINE_MODULES},
    "data/split_report.py": "`mm15 split`: reports what the planner does with an image",
    "cli/split.py": "`mm15 split --save-tiles`: pictures of the tiles",
    "data/chat_template.py": "the Hugging Face template's messages: region sizes, frame counts",
    "data/check.py": "`mm15 data check` contact sheet: draws regions on the image",
    "demo/encoder.py": "the demo's toy encoder: one tile per image",
    "eval/video_tasks.py": "MVBench as multi-image (Table 9): the sampler's frames become images",
}
ENTRY_POINTS = [
    "serve/prepare.py",
    "services/chat_session.py",
    "services/inference.py",
    "eval/lmms_plugin.py",
    "train/data.py",
    "data/check.py",
    "hf/processing.py",
    "vllm/inputs.py",
]


def _imported_names(path: Path) -> set[tuple[str, str]]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.update((node.module, a.name) for a in node.names)
        elif isinstance(node, ast.Import):
            out.update((a.name, "*") for a in node.names)
    return out


def _pipeline_violations(path: Path, rel: str) -> list[str]:
    """What ``path`` (``rel`` to mm15/) imports that only the pipeline may."""
    if rel in PIPELINE_EXCEPTIONS or rel.startswith("model/"):
        return []
    bad = []
    for module, name in _imported_names(path):
        if name in PIPELINE_ONLY.get(module, ()):
            bad.append(f"{rel} imports {module}.{name}: go through mm15.data.pipeline")
        if module in ("mm15.data.chat", "mm15.data.prompt"):
            bad.append(f"{rel}: {module} is gone")
    return bad


def _uses_the_pipeline(path: Path) -> bool:
    return any(m in PIPELINE_MODULES for m, _ in _imported_names(path))


def test_the_pipeline_modules_exist():
    for module in PIPELINE_MODULES:
        assert (PKG.parent / (module.replace(".", "/") + ".py")).is_file(), module


@pytest.mark.parametrize("path", sorted(PKG.rglob("*.py")), ids=lambda p: str(p.relative_to(PKG)))
def test_only_the_pipeline_plans_tiles_and_decodes(path):
    assert not _pipeline_violations(path, str(path.relative_to(PKG)))


@pytest.mark.parametrize("rel", ENTRY_POINTS)
def test_entry_points_use_the_pipeline(rel):
    assert _uses_the_pipeline(PKG / rel), rel


# Verbs in one place (mm15/cli), the services they call in others: nothing outside mm15/cli
# builds an argument parser or imports the CLI, and the services sit below every verb.
PARSER_CALLS = {"ArgumentParser", "add_parser", "add_argument", "add_subparsers"}
VERB_PACKAGES = ("mm15.cli", "mm15.serve", "mm15.eval", "mm15.train", "mm15.demo")


def _calls(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call):
            f = node.func
            out.add(f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", ""))
    return out


@pytest.mark.parametrize(
    "path",
    sorted(p for p in PKG.rglob("*.py") if "cli" not in p.relative_to(PKG).parts),
    ids=lambda p: str(p.relative_to(PKG)),
)
def test_verbs_live_in_the_cli_package(path):
    rel = str(path.relative_to(PKG))
    assert not _calls(path) & PARSER_CALLS, f"{rel} builds a parser: verbs live in mm15/cli"
    bad = [n for n in _imports(path) if n == "mm15.cli" or n.startswith("mm15.cli.")]
    assert not bad, f"{rel} imports {bad}: the CLI calls services, not the other way round"


@pytest.mark.parametrize("path", sorted((PKG / "services").rglob("*.py")), ids=lambda p: p.name)
def test_services_sit_below_the_verbs(path):
    bad = [n for n in _imports(path) if n.startswith(VERB_PACKAGES)]
    assert not bad, f"services/{path.name} imports {bad}"


def test_checker_sees_a_violation(tmp_path):
    f = tmp_path / "x.py"
    f.write_text("from mm15.model.lm import Decoder\nimport numpy\n")
    assert {"mm15.model.lm", "numpy"} <= _imports(f)
    g = tmp_path / "y.py"
    g.write_text("from mm15.data.splitting import tile_image\n")
    assert ("mm15.data.splitting", "tile_image") in _imported_names(g)
    assert _pipeline_violations(g, "serve/y.py") and _pipeline_violations(g, "data/y.py")
    assert not _pipeline_violations(g, "data/sample_images.py")  # a pipeline module may
    assert not _uses_the_pipeline(g)
    g.write_text("from mm15.data.prompt_encoding import encode_sample\n")
    assert _uses_the_pipeline(g)
    h = tmp_path / "z.py"
    h.write_text("import argparse\np = argparse.ArgumentParser()\np.add_argument('--x')\n")
    assert {"ArgumentParser", "add_argument"} <= _calls(h)
