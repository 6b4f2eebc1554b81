"""``MM15Processor``: text with ``<image>`` and ``<video>`` placeholders + images and videos →
``input_ids`` and tiles, through
mm15's one input pipeline (:mod:`mm15.data.prompt_encoding`, :func:`mm15.data.pipeline.format_sample`).

So the tiles, the overview, the sub-image indicators and the image-token counts are the ones
training uses (MM1.5 §3.5, Eq. 1, Table 3): each text is a document sample whose n-th
placeholder shows the n-th image, planned and tiled by the pipeline, never here.  The chat
template is the checkpoint's (:mod:`mm15.data.chat_template`; ``apply_chat_template`` renders
it, then calls this processor on the text and the messages' images), and it writes the special
tokens itself, so text is tokenised as it is (``add_special_tokens`` is accepted and ignored).

``processor_config.json`` holds the pipeline's settings, written from the checkpoint by
``mm15 export``: ``image_config`` (ImageConfig: splitting, n_min/n_max, overview, indicators;
inference-time changes such as a larger ``n_max``, MM1.5 Table 2, go here), ``video_config``,
``format_config`` (the chat format), ``tokens_per_tile`` (the connector's), ``image_token`` and
``video_token``.  Images are PIL images or local file paths (decoded by mm15's safe decoder).

A video is one ``video_token`` in the text (the export's chat template writes one per video
part) and becomes its frames, one tile each (MM1.5 §5): a local file or frame folder (read and
sampled by :mod:`mm15.data.video`), or frames already decoded (a ``(K, H, W, 3)`` uint8 array or
tensor, a list of PIL images or arrays) of which the same uniform rule picks
``VideoConfig.num_frames`` (:func:`mm15.data.video.sample_decoded_frames`).  The ``video_token``
is a special token the export adds to the tokenizer; it never reaches the model, since each is
replaced by its frames' image blocks.  Exports made before it have none and take no videos.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from tokenizers import AddedToken
from transformers import AutoProcessor, BatchFeature, PreTrainedTokenizerBase, ProcessorMixin

from mm15.config import ConnectorConfig, FormatConfig, ImageConfig, ModelConfig, VideoConfig
from mm15.config_json import from_dict, to_dict
from mm15.data.chat_template import chat_template
from mm15.data.prompt_encoding import EncodedPrompt, encode_sample, media_placeholder_parts
from mm15.data.schema import Media, Message, Sample
from mm15.data.video import sample_decoded_frames
from mm15.hf.configuration import MM15Config
from mm15.tokenizer import MM15Tokenizer, TokenizerMeta

ImageInput = Image.Image | str
# A video: a local file or frame folder, or its decoded frames (module docstring).
VideoInput = str | np.ndarray | torch.Tensor | Sequence[Image.Image | np.ndarray]
VIDEO_TOKEN = "<video>"  # what mm15 export --hf adds to the tokenizer for video parts


class MM15Processor(ProcessorMixin):
    """The mm15 input pipeline behind the transformers processor API (module docstring)."""

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase | None = None,
        chat_template: str | None = None,
        image_config: dict | None = None,
        video_config: dict | None = None,
        format_config: dict | None = None,
        tokens_per_tile: int = 144,
        image_token: str = "<image>",
        video_token: str | None = None,
    ):
        self.image_config = image_config or {}
        self.video_config = video_config or {}
        self.format_config = format_config or {}
        self.tokens_per_tile = tokens_per_tile
        self.image_token = image_token
        self.video_token = video_token
        super().__init__(tokenizer, chat_template=chat_template)

    @classmethod
    def from_mm15(cls, tokenizer: PreTrainedTokenizerBase, cfg: ModelConfig) -> MM15Processor:
        """The processor of checkpoint config ``cfg`` with its HF tokenizer, to which this adds
        the special token ``<video>`` and the chat template that writes it for video parts."""
        if VIDEO_TOKEN not in tokenizer.get_vocab():
            tokenizer.add_tokens([AddedToken(VIDEO_TOKEN, special=True, normalized=False)])
        tokenizer.chat_template = chat_template(cfg, video_token=VIDEO_TOKEN)
        return cls(
            tokenizer,
            chat_template=tokenizer.chat_template,
            image_config=to_dict(cfg.image),
            video_config=to_dict(cfg.video),
            format_config=to_dict(cfg.format),
            tokens_per_tile=cfg.connector.num_tokens,
            image_token=cfg.image_token,
            video_token=VIDEO_TOKEN,
        )

    # ---- mm15's view of the settings -----------------------------------------------------------

    def mm15_tokenizer(self) -> MM15Tokenizer:
        """The HF tokenizer's vocabulary with the facts the pipeline needs (image/BOS/EOS/pad)."""
        tok = self.tokenizer
        meta = TokenizerMeta(
            image_token=self.image_token,
            bos_token=tok.bos_token,
            eos_tokens=[tok.eos_token] if tok.eos_token else [],
            pad_token=tok.pad_token,
        )
        return MM15Tokenizer(tok.backend_tokenizer, meta)

    def pipeline_config(self, image_token_id: int) -> ModelConfig:
        """A ModelConfig carrying what the pipeline reads (image, video and chat format, tokens
        per tile, the image token); its vision and decoder fields are unused defaults."""
        return ModelConfig(
            image=from_dict(ImageConfig, self.image_config, path="image_config"),
            video=from_dict(VideoConfig, self.video_config, path="video_config"),
            format=from_dict(FormatConfig, self.format_config, path="format_config"),
            connector=ConnectorConfig(num_tokens=self.tokens_per_tile),
            image_token=self.image_token,
            image_token_id=image_token_id,
        )

    # ---- encoding ------------------------------------------------------------------------------

    def placeholders(self) -> list[str]:
        """The image placeholder, then the video one when this processor has it."""
        return [self.image_token] + ([self.video_token] if self.video_token else [])

    def encode(
        self, text: str, images: Sequence[ImageInput] = (), videos: Sequence[VideoInput] = ()
    ) -> EncodedPrompt:
        """One text (a rendered chat, or any document) and its images and videos through the
        pipeline: the n-th image placeholder shows ``images[n]``, the n-th video one
        ``videos[n]``."""
        tok = self.mm15_tokenizer()
        cfg = self.pipeline_config(tok.image_token_id)
        if videos and not self.video_token:
            raise ValueError(
                "this processor has no video token (an export made before mm15 took videos "
                "through transformers): export the checkpoint again"
            )
        parts, kinds = media_placeholder_parts(text, self.placeholders())
        counts = (kinds.count(0), kinds.count(1))
        if counts != (len(images), len(videos)):
            raise ValueError(
                f"text has {counts[0]} {self.image_token} and {counts[1]} {self.video_token} "
                f"placeholders but {len(images)} images and {len(videos)} videos were given"
            )
        queues = (iter(images), iter(videos))
        media = [_media(next(queues[0])) if k == 0 else _video(next(queues[1]), cfg) for k in kinds]
        sample = Sample(
            id="processor",
            source="processor",
            category="eval",
            stage="eval",
            media=media,
            messages=[Message("document", parts)],
        )
        # The text already holds its special tokens (the chat template writes BOS).
        fmt = dataclasses.replace(cfg.format, add_bos=False)
        return encode_sample(sample, tokenizer=tok, model_cfg=cfg, fmt=fmt)

    def __call__(
        self,
        images: ImageInput | Sequence[ImageInput] | Sequence[Sequence[ImageInput]] | None = None,
        text: str | Sequence[str] | None = None,
        videos: Any = None,
        audio: Any = None,
        *,
        return_tensors: str | None = None,
        padding_side: str | None = None,
        add_special_tokens: bool | None = None,  # ignored: the text holds its special tokens
        **kwargs: Any,
    ) -> BatchFeature:
        """``input_ids`` and ``attention_mask`` padded to the longest text (on the tokenizer's
        ``padding_side`` unless given; left for batched generation), and ``pixel_values``, the
        ``(N, 3, r, r)`` float32 tiles of all images in order, when there are images."""
        if kwargs:
            raise TypeError(f"MM15Processor got unexpected arguments {sorted(kwargs)}")
        if audio is not None:
            raise ValueError("MM15Processor takes text, images and videos, not audio")
        if text is None:
            raise ValueError("MM15Processor needs text (render messages with apply_chat_template)")
        texts = [text] if isinstance(text, str) else list(text)
        per_text = _images_per_text(images, texts, self.image_token)
        if videos is None:
            vids: list[list[VideoInput]] = [[] for _ in texts]
        elif not self.video_token:
            raise ValueError("this processor has no video token: export the checkpoint again")
        else:
            vids = _videos_per_text(videos, texts, self.video_token)
        encoded = [
            self.encode(t, ims, vs) for t, ims, vs in zip(texts, per_text, vids, strict=True)
        ]
        data = self._pad([e.input_ids for e in encoded], padding_side)
        tiles = [e.pixels for e in encoded if e.pixels is not None]
        if tiles:
            data["pixel_values"] = torch.cat(tiles)
        return BatchFeature(data, tensor_type=return_tensors)

    def _pad(self, rows: list[list[int]], side: str | None) -> dict[str, list[list[int]]]:
        side = side or self.tokenizer.padding_side
        if side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {side!r}")
        pad = self.tokenizer.pad_token_id
        pad = pad if pad is not None else self.tokenizer.eos_token_id
        width = max(len(r) for r in rows)
        ids, mask = [], []
        for r in rows:
            fill = width - len(r)
            left = side == "left"
            ids.append([pad] * fill * left + r + [pad] * fill * (not left))
            mask.append([0] * fill * left + [1] * len(r) + [0] * fill * (not left))
        return {"input_ids": ids, "attention_mask": mask}

    @property
    def model_input_names(self) -> list[str]:
        return ["input_ids", "attention_mask", "pixel_values"]


