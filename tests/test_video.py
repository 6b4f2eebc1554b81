"""Video frames: uniform sampling rule, file (PyAV), bytes in memory and frame-folder sources,
bounds, errors."""

from __future__ import annotations

import re
from pathlib import Path

import av
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from mm15.config import ImageConfig, VideoConfig
from mm15.data import video as video_mod
from mm15.data.image_io import ImageDecodeError
from mm15.data.video import (
    VideoDecodeError,
    list_frame_files,
    load_video_bytes,
    load_video_frames,
    read_video_header,
    sample_decoded_frames,
    sniff_container,
    uniform_indices,
)

STEP = 12  # grey level step between frames: frame i is solid grey i·STEP
CODEC = next(c for c in ("libx264", "mpeg4") if c in av.codecs_available)


def _write_video(path: Path, n: int, size: int = 32) -> Path:
    with av.open(str(path), "w") as out:
        stream = out.add_stream(CODEC, rate=10)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        for i in range(n):
            rgb = np.full((size, size, 3), i * STEP, dtype=np.uint8)
            for pkt in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                out.mux(pkt)
        for pkt in stream.encode():
            out.mux(pkt)
    return path


def _frame_ids(frames: list[Image.Image]) -> list[int]:
    return [round(float(np.asarray(f, dtype=float).mean()) / STEP) for f in frames]


@pytest.mark.parametrize("ext", ["mp4", "mkv"])  # mkv headers carry no frame count: packets counted
def test_video_file_frames_follow_the_midpoint_rule(ext, tmp_path):
    path = _write_video(tmp_path / f"clip.{ext}", 20)
    frames = load_video_frames(path, VideoConfig(num_frames=4))
    assert _frame_ids(frames) == [2, 7, 12, 17]  # floor((i + 0.5)·20/4)
    assert all(f.mode == "RGB" and f.size == (32, 32) for f in frames)


def test_short_clip_gives_every_frame_once(tmp_path):
    path = _write_video(tmp_path / "short.mp4", 5)
    assert _frame_ids(load_video_frames(path, VideoConfig(num_frames=8))) == [0, 1, 2, 3, 4]


def test_over_counted_header_is_corrected(tmp_path, monkeypatch):
    path = _write_video(tmp_path / "clip.mp4", 20)
    monkeypatch.setattr(video_mod, "_count_frames", lambda p: 40)  # a header that lies
    assert _frame_ids(load_video_frames(path, VideoConfig(num_frames=4))) == [2, 7, 12, 17]


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 5000), st.integers(1, 64))
def test_uniform_indices_properties(k, n):
    idx = uniform_indices(k, n)
    assert len(idx) == min(k, n)
    assert idx == sorted(set(idx)) and all(0 <= i < k for i in idx)
    if k > n:
        for i, f in enumerate(idx):  # frame f covers the midpoint of segment i
            assert f <= (i + 0.5) * k / n < f + 1


def _frame_folder(folder: Path, n: int) -> Path:
    folder.mkdir()
    for i in range(n):
        Image.new("RGB", (16, 16), (i * STEP,) * 3).save(folder / f"f{i + 1}.png")
    (folder / "notes.txt").write_text("not a frame")
    Image.new("RGB", (16, 16), (255, 255, 255)).save(folder / ".hidden.png")
    return folder


def test_frame_folder_natural_sort_and_uniform_pick(tmp_path):
    folder = _frame_folder(tmp_path / "frames", 12)
    names = [p.name for p in list_frame_files(folder, video_mod.ImageConfig())]
    assert names[:3] == ["f1.png", "f2.png", "f3.png"] and names[-1] == "f12.png"
    frames = load_video_frames(folder, VideoConfig(num_frames=3))
    assert _frame_ids(frames) == [2, 6, 10]  # files f3, f7, f11 (not f11, f3, f7 by plain sort)
    assert _frame_ids(load_video_frames(folder, VideoConfig(num_frames=24))) == list(range(12))


def test_frame_folder_bounds_and_errors(tmp_path):
    folder = _frame_folder(tmp_path / "frames", 4)
    with pytest.raises(ImageDecodeError, match=r"f\d\.png: 16x16 = 256 pixels is above") as err:
        load_video_frames(folder, VideoConfig(num_frames=2, max_frame_pixels=100))
    assert err.value.reason == "too_large"
    (folder / "f2.png").write_bytes(b"broken")
    with pytest.raises(ImageDecodeError, match=re.escape(str(folder / "f2.png"))):
        load_video_frames(folder, VideoConfig(num_frames=4))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(VideoDecodeError, match="holds no image files"):
        load_video_frames(empty, VideoConfig())


