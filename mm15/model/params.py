"""Parameter counts computed without allocating weights (modules are built on the meta device).

"Active per token" counts what one token touches: every dense parameter, and for each MoE layer
only ``top_k`` of its experts (plus the router).  "Non-embedding" is the N of MM1 Eq. 1 (the
decoder without its input embedding and output head), from which the peak LR is predicted.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import asdict, dataclass

import torch
from torch import nn

from mm15.config import ModelConfig


@dataclass
class ParamCounts:
    total: int
    active_per_token: int
    vision: int
    connector: int
    lm: int
    lm_embedding: int  # input embedding + untied output head
    lm_non_embedding: int
    lm_experts: int  # all expert FFN weights (0 for dense)
    lm_active_per_token: int

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def _numel(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def count_params(cfg: ModelConfig) -> ParamCounts:
    from mm15.model.mm15 import MM15  # local import: keeps mm15.model.params light to import

    with torch.device("meta"):
        model = MM15(cfg)
    lm = model.lm
    embedding = lm.embed.weight.numel() + (0 if lm.output is None else lm.output.weight.numel())
    lm_total = _numel(lm)
    experts = inactive = 0
    moe = cfg.lm.moe
    if moe is not None:
        for name, p in lm.named_parameters():
            if ".ffn." in name and p.dim() == 3:  # stacked (E, ·, ·) expert weights
                experts += p.numel()
                inactive += p.numel() * (moe.num_experts - moe.top_k) // moe.num_experts
    vision, connector = _numel(model.vision), _numel(model.connector)
    lm_active = lm_total - inactive
    return ParamCounts(
        total=vision + connector + lm_total,
        active_per_token=vision + connector + lm_active,
        vision=vision,
        connector=connector,
        lm=lm_total,
        lm_embedding=embedding,
        lm_non_embedding=lm_total - embedding,
        lm_experts=experts,
        lm_active_per_token=lm_active,
    )


def mm1_peak_lr(non_embedding_params: int) -> float:
    """MM1 Eq. 1: η = exp(−0.4214·ln N − 0.5535), N = non-embedding parameters."""
    return math.exp(-0.4214 * math.log(non_embedding_params) - 0.5535)


def recipe_peak_lr(cfg: ModelConfig) -> float:
    """MM1 Eq. 1 for ``cfg``'s decoder; an MoE model takes its dense backbone's rate, since
    MM1 §3.3 trains MoE "with the same training hyperparameters ... for the dense backbone"."""
    dense = dataclasses.replace(cfg, lm=dataclasses.replace(cfg.lm, moe=None))
    return mm1_peak_lr(count_params(dense).lm_non_embedding)
