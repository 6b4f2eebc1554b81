"""Data fast paths: vectorised normalisation (bit-exact), torch resize and JPEG DCT-scaled
decoding (within the tolerances stated in mm15/data/splitting.py), safety checks intact."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from mm15.config import ImageConfig
from mm15.data.image_io import ImageDecodeError, open_image, open_image_reduced
from mm15.data.splitting import load_tiles, normalise_tiles, tile_geometry, tile_image

GREY = 255.0 * torch.tensor(ImageConfig().std).view(3, 1, 1)  # normalised unit → grey levels


def _former_tile_image(image: Image.Image, cfg: ImageConfig, allow_split: bool) -> torch.Tensor:
    """The per-canvas implementation tile_image had before the vectorised one (the reference
    the exact path must equal bit for bit)."""
    geo = tile_geometry(image.size, cfg, allow_split=allow_split)
    r = cfg.resolution

    def canvas(wh, canvas_wh):
        resized = image if image.size == wh else image.resize(wh, Image.Resampling.BICUBIC)
        x = torch.from_numpy(np.asarray(resized, dtype=np.uint8).copy()).permute(2, 0, 1).float()
        mean = torch.tensor(cfg.mean, dtype=torch.float64).view(3, 1, 1)
        std = torch.tensor(cfg.std, dtype=torch.float64).view(3, 1, 1)
        x.mul_((1.0 / (255.0 * std)).float()).sub_((mean / std).float())
        out = torch.zeros(3, canvas_wh[1], canvas_wh[0])
        out[:, : wh[1], : wh[0]] = x
        return out

    rows, cols = geo.grid
    c = canvas(geo.resized_wh, geo.canvas_wh)
    subs = c.view(3, rows, r, cols, r).permute(1, 3, 0, 2, 4).reshape(rows * cols, 3, r, r)
    if geo.overview == "none":
        return subs
    ov = canvas(geo.overview_wh, (r, r)).unsqueeze(0)
    return torch.cat((subs, ov) if geo.overview == "after" else (ov, subs))


def _photo(w: int, h: int, seed: int = 0, noise: float = 10.0) -> Image.Image:
    """Gradients + smooth blobs + pixel noise: photo-like content with real high frequencies."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.stack([xx / w * 200, yy / h * 200, (xx + yy) / (w + h) * 255], -1)
    low = rng.normal(128, 40, (h // 16 + 2, w // 16 + 2, 3)).clip(0, 255).astype(np.uint8)
    low = np.asarray(Image.fromarray(low).resize((w, h), Image.Resampling.BICUBIC), np.float32)
    x = 0.6 * base + 0.4 * low + rng.normal(0, noise, (h, w, 3))
    return Image.fromarray(x.clip(0, 255).astype(np.uint8))


def _grey_diff(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float, float]:
    """(mean |Δ|, max |Δ|, PSNR dB) between two normalised tile stacks, in grey levels."""
    d = (a - b) * GREY
    mse = float(d.pow(2).mean())
    return float(d.abs().mean()), float(d.abs().max()), 10 * np.log10(255**2 / max(mse, 1e-12))


@settings(max_examples=40, deadline=None)
@given(
    st.integers(1, 150),
    st.integers(1, 150),
    st.sampled_from(["dynamic", "static", "none"]),
    st.sampled_from(["after", "before", "none"]),
    st.booleans(),
)
def test_exact_path_equals_the_former_implementation_bit_for_bit(w, h, split, overview, allow):
    cfg = ImageConfig(resolution=32, n_min=1, n_max=6, split=split, overview=overview)
    image = _photo(w, h, seed=w * 1000 + h)
    got = tile_image(image, cfg, allow_split=allow).tiles
    assert torch.equal(got, _former_tile_image(image, cfg, allow))


@settings(max_examples=25, deadline=None)
@given(st.integers(8, 260), st.integers(8, 260), st.sampled_from(["after", "before"]))
def test_fast_path_is_within_tolerance_of_exact(w, h, overview):
    cfg = ImageConfig(resolution=48, n_min=2, n_max=6, overview=overview)
    image = _photo(w, h, seed=w + 7 * h)
    exact = tile_image(image, cfg)
    fast = tile_image(image, cfg, method="fast")
    assert fast.geometry == exact.geometry and fast.tiles.dtype == torch.float32
    subs = [k for k, ident in enumerate(exact.tile_ids) if ident != (0, 0)]
    assert _grey_diff(fast.tiles[subs], exact.tiles[subs])[1] <= 3.0  # same kernel as PIL
    mean, _, psnr = _grey_diff(fast.tiles, exact.tiles)
    assert mean <= 0.5 and psnr >= 45.0  # rounding: 1-level differences near scale 1
    # Padding is exactly 0 in both, and nothing else is (255·mean is not an integer).
    assert torch.equal(fast.tiles == 0, exact.tiles == 0)


def test_fast_path_tolerance_detects_a_different_filter():
    """The bound is tight enough to catch a wrong resampling filter (bilinear for bicubic)."""
    cfg = ImageConfig(resolution=48, n_min=2, n_max=6)
    image = _photo(300, 200, seed=3)
    exact = tile_image(image, cfg).tiles
    geo = tile_geometry(image.size, cfg)
    blurred = image.resize(geo.resized_wh, Image.Resampling.BILINEAR)
    wrong = tile_image(blurred, cfg, size_wh=image.size).tiles
    assert _grey_diff(wrong[:-1], exact[:-1])[1] > 3.0


def test_large_overview_from_the_canvas_stays_close():
    """An image with more than twice the canvas's pixels gets its overview from the canvas."""
    cfg = ImageConfig(resolution=64, n_min=4, n_max=4)
    image = _photo(700, 500, seed=5)  # canvas 2×2 of 64 → 128×91, far fewer pixels
    exact, fast = tile_image(image, cfg), tile_image(image, cfg, method="fast")
    mean, _, psnr = _grey_diff(fast.tiles[-1:], exact.tiles[-1:])
    assert mean <= 0.5 and psnr >= 40.0


def _jpeg(image: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=92, **kw)
    return buf.getvalue()


def test_reduced_jpeg_decode_keeps_full_size_geometry_and_tolerance():
    cfg = ImageConfig(resolution=100, n_min=4, n_max=9)
    data = _jpeg(_photo(1600, 1200, seed=1))
    geo = tile_geometry((1600, 1200), cfg)
    assert geo.resized_wh == (300, 225)  # 3×3 of 100: a 1/4-scale decode still covers it
    red = open_image_reduced(data, cfg=cfg, target_wh=lambda s: tile_geometry(s, cfg).resized_wh)
    assert red.size_wh == (1600, 1200) and red.image.size == (400, 300) and red.image.mode == "RGB"
    fast = load_tiles(data, cfg)
    exact = tile_image(open_image(data, cfg=cfg), cfg)
    assert fast.geometry == exact.geometry == geo  # token counts follow the full size
    mean, _, psnr = _grey_diff(fast.tiles, exact.tiles)
    assert psnr >= 35.0 and mean <= 2.5
    assert torch.equal(load_tiles(data, cfg, method="exact").tiles, exact.tiles)
    full = load_tiles(data, cfg, decode="full")  # no DCT scaling: the fast path's tolerance
    assert _grey_diff(full.tiles, exact.tiles)[2] >= 45.0
    assert torch.equal(full.tiles, tile_image(open_image(data, cfg=cfg), cfg, method="fast").tiles)


def test_reduced_decode_never_goes_below_the_target():
    data = _jpeg(_photo(800, 600, seed=2))
    for target, expected in [
        ((100, 75), (100, 75)),
        ((101, 75), (200, 150)),
        ((400, 1), (400, 300)),
        ((401, 300), (800, 600)),
        ((5000, 5000), (800, 600)),
    ]:
        red = open_image_reduced(data, cfg=ImageConfig(), target_wh=lambda s, t=target: t)
        assert red.image.size == expected, (target, red.image.size)


def test_reduced_decode_follows_exif_orientation():
    """Orientation 6 (rotate 90°): the target is in displayed axes, the draft in stored ones."""
    stored = _photo(800, 400, seed=4)
    exif = Image.Exif()
    exif[0x0112] = 6
    data = _jpeg(stored, exif=exif.tobytes())
    shown = open_image(data, cfg=ImageConfig())
    assert shown.size == (400, 800)
    red = open_image_reduced(data, cfg=ImageConfig(), target_wh=lambda s: (s[0] // 2, s[1] // 2))
    assert red.size_wh == (400, 800) and red.image.size == (200, 400)
    small = np.asarray(shown.resize((200, 400), Image.Resampling.BOX), dtype=float)
    assert np.abs(np.asarray(red.image, dtype=float) - small).mean() < 4.0  # same orientation


def test_png_is_decoded_in_full_and_matches_within_tolerance():
    cfg = ImageConfig(resolution=64, n_min=1, n_max=4)
    buf = io.BytesIO()
    _photo(300, 90, seed=6).save(buf, "PNG")
    red = open_image_reduced(buf.getvalue(), cfg=cfg, target_wh=lambda s: (10, 10))
    assert red.image.size == red.size_wh == (300, 90)
    fast, exact = (
        load_tiles(buf.getvalue(), cfg),
        tile_image(open_image(buf.getvalue(), cfg=cfg), cfg),
    )
    assert _grey_diff(fast.tiles, exact.tiles)[2] >= 45.0


def test_safety_checks_run_before_any_decoding():
    calls = []

    def target(size):
        calls.append(size)
        return size

    big = io.BytesIO()
    Image.new("RGB", (200, 200)).save(big, "PNG")
    with pytest.raises(ImageDecodeError, match="max_pixels") as err:
        open_image_reduced(big.getvalue(), cfg=ImageConfig(max_pixels=100), target_wh=target)
    assert err.value.reason == "too_large" and calls == []
    with pytest.raises(ImageDecodeError, match=r"huge\.jpg") as err:
        load_tiles(_jpeg(_photo(64, 64)), ImageConfig(max_pixels=100), name="huge.jpg")
    assert err.value.reason == "too_large"
    only_png = ImageConfig(formats=("PNG",))
    with pytest.raises(ImageDecodeError) as err:
        load_tiles(_jpeg(_photo(64, 64)), only_png, name="x.jpg")
    assert err.value.reason == "format" and calls == []
    cut = _jpeg(_photo(256, 256))
    with pytest.raises(ImageDecodeError) as err:
        load_tiles(cut[: len(cut) // 2], ImageConfig(resolution=32), name="cut.jpg")
    assert err.value.reason in ("truncated", "unreadable")


def test_unknown_method_is_rejected():
    with pytest.raises(ValueError, match="method 'fastest'"):
        tile_image(Image.new("RGB", (8, 8)), ImageConfig(resolution=16), method="fastest")  # type: ignore[arg-type]


@settings(max_examples=15, deadline=None)
@given(n=st.integers(0, 5), seed=st.integers(0, 2**16))
def test_normalise_tiles_equals_tile_image_on_each_tile_sized_image(n, seed):
    cfg = ImageConfig(resolution=28, n_min=1, n_max=4)
    rng = np.random.default_rng(seed)
    images = [Image.fromarray(rng.integers(0, 256, (28, 28, 3), dtype=np.uint8)) for _ in range(n)]
    tiles = normalise_tiles(images, cfg)
    assert tiles.shape == (n, 3, 28, 28) and tiles.dtype == torch.float32
    for k, image in enumerate(images):
        assert torch.equal(tiles[k], tile_image(image, cfg, allow_split=False).tiles[0])


def test_normalise_tiles_refuses_an_image_that_is_not_one_tile():
    cfg = ImageConfig(resolution=28)
    ok = Image.new("RGB", (28, 28))
    with pytest.raises(ValueError, match=r"28x28, got \(size, mode\) \[\(\(28, 30\), 'RGB'\)\]"):
        normalise_tiles([ok, Image.new("RGB", (28, 30))], cfg)
    with pytest.raises(ValueError, match=r"28x28, got \(size, mode\) \[\(\(28, 28\), 'L'\)\]"):
        normalise_tiles([Image.new("L", (28, 28))], cfg)
