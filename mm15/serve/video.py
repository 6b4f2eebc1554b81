"""``video_url`` → the frames mm15 shows, safely (docs/serving.md).

The URL kinds and their rules are those of ``image_url`` (:mod:`mm15.serve.media`), with the
video's byte limit, ``MediaConfig.max_video_bytes``:

* ``data:video/...;base64,...`` -- a video file (MP4/MOV, Matroska/WebM, AVI), always accepted;
* ``data:video/jpeg;base64,<frame>,<frame>,...`` -- vLLM's form: the clip's frames as
  comma-separated base64 images (allowed image formats only);
* ``http(s)://`` -- only where image fetching is enabled (:class:`~mm15.serve.fetch.Fetcher`);
* ``file://`` -- only below the media root (:func:`~mm15.serve.local_files.read_local_file`).

A video is opened in two steps, so that the server's pixel budget can be taken in between.
:func:`open_video_url` reads the bytes and the headers: K frames (refused above
``max_video_frames``) and their size (refused above the frame pixel bound), before any frame
is decoded.  :meth:`PendingVideo.decode` then decodes only the frames the one sampler picks
(:mod:`mm15.data.video`: ``floor((i + 0.5)·K / N)``, N = the model's ``VideoConfig.num_frames``),
in memory: no temporary file.  A frame is an image, so the bound on its pixels is the smaller of
``VideoConfig.max_frame_pixels`` and ``MediaConfig.max_image_pixels``.  Every refusal is an
:class:`APIError` 400 with a ``video`` code.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

from PIL import Image

from mm15.config import ImageConfig, VideoConfig
from mm15.data.image_io import ImageDecodeError, image_size, open_image
from mm15.data.video import (
    VideoDecodeError,
    load_video_bytes,
    read_video_header,
    sample_frames,
    uniform_indices,
)
from mm15.serve.config import MediaConfig
from mm15.serve.fetch import Fetcher
from mm15.serve.local_files import read_local_file
from mm15.serve.media import decode_base64, split_data_url
from mm15.serve.schemas import APIError

# Refusals shared with image_url (fetch.py, local_files.py), renamed for a video.
_VIDEO_CODES = {"invalid_image_url": "invalid_video_url", "image_missing": "video_missing"}


def _bad(message: str, code: str = "invalid_video_url") -> APIError:
    return APIError(400, message, code=code)


@dataclass
class PendingVideo:
    """A ``video_url`` read and its headers checked; no frame decoded yet."""

    frames: int  # how many frames decode() gives: min(K, num_frames)
    pixels: int  # their W × H summed, from the headers (what the pixel budget must hold)
    _decode: Callable[[], list[Image.Image]]

    def decode(self) -> list[Image.Image]:
        """The sampled frames, RGB, in order."""
        return self._decode()


def frame_video_config(media: MediaConfig, video: VideoConfig) -> VideoConfig:
    """The model's VideoConfig with frames bounded by ``max_image_pixels`` too."""
    bound = min(video.max_frame_pixels, media.max_image_pixels)
    return dataclasses.replace(video, max_frame_pixels=bound)


def open_video_url(
    url: str, cfg: MediaConfig, video: VideoConfig, fetcher: Fetcher, where: str
) -> PendingVideo:
    """The video a ``video_url`` names, checked from its headers (see the module docstring)."""
    video = frame_video_config(cfg, video)
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    try:
        if scheme == "data":
            mime, payload = split_data_url(url, where, "video")
            if mime == "video/jpeg":
                return _frame_list(payload, cfg, video, where)
            data = decode_base64(payload, cfg.max_video_bytes, where, "video")
        elif scheme in ("http", "https"):
            data = fetcher.fetch(url, where, kind="video")
        elif scheme == "file":
            data = read_local_file(url, cfg, where, kind="video")
        else:
            raise _bad(f"{where}: unsupported URL scheme {scheme or '(none)'!r} (use a data URL)")
    except APIError as e:
        e.code = _VIDEO_CODES.get(e.code, e.code)
        raise
    return _container(data, cfg, video, where)


def _check_length(k: int, cfg: MediaConfig, where: str) -> None:
    if k > cfg.max_video_frames:
        raise _bad(
            f"{where}: the video has {k:,} frames, above the limit of "
            f"{cfg.max_video_frames:,} (max_video_frames)",
            "video_too_long",
        )


def _refusal(e: VideoDecodeError | ImageDecodeError) -> APIError:
    if e.reason == "too_large":
        bound = (
            "a frame's bound is the smaller of VideoConfig.max_frame_pixels and max_image_pixels"
        )
        return _bad(f"{e} ({bound})", "video_too_large")
    return _bad(str(e), "video_unreadable")


def _container(data: bytes, cfg: MediaConfig, video: VideoConfig, where: str) -> PendingVideo:
    """A video file's bytes: K and the frame size from its headers; decoded in memory."""
    try:
        header = read_video_header(data, video, name=where)
    except VideoDecodeError as e:
        raise _refusal(e) from e
    _check_length(header.frames, cfg, where)
    n = len(uniform_indices(header.frames, video.num_frames))
    if n == 0:
        raise _bad(f"{where}: the video has no frames", "video_unreadable")

    def decode() -> list[Image.Image]:
        try:
            return load_video_bytes(data, video, name=where, header=header)
        except VideoDecodeError as e:
            raise _refusal(e) from e

    return PendingVideo(n, n * header.width * header.height, decode)


def _frame_list(payload: bytes, cfg: MediaConfig, video: VideoConfig, where: str) -> PendingVideo:
    """vLLM's ``data:video/jpeg`` form: every frame's base64 checked, then only the sampled
    frames read (their sizes from their headers, their pixels in :meth:`PendingVideo.decode`)."""
    chunks = payload.split(b",")
    _check_length(len(chunks), cfg, where)
    encoded = []
    for i, chunk in enumerate(chunks):
        if not chunk:
            raise _bad(f"{where}: frame {i} of the data URL is empty")
        encoded.append(decode_base64(chunk, cfg.max_video_bytes, f"{where} frame {i}", "video"))
    total = sum(map(len, encoded))
    if total > cfg.max_video_bytes:
        raise _bad(
            f"{where}: the frames are {total:,} bytes, above the limit of "
            f"{cfg.max_video_bytes:,} (max_video_bytes)",
            "video_too_large",
        )
    picked = sample_frames(encoded, video, name=where)
    image_cfg = ImageConfig(max_pixels=video.max_frame_pixels, formats=cfg.formats)
    names = [f"{where} frame {i}" for i in uniform_indices(len(encoded), video.num_frames)]
    try:
        sizes = [image_size(f, cfg=image_cfg, name=n) for f, n in zip(picked, names, strict=True)]
    except ImageDecodeError as e:
        raise _refusal(e) from e

    def decode() -> list[Image.Image]:
        try:
            return [
                open_image(f, cfg=image_cfg, name=n) for f, n in zip(picked, names, strict=True)
            ]
        except ImageDecodeError as e:
            raise _refusal(e) from e

    return PendingVideo(len(picked), sum(w * h for w, h in sizes), decode)
