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

A video may also arrive as bytes (a server's upload, :func:`load_video_bytes`): decoded in memory,
with the same rule, but only from a container recognised by its first bytes
(:func:`sniff_container`), since FFmpeg left to probe untrusted bytes could pick any of its
demuxers, playlists (``hls``, ``concat``) that open further files or URLs among them.  Frames
that arrive as separate images (vLLM's ``data:video/jpeg`` form) are chosen by
:func:`sample_frames` before any is decoded.
"""

from __future__ import annotations

import dataclasses
import io
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Literal, TypeVar

import av
import av.error
import numpy as np
from PIL import Image

from mm15.config import ImageConfig, VideoConfig
from mm15.data.image_io import decoded_rgb, open_image

T = TypeVar("T")


class VideoDecodeError(ValueError):
    """A video that cannot be used; ``str(err)`` starts with the file's name.  ``reason`` is
    ``too_large`` for frames above ``VideoConfig.max_frame_pixels``, else ``unreadable``."""

    def __init__(
        self, name: str, detail: str, reason: Literal["unreadable", "too_large"] = "unreadable"
    ):
        self.name = name
        self.reason = reason
        super().__init__(f"{name}: {detail}")


def uniform_indices(num_available: int, num_wanted: int) -> list[int]:
    """Indices of the frames to take: ``floor((i + 0.5)·K / N)``; all K when ``K ≤ N``."""
    if num_wanted < 1:
        raise ValueError(f"num_wanted must be >= 1, got {num_wanted}")
    if num_available <= num_wanted:
        return list(range(max(0, num_available)))
    return [((2 * i + 1) * num_available) // (2 * num_wanted) for i in range(num_wanted)]


def sample_frames(frames: Sequence[T], cfg: VideoConfig, *, name: str = "video") -> list[T]:
    """The frames mm15 shows of a clip given as a list of K frames, of any kind (files, encoded
    bytes, pixels): the uniform selection, before anything is decoded."""
    if len(frames) == 0:
        raise VideoDecodeError(name, "no frames")
    return [frames[i] for i in uniform_indices(len(frames), cfg.num_frames)]


def sample_decoded_frames(
    frames: Sequence[Image.Image | np.ndarray], cfg: VideoConfig
) -> list[Image.Image]:
    """The frames mm15 shows of a clip whose K frames another library already decoded (vLLM's
    video loader, a ``(K, H, W, 3)`` uint8 array, a list of PIL images): the same uniform
    selection as for a file or a folder, as RGB images (:func:`mm15.data.image_io.decoded_rgb`)."""
    return [decoded_rgb(f) for f in sample_frames(frames, cfg)]


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
    return [open_image(f, cfg=frame_cfg) for f in sample_frames(files, cfg)]


def sniff_container(data: bytes) -> str | None:
    """The FFmpeg demuxer for a video's bytes, from its first bytes: ``"mov"`` (MP4, MOV, 3GP:
    an ISO-BMFF box first), ``"matroska"`` (MKV, WebM: the EBML magic) or ``"avi"`` (RIFF AVI);
    None for anything else."""
    if data[4:8] in (b"ftyp", b"moov", b"mdat", b"wide", b"free"):
        return "mov"
    if data[:4] == b"\x1a\x45\xdf\xa3":
        return "matroska"
    if data[:4] == b"RIFF" and data[8:12] == b"AVI ":
        return "avi"
    return None


def _open(src: Path | bytes, name: str):
    """An input container of a file, or of bytes in memory (a recognised container only)."""
    if isinstance(src, bytes):
        fmt = sniff_container(src)
        if fmt is None:
            raise VideoDecodeError(
                name, "not a video container mm15 reads from bytes (MP4/MOV, Matroska/WebM, AVI)"
            )
        return av.open(io.BytesIO(src), format=fmt)
    return av.open(str(src))


@dataclasses.dataclass(frozen=True)
class VideoHeader:
    """What a clip's headers say, before any frame is decoded."""

    frames: int  # K: from the stream header, else by counting the video stream's packets
    width: int
    height: int


def _read_header(src: Path | bytes, cfg: VideoConfig, name: str) -> VideoHeader:
    with _open(src, name) as container:
        if not container.streams.video:
            raise VideoDecodeError(name, "no video stream")
        stream = container.streams.video[0]
        w, h = stream.codec_context.width, stream.codec_context.height
        if w * h > cfg.max_frame_pixels:
            raise VideoDecodeError(
                name,
                f"frames are {w}x{h} = {w * h:,} pixels, above "
                f"max_frame_pixels={cfg.max_frame_pixels:,} (VideoConfig)",
                "too_large",
            )
        k = _count_frames(container)
    return VideoHeader(frames=k, width=w, height=h)


def _count_frames(container) -> int:
    """K from the stream header, else by counting the video stream's packets (no decoding)."""
    stream = container.streams.video[0]
    if stream.frames > 0:
        return stream.frames
    return sum(1 for pkt in container.demux(stream) if pkt.size > 0)


def _decode_at(
    src: Path | bytes, wanted: list[int], cfg: VideoConfig, name: str
) -> tuple[dict[int, Image.Image], int]:
    """Frames at ``wanted`` indices (RGB) and how many frames were decoded to reach them."""
    want, got, n = set(wanted), {}, 0
    with _open(src, name) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for frame in container.decode(stream):
            if frame.width * frame.height > cfg.max_frame_pixels:  # a size change mid-stream
                raise VideoDecodeError(
                    name,
                    f"frame {n} is {frame.width}x{frame.height}, above "
                    f"max_frame_pixels={cfg.max_frame_pixels:,} (VideoConfig)",
                    "too_large",
                )
            if n in want:
                got[n] = frame.to_image()
            n += 1
            if len(got) == len(want):
                break
    return got, n


def _guarded(what, name: str):
    """``what()``, with FFmpeg's errors on a broken stream as VideoDecodeError."""
    try:
        return what()
    except (av.error.FFmpegError, OSError) as e:
        raise VideoDecodeError(name, f"cannot decode video: {e}") from e


def read_video_header(
    src: str | os.PathLike | bytes, cfg: VideoConfig, *, name: str | None = None
) -> VideoHeader:
    """K and the frame size of a video file or its bytes, without decoding a frame; frames
    above ``cfg.max_frame_pixels`` are refused here.  Raises :class:`VideoDecodeError`."""
    src = src if isinstance(src, bytes) else Path(src)
    name = name or ("video" if isinstance(src, bytes) else str(src))
    return _guarded(lambda: _read_header(src, cfg, name), name)


def _frames_from_file(
    src: Path | bytes, cfg: VideoConfig, name: str, header: VideoHeader | None = None
) -> list[Image.Image]:
    def run() -> list[Image.Image]:
        count = (header or _read_header(src, cfg, name)).frames
        wanted = uniform_indices(count, cfg.num_frames)
        got, decoded = _decode_at(src, wanted, cfg, name)
        if len(got) < len(wanted):  # the header over-counted: choose again from what exists
            wanted = uniform_indices(decoded, cfg.num_frames)
            got, _ = _decode_at(src, wanted, cfg, name)
        if not got:
            raise VideoDecodeError(name, "no decodable frames")
        return [got[i] for i in wanted]

    return _guarded(run, name)


def load_video_bytes(
    data: bytes, cfg: VideoConfig, *, name: str = "video", header: VideoHeader | None = None
) -> list[Image.Image]:
    """:func:`load_video_frames` for a video file's bytes, decoded in memory (MP4/MOV,
    Matroska/WebM or AVI, recognised by :func:`sniff_container`).  ``header``: the clip's
    :func:`read_video_header`, when the caller already read it.  Raises
    :class:`VideoDecodeError`."""
    if cfg.num_frames < 1:
        raise ValueError(f"VideoConfig.num_frames must be >= 1, got {cfg.num_frames}")
    return _frames_from_file(data, cfg, name, header)


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
    return _frames_from_file(p, cfg, str(p))
