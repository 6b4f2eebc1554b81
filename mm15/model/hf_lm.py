"""Hugging Face Llama / Qwen2 decoders from a local directory (MM1.5 §3.1, §4; MM1 §3: the LM loads
Llama- and Qwen2-family checkpoints in the HF layout; no hub access).

A directory holds ``config.json`` and ``model.safetensors`` or a sharded
``model.safetensors.index.json``.  Both config spellings are read: transformers 4.x keeps
``rope_theta`` at the top and scaling in ``rope_scaling``; 5.x puts both in ``rope_parameters``.
Only what :class:`~mm15.model.lm.Decoder` computes exactly is accepted; anything else (other
model types, RoPE variants, sliding windows, o_proj/MLP biases) is a ValueError naming it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mm15.config import LMConfig, RopeScalingConfig
from mm15.model.lm import Decoder
from mm15.model.weights_io import load_tensors

SUPPORTED_MODEL_TYPES = ("llama", "qwen2")

# HF name inside ``model.layers.{i}.`` → our name inside ``layers.{i}.``
_LAYER_NAMES = {
    "self_attn.q_proj": "attn.wq",
    "self_attn.k_proj": "attn.wk",
    "self_attn.v_proj": "attn.wv",
    "self_attn.o_proj": "attn.wo",
    "mlp.gate_proj": "ffn.w1",
    "mlp.down_proj": "ffn.w2",
    "mlp.up_proj": "ffn.w3",
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
}
_TOP_NAMES = {
    "model.embed_tokens.weight": "embed.weight",
    "model.norm.weight": "norm.weight",
    "lm_head.weight": "output.weight",
}
_HF_LAYER = re.compile(r"model\.layers\.(\d+)\.(.+)\.(weight|bias)")
_OUR_LAYER = re.compile(r"layers\.(\d+)\.(.+)\.(weight|bias)")


def _rope_from_hf(hf: dict[str, Any]) -> tuple[float, RopeScalingConfig | None]:
    """(rope_theta, scaling) from either the 5.x ``rope_parameters`` or the 4.x spelling."""
    params = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    if any(isinstance(v, dict) for v in params.values()):
        raise ValueError(f"per-layer-type rope_parameters are not supported: {sorted(params)}")
    theta = float(params.get("rope_theta", hf.get("rope_theta", 10000.0)))
    if params.get("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0)) != 1.0:
        raise ValueError("partial_rotary_factor != 1 is not supported")
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type == "default":
        return theta, None
    if rope_type != "llama3":
        raise ValueError(f"unsupported rope type {rope_type!r} (supported: 'default', 'llama3')")
    try:
        scaling = RopeScalingConfig(
            factor=float(params["factor"]),
            low_freq_factor=float(params["low_freq_factor"]),
            high_freq_factor=float(params["high_freq_factor"]),
            original_max_position_embeddings=int(params["original_max_position_embeddings"]),
        )
    except KeyError as err:
        raise ValueError(f"llama3 rope scaling lacks {err.args[0]!r}: {params}") from None
    return theta, scaling


def _check_supported(hf: dict[str, Any], model_type: str) -> None:
    if hf.get("hidden_act", "silu") != "silu":
        raise ValueError(f"unsupported hidden_act {hf['hidden_act']!r} (only 'silu')")
    if hf.get("mlp_bias", False):
        raise ValueError("mlp_bias=True is not supported")
    if model_type == "llama" and hf.get("attention_bias", False):
        raise ValueError("llama attention_bias=True (biases on q/k/v/o) is not supported")
    if hf.get("use_sliding_window", False) or "sliding_attention" in hf.get("layer_types", []):
        raise ValueError(f"{model_type}: sliding-window attention is not supported")


def lm_config_from_hf(hf_config: dict[str, Any]) -> LMConfig:
    """An :class:`LMConfig` from an HF ``config.json`` dict (model_type "llama" or "qwen2")."""
    model_type = hf_config.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(
            f"unsupported model_type {model_type!r} (supported: {', '.join(SUPPORTED_MODEL_TYPES)})"
        )
    _check_supported(hf_config, model_type)
    theta, scaling = _rope_from_hf(hf_config)
    try:
        dim, n_heads = int(hf_config["hidden_size"]), int(hf_config["num_attention_heads"])
        head_dim = hf_config.get("head_dim")
        return LMConfig(
            vocab_size=int(hf_config["vocab_size"]),
            dim=dim,
            n_layers=int(hf_config["num_hidden_layers"]),
            n_heads=n_heads,
            n_kv_heads=int(hf_config.get("num_key_value_heads") or n_heads),
            head_dim=None if head_dim in (None, dim // n_heads) else int(head_dim),
            ffn_hidden=int(hf_config["intermediate_size"]),
            norm_eps=float(hf_config.get("rms_norm_eps", 1e-6)),
            rope_theta=theta,
            rope_scaling=scaling,
            qkv_bias=model_type == "qwen2",
            tie_embeddings=bool(hf_config.get("tie_word_embeddings", False)),
            max_seq_len=int(hf_config.get("max_position_embeddings", 4096)),
        )
    except KeyError as err:
        raise ValueError(f"{model_type} config.json lacks {err.args[0]!r}") from None


def _expected_shapes(cfg: LMConfig) -> dict[str, torch.Size]:
    with torch.device("meta"):
        return {k: v.shape for k, v in Decoder(cfg).state_dict().items()}


def check_state_dict(sd: dict[str, Tensor], cfg: LMConfig, source: str) -> None:
    """Raise a ValueError listing every missing, unexpected or mis-shaped key."""
    expected = _expected_shapes(cfg)
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    shapes = [
        f"{k}: {tuple(sd[k].shape)} != {tuple(s)}"
        for k, s in expected.items()
        if k in sd and sd[k].shape != s
    ]
    if missing or unexpected or shapes:
        raise ValueError(
            f"{source} does not match the decoder config: missing {missing}, "
            f"unexpected {unexpected}, wrong shapes {shapes}"
        )


def hf_to_mm15_state_dict(hf_sd: dict[str, Tensor], cfg: LMConfig) -> dict[str, Tensor]:
    """HF Llama/Qwen2 tensor names → :class:`Decoder` names (no copies, no transposes: both use
    (out, in) Linear weights and the rotate-half RoPE layout).  With tied embeddings an
    ``lm_head.weight`` in the checkpoint is ignored; unknown names are an error."""
    if cfg.moe is not None:
        raise ValueError("HF Llama/Qwen2 checkpoints are dense: load them, then upcycle to MoE")
    out: dict[str, Tensor] = {}
    unknown = []
    for name, t in hf_sd.items():
        if name.endswith("rotary_emb.inv_freq") or (
            cfg.tie_embeddings and name == "lm_head.weight"
        ):
            continue
        ours = _TOP_NAMES.get(name)
        m = _HF_LAYER.fullmatch(name)
        if m and m.group(2) in _LAYER_NAMES:
            ours = f"layers.{m.group(1)}.{_LAYER_NAMES[m.group(2)]}.{m.group(3)}"
        if ours is None:
            unknown.append(name)
        else:
            out[ours] = t
    if unknown:
        raise ValueError(
            f"HF checkpoint has tensors with no decoder counterpart: {sorted(unknown)}"
        )
    check_state_dict(out, cfg, "HF checkpoint")
    return out


def mm15_to_hf_state_dict(sd: dict[str, Tensor], cfg: LMConfig) -> dict[str, Tensor]:
    """The inverse of :func:`hf_to_mm15_state_dict` (tied: no ``lm_head.weight``, as HF saves)."""
    check_state_dict(sd, cfg, "decoder state dict")
    out = {}
    for name, t in sd.items():
        hf = hf_name(name)
        if hf is None:
            raise ValueError(f"decoder tensor {name!r} has no HF counterpart")
        out[hf] = t
    return out


def hf_name(name: str) -> str | None:
    """The HF Llama/Qwen2 name of :class:`Decoder` tensor ``name``; None when HF Llama/Qwen2 has
    none (an MoE layer's router and experts: mm15.hf.weights names those)."""
    top = {v: k for k, v in _TOP_NAMES.items()}
    layer = {v: k for k, v in _LAYER_NAMES.items()}
    m = _OUR_LAYER.fullmatch(name)
    if name in top:
        return top[name]
    if m and m.group(2) in layer:
        return f"model.layers.{m.group(1)}.{layer[m.group(2)]}.{m.group(3)}"
    return None


def load_hf_decoder(path: str | Path) -> tuple[LMConfig, dict[str, Tensor]]:
    """(config, Decoder state dict) of the HF Llama/Qwen2 checkpoint in directory ``path``."""
    path = Path(path)
    config_path = path / "config.json"
    if not config_path.exists():
        raise FileNotFoundError(f"{path}: no config.json (expected an HF model directory)")
    cfg = lm_config_from_hf(json.loads(config_path.read_text()))
    try:
        return cfg, hf_to_mm15_state_dict(load_tensors(path), cfg)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None
