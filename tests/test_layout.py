"""The one image-token counter: Table 1 numbers, Table 3 indicators, placeholders, the report."""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from mm15.config import ImageConfig
from mm15.data.layout import (
    ImageRun,
    TextPiece,
    plan_image,
    plan_sample,
    plan_video,
    sample_allows_split,
    total_image_tokens,
)
from mm15.data.split_report import describe_images, format_table, has_errors, save_tiles_picture
from mm15.data.splitting import tile_image

BIG_SQUARE = (4000, 4000)


@pytest.mark.parametrize(
    ("row", "cfg", "tokens", "n", "total", "mp"),
    [
        (1, ImageConfig(split="none"), 144, 1, 144, 0.45),
        (2, ImageConfig(split="static", static_grid=(2, 2)), 144, 5, 720, 1.8),
        (3, ImageConfig(n_min=4, n_max=4), 144, 5, 720, 1.8),
        (4, ImageConfig(n_min=9, n_max=9, resolution=378), 81, 10, 810, 1.3),
        (5, ImageConfig(n_min=9, n_max=9), 81, 10, 810, 4.1),
        (6, ImageConfig(n_min=9, n_max=9, resolution=378), 144, 10, 1440, 1.3),
        (7, ImageConfig(n_min=9, n_max=9), 144, 10, 1440, 4.1),
    ],
)
def test_table1_tokens_and_effective_resolution(row, cfg, tokens, n, total, mp):
    plan = plan_image(BIG_SQUARE, cfg, tokens_per_tile=tokens)
    assert (plan.n_tiles, plan.tokens_per_tile, plan.image_tokens) == (n, tokens, total), row
    assert plan.effective_resolution == max(n - 1, 1) * cfg.resolution**2
    assert round(plan.effective_resolution / 1e6, 2 if mp < 1 else 1) == mp, row


def test_table1_effective_resolution_is_counted_without_the_overview():
    nine = plan_image(BIG_SQUARE, ImageConfig(n_min=9, n_max=9), tokens_per_tile=144)
    assert nine.has_overview and nine.n_sub_images == 9
    assert nine.effective_resolution == 9 * 672**2 == 4_064_256
    one = plan_image((500, 300), ImageConfig(n_min=1, n_max=1), tokens_per_tile=144)
    assert one.grid == (1, 1) and not one.has_overview and one.effective_resolution == 672**2


def test_final_recipe_reaches_4mp_with_1440_tokens():
    for size, grid in [((2016, 2016), (3, 3)), ((6048, 672), (1, 9))]:
        plan = plan_image(size, ImageConfig(), tokens_per_tile=144)
        assert plan.grid == grid and plan.geometry.padding_pixels == 0
        assert plan.geometry.canvas_wh == size and plan.image_tokens == 1440


def test_static_756_is_2x2_of_378():
    plan = plan_image((800, 800), ImageConfig(split="static", resolution=378), tokens_per_tile=144)
    assert plan.geometry.canvas_wh == (756, 756) and plan.effective_resolution == 756**2


def _runs(k, n, t):
    return [ImageRun(image_index=k, tile_index=i, num_tokens=t) for i in range(n)]


def _ind(text):
    return TextPiece(text, indicator=True)


def test_index_indicators_after_and_before():
    cfg = ImageConfig(n_min=4, n_max=4, indicator="index")
    after = plan_image(BIG_SQUARE, cfg, tokens_per_tile=3, image_index=1)
    texts = ["(1,1,1)", "(1,1,2)", "(1,2,1)", "(1,2,2)", "(1,0,0)"]
    runs = _runs(1, 5, 3)
    assert list(after.segments) == [
        x for pair in zip(map(_ind, texts), runs, strict=True) for x in pair
    ]
    before = plan_image(
        BIG_SQUARE,
        ImageConfig(n_min=4, n_max=4, overview="before"),
        tokens_per_tile=3,
        image_index=1,
    )
    assert before.text_pieces == ("(1,0,0)", "(1,1,1)", "(1,1,2)", "(1,2,1)", "(1,2,2)")


def test_seps_indicators_after_and_before():
    cfg = ImageConfig(split="static", static_grid=(2, 3), indicator="seps")
    r = _runs(0, 7, 2)
    after = plan_image(BIG_SQUARE, cfg, tokens_per_tile=2)
    # fmt: off
    assert list(after.segments) == [
        r[0], _ind(","), r[1], _ind(","), r[2], _ind("<n>"),
        r[3], _ind(","), r[4], _ind(","), r[5], _ind(":"), r[6],
    ]
    before_cfg = ImageConfig(split="static", static_grid=(2, 3), indicator="seps", overview="before")
    before = plan_image(BIG_SQUARE, before_cfg, tokens_per_tile=2)
    assert list(before.segments) == [
        _ind(":"), r[0], r[1], _ind(","), r[2], _ind(","), r[3], _ind("<n>"),
        r[4], _ind(","), r[5], _ind(","), r[6],
    ]
    # fmt: on


