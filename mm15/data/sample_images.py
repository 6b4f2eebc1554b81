"""The images a sample shows: their plans (:class:`ImageRef`, no pixels) and their tiles
(:func:`materialize_pixels`), for the input pipeline (:mod:`mm15.data.pipeline`; MM1.5 §3.1, §5).

Images are numbered ``k`` in order of appearance; a video is its frames (§5), one tile each,
never split, and counts as that many images.  Splitting applies only when the sample shows fewer
than ``ImageConfig.split_below_images`` images (§4).  Plans come from the media headers
(:func:`mm15.data.media.media_size`); the pixels decoded later must agree with them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from PIL import Image

from mm15.config import ModelConfig
from mm15.data.layout import ImagePlan, plan_image, plan_video, sample_allows_split
from mm15.data.media import load_image, load_video, media_size, video_frame_count
from mm15.data.schema import Media, Sample, SampleError, media_order
from mm15.data.splitting import TiledImage, tile_image

if TYPE_CHECKING:
    from mm15.data.pipeline import Example


@dataclass(frozen=True, eq=False)
class ImageRef:
    """One image shown in an example, in order of appearance: what to load and how to tile it."""

    sample_id: str
    media: Media
    media_index: int  # index into the sample's media
    frame: int | None  # index into load_video's frames; None for an image
    video_frames: int | None  # frames planned for the whole video; None for an image
    plan: ImagePlan
    allow_split: bool

    @property
    def n_tiles(self) -> int:
        return self.plan.n_tiles


def plan_media(sample: Sample, cfg: ModelConfig) -> dict[int, list[ImageRef]]:
    """ImageRefs per media index: one for an image, one per frame for a video."""
    order = media_order(sample)
    counts = {
        i: video_frame_count(sample.media[i], cfg.video, cfg.image)
        if sample.media[i].kind == "video"
        else 1
        for i in order
    }
    allow = sample_allows_split(sum(counts.values()), cfg.image)
    tpt, k, refs = cfg.connector.num_tokens, 0, {}
    for i in order:
        media = sample.media[i]
        if media.kind == "video":
            plans = plan_video(counts[i], cfg.image, tokens_per_tile=tpt, image_index_start=k)
            refs[i] = [
                ImageRef(sample.id, media, i, f, counts[i], p, False) for f, p in enumerate(plans)
            ]
        else:
            size = media_size(media, cfg.image)
            plan = plan_image(
                size, cfg.image, tokens_per_tile=tpt, image_index=k, allow_split=allow
            )
            refs[i] = [ImageRef(sample.id, media, i, None, None, plan, allow)]
        k += counts[i]
    return refs


def region_frames(sample: Sample, cfg: ModelConfig) -> list[tuple[float, float]]:
    """Per media of ``sample``, the ``(W, H)`` in original pixels that a model of ``cfg`` writes
    region coordinates in (``cfg.format.coords``): the media's size, or under the "grid"
    control the canvas of the grid the image is split into now (the pipeline renders training
    regions with the same :meth:`~mm15.data.splitting.TileGeometry.region_frame`)."""
    refs = plan_media(sample, cfg)
    return [
        refs[i][0].plan.geometry.region_frame(cfg.format.coords)
        if m.kind == "image"
        else m.size  # regions are never on a video
        for i, m in enumerate(sample.media)
    ]


def materialize_pixels(
    images: Example | Sequence[ImageRef], model_cfg: ModelConfig
) -> torch.Tensor:
    """``(N, 3, r, r)`` float32 tiles of ``images`` (an example's, or refs) in order
    (N = Σ plan.n_tiles), each image decoded and cut by
    :func:`~mm15.data.splitting.tile_image` with its plan's ``allow_split``.

    Raises ``SampleError`` when the pixels disagree with the plan (a declared ``Media.size``
    that is not the decoded size: ``malformed``; a video that decodes to other frames than its
    header promised: ``corrupt``).
    """
    refs = list(images) if isinstance(images, Sequence) else images.images
    r = model_cfg.image.resolution
    videos: dict[int, list[Image.Image]] = {}
    tiles = []
    for ref in refs:
        if ref.frame is None:
            tiled = _image_tiles(ref, model_cfg)
        else:
            if id(ref.media) not in videos:
                videos[id(ref.media)] = load_video(ref.media, model_cfg.video, model_cfg.image)
            tiled = _frame_tiles(ref, videos[id(ref.media)], model_cfg)
        tiles.append(tiled.tiles)
    return torch.cat(tiles) if tiles else torch.zeros(0, 3, r, r)


def _where(ref: ImageRef) -> str:
    return f"sample {ref.sample_id} media {ref.media_index}"


def _image_tiles(ref: ImageRef, model_cfg: ModelConfig) -> TiledImage:
    image = load_image(ref.media, model_cfg.image)
    tiled = tile_image(image, model_cfg.image, allow_split=ref.allow_split)
    if tiled.geometry != ref.plan.geometry:
        raise SampleError(
            "malformed",
            f"{_where(ref)}: planned {ref.plan.geometry} but decoded {tiled.geometry} "
            "(is Media.size the decoded size?)",
        )
    return tiled


def _frame_tiles(ref: ImageRef, frames: list[Image.Image], model_cfg: ModelConfig) -> TiledImage:
    if len(frames) != ref.video_frames:
        raise SampleError(
            "corrupt",
            f"{_where(ref)}: video decoded to {len(frames)} frames but {ref.video_frames} "
            "were planned",
        )
    tiled = tile_image(frames[ref.frame], model_cfg.image, allow_split=False)
    if tiled.geometry.n_tiles != ref.plan.n_tiles:
        raise SampleError(
            "corrupt",
            f"{_where(ref)} frame {ref.frame}: {tiled.geometry.n_tiles} tiles, "
            f"planned {ref.plan.n_tiles}",
        )
    return tiled
