"""Dynamic image splitting: Eq. 1 / Fig. 11 grid choice, the rounding rule, and tile pixels."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from mm15.config import ImageConfig
from mm15.data.splitting import (
    candidate_grids,
    fit_size,
    select_grid,
    tile_geometry,
    tile_image,
)

PAPER_N4 = {(1, 1), (1, 2), (2, 1), (1, 3), (3, 1), (1, 4), (4, 1), (2, 2)}


def test_candidate_grids_match_the_paper_for_n_max_4():
    grids = candidate_grids(1, 4)
    assert set(grids) == PAPER_N4 and len(grids) == len(PAPER_N4)


def test_candidate_grids_respect_bounds_and_order():
    grids = candidate_grids(4, 9)
    assert all(4 <= a * b <= 9 for a, b in grids)
    assert {(3, 3), (1, 9), (9, 1), (2, 4), (4, 2), (2, 2), (1, 4)} <= set(grids)
    assert (1, 3) not in grids and (2, 5) not in grids
    assert [a * b for a, b in grids] == sorted(a * b for a, b in grids)
    for bad in [(0, 4), (5, 4), (-1, 2)]:
        with pytest.raises(ValueError, match="n_min"):
            candidate_grids(*bad)


@pytest.mark.parametrize(
    ("hw", "grid"),
    [((2016, 2016), (3, 3)), ((672, 6048), (1, 9)), ((6048, 672), (9, 1))],
)
def test_paper_4mp_examples_are_covered_without_padding(hw, grid):
    """§4: (4, 9) at r = 672 reaches 2016×2016 (square) and 6048×672 (long) exactly."""
    h, w = hw
    assert select_grid(h, w, r=672, n_min=4, n_max=9) == grid
    assert fit_size(h, w, grid[0] * 672, grid[1] * 672) == (h, w)


def test_fit_size_rounding_rule():
    assert fit_size(1000, 3000, 672, 672) == (224, 672)  # width limits
    assert fit_size(1, 2, 3, 3) == (2, 3)  # 1.5 rounds half up
    assert fit_size(2, 5, 4, 4) == (2, 4)  # 1.6 → 2
    assert fit_size(3, 10, 4, 4) == (1, 4)  # 1.2 → 1
    assert fit_size(1, 10000, 672, 672) == (1, 672)  # clamped to at least 1
    assert fit_size(700, 1000, 1344, 2016) == (1344, 1920)  # height limits, upscaled
    with pytest.raises(ValueError, match="positive"):
        fit_size(0, 5, 10, 10)


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 9000), st.integers(1, 9000), st.integers(1, 4000), st.integers(1, 4000))
def test_fit_size_properties(h, w, ch, cw):
    h_g, w_g = fit_size(h, w, ch, cw)
    assert 1 <= h_g <= ch and 1 <= w_g <= cw
    assert h_g == ch or w_g == cw  # the limiting side fills the canvas
    s = min(ch / h, cw / w)
    assert abs(h_g - h * s) <= 0.5 + 1e-9 or h_g == 1
    assert abs(w_g - w * s) <= 0.5 + 1e-9 or w_g == 1
    # Covering is exactly "the canvas is at least the image" (s >= 1).
    assert (h_g >= h and w_g >= w) == (ch >= h and cw >= w)


def test_covering_case_minimises_padding_with_upscaling():
    """Fig. 11 left: 1000×700 (w×h) at (4, 9): 2×3 pads less than 2×2 after upscaling."""
    assert select_grid(700, 1000, r=672, n_min=4, n_max=9) == (2, 3)


def test_non_covering_case_maximises_kept_resolution():
    """Fig. 11 right: nothing covers 3000×1000, 2×4 keeps the most pixels (2688×896)."""
    assert select_grid(1000, 3000, r=672, n_min=4, n_max=9) == (2, 4)
    assert select_grid(8000, 8000, r=672, n_min=4, n_max=9) == (3, 3)


@pytest.mark.parametrize(
    ("hw", "n", "expected"),
    [
        ((100, 100), (1, 9), (1, 1)),  # every square grid covers with 0 padding: fewest tiles
        ((5000, 5000), (4, 6), (2, 2)),  # 2×2, 2×3, 3×2 keep 1344² each: fewest tiles
        ((5000, 5000), (6, 6), (2, 3)),  # 2×3 vs 3×2, same count: fewer rows
        ((100, 100), (6, 6), (2, 3)),  # covering tie between transposes: fewer rows
        ((4000, 2000), (3, 4), (3, 1)),  # 3×1, 2×2, 4×1 keep the same area: fewest tiles wins
    ],
)
def test_tie_rule_fewer_sub_images_then_fewer_rows(hw, n, expected):
    assert select_grid(*hw, r=672, n_min=n[0], n_max=n[1]) == expected


def _brute_force(h, w, r, grids):
    rows = []
    for g in grids:
        h_g, w_g = fit_size(h, w, g[0] * r, g[1] * r)
        covers = h_g >= h and w_g >= w
        rows.append((g, covers, g[0] * g[1] * r * r - h_g * w_g, h_g * w_g))
    return rows


@settings(max_examples=300, deadline=None)
@given(
    st.integers(1, 7000),
    st.integers(1, 7000),
    st.sampled_from([14, 112, 336, 378, 672]),
    st.integers(1, 6),
    st.integers(0, 10),
)
def test_select_grid_is_optimal_by_brute_force(h, w, r, n_min, extra):
    n_max = n_min + extra
    grids = candidate_grids(n_min, n_max)
    g = select_grid(h, w, r=r, n_min=n_min, n_max=n_max)
    assert g in grids
    table = _brute_force(h, w, r, grids)
    mine = next(t for t in table if t[0] == g)
    covering = [t for t in table if t[1]]
    if covering:
        best = min(t[2] for t in covering)
        assert mine[1] and mine[2] == best
        tied = [t[0] for t in covering if t[2] == best]
    else:
        best = max(t[3] for t in table)
        assert mine[3] == best
        tied = [t[0] for t in table if t[3] == best]
    assert g == min(tied, key=lambda x: (x[0] * x[1], x[0]))  # the documented tie rule


# ------------------------------------------------------------------------------- tiles


def _cfg(**kw) -> ImageConfig:
    base = dict(resolution=32, n_min=1, n_max=4)
    base.update(kw)
    return ImageConfig(**base)


def _quadrants(size: int = 64) -> Image.Image:
    im = Image.new("RGB", (size, size))
    half = size // 2
    for (x, y), c in {
        (0, 0): (255, 0, 0),
        (1, 0): (0, 255, 0),
        (0, 1): (0, 0, 255),
        (1, 1): (255, 255, 0),
    }.items():
        im.paste(c, (x * half, y * half, (x + 1) * half, (y + 1) * half))
    return im


def _expected(rgb, cfg):
    return torch.tensor(
        [(v / 255.0 - m) / s for v, m, s in zip(rgb, cfg.mean, cfg.std, strict=True)]
    )


@pytest.mark.parametrize("overview", ["after", "before"])
def test_tiles_are_row_major_with_the_overview_placed(overview):
    cfg = _cfg(split="static", static_grid=(2, 2), overview=overview)
    t = tile_image(_quadrants(), cfg)
    assert t.tiles.shape == (5, 3, 32, 32) and t.tiles.dtype == torch.float32
    subs = [(1, 1), (1, 2), (2, 1), (2, 2)]
    assert t.tile_ids == ((*subs, (0, 0)) if overview == "after" else ((0, 0), *subs))
    colours = {(1, 1): (255, 0, 0), (1, 2): (0, 255, 0), (2, 1): (0, 0, 255), (2, 2): (255, 255, 0)}
    for k, ident in enumerate(t.tile_ids):
        centre = t.tiles[k, :, 8, 8]  # well inside the tile: away from resampling at seams
        if ident == (0, 0):
            torch.testing.assert_close(centre, _expected((255, 0, 0), cfg), atol=1e-5, rtol=0)
            torch.testing.assert_close(
                t.tiles[k, :, 24, 24], _expected((255, 255, 0), cfg), atol=1e-5, rtol=0
            )
        else:
            torch.testing.assert_close(centre, _expected(colours[ident], cfg), atol=1e-5, rtol=0)


def test_aspect_kept_and_padding_is_exactly_zero_bottom_right():
    cfg = _cfg(split="static", static_grid=(2, 2), overview="none")
    t = tile_image(Image.new("RGB", (64, 32), (10, 200, 30)), cfg)  # w=64, h=32 → 64×32 on 64×64
    assert t.geometry.resized_wh == (64, 32)
    assert torch.all(t.tiles[2:] == 0)  # the bottom row is padding only
    assert torch.all(t.tiles[:2] != 0)
    tall = tile_image(Image.new("RGB", (16, 64), (10, 200, 30)), cfg)  # 16×64 → 16×64, right pad
    left, right = tall.tiles[[0, 2]], tall.tiles[[1, 3]]  # columns 1 and 2 of the grid
    assert torch.all(left[..., :16] != 0) and torch.all(left[..., 16:] == 0)
    assert torch.all(right == 0)


def test_overview_is_longer_side_resized_and_padded():
    cfg = _cfg(split="static", static_grid=(2, 2))
    t = tile_image(Image.new("RGB", (64, 16), (10, 200, 30)), cfg)
    assert t.geometry.overview_wh == (32, 8)
    ov = t.tiles[-1]
    assert torch.all(ov[:, :8] != 0) and torch.all(ov[:, 8:] == 0)


def test_single_tile_modes_have_no_overview():
    im = Image.new("L", (200, 100), 128)  # not RGB: converted
    for cfg, allow in [(_cfg(), False), (_cfg(split="none"), True), (_cfg(overview="none"), True)]:
        t = tile_image(im, cfg, allow_split=allow)
        assert (0, 0) not in t.tile_ids
        if cfg.overview != "none":
            assert t.tiles.shape == (1, 3, 32, 32) and t.grid == (1, 1)
    small = tile_image(Image.new("RGB", (20, 20)), _cfg(n_min=1))  # (1, 1) grid: no overview
    assert small.grid == (1, 1) and small.tiles.shape[0] == 1


def test_full_scale_long_image_fills_nine_tiles():
    """6048×672 at (4, 9), r = 672: nine 672×672 tiles without padding, plus the overview."""
    t = tile_image(Image.new("RGB", (6048, 672), (200, 100, 50)), ImageConfig())
    assert t.grid == (1, 9) and t.tiles.shape == (10, 3, 672, 672)
    assert torch.all(t.tiles[:9] != 0)
    assert torch.all(t.tiles[9, :, :75] != 0) and torch.all(t.tiles[9, :, 75:] == 0)  # 672×75


def test_geometry_rejects_bad_settings():
    with pytest.raises(ValueError, match="split"):
        tile_geometry((10, 10), ImageConfig(split="tiles"))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="overview"):
        tile_geometry((10, 10), ImageConfig(overview="middle"))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="positive"):
        tile_geometry((0, 10), ImageConfig())