def _media(image: ImageInput) -> Media:
    if isinstance(image, Image.Image):
        return Media(decoded=image)
    if isinstance(image, str) and "://" not in image:
        return Media(path=image)  # decoded by the pipeline (mm15.data.image_io's bounds)
    raise ValueError(
        f"MM15Processor takes PIL images or local file paths, got {str(image)[:80]!r} "
        "(nothing is downloaded)"
    )


def _video(video: VideoInput, cfg: ModelConfig) -> Media:
    if isinstance(video, str):
        if "://" in video:
            raise ValueError(f"MM15Processor takes local videos, got {video[:80]!r}")
        return Media(kind="video", path=video)  # read and sampled by mm15.data.video
    if isinstance(video, torch.Tensor):
        video = video.numpy()
    if isinstance(video, np.ndarray) and video.ndim != 4:
        raise ValueError(f"a video array must be (frames, H, W, 3), got shape {video.shape}")
    return Media(kind="video", decoded=sample_decoded_frames(video, cfg.video))


def _is_frame(x: Any) -> bool:
    return isinstance(x, Image.Image) or (isinstance(x, np.ndarray | torch.Tensor) and x.ndim == 3)


def _videos_per_text(videos: Any, texts: list[str], placeholder: str) -> list[list[VideoInput]]:
    """Videos as one list per text, split in order by the texts' placeholder counts (a single
    video, or one list of frames, is one video)."""
    if isinstance(videos, str | np.ndarray | torch.Tensor):
        videos = [videos]
    videos = list(videos)
    if videos and all(_is_frame(v) for v in videos):
        videos = [videos]  # one video given as its list of frames
    return _split_by_placeholders(videos, texts, placeholder, "videos")


def _images_per_text(images: Any, texts: list[str], placeholder: str) -> list[list[ImageInput]]:
    """Images as one list per text: a nested list as given, a flat one split in order by the
    texts' placeholder counts."""
    if images is None:
        return [[] for _ in texts]
    if isinstance(images, Image.Image | str):
        images = [images]
    images = list(images)
    if len(images) == len(texts) and all(isinstance(x, list | tuple) for x in images):
        return [list(x) for x in images]
    return _split_by_placeholders(images, texts, placeholder, "images")


def _split_by_placeholders(
    items: list, texts: list[str], placeholder: str, noun: str
) -> list[list]:
    counts = [t.count(placeholder) for t in texts]
    if sum(counts) != len(items):
        raise ValueError(
            f"the texts hold {sum(counts)} {placeholder} placeholders but {len(items)} {noun} "
            "were given"
        )
    starts = [sum(counts[:i]) for i in range(len(counts))]
    return [items[s : s + c] for s, c in zip(starts, counts, strict=True)]


# Importing this module registers the processor (mm15.hf.register).
AutoProcessor.register(MM15Config, MM15Processor, exist_ok=True)
