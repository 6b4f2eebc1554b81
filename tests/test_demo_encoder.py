"""The demo's encoder pre-training (the CLIP stand-in): targets, determinism, what it touches."""

from __future__ import annotations

import random

import pytest
import torch

from mm15.data.coords import Box, intersection_area
from mm15.data.splitting import tile_image
from mm15.demo.data import images as si
from mm15.demo.encoder import (
    COLOURS,
    HEADS,
    IGNORE,
    SHAPES,
    WORDS,
    EncoderPretrainConfig,
    ProbeHeads,
    draw_batch,
    draw_scene,
    pretrain_encoder,
    text_scene,
    token_targets,
)
from mm15.model.mm15 import MM15
from mm15.presets import tiny

BG_C, BG_S = len(COLOURS), len(SHAPES)


def _drawn(kind, colour, box):
    return si.Drawn(kind, Box(*box), colour)


def test_token_targets_label_the_object_covering_most_of_each_cell():
    # 100×100 image, 2×2 cells of 50 px: a red circle fills the top-left cell, a green square
    # covers 20% of the top-right cell (above the 15% threshold), a blue star covers 80% of the
    # bottom-right cell and 8% of the bottom-left one (below it).
    drawn = [
        _drawn("circle", "red", (0, 0, 50, 50)),
        _drawn("square", "green", (50, 0, 100, 10)),
        _drawn("star", "blue", (45, 50, 100, 90)),
    ]
    colour, shape, _, _ = token_targets(drawn, (100, 100), grid=2)
    red, green, blue = (COLOURS.index(c) for c in ("red", "green", "blue"))
    assert colour.tolist() == [red, green, BG_C, blue]
    assert shape.tolist() == [SHAPES.index(k) for k in ("circle", "square")] + [
        BG_S,
        SHAPES.index("star"),
    ]


def test_token_targets_pick_the_larger_of_two_overlapping_objects():
    drawn = [_drawn("square", "green", (0, 0, 20, 50)), _drawn("triangle", "red", (20, 0, 50, 50))]
    colour, shape, _, _ = token_targets(drawn, (50, 50), grid=1)
    assert (colour.item(), shape.item()) == (COLOURS.index("red"), SHAPES.index("triangle"))


def test_draw_batch_is_deterministic_and_shaped():
    a, b = draw_batch(random.Random("x"), 3, 4), draw_batch(random.Random("x"), 3, 4)
    assert a.tiles_NCHW.shape == (3, 3, 112, 112) and a.colour_NK.shape == (3, 16)
    assert torch.equal(a.tiles_NCHW, b.tiles_NCHW) and torch.equal(a.shape_NK, b.shape_NK)
    assert ((a.colour_NK < BG_C) == (a.shape_NK < BG_S)).all()  # foreground has both labels
    assert (a.shape_NK < BG_S).any(dim=1).all()  # every scene has an object


def _model(seed=0):
    cfg = tiny(vocab_size=64)
    cfg.image_token_id = 63
    torch.manual_seed(seed)
    m = MM15(cfg)
    m.init_weights()
    return m


def test_pretrain_encoder_is_deterministic_and_leaves_the_decoder_alone():
    cfg = EncoderPretrainConfig(steps=2, batch=4, log_every=1, eval_scenes=8)
    m1, m2 = _model(), _model()
    lm_before = {k: v.clone() for k, v in m1.lm.state_dict().items()}
    logs: list[str] = []
    acc = pretrain_encoder(m1, cfg, log=logs.append)
    pretrain_encoder(m2, cfg, log=lambda _: None)
    assert len(logs) == 2 and logs[-1].startswith("[encoder] step 2/2")
    assert set(acc) == {"colour", "shape"} and all(0 <= v <= 1 for v in acc.values())
    for k, v in m1.state_dict().items():
        assert torch.equal(v, m2.state_dict()[k]), k
    for k, v in m1.lm.state_dict().items():
        assert torch.equal(v, lm_before[k]), f"decoder weight {k} changed"
    fresh = _model()
    for part in ("vision", "connector"):
        old = getattr(fresh, part).state_dict()
        assert any(not torch.equal(v, old[k]) for k, v in getattr(m1, part).state_dict().items())
    assert all(p.grad is None for p in m1.parameters())


