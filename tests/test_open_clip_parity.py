"""Our loader and ViT against open_clip 3.3.0 itself, on a checkpoint open_clip writes.

A tiny model of the ViT-H-14-378-quickgelu family (open_clip's own model config of DFN5B-CLIP,
with only the sizes shrunk: quick_gelu, class token, no attentional pool, ln_pre/ln_post, proj) is
created by open_clip's factory, perturbed, and saved by open_clip's hub writer
(``push_to_hf_hub.save_for_hf``: ``open_clip_config.json`` + ``open_clip_model.safetensors`` +
``open_clip_pytorch_model.bin``).  mm15 loads that directory; every hidden state must match
open_clip's forward (hooks on ``ln_pre`` and ``transformer.resblocks``) within 1e-5 fp32 — at the
native size, and at other tile sizes against open_clip's own way of meeting them:
``create_model(..., force_image_size=S)`` loading the native checkpoint, whose ``resize_pos_embed``
resizes the table once at load time (bicubic, ``antialias=True``).
"""

from __future__ import annotations

import copy
import json
import shutil
import types

import pytest
import torch

from mm15.cli import main
from mm15.config import VisionConfig
from mm15.config_json import from_dict
from mm15.model.hf_vision import OPEN_CLIP_WEIGHTS, load_vision_encoder
from mm15.model.vision import VisionTransformer
from mm15.presets import tiny, vit_h14_378
from tests.references import import_references

TOL = 1e-5
NATIVE = 28
# native; 2× grid; a grid that is no multiple of the native one; non-square.
SIZES = [(28, 28), (56, 56), (42, 42), (28, 56)]


def _open_clip():
    import_references()
    import open_clip

    return open_clip


@pytest.fixture(scope="module")
def oc_dir(tmp_path_factory):
    """A tiny ViT-H-14-378-quickgelu-family CLIP, made and saved by open_clip itself."""
    open_clip = _open_clip()
    from open_clip.push_to_hf_hub import save_for_hf

    model_cfg = copy.deepcopy(open_clip.get_model_config("ViT-H-14-378-quickgelu"))
    assert model_cfg["quick_gelu"] is True and set(model_cfg["vision_cfg"]) == {
        "image_size",
        "layers",
        "width",
        "head_width",
        "patch_size",
    }
    model_cfg["embed_dim"] = 8
    model_cfg["vision_cfg"].update(image_size=NATIVE, layers=2, width=32, head_width=8)
    model_cfg["text_cfg"].update(context_length=8, vocab_size=64, width=16, heads=2, layers=1)
    path = tmp_path_factory.mktemp("open_clip")
    (path / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg}))
    torch.manual_seed(0)
    model = open_clip.create_model(f"local-dir:{path}")  # no weights there yet: random init
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # LayerNorms and biases too, so a swapped or skipped tensor shows
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    no_tokenizer = types.SimpleNamespace(save_pretrained=lambda _dir: None)
    save_for_hf(model, no_tokenizer, model_cfg, path, safe_serialization="both")
    return path


def _reference(path, size=None) -> torch.nn.Module:
    """open_clip's vision tower loaded from ``path``, created at ``size`` (resized at load)."""
    model = _open_clip().create_model(f"local-dir:{path}", force_image_size=size)
    return model.visual.eval()


