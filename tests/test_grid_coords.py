"""Grid-dependent region coordinates (``FormatConfig.coords="grid"``): the control of MM1.5
Table 2 row 7 that `mm15 demo --ablate inference_grid` trains against mm15's coordinates on
the original image.  The frame, its rendering and reading, and the paths that refuse it."""

from __future__ import annotations

import json
import shutil

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mm15.cli import main
from mm15.config import FormatConfig, ImageConfig
from mm15.data.coord_parse import parse_regions
from mm15.data.coords import Box, iou
from mm15.data.pipeline import format_sample
from mm15.data.sample_images import region_frames
from mm15.data.schema import Media, Message, Part, Region, Sample
from mm15.data.splitting import tile_geometry
from mm15.eval.metrics import score_sample
from mm15.presets import tiny
from mm15.services.checkpoint import load_checkpoint
from mm15.tokenizer import byte_tokenizer

GRID_2_2 = ImageConfig(resolution=112, n_min=2, n_max=2)
GRID_1_4 = ImageConfig(resolution=112, n_min=1, n_max=4)


def test_the_frame_of_a_square_image_on_a_1x2_grid_is_twice_as_wide():
    g = tile_geometry((112, 112), GRID_2_2)
    assert g.grid == (1, 2)  # the image, a padding tile on its right, then the overview
    assert g.region_frame("image") == (112.0, 112.0)
    assert g.region_frame("grid") == (224.0, 112.0)
    one = tile_geometry((112, 112), GRID_1_4)  # the model's own grid: one tile
    assert one.grid == (1, 1) and one.region_frame("grid") == (112.0, 112.0)
    wide = tile_geometry((112, 84), GRID_1_4)  # padding below, even on one tile
    assert wide.region_frame("grid") == (112.0, 112.0)
    with pytest.raises(ValueError, match="unknown region coordinates 'pixels'"):
        g.region_frame("pixels")


@given(
    w=st.integers(8, 400),
    h=st.integers(8, 400),
    n_min=st.integers(1, 4),
    extra=st.integers(0, 5),
)
def test_the_grid_frame_holds_the_image_at_its_top_left(w, h, n_min, extra):
    """The canvas in original pixels: at least the image, and its resized size maps back."""
    g = tile_geometry((w, h), ImageConfig(resolution=56, n_min=n_min, n_max=n_min + extra))
    fw, fh = g.region_frame("grid")
    assert fw >= w - 1e-9 and fh >= h - 1e-9
    cw, ch = g.canvas_wh
    assert fw * g.resized_wh[0] / w == pytest.approx(cw)
    assert fh * g.resized_wh[1] / h == pytest.approx(ch)
    assert g.region_frame("image") == (w, h)


def _grounding_sample() -> Sample:
    from PIL import Image

    return Sample(
        id="g0",
        source="test",
        category="refer_ground",
        stage="sft",
        media=[Media(kind="image", decoded=Image.new("RGB", (112, 112)), size=(112, 112))],
        regions=[Region(media=0, box=(56.0, 0.0, 112.0, 56.0))],
        messages=[
            Message(role="user", content=[Part.m(0), Part.t("Where is it?")]),
            Message(role="assistant", content=[Part.t("the star "), Part.r(0)]),
        ],
        meta={"metric": "iou50", "answer_region": 0},
    )


@pytest.mark.parametrize(
    ("coords", "image", "tag"),
    [
        ("image", GRID_2_2, "<500,0,999,499>"),  # mm15: the same numbers on every grid
        ("image", GRID_1_4, "<500,0,999,499>"),
        ("grid", GRID_2_2, "<250,0,499,499>"),  # the control: half the canvas is padding
        ("grid", GRID_1_4, "<500,0,999,499>"),
    ],
)
def test_training_text_and_reading_use_the_same_frame(coords, image, tag):
    tok = byte_tokenizer()
    cfg = tiny(vocab_size=len(tok))
    cfg.image_token_id = tok.image_token_id
    cfg.image = image
    cfg.format = FormatConfig(coords=coords)
    sample = _grounding_sample()
    ex = format_sample(sample, tokenizer=tok, model_cfg=cfg)
    assert tag in tok.decode(ex.input_ids, skip_special=True)
    frames = region_frames(sample, cfg)
    assert score_sample(sample, f"the star {tag}", frames) == 1.0
    parsed = parse_regions(tag, frames).regions[0].shape
    assert iou(parsed, Box(56, 0, 112, 56)) > 0.98
    # Read against the other frame, the control's answer points elsewhere.
    if coords == "grid" and image is GRID_2_2:
        assert score_sample(sample, f"the star {tag}") == 0.0  # the original image's frame


def test_an_unknown_coords_value_is_an_error():
    with pytest.raises(ValueError, match=r"format\.coords must be 'image' or 'grid'"):
        FormatConfig(coords="canvas")


@pytest.fixture
def grid_ckpt(tiny_ckpt_dir, tmp_path):
    path = shutil.copytree(tiny_ckpt_dir, tmp_path / "grid")
    cfg = json.loads((path / "config.json").read_text())
    cfg["format"]["coords"] = "grid"
    (path / "config.json").write_text(json.dumps(cfg))
    return path


def test_a_grid_coordinate_model_loads_only_where_its_frame_is_known(grid_ckpt):
    with pytest.raises(ValueError, match=r"format.coords='grid'.*cannot be chatted with"):
        load_checkpoint(grid_ckpt)
    model, _ = load_checkpoint(grid_ckpt, grid_coords=True)  # training, the demo's evaluation
    assert model.cfg.format.coords == "grid"


@pytest.mark.parametrize(
    "argv",
    [
        ["chat", "--device", "cpu", "hello"],
        ["export", "--hf", "{tmp}/hf"],
        ["eval", "--task", "refcoco", "--data", "{tmp}/nodata"],
    ],
    ids=lambda a: a[0],
)
def test_verbs_that_read_coordinates_refuse_a_grid_model(grid_ckpt, tmp_path, capsys, argv):
    argv = [a.format(tmp=tmp_path) for a in argv]
    assert main([argv[0], "--model", str(grid_ckpt), *argv[1:]]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "format.coords='grid'" in err[0], err
    assert not (tmp_path / "hf").exists()


@pytest.mark.parametrize(
    ("coords", "answer", "at_1_4"),
    [("image", "<500,0,999,499>", 1.0), ("grid", "<250,0,499,499>", 0.0)],
)
def test_rereading_training_answers_on_another_grid_moves_only_canvas_coordinates(
    coords, answer, at_1_4
):
    """`--ablate inference_grid`'s re-read: the answers given at (2, 2), scored with the frame
    (1, 4) gives them; only the control's boxes move (its canvas halves in width)."""
    from mm15.demo.ablate import reread
    from mm15.eval.synthetic_suite import SuiteResult

    tok = byte_tokenizer()
    cfg = tiny(vocab_size=len(tok))
    cfg.image, cfg.format = GRID_2_2, FormatConfig(coords=coords)
    sample = _grounding_sample()
    item = {"id": sample.id, "category": "refer_ground", "prediction": f"the star {answer}"}
    cats = {"refer_ground": {"score": 1.0, "chance": 0.1, "n": 1}}
    suite = SuiteResult([item], cats, None, 0.0, {sample.id: sample})
    assert reread((suite, cfg), (2, 2))["refer_ground"]["score"] == 1.0
    assert reread((suite, cfg), (1, 4))["refer_ground"] == {"score": at_1_4, "chance": 0.1, "n": 1}
