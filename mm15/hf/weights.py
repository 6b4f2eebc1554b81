"""mm15 checkpoint tensors → the names of :class:`mm15.hf.modeling.MM15ForConditionalGeneration`.

``vision.*`` → ``vision_tower.*`` and ``connector.*`` → ``connector.*`` keep mm15's own names
(the modules are mm15's, :mod:`mm15.model.vision`, :mod:`mm15.model.connector`);
``lm.*`` → ``language_model.*`` in transformers' Llama / Qwen2 names
(:func:`mm15.model.hf_lm.hf_name`), and for an MoE layer (MM1.5 §4) Qwen2-MoE's::

    layers.{i}.ffn.router.weight (E, D)          → model.layers.{i}.mlp.gate.weight
    layers.{i}.ffn.w1 / w3 (E, F, D) gate / up   → model.layers.{i}.mlp.experts.gate_up_proj
                                                   (E, 2F, D), gate rows first
    layers.{i}.ffn.w2 (E, D, F) down             → model.layers.{i}.mlp.experts.down_proj

plus what Qwen2-MoE has and mm15 does not, set so that it computes nothing: an empty shared
expert (intermediate size 0) with a zero gate, and zero QKV biases when mm15's attention has
none.  These are the in-memory names; ``save_pretrained`` writes the experts in transformers'
per-expert checkpoint layout (``mlp.experts.{e}.gate_proj.weight`` …), which every Qwen2-MoE
loader reads.
"""

from __future__ import annotations

import re

import torch
from torch import Tensor

from mm15.config import LMConfig
from mm15.model.hf_lm import hf_name

_MOE = re.compile(r"layers\.(\d+)\.ffn\.(router\.weight|w1|w2|w3)")


def hf_state_dict(sd: dict[str, Tensor], lm: LMConfig) -> dict[str, Tensor]:
    """An :class:`~mm15.model.mm15.MM15` state dict under the HF model's names (no copies but
    the experts' gate/up concatenation); tied embeddings give ``lm_head.weight`` the embedding."""
    out: dict[str, Tensor] = {}
    experts: dict[tuple[int, str], Tensor] = {}
    for name, t in sd.items():
        part, _, rest = name.partition(".")
        if part == "vision":
            out[f"vision_tower.{rest}"] = t
        elif part == "connector":
            out[name] = t
        elif part == "lm" and (m := _MOE.fullmatch(rest)):
            experts[(int(m.group(1)), m.group(2))] = t
        elif part == "lm" and (hf := hf_name(rest)) is not None:
            out[f"language_model.{hf}"] = t
        else:
            raise ValueError(f"checkpoint tensor {name!r} has no place in the HF model")
    embed = out["language_model.model.embed_tokens.weight"]
    if lm.tie_embeddings:
        out["language_model.lm_head.weight"] = embed
    if lm.moe is not None:
        out.update(_moe_tensors(experts, lm, embed))
    return out


def _moe_tensors(
    experts: dict[tuple[int, str], Tensor], lm: LMConfig, like: Tensor
) -> dict[str, Tensor]:
    """Qwen2-MoE's tensors of every MoE layer, and zero QKV biases where mm15 has none."""
    out: dict[str, Tensor] = {}
    moe_layers = sorted({i for i, _ in experts})
    for i in moe_layers:
        p = f"language_model.model.layers.{i}.mlp."
        out[p + "gate.weight"] = experts[(i, "router.weight")]
        out[p + "experts.gate_up_proj"] = torch.cat([experts[(i, "w1")], experts[(i, "w3")]], 1)
        out[p + "experts.down_proj"] = experts[(i, "w2")]
        # Qwen2-MoE adds sigmoid(gate(x)) · shared_expert(x); a width-0 expert adds exactly 0.
        out[p + "shared_expert.gate_proj.weight"] = like.new_zeros(0, lm.dim)
        out[p + "shared_expert.up_proj.weight"] = like.new_zeros(0, lm.dim)
        out[p + "shared_expert.down_proj.weight"] = like.new_zeros(lm.dim, 0)
        out[p + "shared_expert_gate.weight"] = like.new_zeros(1, lm.dim)
    if not lm.qkv_bias:
        q, kv = lm.n_heads * lm.resolved_head_dim, lm.n_kv_heads * lm.resolved_head_dim
        for i in range(lm.n_layers):
            p = f"language_model.model.layers.{i}.self_attn."
            out[p + "q_proj.bias"] = like.new_zeros(q)
            out[p + "k_proj.bias"] = like.new_zeros(kv)
            out[p + "v_proj.bias"] = like.new_zeros(kv)
    return out
