"""Video as multi-image input (§5): N frames sampled uniformly over the whole clip.

**Sampling rule.** A clip of K frames is cut into N equal segments and the frame covering the
midpoint of segment i is taken: index ``floor((i + 0.5)·K / N)``, i = 0 … N−1.  For a constant
frame rate this is the frame shown at time ``(i + 0.5)·duration / N``.  **K < N**: all K frames,
once each, in order (repeating frames would add tokens without information; the caller plans
``len(frames)`` tiles, see :func:`mm15.data.layout.plan_video`).

A video is a file PyAV can decode, or a folder of frame images (files whose extension belongs to
an allowed image format, natural-sorted by name so ``f2`` precedes ``f10``; other files ignored).
Frames above ``VideoConfig.max_frame_pixels`` are refused before decoding.  For a file, K comes
from the stream header, or else from counting packets; if decoding then yields fewer frames,
the selection is redone with the true count.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Sequence
from pathlib import Path

import av
import av.error
import numpy as np
from PIL import Image

from mm15.config import ImageConfig, VideoConfig
from mm15.data.image_io import decoded_rgb, open_image


class VideoDecodeError(ValueError):
    """A video that cannot be used; ``str(err)`` starts with the file's name."""

    def __init__(self, name: str, detail: str):
        self.name = name
        super().__init__(f"{name}: {detail}")


def uniform_indices(num_available: int, num_wanted: int) -> list[int]:
    """Indices of the frames to take: ``floor((i + 0.5)·K / N)``; all K when ``K ≤ N``."""
    if num_wanted < 1:
        raise ValueError(f"num_wanted must be >= 1, got {num_wanted}")
    if num_available <= num_wanted:
        return list(range(max(0, num_available)))
    return [((2 * i + 1) * num_available) // (2 * num_wanted) for i in range(num_wanted)]


def sample_decoded_frames(
    frames: Sequence[Image.Image | np.ndarray], cfg: VideoConfig
) -> list[Image.Image]:
    """The frames mm15 shows of a clip whose K frames another library already decoded (vLLM's
    video loader, a ``(K, H, W, 3)`` uint8 array, a list of PIL images): the same uniform
    selection as for a file or a folder, as RGB images (:func:`mm15.data.image_io.decoded_rgb`)."""
    if len(frames) == 0:
        raise VideoDecodeError("video", "no frames")
    return [decoded_rgb(frames[i]) for i in uniform_indices(len(frames), cfg.num_frames)]


def _natural_key(name: str) -> list[object]:
    return [(0, int(p)) if p.isdigit() else (1, p.lower()) for p in re.split(r"(\d+)", name)]


def list_frame_files(folder: str | os.PathLike, image_cfg: ImageConfig) -> list[Path]:
    """Frame images of a folder, natural-sorted by file name (hidden and non-image files skipped)."""
    allowed = {f.upper() for f in image_cfg.formats}
    exts = {e for e, fmt in Image.registered_extensions().items() if fmt in allowed}
    files = [
        p
        for p in Path(folder).iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in exts
    ]
    return sorted(files, key=lambda p: _natural_key(p.name))


def _frames_from_folder(
    folder: Path, cfg: VideoConfig, image_cfg: ImageConfig
) -> list[Image.Image]:
    files = list_frame_files(folder, image_cfg)
    if not files:
        raise VideoDecodeError(str(folder), "frame folder holds no image files")
    frame_cfg = dataclasses.replace(
        image_cfg, max_pixels=min(image_cfg.max_pixels, cfg.max_frame_pixels)
    )
    return [
        open_image(files[i], cfg=frame_cfg) for i in uniform_indices(len(files), cfg.num_frames)
    ]


def _count_frames(path: Path) -> int:
    """K from the stream header, else by counting the video stream's packets (no decoding)."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        if stream.frames > 0:
            return stream.frames
        return sum(1 for pkt in container.demux(stream) if pkt.size > 0)


def _decode_at(path: Path, wanted: list[int]) -> tuple[dict[int, Image.Image], int]:
    """Frames at ``wanted`` indices (RGB) and how many frames were decoded to reach them."""
    want, got, n = set(wanted), {}, 0
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for frame in container.decode(stream):
            if n in want:
                got[n] = frame.to_image()
            n += 1
            if len(got) == len(want):
                break
    return got, n


def _check_video_header(path: Path, cfg: VideoConfig) -> None:
    with av.open(str(path)) as container:
        if not container.streams.video:
            raise VideoDecodeError(str(path), "no video stream")
        ctx = container.streams.video[0].codec_context
        if ctx.width * ctx.height > cfg.max_frame_pixels:
            raise VideoDecodeError(
                str(path),
                f"frames are {ctx.width}x{ctx.height} = {ctx.width * ctx.height:,} "
                f"pixels, above max_frame_pixels={cfg.max_frame_pixels:,} (VideoConfig)",
            )


def _frames_from_file(path: Path, cfg: VideoConfig) -> list[Image.Image]:
    try:
        _check_video_header(path, cfg)
        count = _count_frames(path)
        wanted = uniform_indices(count, cfg.num_frames)
        got, decoded = _decode_at(path, wanted)
        if len(got) < len(wanted):  # the header over-counted: choose again from what exists
            wanted = uniform_indices(decoded, cfg.num_frames)
            got, _ = _decode_at(path, wanted)
    except (av.error.FFmpegError, OSError) as e:
        raise VideoDecodeError(str(path), f"cannot decode video: {e}") from e
    if not got:
        raise VideoDecodeError(str(path), "no decodable frames")
    return [got[i] for i in wanted]


def load_video_frames(
    path: str | os.PathLike, cfg: VideoConfig, *, image_cfg: ImageConfig | None = None
) -> list[Image.Image]:
    """``cfg.num_frames`` RGB frames sampled uniformly over a video file or frame folder.

    Fewer frames when the clip is shorter (see the module docstring).  ``image_cfg`` supplies the
    allowed formats and pixel limit for frame images (default ``ImageConfig()``).  Raises
    :class:`VideoDecodeError` for unreadable videos and
    :class:`~mm15.data.image_io.ImageDecodeError` for a bad frame image; both name the file.
    """
    if cfg.num_frames < 1:
        raise ValueError(f"VideoConfig.num_frames must be >= 1, got {cfg.num_frames}")
    p = Path(path)
    if p.is_dir():
        return _frames_from_folder(p, cfg, image_cfg or ImageConfig())
    if not p.is_file():
        raise VideoDecodeError(str(p), "file not found")
    return _frames_from_file(p, cfg)