def _reference_hidden(visual: torch.nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """Embeddings after ln_pre, then every block's output, from open_clip's own forward."""
    seen: list[torch.Tensor] = []
    modules = [visual.ln_pre, *visual.transformer.resblocks]
    hooks = [m.register_forward_hook(lambda _m, _i, out: seen.append(out)) for m in modules]
    try:
        with torch.no_grad():
            visual(x)
    finally:
        for h in hooks:
            h.remove()
    return seen


def _ours(path, **changes) -> VisionTransformer:
    cfg, state = load_vision_encoder(path)
    model = VisionTransformer(VisionConfig(**{**vars(cfg), **changes})).eval()
    model.load_state_dict(state, strict=True)
    return model


def _max_errs(ours: VisionTransformer, visual: torch.nn.Module, h: int, w: int) -> list[float]:
    x = torch.randn(2, 3, h, w, generator=torch.Generator().manual_seed(h * w))
    ref = _reference_hidden(visual, x)
    with torch.no_grad():
        got = ours(x, all_hidden=True)
    assert len(got) == len(ref) == ours.cfg.depth + 1
    assert all(a.shape == b.shape for a, b in zip(got, ref, strict=True))
    return [(a - b).abs().max().item() for a, b in zip(got, ref, strict=True)]


def test_loader_reads_the_hub_layout_open_clip_writes(oc_dir, tmp_path):
    names = {p.name for p in oc_dir.iterdir()}
    assert {"open_clip_config.json", OPEN_CLIP_WEIGHTS[0], "open_clip_pytorch_model.bin"} <= names
    written = json.loads((oc_dir / "open_clip_config.json").read_text())
    assert set(written) == {"model_cfg", "preprocess_cfg"}
    cfg, state = load_vision_encoder(oc_dir)
    assert cfg == VisionConfig(
        image_size=28,
        patch_size=14,
        width=32,
        depth=2,
        heads=4,
        mlp_dim=128,
        act="quick_gelu",
        pos_interp="bicubic_antialias",
    )
    # The .bin alone (read with torch.load(weights_only=True)) gives the same tensors.
    shutil.copy(oc_dir / "open_clip_config.json", tmp_path / "open_clip_config.json")
    shutil.copy(oc_dir / "open_clip_pytorch_model.bin", tmp_path / "open_clip_pytorch_model.bin")
    cfg_bin, state_bin = load_vision_encoder(tmp_path)
    assert cfg_bin == cfg and state_bin.keys() == state.keys()
    assert all(torch.equal(state[k], state_bin[k]) for k in state)


@pytest.mark.parametrize(("h", "w"), SIZES)
def test_every_hidden_state_matches_open_clip(oc_dir, h, w):
    visual = _reference(oc_dir, None if (h, w) == (NATIVE, NATIVE) else (h, w))
    errs = _max_errs(_ours(oc_dir), visual, h, w)
    assert max(errs) < TOL, f"{h}x{w}: max abs err per hidden state {errs}"


def test_feature_layer_is_open_clips_block_output(oc_dir):
    """The tensor handed to the connector is open_clip's block output (before ln_post)."""
    visual = _reference(oc_dir, (56, 56))
    x = torch.randn(2, 3, 56, 56, generator=torch.Generator().manual_seed(3))
    ref = _reference_hidden(visual, x)
    for layer in (-1, -2, 0):
        with torch.no_grad():
            out = _ours(oc_dir, feature_layer=layer)(x)
        assert (out - ref[layer]).abs().max().item() < TOL, layer


def test_plain_bicubic_does_not_reproduce_open_clip(oc_dir):
    """The setting matters: transformers' kernel misses open_clip's resized table."""
    visual = _reference(oc_dir, (56, 56))
    errs = _max_errs(_ours(oc_dir, pos_interp="bicubic"), visual, 56, 56)
    assert errs[0] > 1e-3, errs


def test_mm15_init_from_an_open_clip_directory(oc_dir, hf_llama_dir, tmp_path, capsys):
    """``mm15 init --vision DIR`` keeps the open_clip kernel in the saved config and the model
    it builds encodes the preset's 112-px tiles as open_clip created at 112 px does."""
    from mm15.services.checkpoint import load_checkpoint

    out = tmp_path / "ckpt"
    argv = ["init", "--vision", str(oc_dir), "--llm", str(hf_llama_dir), "--preset", "tiny"]
    assert main([*argv, "--out", str(out)]) == 0, capsys.readouterr().err
    saved = json.loads((out / "config.json").read_text())["vision"]
    assert saved["pos_interp"] == "bicubic_antialias" and saved["act"] == "quick_gelu"
    model, _ = load_checkpoint(out)
    r = tiny().image.resolution
    errs = _max_errs(model.vision, _reference(oc_dir, (r, r)), r, r)
    assert max(errs) < TOL, errs


def test_pos_interp_defaults_and_presets():
    # Configs saved before the field existed keep the kernel they were built with.
    assert from_dict(VisionConfig, {"image_size": 56}).pos_interp == "bicubic"
    assert tiny().vision.pos_interp == "bicubic"  # the demo's documented numbers
    assert vit_h14_378().pos_interp == "bicubic_antialias"  # DFN5B is published for open_clip
    with pytest.raises(ValueError, match="pos_interp must be one of"):
        from_dict(VisionConfig, {"pos_interp": "bilinear"})
    with pytest.raises(ValueError, match="pos_interp must be one of"):
        VisionTransformer(
            VisionConfig(image_size=28, width=8, depth=1, heads=2, mlp_dim=16, pos_interp="nearest")
        )
