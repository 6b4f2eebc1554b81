"""vLLM's multimodal processing trio for mm15 (vLLM 0.32; imports vLLM, loaded by vLLM only).

* :class:`MM15ProcessingInfo`: the checkpoint's pipeline settings (``processor_config.json``
  through :class:`mm15.hf.processing.MM15Processor`), its limits, and the worst-case image;
* :class:`MM15DummyInputsBuilder`: ``<image>`` and ``<video>`` tokens with images of that
  worst-case size and videos of ``VideoConfig.num_frames`` frames, so vLLM's profiling sizes the
  encoder cache and the KV cache for the checkpoint's ``n_max`` and frame count;
* :class:`MM15MultiModalProcessor`: the tiles of a prompt's media and the block that replaces
  each placeholder, both from mm15's input pipeline (:mod:`mm15.vllm.inputs`).  Only the
  image-token positions of a block receive features (``PromptUpdateDetails.select_token_id``):
  the sub-image indicators stay text, as in training (MM1.5 Table 3).

A medium's tiles and block depend on the prompt's other media and their order
(:mod:`mm15.vllm.inputs`), so the processor reads the order of the placeholders from the
prompt's token ids, always processes a prompt's media together instead of reusing vLLM's
per-item processor cache, and makes that order part of each item's cache identity (the encoder
cache then never mixes split and unsplit tiles of one picture).

A video arrives as the frames vLLM's loader decoded (``--media-io-kwargs '{"video":
{"num_frames": -1}}'`` hands over every frame); mm15 then picks ``VideoConfig.num_frames`` of them
by its own uniform rule (:func:`mm15.vllm.inputs.video_frames`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from functools import cached_property

import torch
from PIL import Image
from transformers import BatchFeature
from vllm.config.multimodal import MultiModalDummyOptions
from vllm.inputs import MultiModalDataDict
from vllm.multimodal.inputs import MultiModalFieldConfig, MultiModalKwargsItems
from vllm.multimodal.parse import (
    ImageProcessorItems,
    ImageSize,
    MultiModalDataItems,
    VideoProcessorItems,
)
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
from mm15.vllm.inputs import (
    MediumInput,
    PromptPipeline,
    encode_media,
    image_token_count,
    largest_image,
    media_blocks,
    video_frames,
)

# The prompt's media in order, "i" per image and "v" per video: a processor argument, so part
# of every item's cache identity (module docstring).
MEDIA_ORDER = "mm15_media_order"


class MM15ProcessingInfo(BaseProcessingInfo):
    """What vLLM asks about an mm15 checkpoint's inputs."""

    def get_hf_config(self) -> MM15Config:
        return self.ctx.get_hf_config(MM15Config)

    def get_hf_processor(self, **kwargs: object) -> MM15Processor:
        return self.ctx.get_hf_processor(MM15Processor, **kwargs)

    def get_supported_mm_limits(self) -> Mapping[str, int | None]:
        # An export made before videos were taken has no video token (mm15.hf.processing).
        return {"image": None, **({"video": None} if self.video_token_id is not None else {})}

    @cached_property
    def pipeline(self) -> PromptPipeline:
        processor = self.get_hf_processor()
        tokenizer = processor.mm15_tokenizer()
        return PromptPipeline(tokenizer, processor.pipeline_config(tokenizer.image_token_id))

    @property
    def image_token(self) -> str:
        return self.pipeline.tokenizer.meta.image_token

    @cached_property
    def video_token(self) -> str | None:
        return self.get_hf_processor().video_token

    @cached_property
    def video_token_id(self) -> int | None:
        token = self.video_token
        return (
            None
            if token is None
            else self.get_hf_processor().tokenizer.convert_tokens_to_ids(token)
        )

    def media_order(self, prompt: Sequence[int]) -> str:
        """The prompt's placeholders in order: "i" per image, "v" per video."""
        kinds = {self.pipeline.tokenizer.image_token_id: "i", self.video_token_id: "v"}
        return "".join(kinds[t] for t in prompt if t in kinds)

    @cached_property
    def _largest_image(self) -> tuple[int, int]:
        return largest_image(self.pipeline)

    def get_image_size_with_most_features(self) -> ImageSize:
        w, h = self._largest_image
        return ImageSize(width=w, height=h)

    def get_mm_max_tokens_per_item(
        self, seq_len: int, mm_counts: Mapping[str, int]
    ) -> Mapping[str, int]:
        """Each modality's worst item as the prompt's only medium: the largest image split into
        ``n_max`` sub-images plus the overview, a video of ``num_frames`` frames.  (vLLM would
        otherwise process one dummy prompt holding an image *and* a video, where the image is
        not split: its frames count as images, §4.)"""
        pipe = self.pipeline
        worst: dict[str, MediumInput] = {"image": self._largest_image}
        if self.video_token_id is not None:
            r = pipe.cfg.image.resolution
            worst["video"] = [Image.new("RGB", (r, r))] * pipe.cfg.video.num_frames
        return {
            m: image_token_count(media_blocks([worst[m]], pipe)[0], pipe)
            for m in worst
            if m in mm_counts
        }


