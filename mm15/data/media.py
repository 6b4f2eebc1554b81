"""Media of a :class:`~mm15.data.schema.Sample` → sizes, frame counts and pixels.

The formatter (:mod:`mm15.data.pipeline`) plans image tokens from :func:`media_size` and
:func:`video_frame_count` without decoding pixels; :func:`load_image` / :func:`load_video` decode
later, when tiles are cut.  A medium holding pixels already decoded (``Media.decoded``) answers
from them: its size, its frames, its pixels.  Every failure is a :class:`~mm15.data.schema.SampleError` with reason
``missing`` (no file, no bytes) or ``corrupt`` (undecodable, refused format, too many pixels), so
the pipeline can skip and count it.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import av
import av.error
from PIL import Image

from mm15.config import ImageConfig, VideoConfig

# image_io's header-only identification (allowed plugins only) and pixel-limit check are
# reused so that reading a size is exactly as safe as decoding.
from mm15.data.image_io import ImageDecodeError, image_size, open_image
from mm15.data.schema import Media, SampleError
from mm15.data.video import VideoDecodeError, list_frame_files, load_video_frames, uniform_indices


def _label(media: Media) -> str:
    return media.path if media.path is not None else "<bytes>"


def _source(media: Media) -> str | bytes:
    if media.bytes is not None:
        return media.bytes
    if media.path is not None:
        return media.path
    raise SampleError("missing", "image media has neither path nor bytes")


def _as_sample_error(err: ImageDecodeError) -> SampleError:
    return SampleError("missing" if err.reason == "missing" else "corrupt", str(err))


def _header_size(media: Media, cfg: ImageConfig) -> tuple[int, int]:
    """(W, H) after EXIF orientation, from the header alone (no pixels decoded)."""
    try:
        return image_size(_source(media), cfg=cfg, name=_label(media))
    except ImageDecodeError as e:
        raise _as_sample_error(e) from e


def media_size(media: Media, image_cfg: ImageConfig) -> tuple[int, int]:
    """``(W, H)`` of an image as :func:`load_image` will return it: ``Media.size`` when the reader
    set it, else read from the file header (EXIF orientation applied, no pixels decoded)."""
    if media.kind != "image":
        raise SampleError("malformed", f"{_label(media)}: media_size needs an image, got a video")
    if media.decoded is not None:
        return media.decoded.size
    if media.size is not None:
        w, h = media.size
        if int(w) != w or int(h) != h or w < 1 or h < 1:
            raise SampleError(
                "malformed",
                f"{_label(media)}: Media.size {media.size} is not a positive integer (W, H)",
            )
        return int(w), int(h)
    return _header_size(media, image_cfg)


def load_image(media: Media, image_cfg: ImageConfig) -> Image.Image:
    """Decode an image medium to RGB (:func:`~mm15.data.image_io.open_image`)."""
    if media.kind != "image":
        raise SampleError("malformed", f"{_label(media)}: load_image needs an image, got a video")
    if media.decoded is not None:
        return media.decoded
    try:
        return open_image(_source(media), cfg=image_cfg, name=_label(media))
    except ImageDecodeError as e:
        raise _as_sample_error(e) from e


def _frame_cfg(video_cfg: VideoConfig, image_cfg: ImageConfig) -> ImageConfig:
    return dataclasses.replace(
        image_cfg, max_pixels=min(image_cfg.max_pixels, video_cfg.max_frame_pixels)
    )


def _file_frame_count(path: str) -> int:
    """Frames of a video file from its header, else by counting packets (no decoding)."""
    with av.open(path) as container:
        if not container.streams.video:
            raise VideoDecodeError(path, "no video stream")
        stream = container.streams.video[0]
        if stream.frames > 0:
            return stream.frames
        return sum(1 for pkt in container.demux(stream) if pkt.size > 0)


def video_frame_count(media: Media, video_cfg: VideoConfig, image_cfg: ImageConfig) -> int:
    """How many frames :func:`load_video` returns: ``min(K, num_frames)`` for a clip of K frames.

    K comes from ``Media.frames``, the frame folder listing, or the file header (a header that
    over-counts is caught when the frames are decoded: the tile count then disagrees).
    """
    if media.kind != "video":
        raise SampleError("malformed", f"{_label(media)}: expected a video medium")
    if media.decoded is not None:
        if not media.decoded:
            raise SampleError("corrupt", f"{_label(media)}: video has no frames")
        return len(media.decoded)  # the frames themselves, already sampled
    if media.frames is not None:
        k = len(media.frames)
    elif media.path is None:
        raise SampleError("missing", "video media has neither path nor frames")
    elif Path(media.path).is_dir():
        k = len(list_frame_files(media.path, image_cfg))
    elif not Path(media.path).is_file():
        raise SampleError("missing", f"{media.path}: file not found")
    else:
        try:
            k = _file_frame_count(media.path)
        except (av.error.FFmpegError, OSError, VideoDecodeError) as e:
            raise SampleError("corrupt", f"{media.path}: cannot read video header: {e}") from e
    if k < 1:
        raise SampleError("corrupt", f"{_label(media)}: video has no frames")
    return len(uniform_indices(k, video_cfg.num_frames))


def load_video(media: Media, video_cfg: VideoConfig, image_cfg: ImageConfig) -> list[Image.Image]:
    """Frames of a video medium, sampled uniformly (§5; :mod:`mm15.data.video`).

    ``Media.frames`` (explicit frame files) wins over ``Media.path`` (a file or frame folder).
    """
    if media.kind != "video":
        raise SampleError("malformed", f"{_label(media)}: expected a video medium")
    if media.decoded is not None:
        return list(media.decoded)
    try:
        if media.frames is not None:
            if not media.frames:
                raise SampleError("corrupt", "video media has an empty frames list")
            cfg = _frame_cfg(video_cfg, image_cfg)
            picks = uniform_indices(len(media.frames), video_cfg.num_frames)
            return [open_image(media.frames[i], cfg=cfg) for i in picks]
        if media.path is None:
            raise SampleError("missing", "video media has neither path nor frames")
        if not Path(media.path).exists():
            raise SampleError("missing", f"{media.path}: file not found")
        return load_video_frames(media.path, video_cfg, image_cfg=image_cfg)
    except ImageDecodeError as e:
        raise _as_sample_error(e) from e
    except VideoDecodeError as e:
        raise SampleError("corrupt", str(e)) from e