def test_single_tile_indicators_and_none():
    one = ImageConfig(split="none")
    assert plan_image((9, 9), one, tokens_per_tile=4, image_index=2).text_pieces == ("(2,1,1)",)
    seps = plan_image((9, 9), ImageConfig(split="none", indicator="seps"), tokens_per_tile=4)
    assert list(seps.segments) == _runs(0, 1, 4)
    none = plan_image(BIG_SQUARE, ImageConfig(indicator="none"), tokens_per_tile=4)
    assert list(none.segments) == _runs(0, none.n_tiles, 4) and none.n_tiles == 10


def test_samples_with_three_images_are_not_split():
    cfg = ImageConfig()
    assert [sample_allows_split(n, cfg) for n in range(5)] == [True, True, True, False, False]
    three = plan_sample([BIG_SQUARE] * 3, cfg, tokens_per_tile=144)
    assert [p.n_tiles for p in three] == [1, 1, 1] and [p.image_index for p in three] == [0, 1, 2]
    assert total_image_tokens(three) == 432
    two = plan_sample([BIG_SQUARE] * 2, cfg, tokens_per_tile=144)
    assert [p.n_tiles for p in two] == [10, 10] and total_image_tokens(two) == 2880


def test_plan_video_is_one_tile_per_frame():
    plans = plan_video(24, ImageConfig(), tokens_per_tile=144, image_index_start=1)
    assert len(plans) == 24 and total_image_tokens(plans) == 24 * 144
    assert [p.image_index for p in plans] == list(range(1, 25))
    assert all(p.grid == (1, 1) and not p.has_overview for p in plans)
    with pytest.raises(ValueError, match="at least one frame"):
        plan_video(0, ImageConfig(), tokens_per_tile=144)


def test_bad_arguments():
    with pytest.raises(ValueError, match="tokens_per_tile"):
        plan_image((10, 10), ImageConfig(), tokens_per_tile=0)
    with pytest.raises(ValueError, match="indicator"):
        plan_image((10, 10), ImageConfig(indicator="tags"), tokens_per_tile=1)  # type: ignore[arg-type]


_cfgs = st.builds(
    ImageConfig,
    split=st.sampled_from(["dynamic", "static", "none"]),
    resolution=st.sampled_from([8, 14, 16]),
    n_min=st.integers(1, 3),
    n_max=st.integers(3, 8),
    static_grid=st.sampled_from([(2, 2), (1, 3), (3, 2)]),
    overview=st.sampled_from(["after", "before", "none"]),
    indicator=st.sampled_from(["none", "index", "seps"]),
)


@settings(max_examples=120, deadline=None)
@given(_cfgs, st.integers(1, 120), st.integers(1, 120), st.booleans(), st.integers(1, 200))
def test_plan_agrees_with_actual_tiling(cfg, w, h, allow, tokens):
    plan = plan_image((w, h), cfg, tokens_per_tile=tokens, allow_split=allow)
    tiled = tile_image(Image.new("RGB", (w, h), (90, 30, 200)), cfg, allow_split=allow)
    assert tiled.tiles.shape == (plan.n_tiles, 3, cfg.resolution, cfg.resolution)
    assert tiled.geometry == plan.geometry
    runs = [s for s in plan.segments if isinstance(s, ImageRun)]
    assert [r.tile_index for r in runs] == list(range(plan.n_tiles))
    assert sum(r.num_tokens for r in runs) == plan.image_tokens == plan.n_tiles * tokens
    assert plan.has_overview == ((0, 0) in plan.tile_ids) == (plan.n_tiles == plan.n_sub_images + 1)


# --------------------------------------------------------------------------- split report


def test_describe_images_rows_and_error_rows(tmp_path):
    good = tmp_path / "wide.png"
    Image.new("RGB", (3000, 1000), (200, 30, 30)).save(good)
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    rows = describe_images([good, bad, tmp_path / "gone.jpg"], ImageConfig(), tokens_per_tile=144)
    assert rows[0]["grid"] == [2, 4] and rows[0]["n_tiles"] == 9 and rows[0]["image_tokens"] == 1296
    assert (
        rows[0]["effective_pixels"] == 8 * 672**2 and rows[0]["effective_resolution"] == "2688×1344"
    )
    assert rows[0]["resized"] == "2688×896" and rows[0]["overview"] == "after"
    assert rows[1]["reason"] == "unreadable" and str(bad) in rows[1]["error"]
    assert rows[2]["reason"] == "missing" and has_errors(rows) and not has_errors(rows[:1])
    json.dumps(rows)  # JSON-ready
    table = format_table(rows)
    assert "2x4" in table and "144/1296" in table and "2688×1344" in table
    assert re.search(rf"{re.escape(str(bad))}\s+error \(unreadable\)", table)


def test_save_tiles_picture(tmp_path):
    cfg = ImageConfig(resolution=32, n_min=1, n_max=4)
    tiled = tile_image(Image.new("RGB", (64, 30), (250, 10, 10)), cfg)
    assert tiled.grid == (1, 2)
    out = tmp_path / "tiles.png"
    pic = save_tiles_picture(tiled, out, cfg=cfg, tile_px=40)
    assert out.exists() and Image.open(out).size == pic.size
    assert pic.size[0] > 3 * 40  # two tiles and the overview side by side
    r, g, b = pic.getpixel((6 + 20, 6 + 14 + 5))  # inside tile (1,1), image area: red again
    assert r > 200 and g < 40 and b < 40