class MM15DummyInputsBuilder(BaseDummyInputsBuilder[MM15ProcessingInfo]):
    """Profiling inputs: placeholders, images of the worst-case size, videos of
    ``VideoConfig.num_frames`` frames (a frame's size does not change its tokens)."""

    def get_dummy_text(self, mm_counts: Mapping[str, int]) -> str:
        videos = mm_counts.get("video", 0)
        return self.info.image_token * mm_counts.get("image", 0) + (
            self.info.video_token * videos if videos else ""
        )

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
        r = self.info.pipeline.cfg.image.resolution
        videos = self._get_dummy_videos(
            width=r,
            height=r,
            num_frames=self.info.pipeline.cfg.video.num_frames,
            num_videos=mm_counts.get("video", 0),
            overrides=mm_options.get("video"),
        )
        return {"image": images, "video": videos}


class MM15MultiModalProcessor(BaseMultiModalProcessor[MM15ProcessingInfo]):
    """A prompt's media → tiles (``pixel_values`` with ``image_num_tiles`` per image,
    ``video_pixel_values`` with ``video_num_frames`` per video) and the blocks replacing its
    placeholders, through mm15's input pipeline."""

    def _cached_apply_hf_processor(
        self, inputs: ProcessorInputs, timing_ctx: TimingContext
    ) -> MultiModalProcessingResult:
        # Never item by item from the processor cache: a medium's tiles and block depend on the
        # prompt's other media and their order (module docstring), read here from the prompt.
        order = self.info.media_order(inputs.prompt)
        counts = inputs.mm_data_items.get_all_counts()
        given = (counts.get("image", 0), counts.get("video", 0))
        if (order.count("i"), order.count("v")) != given:
            raise ValueError(
                f"the prompt holds {order.count('i')} image and {order.count('v')} video "
                f"placeholders but {given[0]} images and {given[1]} videos were given"
            )
        kwargs = {**inputs.hf_processor_mm_kwargs, MEDIA_ORDER: order}
        inputs = dataclasses.replace(inputs, hf_processor_mm_kwargs=kwargs)
        return self._apply_hf_processor(inputs, timing_ctx)

    def _ordered_media(
        self, order: str, images: Sequence[MediumInput], videos: Sequence[object]
    ) -> list[MediumInput]:
        queues = {"i": iter(images), "v": (video_frames(v, self.info.pipeline) for v in videos)}
        return [next(queues[kind]) for kind in order]

    def _call_hf_processor(
        self, hf_data: Mapping[str, object], hf_kwargs: Mapping[str, object]
    ) -> BatchFeature:
        if hf_data.keys() - {"images", "videos"}:
            raise ValueError(f"mm15 takes images and videos only, got {sorted(hf_data)}")
        images = list(hf_data.get("images", ()))  # type: ignore[call-overload]
        videos = list(hf_data.get("videos", ()))  # type: ignore[call-overload]
        if any(m is None for m in images + videos):
            raise ValueError(
                "mm15 plans a prompt's media together, so every image and video needs its "
                "data; one given by its UUID alone (cached by vLLM) cannot be used"
            )
        order = str(hf_kwargs[MEDIA_ORDER])
        encoded = encode_media(self._ordered_media(order, images, videos), self.info.pipeline)
        tiles = encoded.tiles_per_medium
        by_kind: dict[str, list[torch.Tensor]] = {"i": [], "v": []}
        for kind, pixels in zip(order, encoded.pixels.split(tiles), strict=True):
            by_kind[kind].append(pixels)
        out: dict[str, torch.Tensor] = {}
        for kind, pixels_key, count_key in (
            ("i", "pixel_values", "image_num_tiles"),
            ("v", "video_pixel_values", "video_num_frames"),
        ):
            if by_kind[kind]:
                out[pixels_key] = torch.cat(by_kind[kind])
                out[count_key] = torch.tensor([len(p) for p in by_kind[kind]], dtype=torch.long)
        return BatchFeature(out)

    def _get_mm_fields_config(
        self, hf_inputs: BatchFeature, hf_processor_mm_kwargs: Mapping[str, object]
    ) -> Mapping[str, MultiModalFieldConfig]:
        none = torch.empty(0, dtype=torch.long)
        return {
            "pixel_values": MultiModalFieldConfig.flat_from_sizes(
                "image", hf_inputs.get("image_num_tiles", none)
            ),
            "image_num_tiles": MultiModalFieldConfig.batched("image", keep_on_cpu=True),
            "video_pixel_values": MultiModalFieldConfig.flat_from_sizes(
                "video", hf_inputs.get("video_num_frames", none)
            ),
            "video_num_frames": MultiModalFieldConfig.batched("video", keep_on_cpu=True),
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
        videos = mm_items.get_items("video", VideoProcessorItems) if "video" in mm_items else []
        sizes = [tuple(images.get_image_size(i)) for i in range(len(images))]
        order = str(hf_processor_mm_kwargs[MEDIA_ORDER])
        media = self._ordered_media(order, sizes, [videos.get(i) for i in range(len(videos))])
        blocks: dict[str, list[list[int]]] = {"i": [], "v": []}
        for kind, block in zip(order, media_blocks(media, pipe) if media else [], strict=True):
            blocks[kind].append(block)

        def replacement(kind: str):
            return lambda i: PromptUpdateDetails.select_token_id(blocks[kind][i], image_id)

        updates = [
            PromptReplacement(modality="image", target=[image_id], replacement=replacement("i"))
        ]
        if self.info.video_token_id is not None:
            updates.append(
                PromptReplacement(
                    modality="video",
                    target=[self.info.video_token_id],
                    replacement=replacement("v"),
                )
            )
        return updates