def test_pretrain_encoder_rejects_a_non_square_token_grid():
    m = _model()
    m.cfg.connector.num_tokens = 12
    with pytest.raises(ValueError, match="not a square"):
        pretrain_encoder(m, EncoderPretrainConfig(steps=1, batch=2, eval_scenes=2))


def test_token_targets_box_corners_in_tenths_and_ignored_on_background():
    drawn = [_drawn("circle", "red", (5, 12, 49, 50))]  # 100×100, 2×2 cells: top-left only
    _, _, corners, _ = token_targets(drawn, (100, 100), grid=2)
    assert corners[0].tolist() == [0, 1, 4, 5]
    assert (corners[1:] == IGNORE).all()


def test_token_targets_words_go_to_cells_holding_enough_of_their_ink():
    # A word whose ink is 70% in the top-left cell and 30% in the top-right one labels both
    # (min_ink 0.3); one with 25% of its ink in the bottom-right cell does not label it.
    save, ok = WORDS.index("Save"), WORDS.index("OK")
    drawn = [
        si.Drawn("text", Box(15, 10, 65, 20), text="Save"),
        si.Drawn("text", Box(10, 60, 60, 70), text="OK"),
    ]
    colour, shape, _, word = token_targets(drawn, (100, 100), grid=2)
    assert word.tolist() == [save, save, ok, len(WORDS)]
    assert (colour == BG_C).all() and (shape == BG_S).all()  # text has no colour or shape


def test_text_scene_buttons_have_their_fill_colour_and_label():
    rng = random.Random("buttons")
    seen_button = seen_sign = False
    for _ in range(40):
        image, drawn = text_scene(rng)
        assert image.size == (112, 112) and all(d.kind in ("button", "text") for d in drawn)
        texts = [d for d in drawn if d.kind == "text"]
        assert texts and all(d.text in WORDS for d in texts)
        buttons = [d for d in drawn if d.kind == "button"]
        seen_button |= bool(buttons)
        seen_sign |= not buttons
        colour, shape, _, word = token_targets(drawn, image.size, 4)
        assert (shape == BG_S).all() and (word < len(WORDS)).any()
        for b in buttons:  # the label's ink lies inside its button
            t = texts[buttons.index(b)]
            assert b.box.x1 <= t.box.x1 and t.box.x2 <= b.box.x2
            assert b.box.y1 <= t.box.y1 and t.box.y2 <= b.box.y2
        fills = {COLOURS.index(b.colour) for b in buttons if b.colour}
        assert set(colour[colour < BG_C].tolist()) <= fills
    assert seen_button and seen_sign


def test_every_head_trains_and_reports_an_accuracy():
    cfg = EncoderPretrainConfig(steps=2, batch=6, log_every=1, eval_scenes=12, heads=HEADS)
    acc = pretrain_encoder(_model(), cfg, log=lambda _: None)
    assert set(acc) == set(HEADS) and all(0 <= v <= 1 for v in acc.values())


def test_encoder_config_rejects_unknown_or_no_heads():
    with pytest.raises(ValueError, match="unknown encoder heads"):
        EncoderPretrainConfig(heads=("colour", "depth"))
    with pytest.raises(ValueError, match="heads is empty"):
        EncoderPretrainConfig(heads=())


def test_a_word_split_evenly_over_four_cells_still_labels_one():
    drawn = [si.Drawn("text", Box(20, 40, 80, 60), text="Cancel")]  # 25% of its ink in each cell
    *_, word = token_targets(drawn, (100, 100), grid=2)
    assert (word == WORDS.index("Cancel")).sum() == 1 and (word == len(WORDS)).sum() == 3


def test_text_share_picks_the_scene_kinds():
    grid_only = draw_batch(random.Random("s"), 16, 4, text_share=0.0)
    text_only = draw_batch(random.Random("s"), 16, 4, text_share=1.0)
    assert (grid_only.word_NK == len(WORDS)).all() and (grid_only.shape_NK < BG_S).any()
    assert (text_only.shape_NK == BG_S).all() and (text_only.word_NK < len(WORDS)).any(1).all()


