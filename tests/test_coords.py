"""Tests for mm15.data.coords and mm15.data.coord_conventions: the coordinate language of referring
and grounding (MM1.5 §3.1, Fig. 1, Fig. 3)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mm15.data.coord_conventions import (
    box_from_coco,
    box_from_docowl,
    box_from_ferret_ints,
    box_from_quad,
    from_box,
    from_point,
    to_box,
    to_point,
)
from mm15.data.coord_parse import parse_regions, replace_regions, strip_regions
from mm15.data.coords import (
    Box,
    CoordinateError,
    Point,
    dequantize_box,
    format_box,
    format_point,
    format_region,
    iou,
    quantize_box,
)

SETTINGS = settings(max_examples=150, deadline=None)
sizes_st = st.tuples(st.integers(1, 5000), st.integers(1, 5000))
unit = st.floats(0.0, 1.0, allow_nan=False)
bins = st.integers(0, 999)


@st.composite
def box_in_image(draw, image=0):
    w, h = draw(sizes_st)
    xa, xb = sorted((draw(unit) * w, draw(unit) * w))
    ya, yb = sorted((draw(unit) * h, draw(unit) * h))
    return Box(xa, ya, xb, yb, image), (w, h)


def close(a, b, tol=1e-9):
    return all(math.isclose(x, y, rel_tol=tol, abs_tol=tol) for x, y in zip(a, b, strict=True))


# --- Box / Point -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [(float("nan"), 0, 1, 1), (0, 0, float("inf"), 1), (5, 0, 4, 1), (0, 5, 1, 4)],
)
def test_box_validation(args):
    with pytest.raises(CoordinateError):
        Box(*args)


def test_coordinate_error_is_value_error_and_image_index_validated():
    assert issubclass(CoordinateError, ValueError)
    for bad in (-1, 1.0, True):
        with pytest.raises(CoordinateError):
            Box(0, 0, 1, 1, image=bad)
        with pytest.raises(CoordinateError):
            Point(0, 0, image=bad)
    with pytest.raises(CoordinateError):
        Point(float("nan"), 0)
    with pytest.raises(CoordinateError):
        Box("a", 0, 1, 1)
    assert Box(np.int64(1), 2, 3, 4) == Box(1.0, 2.0, 3.0, 4.0)
    assert type(Box(np.int64(1), 2, 3, 4).x1) is float


def test_area_and_iou():
    a, b = Box(0, 0, 10, 10), Box(5, 0, 15, 10)
    assert a.area == 100 and a.width == 10 and a.center == Point(5, 5)
    assert iou(a, b) == pytest.approx(50 / 150)
    assert iou(a, a) == 1.0
    assert iou(a, Box(20, 20, 30, 30)) == 0.0
    assert iou(a, Box(0, 0, 10, 10, image=1)) == 0.0  # different images never overlap
    assert iou(Box(1, 1, 1, 1), Box(1, 1, 1, 1)) == 1.0
    assert iou(Box(1, 1, 1, 1), Box(2, 2, 2, 2)) == 0.0


# --- source conventions ------------------------------------------------------------------------


def test_known_conversions():
    size = (200, 100)
    assert box_from_coco([10, 20, 30, 40], size) == Box(10, 20, 40, 60)
    assert box_from_docowl([0, 0, 999, 999], size) == Box(0, 0, 200, 100)
    assert box_from_ferret_ints([0, 0, 1000, 500], size) == Box(0, 0, 200, 50)
    assert to_box([0.1, 0.2, 0.5, 0.3], "norm01_xywh", size) == Box(20, 20, 120, 50)
    assert to_box([0.1, 0.2, 0.5, 0.3], "norm01_xyxy", size) == Box(20, 20, 100, 30)
    # A rotated quad (TL, TR, BR, BL) becomes its axis-aligned envelope.
    quad = [(0.2, 0.1), (0.6, 0.3), (0.5, 0.7), (0.1, 0.5)]
    assert box_from_quad(quad, size) == Box(20, 10, 120, 70)
    assert box_from_quad([v for p in quad for v in p], size) == Box(20, 10, 120, 70)
    # LLaVA expand2square: 200x100 padded to 200x200 with the image at y offset 50.
    assert to_box([0, 0.25, 1, 0.75], "norm01_xyxy_padsq", size) == Box(0, 0, 200, 100)
    assert to_box([0.25, 0, 0.75, 1], "norm01_xyxy_padsq", (100, 200)) == Box(0, 0, 100, 200)
    assert to_point([0.5, 0.5], "norm01", size, image=2) == Point(100, 50, 2)
    assert to_point([999, 0], "int999", size) == Point(200, 0)
    assert box_from_quad(np.array(quad), size) == Box(20, 10, 120, 70)  # arrays work too
    with pytest.raises(CoordinateError):
        box_from_quad([(0.1, 0.2), (0.3,)], size)  # ragged


def test_tolerance_clips_only_within_it():
    size = (100, 50)
    assert to_box([-0.3, 0, 100.4, 50], "px_xyxy", size) == Box(0, 0, 100, 50)
    assert to_box([0, 0, 1 + 1e-7, 1], "norm01_xyxy", size).x2 == 100
    assert to_box([-2, 0, 10, 10], "px_xyxy", size, tolerance_px=3).x1 == 0
    bad = [
        ([-1, 0, 10, 10], "px_xyxy"),  # negative beyond 0.5 px
        ([0, 0, 101, 10], "px_xyxy"),  # outside the image
        ([90, 0, 20, 10], "px_xywh"),  # x + w = 110 > W
        ([0, 0, 1.01, 1], "norm01_xyxy"),  # normalised > 1 + eps, even though < 0.5 px on W=10
        ([0, 0, 0.5, -0.1], "norm01_xywh"),  # negative height
        ([0, 0, 1000, 10], "int999"),
        ([0, 0, 1001, 10], "int1000"),
        ([0, 0, 10.5, 10], "int1000"),  # int grids must hold integers
        ([10, 0, 5, 10], "px_xyxy"),  # x2 < x1
        ([0, 0, 1, 1], "pixels"),  # unknown convention
        ([0, 0, 1], "px_xyxy"),  # arity
        ([0, 0, float("nan"), 1], "px_xyxy"),
    ]
    for values, conv in bad:
        with pytest.raises(CoordinateError):
            to_box(values, conv, size if conv != "norm01_xyxy" else (10, 10))
    with pytest.raises(CoordinateError):
        to_box([0, 0, 1, 1], "px_xyxy", (0, 10))
    with pytest.raises(CoordinateError):
        to_point([1, 2], "px_xywh", size)


FLOAT_CONVENTIONS = ["px_xyxy", "px_xywh", "norm01_xyxy", "norm01_xywh", "norm01_xyxy_padsq"]


@SETTINGS
@given(box_in_image(), st.sampled_from([*FLOAT_CONVENTIONS, "quad01"]))
def test_float_conventions_round_trip(box_size, conv):
    box, size = box_size
    values = from_box(box, conv, size)
    back = to_box(values, conv, size, tolerance_px=1e-6 * max(size))
    assert close((back.x1, back.y1, back.x2, back.y2), (box.x1, box.y1, box.x2, box.y2), 1e-9)
    assert close(from_box(back, conv, size), values, 1e-9)


@SETTINGS
@given(sizes_st, st.sampled_from([("int999", 999), ("int1000", 1000)]), st.data())
def test_int_conventions_round_trip_exactly(size, conv_top, data):
    conv, top = conv_top
    xa, xb = sorted(data.draw(st.lists(st.integers(0, top), min_size=2, max_size=2)))
    ya, yb = sorted(data.draw(st.lists(st.integers(0, top), min_size=2, max_size=2)))
    assert from_box(to_box([xa, ya, xb, yb], conv, size), conv, size) == (xa, ya, xb, yb)
    assert from_point(to_point([xb, ya], conv, size), conv, size) == (xb, ya)


@SETTINGS
@given(sizes_st, unit, unit, st.sampled_from(["px", "norm01", "norm01_padsq"]))
def test_point_conventions_round_trip(size, fx, fy, conv):
    p = Point(fx * size[0], fy * size[1], image=1)
    back = to_point(from_point(p, conv, size), conv, size, image=1)
    assert back.image == 1 and close((back.x, back.y), (p.x, p.y), 1e-9)


# --- quantisation and text ---------------------------------------------------------------------


def test_quantisation_rule():
    size = (640, 480)
    assert format_box(Box(0, 0, 640, 480), size) == "<0,0,999,999>"
    assert dequantize_box((0, 0, 999, 999), size) == Box(0, 0, 640, 480)
    # Min corner floors, max corner names the last bin it touches (inclusive).
    assert quantize_box(Box(0.64, 0.47, 1.28, 0.97), size) == (1, 0, 1, 2)
    assert quantize_box(Box(3.2, 2.4, 3.2, 2.4), size) == (5, 5, 5, 5)  # on a bin edge
    assert format_point(Point(640, 0), size) == "<999,0>"
    assert format_point(Point(1.0, 1.0), size) == "<1,2>"
    with pytest.raises(CoordinateError):
        format_box(Box(0, 0, 641, 10), size)


@SETTINGS
@given(box_in_image(image=0), st.integers(0, 3))
def test_box_text_round_trip_within_one_bin(box_size, k):
    box, size = box_size
    box = Box(box.x1, box.y1, box.x2, box.y2, image=k)
    sizes = [(7, 9)] * k + [size]
    text = "see " + format_box(box, size, image_index="always") + "."
    (region,) = parse_regions(text, sizes).regions
    got = region.shape
    assert isinstance(got, Box) and got.image == k and region.indexed
    bw, bh = size[0] / 1000, size[1] / 1000
    eps = 1e-6
    for a, b, bin_ in ((got.x1, box.x1, bw), (got.y1, box.y1, bh)):
        assert b - bin_ - eps * bin_ <= a <= b + eps * bin_  # decoded min corner at or before
    for a, b, bin_ in ((got.x2, box.x2, bw), (got.y2, box.y2, bh)):
        assert b - eps * bin_ <= a <= b + bin_ + eps * bin_  # decoded max corner at or after


@SETTINGS
@given(sizes_st, st.lists(bins, min_size=4, max_size=4), st.booleans())
def test_text_parse_format_is_exact(size, ints, indexed):
    x1, x2 = sorted(ints[0::2])
    y1, y2 = sorted(ints[1::2])
    text = f"<1:{x1},{y1},{x2},{y2}>" if indexed else f"<{x1},{y1},{x2},{y2}>"
    res = parse_regions(text, [size, size])
    assert not res.errors
    (region,) = res.regions
    mode = "always" if indexed else "never"
    assert format_box(region.shape, size, image_index=mode) == text
    assert region.ints == (x1, y1, x2, y2)


@SETTINGS
@given(sizes_st, bins, bins, st.integers(0, 2))
def test_point_text_round_trip(size, qx, qy, k):
    sizes = [(3, 5), (11, 2), size][: k + 1]
    sizes[k] = size
    text = f"<{k}:{qx},{qy}>"
    (region,) = parse_regions(text, sizes).regions
    assert isinstance(region.shape, Point) and region.image == k
    assert format_point(region.shape, size, image_index="always") == text
    assert format_region(region.shape, sizes, image_index="always") == text
    p = Point(qx * size[0] / 1000, qy * size[1] / 1000)  # a bin's corner stays in that bin
    assert format_point(p, size) == f"<{qx},{qy}>"


def test_image_index_modes():
    size = (100, 100)
    b0, b1 = Box(0, 0, 10, 10), Box(0, 0, 10, 10, image=1)
    assert format_box(b0, size) == "<0,0,99,99>"
    assert format_box(b0, size, image_index="always") == "<0:0,0,99,99>"
    assert format_box(b1, size) == "<1:0,0,99,99>"
    with pytest.raises(CoordinateError):
        format_box(b1, size, image_index="never")
    with pytest.raises(CoordinateError):
        format_region(b1, [size])


# --- parsing -----------------------------------------------------------------------------------

FLOUR = (
    "Sure! The flour <112,26,316,239>, sugar <306,19,484,251>, eggs <312,239,392,312> "
    "<386,243,461,316>, butter <383,371,571,481>, and baking soda <457,155,567,308> are the "
    "ingredients you would need. Should I add this stuff <101,306> too?"
)


def test_parse_paper_example_labels_and_pixels():
    res = parse_regions(FLOUR, [(1000, 500)])
    assert not res.errors
    labels = [r.label for r in res.regions]
    assert labels == ["flour", "sugar", "eggs", "eggs", "butter", "baking soda", "stuff"]
    first = res.regions[0]
    assert FLOUR[first.span[0] : first.span[1]] == "<112,26,316,239>"
    assert first.shape == Box(112, 13, 317, 120)
    assert isinstance(res.regions[-1].shape, Point) and res.regions[-1].shape == Point(
        101.5, 153.25
    )


@pytest.mark.parametrize(
    ("tag", "reason"),
    [
        ("<12,34,56>", "arity"),
        ("<1,2,3,4,5>", "arity"),
        ("<1.5,2>", "not an integer"),
        ("<1,+2>", "not an integer"),
        ("<-1,2>", "negative"),
        ("<1,>", "empty"),
        ("<1000,2>", "< 1000"),
        ("<5,1,4,9>", "x1 <= x2"),
        ("<1,9,4,2>", "y1 <= y2"),
        ("<2:1,2>", "image index 2"),
        ("<a:1,2>", None),  # letters: not a candidate at all
        ("<1:2:3,4>", "bad image index"),
    ],
)
def test_malformed_tags_are_reported_with_span(tag, reason):
    text = f"look {tag} here <3,4>"
    res = parse_regions(text, [(10, 10), (20, 20)])
    assert [r.ints for r in res.regions] == [(3, 4)]
    if reason is None:
        assert res.errors == []
        return
    (err,) = res.errors
    assert err.span == (5, 5 + len(tag)) and err.text == tag and reason in err.reason


def test_non_tags_are_plain_text():
    text = "<image>\n<n> <5> <br/> <bbox_location0> a<b>c x < 3, y > 2 <> <,> <1:5> 3<4"
    res = parse_regions(text, [(10, 10)])
    assert res.regions == [] and res.errors == []
    assert strip_regions(text) == text


def test_parse_details():
    res = parse_regions("the cat < 1, 2 , 3,4> and <0:5,6>", [(1000, 1000)])
    assert [r.ints for r in res.regions] == [(1, 2, 3, 4), (5, 6)]
    assert [r.label for r in res.regions] == ["cat", "cat"]
    assert [r.indexed for r in res.regions] == [False, True]
    assert parse_regions("Is this element <1,2> clickable?", [(9, 9)]).regions[0].label == "element"
    assert parse_regions("<1,2>", [(9, 9)]).regions[0].label == ""
    with pytest.raises(TypeError):
        parse_regions("<1,2>", (640, 480))


def test_strip_and_replace():
    text = "The flour <1,2,3,4>, eggs <0:5,6> <7,8> and <1,2,3>."
    assert strip_regions(text) == "The flour, eggs and <1,2,3>."
    out = replace_regions(text, lambda k, indexed, ints, label: f"[{label}#{k}:{len(ints)}]")
    assert out == "The flour [flour#0:4], eggs [eggs#0:2] [eggs#0:2] and <1,2,3>."


def test_box_on_image_one_parses_with_image_one_size():
    sizes = [(100, 100), (1000, 2000)]
    (r,) = parse_regions("<1:100,100,199,199>", sizes).regions
    assert r.shape == Box(100, 200, 200, 400, image=1)
    assert iou(r.shape, dequantize_box((100, 100, 199, 199), sizes[0])) == 0.0
