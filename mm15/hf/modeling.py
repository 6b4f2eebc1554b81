"""``MM15ForConditionalGeneration``: an mm15 model as a transformers ``PreTrainedModel``.

The same network as :class:`mm15.model.mm15.MM15` (MM1 §3, Fig. 1): mm15's CLIP ViT
(``vision_tower``, :mod:`mm15.model.vision`) and C-Abstractor (``connector``,
:mod:`mm15.model.connector`), and as ``language_model`` transformers' own
``LlamaForCausalLM`` / ``Qwen2ForCausalLM`` / ``Qwen2MoeForCausalLM`` built from
``config.text_config``, so PEFT, TRL, accelerate and ``generate`` see a native decoder.

Image tokens enter exactly as in :meth:`mm15.model.mm15.MM15.embed`: every tile becomes
``connector.num_tokens`` vectors that replace, in order, the embeddings at the image-token
positions (row by row through the batch); sub-image indicators and separators stay text.  How
many image tokens an image gets is the processor's (mm15's one planner); here the count is
only checked, with an error naming both numbers.

Shape legend: B batch, T sequence, N tiles, K tokens per tile, D decoder width.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn
from transformers import (
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    GenerationMixin,
    PreTrainedModel,
)
from transformers.cache_utils import Cache
from transformers.modeling_outputs import CausalLMOutputWithPast

from mm15.hf.configuration import MM15Config
from mm15.model.connector import CAbstractor
from mm15.model.mm15 import place_image_features
from mm15.model.vision import VisionTransformer


class MM15ForConditionalGeneration(PreTrainedModel, GenerationMixin):
    """Image tiles + text → next-token logits; ``generate`` works as for any causal LM, with
    ``pixel_values`` (the processor's ``(N, 3, r, r)`` tiles) used in the prefill only."""

    config_class = MM15Config
    base_model_prefix = ""
    input_modalities = ("image", "text")
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _no_split_modules: ClassVar[list[str]] = ["VisionTransformer", "CAbstractor"]
    _skip_keys_device_placement: ClassVar[list[str]] = ["past_key_values"]
    # Attention lives in the native decoder (the ViT always uses SDPA).
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True

    def __init__(self, config: MM15Config):
        super().__init__(config)
        vision = config.vision_config()
        self.vision_tower = VisionTransformer(vision)
        self.connector = CAbstractor(
            config.connector_config(),
            enc_width=vision.width,
            enc_grid=vision.image_size // vision.patch_size,
            out_dim=config.text_config.hidden_size,
        )
        self.language_model = AutoModelForCausalLM.from_config(config.text_config)
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        # mm15's towers initialise themselves (CLIP / Honeybee inits); the decoder is a
        # PreTrainedModel and runs its own _init_weights.  Loaded weights are never touched:
        # transformers skips modules whose parameters all came from the checkpoint.
        if isinstance(module, VisionTransformer | CAbstractor):
            module.init_weights()

    # ---- the decoder's embeddings and head (PEFT, resize_token_embeddings, generate) ----------

    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.language_model.get_output_embeddings()

    def set_output_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_output_embeddings(value)

    def get_decoder(self) -> nn.Module:
        return self.language_model.get_decoder()

    # ---- images --------------------------------------------------------------------------------

    def get_image_features(self, pixel_values: Tensor) -> Tensor:
        """(N, 3, r, r) tiles → (N, K, D) image tokens, all tiles in one encoder call."""
        dtype = self.connector.readout[0].weight.dtype
        return self.connector(self.vision_tower(pixel_values.to(dtype)))

    def embed_inputs(
        self, input_ids: Tensor, pixel_values: Tensor | None, *, prefill: bool
    ) -> Tensor:
        """Token embeddings with image features at the image-token positions.

        A prefill must bring exactly one tile's K features per K image tokens; after it (a
        decode step) a generated image-token id is ordinary text, as in mm15's own generate.
        """
        embeds_BTD = self.get_input_embeddings()(input_ids)
        is_image_BT = input_ids == self.config.image_token_id
        if pixel_values is None and not prefill:
            return embeds_BTD
        return place_image_features(
            embeds_BTD,
            is_image_BT,
            pixel_values,
            encode_tiles=self.get_image_features,
            tokens_per_tile=self.connector.cfg.num_tokens,
            counted_by="the mm15 processor (mm15's one input pipeline)",
        )

    # ---- forward -------------------------------------------------------------------------------

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: Tensor | None = None,
        attention_mask: Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: Tensor | None = None,
        labels: torch.LongTensor | None = None,
        logits_to_keep: int | Tensor = 0,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        """The native decoder's output; ``labels`` are aligned with ``input_ids`` (the decoder
        shifts them, as mm15's loss does), -100 where no loss applies (image tokens included)."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("give exactly one of input_ids and inputs_embeds")
        if inputs_embeds is None:
            prefill = past_key_values is None or past_key_values.get_seq_length() == 0
            inputs_embeds = self.embed_inputs(input_ids, pixel_values, prefill=prefill)
        elif pixel_values is not None:
            raise ValueError("pixel_values need input_ids (to find the image tokens)")
        return self.language_model(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            labels=labels,
            logits_to_keep=logits_to_keep,
            **kwargs,
        )


# Importing this module registers the model (mm15.hf.register).
AutoModelForImageTextToText.register(MM15Config, MM15ForConditionalGeneration, exist_ok=True)