def test_place_targets_are_each_tokens_own_index_and_box_reads_four_tenths():
    heads = ProbeHeads(8, ("place", "box"), n_tokens=4)
    t = draw_batch(random.Random("p"), 2, 2)
    out = heads._logits_targets(torch.zeros(2, 4, 8), t)
    assert out["place"][1].tolist() == [0, 1, 2, 3] * 2 and out["place"][0].shape == (8, 4)
    assert out["box"][0].shape == (2 * 4 * 4, 10) and torch.equal(
        out["box"][1], t.box_NK4.flatten()
    )


def _reference_targets(drawn, size_wh, grid, min_cover=0.15, min_ink=0.3):
    """token_targets as first written, one torch op per cell (the batch path must equal it)."""
    w, h = size_wh
    cw, ch = w / grid, h / grid
    colour = torch.full((grid * grid,), len(COLOURS))
    shape = torch.full((grid * grid,), len(SHAPES))
    corners = torch.full((grid * grid, 4), IGNORE)
    word = torch.full((grid * grid,), len(WORDS))
    objects = [d for d in drawn if d.colour is not None]
    texts = [d for d in drawn if d.kind == "text"]
    cells = [
        Box((c % grid) * cw, (c // grid) * ch, (c % grid + 1) * cw, (c // grid + 1) * ch)
        for c in range(grid * grid)
    ]
    for k, cell in enumerate(cells):
        best, cover = None, min_cover * cw * ch
        for d in objects:
            if (area := intersection_area(d.box, cell)) > cover:
                best, cover = d, area
        if best is not None:
            colour[k] = COLOURS.index(best.colour)
        if best is not None and best.kind in SHAPES:
            shape[k] = SHAPES.index(best.kind)
            b = best.box
            tenths = torch.tensor([b.x1 / w, b.y1 / h, b.x2 / w, b.y2 / h]).mul(10).floor()
            corners[k] = tenths.clamp(0, 9)
    if texts:
        shares = torch.tensor(
            [[intersection_area(d.box, c) / max(d.box.area, 1e-9) for c in cells] for d in texts]
        )
        own = shares >= min_ink
        own[torch.arange(len(texts)), shares.argmax(1)] = True
        top = shares.masked_fill(~own, -1.0).max(0)
        for k in torch.nonzero(top.values >= 0).flatten().tolist():
            word[k] = WORDS.index(texts[top.indices[k]].text)
    return colour, shape, corners, word


@pytest.mark.parametrize("seed", range(4))
def test_draw_batch_equals_tiling_and_targeting_each_scene_alone(seed):
    # draw_batch normalises all tiles in one pass and builds targets as lists: it must give what
    # tile_image and the per-cell torch targets give scene by scene, bit for bit, or the demo's
    # encoder (and every number after it) changes.
    cfg = si.demo_image_config()
    batch = draw_batch(random.Random(f"{seed}/encoder/1"), 48, 4, text_share=0.5)
    rng = random.Random(f"{seed}/encoder/1")
    for n in range(48):  # the same scenes again, one at a time
        image, drawn = draw_scene(rng, text_share=0.5)
        assert torch.equal(batch.tiles_NCHW[n], tile_image(image, cfg, allow_split=False).tiles[0])
        want = _reference_targets(drawn, image.size, 4)
        got = (batch.colour_NK[n], batch.shape_NK[n], batch.box_NK4[n], batch.word_NK[n])
        for g, w in zip(got, want, strict=True):
            assert g.dtype == w.dtype and torch.equal(g, w)
        for g, w in zip(token_targets(drawn, image.size, 4), want, strict=True):
            assert g.dtype == w.dtype and torch.equal(g, w)


def test_demo_prep_benchmark_runs_and_both_corpora_are_equal():
    """benchmarks/demo_prep_bench.py (docs/demo.md quotes its full run), small."""
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    cmd = [sys.executable, "benchmarks/demo_prep_bench.py", "--batches", "2"]
    run = subprocess.run(
        [*cmd, "--corpus-share", "0.001"], cwd=repo, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "warm-up scenes: 2 batches of 64" in run.stdout
    assert "1 process (baseline)" in run.stdout and "(equal)" in run.stdout, run.stdout
