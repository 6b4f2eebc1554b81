"""Typed configuration of the data pipeline: packing (mm15.data.packing) and mixtures
(mm15.data.mixture).  The paper's numbers are the defaults (MM1.5 §3.2.2, §4).

A stage's mixture carries the weights of its own rule only: ``MixtureConfig.weights`` is one of
:class:`PretrainWeights`, :class:`CPTWeights`, :class:`SFTWeights` or :class:`FlatWeights`, each
tagged by its ``rule`` (the JSON codec, mm15/config_json.py, and pydantic for ``--set`` pick the
member by that tag)::

    "mixture": {"weights": {"rule": "cpt", "ocr": 1.0, "synthetic_caption": 0.0,
                            "within": "equal"}, "sources": [...], "seed": 0}

The chat format is part of the model (:class:`mm15.config.FormatConfig`), not of the data.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import Field

from mm15.data.schema import Category

# How sources of one group share the group's weight: "equal" (stage 2: the four OCR sets are
# "sampled equally", §3.3) or in proportion to their sizes ("by_size").
Within = Literal["equal", "by_size"]


@dataclass(kw_only=True)
class PackingConfig:
    """Fixed-length packed rows (mm15.data.packing; MM1.5 §3–4: sequence length 4096)."""

    seq_len: int = 4096
    # Stage 1 packs at most 16 images per sequence (MM1.5 §3–4); None = no cap (video SFT shows 24
    # frames per sample, so its recipe must raise or drop the cap).
    max_images_per_sequence: int | None = 16


@dataclass(kw_only=True)
class PretrainWeights:
    """Stage 1 (§4): image–caption : interleaved : text-only = 50 : 10 : 40 (MM1 used 45:45:10)."""

    rule: Literal["pretrain"] = "pretrain"
    caption: float = 50.0
    interleaved: float = 10.0
    text: float = 40.0
    within: Within = "by_size"


@dataclass(kw_only=True)
class CPTWeights:
    """Stage 2 (§3.3): the OCR sets sampled equally; synthetic captions optional (weight 0)."""

    rule: Literal["cpt"] = "cpt"
    ocr: float = 1.0
    synthetic_caption: float = 0.0
    within: Within = "equal"


@dataclass(kw_only=True)
class SFTWeights:
    """Stage 3 (§3.2.2, Fig. 6–8).  Single-image: general and text-rich mixed by size, each other
    category at ratio α to general; then the groups single : multi : text = w_single : w_multi :
    w_text.  With sizes in the paper's ratio this gives text-rich 37.2, refer&ground 22.5,
    general 11.3, math 5.6, code 2.3, science 1.1, multi-image 10, text-only 10 (%)."""

    rule: Literal["sft"] = "sft"
    alpha_science: float = 0.1
    alpha_math: float = 0.5
    alpha_code: float = 0.2
    alpha_refer_ground: float = 2.0
    w_single: float = 0.8
    w_multi: float = 0.1
    w_text: float = 0.1
    within: Within = "by_size"  # sources of one category


@dataclass(kw_only=True)
class FlatWeights:
    """Every source in one group, whatever its category (video SFT §5, UI SFT §6)."""

    rule: Literal["flat"] = "flat"
    within: Within = "by_size"


# The weights of one rule; ``rule`` says which (pydantic reads the discriminator, the JSON codec
# finds the same tag by itself).
MixtureWeights = Annotated[
    PretrainWeights | CPTWeights | SFTWeights | FlatWeights, Field(discriminator="rule")
]


@dataclass(kw_only=True)
class SourceConfig:
    """One data source of a mixture."""

    name: str  # e.g. "cauldron/chartqa"; the key of its dataset
    category: Category  # mm15.data.schema: the one list of categories
    size: int | None = None  # samples counted for "by_size" weights; None: len(dataset)


@dataclass(kw_only=True)
class MixtureConfig:
    """The weights of the stage's rule, and the sources they apply to (mm15.data.mixture)."""

    weights: MixtureWeights = field(default_factory=SFTWeights)
    sources: list[SourceConfig] = field(default_factory=list)
    seed: int = 0

    @staticmethod
    def upgrade_saved(data: dict[str, Any]) -> dict[str, Any]:
        """A mixture saved in the earlier layout (``rule`` beside every rule's weights:
        ``pretrain``, ``cpt``, ``sft``, ``flat_within``) in the current one: the active rule's
        weights become ``weights``, the other blocks (which never applied) are dropped.  A dict
        that already has ``weights``, or none of the old keys, is returned as it is."""
        old = {"rule", "pretrain", "cpt", "sft", "flat_within"}
        if "weights" in data or not old & set(data):
            return data
        rule = data.get("rule", "sft")
        if rule == "flat":
            weights = {"within": data["flat_within"]} if "flat_within" in data else {}
        else:
            weights = data.get(rule, {}) if isinstance(rule, str) else {}
        if not isinstance(weights, dict):  # not the old layout either: the codec names the keys
            return data
        rest = {k: v for k, v in data.items() if k not in old}
        return {"weights": {"rule": rule, **weights}, **rest}
