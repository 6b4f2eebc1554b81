"""Tests for mm15.data.draw: drawing boxes and points onto copies of images."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from mm15.data.coord_parse import parse_regions
from mm15.data.coords import Box, CoordinateError, Point
from mm15.data.draw import PALETTE, draw_on_images, draw_regions, place_label

GREY = (128, 128, 128)


def grey(w=200, h=100, mode="RGB"):
    return Image.new(mode, (w, h), GREY if mode == "RGB" else 128)


def changed(a: Image.Image, b: Image.Image) -> np.ndarray:
    """(H, W) bool: pixels that differ."""
    return (np.asarray(a.convert("RGB")) != np.asarray(b.convert("RGB"))).any(-1)


def test_box_outline_drawn_interior_untouched_input_unchanged():
    img = grey()
    before = np.asarray(img).copy()
    out = draw_regions(img, [Box(50, 30, 150, 90)], labels=False, width=2)
    assert np.array_equal(np.asarray(img), before) and out is not img
    arr = np.asarray(out)
    assert tuple(arr[30, 100]) == PALETTE[0]  # top edge
    assert tuple(arr[89, 100]) == PALETTE[0]  # bottom edge (last pixel row inside the box)
    assert tuple(arr[60, 50]) == PALETTE[0] and tuple(arr[60, 149]) == PALETTE[0]
    assert tuple(arr[60, 100]) == GREY  # interior
    diff = changed(img, out)
    assert not diff[:30].any() and not diff[90:].any() and not diff[:, :50].any()


def test_labels_inside_image_even_at_top_edge():
    img = grey(120, 60)
    out = draw_regions(img, [Box(0, 0, 120, 20)], labels=True, width=1)
    # the label background (region colour) appears inside the box, below the top outline row
    arr = np.asarray(out)
    assert (arr[2:15, 2:10] == PALETTE[0]).all(-1).any()
    assert place_label((0, 0, 119, 19), (30, 12), (120, 60)) == (0, 0, 30, 12)
    assert place_label((100, 40, 119, 59), (30, 12), (120, 60)) == (90, 28, 120, 40)


@settings(max_examples=100, deadline=None)
@given(
    st.integers(1, 300),
    st.integers(1, 300),
    st.integers(-5, 305),
    st.integers(-5, 305),
    st.integers(1, 80),
    st.integers(1, 40),
)
def test_place_label_always_within_image(iw, ih, ax, ay, tw, th):
    x0, y0, x1, y1 = place_label((ax, ay, ax + 3, ay + 3), (tw, th), (iw, ih))
    assert x1 - x0 == tw and y1 - y0 == th
    assert x0 >= 0 and y0 >= 0
    if tw <= iw and th <= ih:
        assert x1 <= iw and y1 <= ih


def test_labels_from_parsed_regions_and_distinct_colours():
    img = grey(300, 200)
    regions = parse_regions("the dog <100,100,400,400> and a cat <600,500,900,900>", [img.size])
    assert [r.label for r in regions.regions] == ["dog", "cat"]
    plain = draw_regions(img, regions.regions, labels=False)
    labelled = draw_regions(img, regions.regions, labels=True)
    assert changed(plain, labelled).sum() > 50  # text and its background were drawn
    arr = np.asarray(plain)
    assert tuple(arr[20, 60]) == PALETTE[0] and tuple(arr[100, 180]) == PALETTE[1]
    assert PALETTE[0] != PALETTE[1]


def test_point_marker_and_mode_conversion():
    img = grey(64, 64, mode="L")
    out = draw_regions(img, [Point(32, 32)], labels=False, width=2)
    assert out.mode == "RGB" and img.mode == "L"
    diff = changed(img, out)
    assert diff[32, 32] and diff[25:40, 25:40].sum() > 20 and not diff[:15].any()


def test_regions_outside_image_raise():
    with pytest.raises(CoordinateError):
        draw_regions(grey(50, 50), [Box(0, 0, 60, 10)])
    with pytest.raises(CoordinateError):
        draw_regions(grey(50, 50), [Point(-3, 10)])
    with pytest.raises(TypeError):
        draw_regions(grey(50, 50), [(0, 0, 10, 10)])


def test_multi_image_regions_go_to_their_own_image():
    imgs = [grey(80, 80), grey(80, 80), grey(80, 80)]
    regions = [Box(10, 10, 70, 70, image=1), Point(40, 40, image=1), Box(0, 0, 20, 20, image=2)]
    out = draw_on_images(imgs, regions, labels=False)
    assert len(out) == 3
    assert not changed(imgs[0], out[0]).any()
    assert changed(imgs[1], out[1])[10, 40] and changed(imgs[1], out[1])[40, 40]
    assert not changed(imgs[1], out[1])[0:5, 0:5].any()
    assert tuple(np.asarray(out[2])[0, 10]) == PALETTE[2]  # colour by position in `regions`
    assert not changed(imgs[2], out[2])[30:, 30:].any()
    with pytest.raises(CoordinateError):
        draw_on_images(imgs[:2], regions)
