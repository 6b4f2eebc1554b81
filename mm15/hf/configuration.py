"""``MM15Config``: the Hugging Face configuration of an exported mm15 model (``model_type: "mm15"``).

An export's ``config.json`` holds what the model computes (the image front end is the
processor's, :mod:`mm15.hf.processing`)::

    text_config     the decoder as a native transformers config (text_config_for):
                    "llama" (dense, no QKV bias), "qwen2" (dense with QKV bias, MM1 §3.3 Qwen2
                    decoders) or "qwen2_moe" (MM1.5 §4 MoE: top-k of E experts in every
                    ``every``-th layer, no shared expert)
    vision          mm15's VisionConfig fields (the CLIP ViT, mm15.model.vision)
    connector       mm15's ConnectorConfig fields (the C-Abstractor, mm15.model.connector)
    image_token_id  the placeholder whose positions receive image features

The decoder maps exactly (the parity tests compare logits, tests/test_hf_parity.py): the MoE
router is a softmax over all experts, top-k, gates renormalised to sum to 1
(:meth:`mm15.model.moe.MoEFeedForward.route`), which is Qwen2-MoE with ``norm_topk_prob=True``;
MoE layer ``i`` is sparse when ``(i + 1) % every == 0``, Qwen2-MoE's ``decoder_sparse_step``
rule, so no ``mlp_only_layers`` are needed.  A Qwen2-MoE export always has QKV biases
(``qkv_bias=True``, zeros when mm15's decoder has none), because older transformers releases
and other engines hard-code them on Qwen2-MoE attention.
"""

from typing import Any, ClassVar, Literal

from huggingface_hub.errors import StrictDataclassError
from transformers import AutoConfig, PreTrainedConfig

try:  # transformers >= 5.20 builds sub-configs from sub_configs_defaults
    from transformers.configuration_utils import SubConfigSpec
except ImportError:  # 5.16-5.19 (vLLM 0.32 pins transformers < 5.20: mm15.vllm)
    SubConfigSpec = None

from mm15.config import ConnectorConfig, LMConfig, ModelConfig, VisionConfig
from mm15.config_json import from_dict, to_dict

MODEL_TYPE = "mm15"
DecoderFamily = Literal["llama", "qwen2", "qwen2_moe"]


def decoder_family(lm: LMConfig) -> DecoderFamily:
    """The native transformers decoder that computes ``lm`` exactly."""
    if lm.moe is not None:
        return "qwen2_moe"
    return "qwen2" if lm.qkv_bias else "llama"


def _rope_parameters(lm: LMConfig) -> dict[str, Any]:
    if lm.rope_scaling is None:
        return {"rope_type": "default", "rope_theta": lm.rope_theta}
    s = lm.rope_scaling
    return {
        "rope_type": "llama3",
        "rope_theta": lm.rope_theta,
        "factor": s.factor,
        "low_freq_factor": s.low_freq_factor,
        "high_freq_factor": s.high_freq_factor,
        "original_max_position_embeddings": s.original_max_position_embeddings,
    }


def text_config_for(
    lm: LMConfig, *, bos_id: int | None, eos_ids: list[int], pad_id: int | None
) -> PreTrainedConfig:
    """``lm`` as a native transformers config of :func:`decoder_family`; a decoder that the
    installed transformers refuses is a ValueError saying "unsupported decoder"."""
    family = decoder_family(lm)
    fields: dict[str, Any] = dict(
        vocab_size=lm.vocab_size,
        hidden_size=lm.dim,
        num_hidden_layers=lm.n_layers,
        num_attention_heads=lm.n_heads,
        num_key_value_heads=lm.n_kv_heads,
        head_dim=lm.resolved_head_dim,
        intermediate_size=lm.ffn_hidden,
        hidden_act="silu",
        rms_norm_eps=lm.norm_eps,
        max_position_embeddings=lm.max_seq_len,
        rope_parameters=_rope_parameters(lm),
        tie_word_embeddings=lm.tie_embeddings,
        initializer_range=lm.init_std,
        bos_token_id=bos_id,
        eos_token_id=eos_ids[0] if len(eos_ids) == 1 else list(eos_ids),
        pad_token_id=pad_id,
    )
    if family == "llama":
        fields.update(attention_bias=False, mlp_bias=False)
    if lm.moe is not None:
        fields.update(
            num_experts=lm.moe.num_experts,
            num_experts_per_tok=lm.moe.top_k,
            decoder_sparse_step=lm.moe.every,
            moe_intermediate_size=lm.moe.expert_hidden or lm.ffn_hidden,
            shared_expert_intermediate_size=0,
            norm_topk_prob=True,
            mlp_only_layers=[],
            qkv_bias=True,
            router_aux_loss_coef=lm.moe.load_balance_coef,
        )
    try:
        return AutoConfig.for_model(family, **fields)
    except (ValueError, TypeError, StrictDataclassError) as e:  # the config's own checks
        detail = " ".join(str(e).split())
        raise ValueError(
            f"unsupported decoder: transformers' {family} config refuses mm15's lm settings "
            f"(dim {lm.dim}, heads {lm.n_heads}/{lm.n_kv_heads}, head_dim "
            f"{lm.resolved_head_dim}): {detail}"
        ) from None


def _text_config(value: dict | PreTrainedConfig | None) -> PreTrainedConfig:
    if isinstance(value, PreTrainedConfig):
        return value
    fields = dict(value or {})
    return AutoConfig.for_model(fields.pop("model_type", "llama"), **fields)


class MM15Config(PreTrainedConfig):
    """An exported mm15 model: ``text_config`` (native decoder) + mm15's vision and connector
    settings (module docstring).  Build one with :meth:`from_mm15`."""

    model_type = MODEL_TYPE
    if SubConfigSpec is not None:
        sub_configs_defaults: ClassVar[dict] = {
            "text_config": SubConfigSpec(config_class=AutoConfig, model_type="llama")
        }
    else:
        sub_configs: ClassVar[dict] = {"text_config": AutoConfig}

    text_config: dict | PreTrainedConfig | None = None
    vision: dict | None = None
    connector: dict | None = None
    image_token_id: int = -1
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs):
        if SubConfigSpec is None:  # older transformers leave a dict sub-config to the class
            self.text_config = _text_config(self.text_config)
        super().__post_init__(**kwargs)
        # The decoder ties its head to its embeddings when its own config says so.
        self.tie_word_embeddings = bool(self.text_config.tie_word_embeddings)

    @classmethod
    def from_mm15(cls, cfg: ModelConfig, text_config: PreTrainedConfig) -> "MM15Config":
        return cls(
            text_config=text_config,
            vision=to_dict(cfg.vision),
            connector=to_dict(cfg.connector),
            image_token_id=cfg.image_token_id,
        )

    def vision_config(self) -> VisionConfig:
        return from_dict(VisionConfig, self.vision or {}, path="vision")

    def connector_config(self) -> ConnectorConfig:
        return from_dict(ConnectorConfig, self.connector or {}, path="connector")


# Importing this module registers the config (mm15.hf.register).
AutoConfig.register(MODEL_TYPE, MM15Config, exist_ok=True)
