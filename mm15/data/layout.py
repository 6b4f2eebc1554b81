"""How many tokens an image becomes, and in what order (MM1.5 §3.1, §3.5); the one place that counts image tokens.

Every part of mm15 (training, evaluation, generation, servers) gets its plans from the input
pipeline (:mod:`mm15.data.pipeline`), which asks :func:`plan_image` / :func:`plan_video`, as does
the ``mm15 split`` report; nobody else multiplies tiles by tokens.  A plan is
computed from the image size alone, with the same :func:`~mm15.data.splitting.tile_geometry`
that :func:`~mm15.data.splitting.tile_image` cuts pixels with, so the two cannot disagree.

An image becomes ``segments``: image-token runs, one per tile in encoder order, with the
sub-image position indicators of Table 3 between them as text:

* ``none``  — runs only.
* ``index`` — before every tile the text ``(k,i,j)``: ``k`` the 0-based image number in the
  sample, ``i, j`` the 1-based row and column, ``(k,0,0)`` the overview.  A single-tile image
  (no split) is sub-image ``(k,1,1)``.
* ``seps``  — ``,`` between columns, ``<n>`` between rows, ``:`` right before the overview.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from mm15.config import ImageConfig
from mm15.data.splitting import OVERVIEW_ID, TileGeometry, tile_geometry

COL_SEP = ","
ROW_SEP = "<n>"
OVERVIEW_SEP = ":"


@dataclass(frozen=True)
class TextPiece:
    """Plain text in the stream; ``indicator`` marks a sub-image position indicator (Table 3)."""

    text: str
    indicator: bool = False


@dataclass(frozen=True)
class ImageRun:
    """``num_tokens`` image tokens holding the features of tile ``tile_index`` of image
    ``image_index`` (``tile_index`` indexes ``TiledImage.tiles`` of that image)."""

    image_index: int
    tile_index: int
    num_tokens: int


Segment = TextPiece | ImageRun


@dataclass(frozen=True)
class ImagePlan:
    """What one image becomes in the token stream (computed from its size, no pixels)."""

    geometry: TileGeometry
    image_index: int  # k: 0-based image number in the sample
    tokens_per_tile: int  # connector output per tile (144, 81, 64: Table 1)
    indicator: str
    segments: tuple[Segment, ...]

    @property
    def size_wh(self) -> tuple[int, int]:
        return self.geometry.size_wh

    @property
    def grid(self) -> tuple[int, int]:
        return self.geometry.grid

    @property
    def n_tiles(self) -> int:
        """Tiles fed to the encoder, overview included."""
        return self.geometry.n_tiles

    @property
    def n_sub_images(self) -> int:
        return self.geometry.n_sub_images

    @property
    def has_overview(self) -> bool:
        return self.geometry.has_overview

    @property
    def tile_ids(self) -> tuple[tuple[int, int], ...]:
        return self.geometry.tile_ids

    @property
    def image_tokens(self) -> int:
        """Image tokens this image occupies: ``n_tiles × tokens_per_tile`` (Table 1)."""
        return self.n_tiles * self.tokens_per_tile

    @property
    def effective_resolution(self) -> int:
        """Pixels: sub-images (overview excluded) × r² (Table 1's "Effective Resolution")."""
        return self.geometry.effective_resolution

    @property
    def text_pieces(self) -> tuple[str, ...]:
        """The indicator texts, in order (handy for checks and reports)."""
        return tuple(s.text for s in self.segments if isinstance(s, TextPiece))


def sample_allows_split(num_images: int, cfg: ImageConfig) -> bool:
    """Splitting is enabled only when a sample has fewer than ``cfg.split_below_images`` images
    (3 in the final recipe, §4)."""
    if num_images < 0:
        raise ValueError(f"num_images must be >= 0, got {num_images}")
    return num_images < cfg.split_below_images


def _segments(
    geo: TileGeometry, k: int, indicator: str, tokens_per_tile: int
) -> tuple[Segment, ...]:
    out: list[Segment] = []
    prev: tuple[int, int] | None = None
    for t, (i, j) in enumerate(geo.tile_ids):
        if indicator == "index":
            out.append(TextPiece(f"({k},{i},{j})", indicator=True))
        elif indicator == "seps":
            if (i, j) == OVERVIEW_ID:
                out.append(TextPiece(OVERVIEW_SEP, indicator=True))
            elif prev is not None and prev != OVERVIEW_ID:
                out.append(TextPiece(COL_SEP if prev[0] == i else ROW_SEP, indicator=True))
        elif indicator != "none":
            raise ValueError(f"unknown ImageConfig.indicator {indicator!r} (none, index, seps)")
        out.append(ImageRun(image_index=k, tile_index=t, num_tokens=tokens_per_tile))
        prev = (i, j)
    return tuple(out)


def plan_image(
    size_wh: tuple[int, int],
    cfg: ImageConfig,
    *,
    tokens_per_tile: int,
    image_index: int = 0,
    allow_split: bool = True,
) -> ImagePlan:
    """The plan of an image of ``size_wh = (w, h)`` (after EXIF orientation) under ``cfg``.

    ``allow_split`` should be :func:`sample_allows_split` of the sample's image count.
    """
    if tokens_per_tile < 1:
        raise ValueError(f"tokens_per_tile must be >= 1, got {tokens_per_tile}")
    if image_index < 0:
        raise ValueError(f"image_index must be >= 0, got {image_index}")
    geo = tile_geometry(tuple(size_wh), cfg, allow_split=allow_split)
    return ImagePlan(
        geometry=geo,
        image_index=image_index,
        tokens_per_tile=tokens_per_tile,
        indicator=cfg.indicator,
        segments=_segments(geo, image_index, cfg.indicator, tokens_per_tile),
    )


def plan_sample(
    sizes_wh: Sequence[tuple[int, int]],
    cfg: ImageConfig,
    *,
    tokens_per_tile: int,
    image_index_start: int = 0,
) -> list[ImagePlan]:
    """Plans for all images of one sample: numbered from ``image_index_start``, split only when
    the sample has fewer than ``cfg.split_below_images`` images."""
    allow = sample_allows_split(len(sizes_wh), cfg)
    return [
        plan_image(
            s,
            cfg,
            tokens_per_tile=tokens_per_tile,
            image_index=image_index_start + n,
            allow_split=allow,
        )
        for n, s in enumerate(sizes_wh)
    ]


def plan_video(
    num_frames: int,
    cfg: ImageConfig,
    *,
    tokens_per_tile: int,
    image_index_start: int = 0,
    frame_size_wh: tuple[int, int] | None = None,
) -> list[ImagePlan]:
    """Plans for ``num_frames`` video frames (§5): each one tile, no split, no overview, numbered
    ``image_index_start, …``.  The token count does not depend on the frame size, so
    ``frame_size_wh`` (default ``(r, r)``) only fills ``plan.size_wh``."""
    if num_frames < 1:
        raise ValueError(f"a video needs at least one frame, got num_frames={num_frames}")
    size = frame_size_wh or (cfg.resolution, cfg.resolution)
    return [
        plan_image(
            size,
            cfg,
            tokens_per_tile=tokens_per_tile,
            image_index=image_index_start + f,
            allow_split=False,
        )
        for f in range(num_frames)
    ]


def total_image_tokens(plans: Sequence[ImagePlan]) -> int:
    """Image tokens of all plans together."""
    return sum(p.image_tokens for p in plans)