def test_video_file_bounds_and_errors(tmp_path):
    path = _write_video(tmp_path / "clip.mp4", 6)
    with pytest.raises(VideoDecodeError, match=r"clip\.mp4: frames are 32x32 = 1,024 pixels"):
        load_video_frames(path, VideoConfig(max_frame_pixels=1000))
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"\x00" * 300)
    with pytest.raises(VideoDecodeError, match=re.escape(str(junk))):
        load_video_frames(junk, VideoConfig())
    with pytest.raises(VideoDecodeError, match=r"gone\.mp4: file not found"):
        load_video_frames(tmp_path / "gone.mp4", VideoConfig())
    audio = tmp_path / "sound.wav"
    with av.open(str(audio), "w") as out:
        stream = out.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(
            np.zeros((1, 800), np.int16), format="s16", layout="mono"
        )
        frame.sample_rate = 8000
        for pkt in [*stream.encode(frame), *stream.encode()]:
            out.mux(pkt)
    with pytest.raises(VideoDecodeError, match=r"sound\.wav: no video stream"):
        load_video_frames(audio, VideoConfig())


def test_decoded_frames_are_sampled_like_a_folder(tmp_path):
    """Frames another library decoded (vLLM's loader, an array) go through the same uniform
    rule as a folder of the same frames, and come out as RGB images."""
    folder = _frame_folder(tmp_path / "clip", 20)
    cfg = VideoConfig(num_frames=4)
    files = list_frame_files(folder, ImageConfig())
    arrays = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])
    from_folder = _frame_ids(load_video_frames(folder, cfg))
    assert _frame_ids(sample_decoded_frames(arrays, cfg)) == from_folder
    greys = [Image.fromarray(a[:, :, 0]) for a in arrays]  # mode "L"
    sampled = sample_decoded_frames(greys, cfg)
    assert _frame_ids(sampled) == from_folder and {f.mode for f in sampled} == {"RGB"}
    assert len(sample_decoded_frames(arrays[:3], cfg)) == 3  # fewer than num_frames: all
    with pytest.raises(VideoDecodeError, match="no frames"):
        sample_decoded_frames([], cfg)
    with pytest.raises(ValueError, match="uint8"):
        sample_decoded_frames(arrays.astype(np.float32), cfg)


@pytest.mark.parametrize("ext", ["mp4", "mkv"])
def test_video_bytes_decode_as_the_file(ext, tmp_path):
    """A server's upload is decoded in memory with the file's sampling rule and bounds."""
    path = _write_video(tmp_path / f"clip.{ext}", 20)
    data = path.read_bytes()
    cfg = VideoConfig(num_frames=4)
    header = read_video_header(data, cfg)
    assert (header.frames, header.width, header.height) == (20, 32, 32)
    frames = load_video_bytes(data, cfg, header=header)
    assert _frame_ids(frames) == _frame_ids(load_video_frames(path, cfg)) == [2, 7, 12, 17]
    with pytest.raises(VideoDecodeError, match="upload: frames are 32x32") as err:
        read_video_header(data, VideoConfig(max_frame_pixels=1000), name="upload")
    assert err.value.reason == "too_large"
    with pytest.raises(VideoDecodeError, match="frame 0 is 32x32") as err:  # header not trusted
        load_video_bytes(data, VideoConfig(max_frame_pixels=1000), header=header)
    assert err.value.reason == "too_large"


def test_video_bytes_only_from_known_containers(tmp_path):
    """FFmpeg never probes untrusted bytes: a playlist (hls, concat) could open other files."""
    playlist = b"#EXTM3U\n#EXTINF:1,\nfile:///etc/passwd\n"
    concat = b"ffconcat version 1.0\nfile /etc/passwd\n"
    png = (tmp_path / "x.png").as_posix()
    Image.new("RGB", (8, 8)).save(png)
    for data in (playlist, concat, Path(png).read_bytes(), b""):
        assert sniff_container(data) is None
        with pytest.raises(VideoDecodeError, match="not a video container") as err:
            load_video_bytes(data, VideoConfig())
        assert err.value.reason == "unreadable"
    mp4 = _write_video(tmp_path / "clip.mp4", 3).read_bytes()
    assert sniff_container(mp4) == "mov"
    with pytest.raises(VideoDecodeError, match=r"cannot decode video|no video stream"):
        load_video_bytes(mp4[:200], VideoConfig())
