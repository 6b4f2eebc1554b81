"""Our ViT and checkpoint loaders against HF CLIPVisionModel (transformers==5.23.0, pinned).

Tiny random fp32 models; every hidden state (HF ``output_hidden_states`` order) must match
within 1e-5 max-abs, at the native resolution and with position-embedding interpolation (the HF
layout loads with ``pos_interp="bicubic"``, transformers' own kernel; measured: bit-identical).
The open_clip kernel is tested against open_clip itself in tests/test_open_clip_parity.py.
"""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

transformers = pytest.importorskip("transformers")
from transformers import CLIPConfig, CLIPModel, CLIPVisionConfig, CLIPVisionModel  # noqa: E402

from mm15.config import VisionConfig  # noqa: E402
from mm15.model.hf_vision import (  # noqa: E402
    load_vision_encoder,
    vision_config_from_hf,
    vision_config_from_open_clip,
)
from mm15.model.vision import VisionTransformer  # noqa: E402
from mm15.presets import vit_h14_378, vit_l14_336  # noqa: E402

TOL = 1e-5
TINY = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    image_size=28,
    patch_size=14,
)
SIZES = [(28, 28), (56, 56), (42, 42), (28, 56)]  # native, 2× grid, non-multiple grid, non-square


def _randomize(model: torch.nn.Module) -> None:
    """Perturb every tensor (LayerNorms too) so a swapped or skipped weight cannot hide."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))


def _hf_vision(act: str) -> CLIPVisionModel:
    torch.manual_seed(0)
    model = CLIPVisionModel(CLIPVisionConfig(**TINY, hidden_act=act)).eval()
    _randomize(model)
    return model


def _hf_hidden(model: CLIPVisionModel, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    native = model.config.image_size
    interp = tuple(x.shape[2:]) != (native, native)
    with torch.no_grad():
        return model(x, output_hidden_states=True, interpolate_pos_encoding=interp).hidden_states


def _ours(cfg: VisionConfig, state: dict[str, torch.Tensor]) -> VisionTransformer:
    model = VisionTransformer(cfg).eval()
    model.load_state_dict(state, strict=True)
    return model


def _assert_parity(ours: VisionTransformer, hf: CLIPVisionModel, sizes=SIZES) -> None:
    for h, w in sizes:
        x = torch.randn(3, 3, h, w, generator=torch.Generator().manual_seed(h * w))
        ref = _hf_hidden(hf, x)
        with torch.no_grad():
            got = ours(x, all_hidden=True)
        assert len(got) == len(ref) == hf.config.num_hidden_layers + 1
        for i, (a, b) in enumerate(zip(got, ref, strict=True)):
            assert a.shape == b.shape, (h, w, i)
            err = (a - b).abs().max().item()
            assert err < TOL, f"hidden[{i}] at {h}x{w}: max abs err {err}"


@pytest.mark.parametrize("act", ["quick_gelu", "gelu"])
def test_hf_clip_vision_parity(tmp_path, act):
    hf = _hf_vision(act)
    hf.save_pretrained(tmp_path)
    cfg, state = load_vision_encoder(tmp_path)
    assert cfg.act == act and (cfg.width, cfg.depth, cfg.heads, cfg.mlp_dim) == (32, 2, 4, 64)
    assert cfg.pos_interp == "bicubic"  # transformers' interpolate_pos_encoding
    _assert_parity(_ours(cfg, state), hf)


def test_antialiased_kernel_does_not_reproduce_transformers(tmp_path):
    """The setting matters: open_clip's antialiased resize misses HF's table off the native grid."""
    hf = _hf_vision("quick_gelu")
    hf.save_pretrained(tmp_path)
    cfg, state = load_vision_encoder(tmp_path)
    ours = _ours(dataclasses.replace(cfg, pos_interp="bicubic_antialias"), state)
    _assert_parity(ours, hf, sizes=[(28, 28)])  # the native grid is never resized
    x = torch.randn(2, 3, 56, 56, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        err = (ours(x, all_hidden=True)[0] - _hf_hidden(hf, x)[0]).abs().max().item()
    assert err > 1e-3, err


def test_feature_layer_follows_hf_hidden_states_indexing(tmp_path):
    hf = _hf_vision("quick_gelu")
    hf.save_pretrained(tmp_path)
    cfg, state = load_vision_encoder(tmp_path)
    x = torch.randn(2, 3, 42, 42)
    ref = _hf_hidden(hf, x)
    for layer in (-1, -2, 0, 1, 2, -3):
        cfg.feature_layer = layer
        with torch.no_grad():
            out = _ours(cfg, state)(x)
        assert (out - ref[layer]).abs().max().item() < TOL, layer
    cfg.feature_layer = 3
    with pytest.raises(ValueError, match="feature_layer 3 out of range"):
        VisionTransformer(cfg)


def test_legacy_prefixed_clip_vision_checkpoint(tmp_path):
    """transformers 4.x saved CLIPVisionModel under ``vision_model.`` with a position_ids buffer."""
    hf = _hf_vision("quick_gelu")
    hf.save_pretrained(tmp_path)
    sd = load_file(str(tmp_path / "model.safetensors"))
    sd = {f"vision_model.{k}": v for k, v in sd.items()}
    sd["vision_model.embeddings.position_ids"] = torch.arange(5)[None]
    save_file(sd, str(tmp_path / "model.safetensors"))
    cfg, state = load_vision_encoder(tmp_path)
    _assert_parity(_ours(cfg, state), hf, sizes=[(28, 28), (56, 56)])


def test_full_clip_model_with_text_tower_loads(tmp_path):
    torch.manual_seed(0)
    text = dict(
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        vocab_size=64,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )
    config = CLIPConfig(
        vision_config={**TINY, "hidden_act": "gelu"}, text_config=text, projection_dim=8
    )
    clip = CLIPModel(config).eval()
    _randomize(clip)
    clip.save_pretrained(tmp_path)
    keys = load_file(str(tmp_path / "model.safetensors")).keys()
    assert any(k.startswith("text_model.") for k in keys) and "visual_projection.weight" in keys
    cfg, state = load_vision_encoder(tmp_path)
    assert cfg.act == "gelu" and not any("text" in k or "projection" in k for k in state)
    _assert_parity(_ours(cfg, state), clip.vision_model, sizes=[(28, 28), (42, 42)])


# --- open_clip layout -------------------------------------------------------------------------
# Test-side conversion HF → open_clip (the names open_clip's VisionTransformer uses):
#   embeddings.patch_embedding.weight    → visual.conv1.weight
#   embeddings.class_embedding           → visual.class_embedding
#   embeddings.position_embedding.weight → visual.positional_embedding
#   pre_layrnorm / post_layernorm        → visual.ln_pre / visual.ln_post
#   encoder.layers.i.layer_norm1/2       → visual.transformer.resblocks.i.ln_1/ln_2
#   self_attn.{q,k,v}_proj               → attn.in_proj_weight / in_proj_bias (cat q, k, v on dim 0)
#   self_attn.out_proj                   → attn.out_proj
#   mlp.fc1 / mlp.fc2                    → mlp.c_fc / mlp.c_proj
#   (plus visual.proj and text-tower tensors, which the loader must ignore)


def _to_open_clip(sd: dict[str, torch.Tensor], depth: int) -> dict[str, torch.Tensor]:
    v = "visual."
    out = {
        v + "conv1.weight": sd["embeddings.patch_embedding.weight"],
        v + "class_embedding": sd["embeddings.class_embedding"],
        v + "positional_embedding": sd["embeddings.position_embedding.weight"],
        v + "proj": torch.randn(32, 8),
        "positional_embedding": torch.randn(77, 16),  # text tower decoys
        "token_embedding.weight": torch.randn(64, 16),
        "transformer.resblocks.0.attn.in_proj_weight": torch.randn(48, 16),
        "ln_final.weight": torch.randn(16),
        "text_projection": torch.randn(16, 8),
        "logit_scale": torch.tensor(4.6),
    }
    for ln_hf, ln_oc in (("pre_layrnorm", "ln_pre"), ("post_layernorm", "ln_post")):
        for p in ("weight", "bias"):
            out[f"{v}{ln_oc}.{p}"] = sd[f"{ln_hf}.{p}"]
    for i in range(depth):
        src, dst = f"encoder.layers.{i}.", f"{v}transformer.resblocks.{i}."
        for p in ("weight", "bias"):
            qkv = [sd[f"{src}self_attn.{n}_proj.{p}"] for n in "qkv"]
            out[f"{dst}attn.in_proj_{p}"] = torch.cat(qkv, dim=0)
            out[f"{dst}attn.out_proj.{p}"] = sd[f"{src}self_attn.out_proj.{p}"]
            out[f"{dst}ln_1.{p}"] = sd[f"{src}layer_norm1.{p}"]
            out[f"{dst}ln_2.{p}"] = sd[f"{src}layer_norm2.{p}"]
            out[f"{dst}mlp.c_fc.{p}"] = sd[f"{src}mlp.fc1.{p}"]
            out[f"{dst}mlp.c_proj.{p}"] = sd[f"{src}mlp.fc2.{p}"]
    return out


def _open_clip_config(act: str, **vision_extra) -> dict:
    vision = {
        "image_size": 28,
        "layers": 2,
        "width": 32,
        "head_width": 8,
        "patch_size": 14,
        "mlp_ratio": 2.0,
    }
    model_cfg = {
        "embed_dim": 8,
        "quick_gelu": act == "quick_gelu",
        "vision_cfg": {**vision, **vision_extra},
        "text_cfg": {"context_length": 77, "vocab_size": 64, "width": 16, "heads": 2, "layers": 1},
    }
    return {"model_cfg": model_cfg, "preprocess_cfg": {"mean": [0.5] * 3, "std": [0.5] * 3}}


def _write_open_clip(tmp_path, hf: CLIPVisionModel, act: str, fmt: str, **vision_extra) -> None:
    sd = {k: v.detach().clone() for k, v in hf.state_dict().items()}
    oc = _to_open_clip(sd, hf.config.num_hidden_layers)
    if fmt == "bin":
        torch.save(oc, tmp_path / "open_clip_pytorch_model.bin")
    elif fmt == "ddp-pth":  # an open_clip training checkpoint: nested, DDP-prefixed
        sd = {"state_dict": {f"module.{k}": v for k, v in oc.items()}, "epoch": 3}
        torch.save(sd, tmp_path / "open_clip_pytorch_model.pth")
    else:
        save_file(oc, str(tmp_path / "open_clip_model.safetensors"))
    (tmp_path / "open_clip_config.json").write_text(
        json.dumps(_open_clip_config(act, **vision_extra))
    )


@pytest.mark.parametrize(("act", "fmt"), [("quick_gelu", "bin"), ("gelu", "safetensors")])
def test_open_clip_layout_matches_hf(tmp_path, act, fmt):
    hf = _hf_vision(act)
    _write_open_clip(tmp_path, hf, act, fmt)
    cfg, state = load_vision_encoder(tmp_path)
    assert (cfg.act, cfg.heads, cfg.mlp_dim) == (act, 4, 64)
    assert cfg.pos_interp == "bicubic_antialias"  # open_clip's resize_pos_embed
    # The key conversion, checked against HF with HF's kernel at every size.
    ours = _ours(dataclasses.replace(cfg, pos_interp="bicubic"), state)
    _assert_parity(ours, hf, sizes=[(28, 28), (56, 56), (42, 42)])


@pytest.mark.parametrize(
    "option",
    [
        {"ls_init_value": 1e-5},
        {"block_type": "custom"},
        {"act_kwargs": {"approximate": "tanh"}},
        {"norm_kwargs": {"elementwise_affine": False}},
        {"pos_embed_type": "sin_cos_2d"},
    ],
)
def test_open_clip_unsupported_option_is_refused(tmp_path, option):
    _write_open_clip(tmp_path, _hf_vision("gelu"), "gelu", "bin", **option)
    with pytest.raises(ValueError, match=next(iter(option))):
        load_vision_encoder(tmp_path)


def test_open_clip_options_that_leave_the_tokens_alone_load(tmp_path):
    """Pooling/projection/training-only options, defaults spelt out, a training checkpoint."""
    hf = _hf_vision("gelu")
    _write_open_clip(
        tmp_path,
        hf,
        "gelu",
        "ddp-pth",
        act_kwargs={},
        block_type="default",
        pool_type="avg",
        final_ln_after_pool=True,
        output_tokens=True,
        patch_dropout=0.5,
        norm_kwargs={"eps": 1e-5},
    )
    cfg, state = load_vision_encoder(tmp_path)
    _assert_parity(_ours(cfg, state), hf, sizes=[(28, 28)])


# --- errors -------------------------------------------------------------------------------


def test_missing_and_unexpected_keys_are_listed(tmp_path):
    _hf_vision("gelu").save_pretrained(tmp_path)
    sd = load_file(str(tmp_path / "model.safetensors"))
    del sd["encoder.layers.1.mlp.fc2.bias"]
    sd["encoder.layers.0.mystery.weight"] = torch.zeros(3)
    save_file(sd, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError) as err:
        load_vision_encoder(tmp_path)
    msg = str(err.value)
    assert "missing (1): ['blocks.1.mlp.fc2.bias']" in msg
    assert "unexpected (1): ['encoder.layers.0.mystery.weight']" in msg


def test_shape_mismatch_is_listed(tmp_path):
    _hf_vision("gelu").save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["intermediate_size"] = 48  # config no longer matches the weights
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(
        ValueError,
        match=r"shape mismatch \(6\).*blocks.0.mlp.fc1.weight: checkpoint \(64, 32\) vs model \(48, 32\)",
    ):
        load_vision_encoder(tmp_path)


def test_unknown_directory_layout(tmp_path):
    (tmp_path / "weights.txt").write_text("nothing")
    with pytest.raises(FileNotFoundError, match="neither an open_clip checkpoint"):
        load_vision_encoder(tmp_path)
    with pytest.raises(ValueError, match="model_type must be"):
        vision_config_from_hf({"model_type": "siglip_vision_model"})


# --- configs and presets --------------------------------------------------------------------


def test_public_configs_map_to_presets():
    # open_clip's model_configs/ViT-H-14-378-quickgelu.json (DFN5B-CLIP-ViT-H-14-378).
    dfn = {
        "embed_dim": 1024,
        "quick_gelu": True,
        "vision_cfg": {
            "image_size": 378,
            "layers": 32,
            "width": 1280,
            "head_width": 80,
            "patch_size": 14,
        },
    }
    assert vision_config_from_open_clip({"model_cfg": dfn}) == vit_h14_378()
    # openai/clip-vit-large-patch14-336 config.json (vision part).
    l14 = {
        "model_type": "clip",
        "vision_config": {
            "hidden_size": 1024,
            "intermediate_size": 4096,
            "num_hidden_layers": 24,
            "num_attention_heads": 16,
            "image_size": 336,
            "patch_size": 14,
        },
    }
    assert vision_config_from_hf(l14) == vit_l14_336()


def test_vit_h_builds_on_meta_with_expected_size():
    cfg = vit_h14_378()
    with torch.device("meta"):
        vit = VisionTransformer(cfg)
    w, g = cfg.width, cfg.image_size // cfg.patch_size
    block = 4 * (w * w + w) + (w * cfg.mlp_dim + cfg.mlp_dim) + (cfg.mlp_dim * w + w) + 4 * w
    expected = 3 * cfg.patch_size**2 * w + w + (1 + g * g) * w + 4 * w + cfg.depth * block
    assert sum(p.numel() for p in vit.parameters()) == expected == 631_371_520
    assert (vit.grid_size(378), vit.grid_size(672)) == (27, 48)
    assert vit.pos_embed_for(48, 48).shape == (1 + 48 * 48, 1280)


def test_native_pos_embed_is_exact_and_interpolation_differs():
    vit = VisionTransformer(
        VisionConfig(image_size=56, patch_size=14, width=8, depth=1, heads=2, mlp_dim=16)
    )
    assert torch.equal(vit.pos_embed_for(4, 4), vit.pos_embed)
    resized = vit.pos_embed_for(6, 6)
    assert resized.shape == (37, 8) and torch.equal(resized[0], vit.pos_embed[0])
    with torch.no_grad():
        vit.pos_embed.fill_(0.5)  # bicubic weights sum to 1: a constant stays constant
    assert torch.allclose(vit.pos_embed_for(7, 5), torch.full((36, 8), 0.5), atol=1e-6)
