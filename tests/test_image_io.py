"""Safe image decoding: allow-listed formats, pixel bound before decode, typed errors, EXIF."""

from __future__ import annotations

import io
import re
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mm15.config import ImageConfig
from mm15.data.image_io import ImageDecodeError, open_image

CFG = ImageConfig()


def _bytes(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png_header(w: int, h: int) -> bytes:
    """A ~60-byte PNG that claims ``w × h`` RGB pixels (no real pixel data)."""
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", ihdr)
        + _chunk(b"IDAT", zlib.compress(b"\0" * 16))
        + _chunk(b"IEND", b"")
    )


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF"])
def test_allowed_formats_decode_to_rgb(fmt, tmp_path):
    path = tmp_path / f"x.{fmt.lower()}"
    Image.new("RGB", (40, 20), (30, 160, 90)).save(path, fmt)
    im = open_image(path, cfg=CFG)
    assert im.mode == "RGB" and im.size == (40, 20)
    assert np.abs(np.asarray(im, dtype=int)[10, 20] - [30, 160, 90]).max() <= 6
    same = open_image(path.read_bytes(), cfg=CFG, name="from-bytes")
    assert same.size == (40, 20)


def test_truncated_files_name_the_file(tmp_path):
    im = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    for fmt in ["JPEG", "PNG"]:
        data = _bytes(im, fmt)
        path = tmp_path / f"cut.{fmt.lower()}"
        path.write_bytes(data[: len(data) // 2])
        with pytest.raises(ImageDecodeError, match=re.escape(str(path))) as err:
            open_image(path, cfg=CFG)
        assert err.value.reason == "truncated" and isinstance(err.value, ValueError)


def test_unreadable_missing_and_empty(tmp_path):
    text = tmp_path / "readme.jpg"
    text.write_text("this is not a JPEG")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    for path in [text, empty]:
        with pytest.raises(ImageDecodeError, match=re.escape(str(path))) as err:
            open_image(path, cfg=CFG)
        assert err.value.reason == "unreadable"
    with pytest.raises(ImageDecodeError, match=r"gone\.png: file not found") as err:
        open_image(tmp_path / "gone.png", cfg=CFG)
    assert err.value.reason == "missing"
    with pytest.raises(ImageDecodeError, match=r"^blob-7: ") as err:
        open_image(b"\x00\x01garbage", cfg=CFG, name="blob-7")


@pytest.mark.parametrize(("w", "h"), [(100_000, 100_000), (9000, 9000), (12_000, 12_000)])
@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_pixel_bombs_are_refused_before_decoding(w, h, tmp_path):
    """100k² trips PIL's own bomb error (mapped to ours); 9000² and 12000² are above
    ImageConfig.max_pixels (64M) but below PIL's error limit, so our check must catch them."""
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_header(w, h))
    assert path.stat().st_size < 100
    start = time.perf_counter()
    with pytest.raises(ImageDecodeError, match=r"bomb\.png") as err:
        open_image(path, cfg=CFG)
    assert err.value.reason == "too_large"
    assert time.perf_counter() - start < 0.5  # nothing was decoded
    small = ImageConfig(max_pixels=99)
    with pytest.raises(ImageDecodeError, match=r"10x10 = 100 pixels is above max_pixels=99"):
        open_image(_bytes(Image.new("RGB", (10, 10)), "PNG"), cfg=small)


@pytest.mark.parametrize(("fmt", "ext"), [("ICO", "ico"), ("PCX", "pcx")])
def test_disallowed_formats(fmt, ext, tmp_path):
    path = tmp_path / f"icon.{ext}"
    Image.new("RGB", (32, 32), (1, 2, 3)).save(path, fmt)
    with Image.open(path) as check:  # PIL itself can read it: only the allow-list refuses it
        assert check.format == fmt
    with pytest.raises(ImageDecodeError, match=f"icon.{ext}: format {fmt} .*not allowed") as err:
        open_image(path, cfg=CFG)
    assert err.value.reason == "format"


def test_allow_list_is_configurable(tmp_path):
    path = tmp_path / "anim.gif"
    Image.new("RGB", (8, 8), (255, 0, 0)).save(path, "GIF")
    only = ImageConfig(formats=("JPEG", "PNG"))
    with pytest.raises(ImageDecodeError, match="format GIF") as err:
        open_image(path, cfg=only)
    assert err.value.reason == "format"
    with pytest.raises(ImageDecodeError, match="not an image in an allowed format"):
        open_image(path.read_bytes(), cfg=only)  # no name, no extension: just unreadable
    with pytest.raises(ValueError, match="JPG"):
        open_image(path, cfg=ImageConfig(formats=("JPG",)))


def test_exif_orientation_is_applied(tmp_path):
    im = Image.new("RGB", (40, 20), (0, 0, 255))
    im.paste((255, 0, 0), (0, 0, 20, 20))  # left half red, right half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    path = tmp_path / "phone.jpg"
    im.save(path, "JPEG", exif=exif, quality=95)
    out = np.asarray(open_image(path, cfg=CFG), dtype=int)
    assert out.shape == (40, 20, 3)  # portrait now
    assert out[5, 10, 0] > 200 and out[5, 10, 2] < 60  # top is the red left half
    assert out[35, 10, 2] > 200 and out[35, 10, 0] < 60


def test_first_frame_alpha_and_16_bit(tmp_path):
    frames = [Image.new("RGB", (8, 8), c) for c in [(255, 0, 0), (0, 255, 0)]]
    gif = tmp_path / "anim.gif"
    frames[0].save(gif, save_all=True, append_images=frames[1:], duration=50, loop=0)
    assert open_image(gif, cfg=CFG).getpixel((4, 4)) == (255, 0, 0)

    rgba = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    rgba.putpixel((0, 0), (10, 20, 30, 255))
    out = open_image(_bytes(rgba, "PNG"), cfg=CFG)
    assert out.getpixel((3, 3)) == (255, 255, 255) and out.getpixel((0, 0)) == (10, 20, 30)
    la = Image.new("LA", (4, 4), (0, 0))
    assert open_image(_bytes(la, "PNG"), cfg=CFG).getpixel((1, 1)) == (255, 255, 255)

    grey16 = Image.fromarray(np.full((4, 4), 65535 // 2, dtype=np.uint16))
    assert grey16.mode == "I;16"
    assert open_image(_bytes(grey16, "PNG"), cfg=CFG).getpixel((0, 0)) == (127, 127, 127)


def test_no_global_pil_safety_switch_is_touched():
    """Reliability anchor T7: never disable PIL's bomb or truncation checks."""
    from PIL import ImageFile

    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    src = Path(__file__).resolve().parents[1] / "mm15" / "data"
    for f in src.glob("*.py"):
        text = f.read_text()
        assert not re.search(r"LOAD_TRUNCATED_IMAGES\s*=", text), f
        assert not re.search(r"MAX_IMAGE_PIXELS\s*=", text), f
