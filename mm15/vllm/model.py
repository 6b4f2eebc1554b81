"""``MM15ForConditionalGeneration`` for vLLM 0.32 (imports vLLM; loaded by vLLM's model registry).

The network of :class:`mm15.model.mm15.MM15` (MM1 §3, Fig. 1) on vLLM's engine:

* ``vision_tower`` and ``connector``: mm15's own CLIP ViT and C-Abstractor
  (:mod:`mm15.model.vision`, :mod:`mm15.model.connector`), plain PyTorch modules run once per
  image or video by :meth:`MM15ForConditionalGeneration.embed_multimodal` (a video's frames are
  one tile each, MM1.5 §5; no tensor parallelism inside
  them: every rank computes the whole tower);
* ``language_model``: vLLM's own ``LlamaForCausalLM``, ``Qwen2ForCausalLM`` or
  ``Qwen2MoeForCausalLM``, built from the export's native ``text_config``, so vLLM's kernels,
  paged attention, continuous batching and tensor parallelism apply to the decoder unchanged.
  MM1.5's MoE is Qwen2-MoE with ``norm_topk_prob=True`` (mm15's router renormalises its top-k
  gates, :meth:`mm15.model.moe.MoEFeedForward.route`) and ``decoder_sparse_step = every``
  (:mod:`mm15.hf.configuration`).

Weights load from ``mm15 export --hf`` directories under their HF names (:mod:`mm15.hf.weights`):
``vision_tower.*``, ``connector.*``, ``language_model.model.*``, ``language_model.lm_head.*``.
The export gives Qwen2-MoE an empty shared expert (width 0) so that transformers computes
nothing with it; vLLM builds no shared expert at width 0, so those empty tensors are skipped.

Shape legend: N tiles, K tokens per tile, D decoder width, T tokens of a batch.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn
from vllm.config import VllmConfig
from vllm.model_executor.models.interfaces import (
    MultiModalEmbeddings,
    SupportsMultiModal,
    SupportsPP,
)
from vllm.model_executor.models.utils import (
    AutoWeightsLoader,
    init_vllm_registered_model,
    maybe_prefix,
)
from vllm.multimodal import MULTIMODAL_REGISTRY
from vllm.sequence import IntermediateTensors

from mm15.hf.configuration import MM15Config
from mm15.hf.processing import VIDEO_TOKEN
from mm15.model.connector import CAbstractor
from mm15.model.vision import VisionTransformer
from mm15.vllm.processing import (
    MM15DummyInputsBuilder,
    MM15MultiModalProcessor,
    MM15ProcessingInfo,
)

# text_config.model_type → vLLM's decoder architecture (mm15.hf.configuration.decoder_family).
DECODERS = {
    "llama": "LlamaForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen2_moe": "Qwen2MoeForCausalLM",
}


def decoder_architecture(config: MM15Config) -> str:
    kind = config.text_config.model_type
    if kind not in DECODERS:
        raise ValueError(f"mm15's vLLM model has no decoder for text_config {kind!r}")
    return DECODERS[kind]


@MULTIMODAL_REGISTRY.register_processor(
    MM15MultiModalProcessor, info=MM15ProcessingInfo, dummy_inputs=MM15DummyInputsBuilder
)
class MM15ForConditionalGeneration(nn.Module, SupportsMultiModal, SupportsPP):
    """mm15's towers + vLLM's decoder (module docstring)."""

    @classmethod
    def get_placeholder_str(cls, modality: str, i: int) -> str | None:
        if modality.startswith("image"):
            return "<image>"  # mm15's image token (ModelConfig.image_token)
        if modality.startswith("video"):
            return VIDEO_TOKEN  # the export's video token (mm15.hf.processing)
        raise ValueError(f"mm15 takes images and videos, not {modality}")

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        super().__init__()
        config: MM15Config = vllm_config.model_config.hf_config
        self.config = config
        text = config.text_config
        self.configure_mm_token_handling(
            vocab_size=text.vocab_size, mm_token_ids=[config.image_token_id]
        )
        vision = config.vision_config()
        with self._mark_tower_model(vllm_config, {"image", "video"}):
            self.vision_tower = VisionTransformer(vision)
            self.connector = CAbstractor(
                config.connector_config(),
                enc_width=vision.width,
                enc_grid=vision.image_size // vision.patch_size,
                out_dim=text.hidden_size,
            )
        with self._mark_language_model(vllm_config):
            self.language_model = init_vllm_registered_model(
                vllm_config=vllm_config,
                hf_config=text,
                prefix=maybe_prefix(prefix, "language_model"),
                architectures=[decoder_architecture(config)],
            )
        self.make_empty_intermediate_tensors = self.language_model.make_empty_intermediate_tensors

    def embed_multimodal(self, **kwargs: object) -> MultiModalEmbeddings:
        """Per image (or per video: vLLM asks one modality at a time), its ``(n_tiles·K, D)``
        features in block order (all tiles in one call)."""
        if kwargs.get("pixel_values") is not None:
            pixels, tiles = kwargs["pixel_values"], kwargs["image_num_tiles"]
        elif kwargs.get("video_pixel_values") is not None:
            pixels, tiles = kwargs["video_pixel_values"], kwargs["video_num_frames"]
        else:
            return []
        if isinstance(pixels, list | tuple):
            pixels = torch.cat(list(pixels))
        counts = [int(n) for n in (tiles.tolist() if torch.is_tensor(tiles) else tiles)]
        dtype = self.connector.readout[0].weight.dtype
        feats_NKD = self.connector(self.vision_tower(pixels.to(dtype)))
        k = feats_NKD.shape[1]
        flat = feats_NKD.reshape(-1, feats_NKD.shape[-1])
        return flat.split([n * k for n in counts])

    def forward(
        self,
        input_ids: torch.Tensor | None,
        positions: torch.Tensor,
        intermediate_tensors: IntermediateTensors | None = None,
        inputs_embeds: torch.Tensor | None = None,
        **kwargs: object,
    ) -> torch.Tensor | IntermediateTensors:
        if intermediate_tensors is not None:
            inputs_embeds = None
        return self.language_model.model(
            input_ids, positions, intermediate_tensors, inputs_embeds=inputs_embeds
        )

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor | None:
        return self.language_model.compute_logits(hidden_states)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        """Tensors of an ``mm15 export --hf`` directory, under their HF names."""
        no_shared = getattr(self.config.text_config, "shared_expert_intermediate_size", 1) == 0

        def kept(items: Iterable[tuple[str, torch.Tensor]]):
            for name, tensor in items:
                if no_shared and ".mlp.shared_expert." in name:
                    continue  # the export's empty shared expert (module docstring)
                yield name, tensor

        return AutoWeightsLoader(self).load_weights(kept(weights))
