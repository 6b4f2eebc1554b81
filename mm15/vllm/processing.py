"""vLLM's multimodal processing trio for mm15 (vLLM 0.32; imports vLLM, loaded by vLLM only).

* :class:`MM15ProcessingInfo`: the checkpoint's pipeline settings (``processor_config.json``
  through :class:`mm15.hf.processing.MM15Processor`), its limits, and the worst-case image;
* :class:`MM15DummyInputsBuilder`: ``<image>`` tokens and images of that worst-case size, so
  vLLM's profiling sizes the encoder cache and the KV cache for the checkpoint's ``n_max``;
* :class:`MM15MultiModalProcessor`: the tiles of a prompt's images and the block that replaces
  each ``<image>`` token, both from mm15's input pipeline (:mod:`mm15.vllm.inputs`).  Only the
  image-token positions of a block receive features (``PromptUpdateDetails.select_token_id``):
  the sub-image indicators stay text, as in training (MM1.5 Table 3).

An image's tiles and block depend on the prompt's other images (:mod:`mm15.vllm.inputs`), so the
processor always processes a prompt's images together instead of reusing vLLM's per-item
processor cache, and the number of images in the prompt is part of each image's cache identity
(the encoder cache then never mixes split and unsplit tiles of one picture).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from functools import cached_property

import torch
from transformers import BatchFeature
from vllm.config.multimodal import MultiModalDummyOptions
from vllm.inputs import MultiModalDataDict, MultiModalHashes
from vllm.multimodal.inputs import MultiModalFieldConfig, MultiModalKwargsItems
from vllm.multimodal.parse import ImageProcessorItems, ImageSize, MultiModalDataItems
from vllm.multimodal.processing import (
    BaseDummyInputsBuilder,
    BaseMultiModalProcessor,
    BaseProcessingInfo,
    ProcessorInputs,
    PromptReplacement,
    PromptUpdate,
    PromptUpdateDetails,
)
from vllm.multimodal.processing.context import TimingContext
from vllm.multimodal.processing.processor import MultiModalProcessingResult

from mm15.hf.configuration import MM15Config
from mm15.hf.processing import MM15Processor
from mm15.vllm.inputs import PromptPipeline, encode_images, image_blocks, largest_image

# Part of every image's cache identity (see the module docstring).
IMAGES_IN_PROMPT = "mm15_images_in_prompt"


class MM15ProcessingInfo(BaseProcessingInfo):
    """What vLLM asks about an mm15 checkpoint's inputs."""

    def get_hf_config(self) -> MM15Config:
        return self.ctx.get_hf_config(MM15Config)

    def get_hf_processor(self, **kwargs: object) -> MM15Processor:
        return self.ctx.get_hf_processor(MM15Processor, **kwargs)

    def get_supported_mm_limits(self) -> Mapping[str, int | None]:
        return {"image": None}

    @cached_property
    def pipeline(self) -> PromptPipeline:
        processor = self.get_hf_processor()
        tokenizer = processor.mm15_tokenizer()
        return PromptPipeline(tokenizer, processor.pipeline_config(tokenizer.image_token_id))

    @property
    def image_token(self) -> str:
        return self.pipeline.tokenizer.meta.image_token

    def get_image_size_with_most_features(self) -> ImageSize:
        w, h = largest_image(self.pipeline)
        return ImageSize(width=w, height=h)


class MM15DummyInputsBuilder(BaseDummyInputsBuilder[MM15ProcessingInfo]):
    """Profiling inputs: ``<image>`` tokens and white images of the worst-case size."""

    def get_dummy_text(self, mm_counts: Mapping[str, int]) -> str:
        return self.info.image_token * mm_counts.get("image", 0)

    def get_dummy_mm_data(
        self,
        seq_len: int,
        mm_counts: Mapping[str, int],
        mm_options: MultiModalDummyOptions,
    ) -> MultiModalDataDict:
        size = self.info.get_image_size_with_most_features()
        images = self._get_dummy_images(
            width=size.width,
            height=size.height,
            num_images=mm_counts.get("image", 0),
            overrides=mm_options.get("image"),
        )
        return {"image": images}


class MM15MultiModalProcessor(BaseMultiModalProcessor[MM15ProcessingInfo]):
    """A prompt's images → tiles (``pixel_values``, ``image_num_tiles`` per image) and the
    blocks replacing its ``<image>`` tokens, through mm15's input pipeline."""

    def _cached_apply_hf_processor(
        self, inputs: ProcessorInputs, timing_ctx: TimingContext
    ) -> MultiModalProcessingResult:
        # Never item by item from the processor cache: an image's tiles and block depend on
        # the prompt's other images (module docstring).
        return self._apply_hf_processor(inputs, timing_ctx)

    def _get_mm_hashes(self, inputs: ProcessorInputs) -> MultiModalHashes:
        n_images = len(inputs.mm_data_items.get("image", ()))
        kwargs = {**inputs.hf_processor_mm_kwargs, IMAGES_IN_PROMPT: n_images}
        return super()._get_mm_hashes(dataclasses.replace(inputs, hf_processor_mm_kwargs=kwargs))

    def _call_hf_processor(
        self, hf_data: Mapping[str, object], hf_kwargs: Mapping[str, object]
    ) -> BatchFeature:
        images = list(hf_data.get("images", ()))  # type: ignore[arg-type]
        if hf_data.keys() - {"images"}:
            raise ValueError(f"mm15 takes images only, got {sorted(hf_data)}")
        if any(im is None for im in images):
            raise ValueError(
                "mm15 plans a prompt's images together, so every image needs its data; "
                "an image given by its UUID alone (cached by vLLM) cannot be used"
            )
        encoded = encode_images(images, self.info.pipeline)
        tiles = torch.tensor(encoded.tiles_per_image, dtype=torch.long)
        return BatchFeature({"pixel_values": encoded.pixels, "image_num_tiles": tiles})

    def _get_mm_fields_config(
        self, hf_inputs: BatchFeature, hf_processor_mm_kwargs: Mapping[str, object]
    ) -> Mapping[str, MultiModalFieldConfig]:
        tiles = hf_inputs.get("image_num_tiles", torch.empty(0, dtype=torch.long))
        return {
            "pixel_values": MultiModalFieldConfig.flat_from_sizes("image", tiles),
            "image_num_tiles": MultiModalFieldConfig.batched("image", keep_on_cpu=True),
        }

    def _get_prompt_updates(
        self,
        mm_items: MultiModalDataItems,
        hf_processor_mm_kwargs: Mapping[str, object],
        out_mm_kwargs: MultiModalKwargsItems,
    ) -> Sequence[PromptUpdate]:
        pipe = self.info.pipeline
        image_id = pipe.tokenizer.image_token_id
        images = mm_items.get_items("image", ImageProcessorItems) if "image" in mm_items else []
        sizes = [tuple(images.get_image_size(i)) for i in range(len(images))]
        blocks = image_blocks(sizes, pipe) if sizes else []

        def block(item_idx: int) -> PromptUpdateDetails:
            return PromptUpdateDetails.select_token_id(blocks[item_idx], image_id)

        return [PromptReplacement(modality="image", target=[image_id], replacement=block)]
