"""Tests for mm15.demo.data.tasks: determinism, honest references, exact chance baselines."""

from __future__ import annotations

import io
import random
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from mm15.data.coords import Box, Point, dequantize_point, format_box, quantize_point
from mm15.data.schema import Sample, sample_from_json, sample_to_json
from mm15.data.splitting import tile_geometry
from mm15.data.video import load_video_frames
from mm15.demo.data import chance as synchance
from mm15.demo.data import corpus as corpus_mod
from mm15.demo.data import drafts
from mm15.demo.data import tasks as syn
from mm15.demo.data.images import BACKGROUND, COLOURS, SHAPES
from mm15.eval.metrics import score_sample
from mm15.presets import tiny

SMALL = {k: 0 for k in corpus_mod.DEFAULT_SIZES} | {t: 3 for t in syn.TASKS}
SMALL |= {f"test/{t}": 2 for t in syn.SFT_TASKS}


def pixels(sample: Sample, k: int = 0) -> np.ndarray:
    """(H, W, 3) uint8 of media k (bytes or path)."""
    m = sample.media[k]
    im = Image.open(io.BytesIO(m.bytes) if m.bytes is not None else m.path).convert("RGB")
    assert im.size == m.size, f"{sample.id}: Media.size {m.size} but the PNG is {im.size}"
    return np.asarray(im)


def ink_box(mask: np.ndarray) -> tuple[float, float, float, float]:
    ys, xs = np.nonzero(mask)
    return (float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1))


def classify(mask: np.ndarray) -> str:
    """Shape kind from the fill ratio of its pixels in their own box (square 1, circle π/4,
    triangle 1/2, five-point star with inner radius 0.45: 0.38)."""
    x1, y1, x2, y2 = (int(v) for v in ink_box(mask))
    fill = mask[y1:y2, x1:x2].mean()
    return (
        "square"
        if fill > 0.9
        else "circle"
        if fill > 0.64
        else "triangle"
        if fill > 0.47
        else "star"
    )


def cell_words(box: tuple[float, ...], size: tuple[int, int]) -> str:
    """The 3×3 cell holding ``box``'s centre, in words ("top left" … "bottom right")."""
    (w, h), cx, cy = size, (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    return syn.REGIONS[3 * int(cy * 3 // h) + int(cx * 3 // w)]


def run_length(line: np.ndarray, i: int) -> int:
    """Length of the run of True values of ``line`` that contains index ``i`` (0 if False)."""
    edges = np.flatnonzero(np.diff(np.r_[0, line.astype(np.int8), 0]))
    return next((int(b - a) for a, b in edges.reshape(-1, 2) if a <= i < b), 0)


def colour_mask(arr: np.ndarray, colour: str) -> np.ndarray:
    return (arr == np.array(COLOURS[colour], dtype=np.uint8)).all(-1)


def check_schema(s: Sample) -> None:
    """Sample.validate, plus what it leaves open: non-empty texts, sizes always set."""
    s.validate()
    for msg in s.messages:
        for p in msg.content:
            assert p.type != "media" or 0 <= p.media < len(s.media), s.id
            assert p.type != "region" or 0 <= p.region < len(s.regions), s.id
            assert p.type != "text" or p.text, s.id
    for r in s.regions:
        assert 0 <= r.media < len(s.media) and (r.box is None) != (r.point is None), s.id
    assert all(m.size is not None for m in s.media), s.id


@pytest.fixture(scope="module")
def test_sets() -> dict[str, list[Sample]]:
    return {t: syn.make_samples(t, 30, seed=7, split="test") for t in syn.SFT_TASKS}


def test_make_samples_deterministic_and_independent_of_n():
    for task in syn.TASKS:
        a = [sample_to_json(s) for s in syn.make_samples(task, 4, seed=3)]
        assert a == [sample_to_json(s) for s in syn.make_samples(task, 4, seed=3)], task
        assert a[2] == sample_to_json(syn.make_samples(task, 1, seed=3, start=2)[0]), task
        assert a != [sample_to_json(s) for s in syn.make_samples(task, 4, seed=4)], task


def test_every_sample_is_well_formed_and_round_trips():
    for task, spec in syn.TASKS.items():
        splits = ("train", "test") if spec.stage == "sft" else ("train",)
        for split in splits:
            for s in syn.make_samples(task, 3, seed=1, split=split):
                check_schema(s)
                assert s.category == spec.category and s.source == f"synthetic/{task}"
                assert sample_from_json(sample_to_json(s)) == s
                for k in range(len(s.media)):
                    pixels(s, k)
                roles = [m.role for m in s.messages]
                want = {"train": ["user", "assistant"], "test": ["user"]}
                assert roles == (want[split] if spec.stage == "sft" else ["document"]), task
                if split == "test":
                    assert s.stage == "eval" and s.meta["metric"] == spec.metric and s.answers


def test_test_split_differs_from_train():
    for task in ("general/colour", "refer_ground/box", "text_rich/sign"):
        train = {s.media[0].bytes for s in syn.make_samples(task, 20, seed=0)}
        test = {s.media[0].bytes for s in syn.make_samples(task, 20, seed=0, split="test")}
        assert not train & test, task


def test_each_test_reference_scores_one_and_a_wrong_answer_zero(test_sets):
    for task, samples in test_sets.items():
        for s in samples:
            assert score_sample(s, s.answers[0]) == 1.0, (task, s.answers)
            wrong = "<0,0,0,0>" if s.meta["metric"] == "iou50" else "zzz"
            assert score_sample(s, wrong) == 0.0, task


def test_exact_and_mc_chance_is_one_over_vocab_and_answers_are_uniform():
    for task in syn.SFT_TASKS:
        spec = syn.TASKS[task]
        if spec.metric == "iou50":
            continue
        assert synchance.chance_baseline(task) == pytest.approx(1 / len(spec.vocab))
        n = 40 * len(spec.vocab) if len(spec.vocab) <= 19 else 400
        answers = Counter(
            s.answers[0].removeprefix(s.meta.get("answer_lead", ""))
            for s in syn.make_samples(task, n, 11, split="test")
        )
        assert set(answers) <= set(spec.vocab), task
        if len(spec.vocab) <= 19:  # every answer near n / |vocab| (40 ± 5 sd is far outside)
            assert set(answers) == set(spec.vocab), task
            assert all(abs(c - 40) < 5 * 40**0.5 for c in answers.values()), (task, answers)


def test_category_chance_is_the_weighted_task_mean():
    assert synchance.chance_baseline("math") == pytest.approx((1 / 6 + 1 / 19) / 2)
    w = {"math/count": 3, "math/add": 1}
    assert synchance.chance_baseline("math", weights=w) == pytest.approx((3 / 6 + 1 / 19) / 4)
    with pytest.raises(ValueError, match="neither an SFT task nor a category"):
        synchance.chance_baseline("science")
    with pytest.raises(ValueError, match="no evaluation"):
        synchance.chance_baseline("caption/shapes")


def test_iou50_chance_is_small_and_bounded_by_the_layout():
    # The target lies in one of 9 cells (3×3) or 5 button slots, each equally likely, and a
    # box in another cell/slot never reaches IoU 0.5: chance ≤ 1/9 and ≤ 1/5 (+ MC error).
    box, ui = (
        synchance.chance_baseline("refer_ground/box"),
        synchance.chance_baseline("ui/find_button"),
    )
    assert 0.05 < box <= 1 / 9 + 0.02
    assert 0.1 < ui <= 1 / 5 + 0.03


def test_grounding_reference_is_the_drawn_shape(test_sets):
    for s in test_sets["refer_ground/box"] + syn.make_samples("refer_ground/box", 20, 2):
        reg = s.regions[0]
        colour, kind = reg.label.split()
        mask = colour_mask(pixels(s), colour)
        assert ink_box(mask) == reg.box, s.id  # the only pixels of that colour
        assert classify(mask) == kind, s.id
        # The answer names the object and its cell, then boxes it (MM1.5 §3.1, Fig. 1, Fig. 3's grounded answers):
        # "the yellow star, top left <x1,y1,x2,y2>".
        lead = f"the {colour} {kind}, {cell_words(reg.box, s.media[0].size)} "
        if s.stage == "eval":
            assert s.answers == [lead + format_box(Box(*reg.box), s.media[0].size)], s.id
            assert s.meta["answer_lead"] == lead
        else:
            said, region = s.messages[1].content
            assert (said.text, region.region) == (lead, 0), s.id


def test_region_answer_is_the_cell_of_the_named_shape(test_sets):
    for s in test_sets["refer_ground/region"] + syn.make_samples("refer_ground/region", 20, 2):
        text = s.messages[0].content[1].text
        colour, kind = text.removeprefix("In which part of the image is the ").rstrip("?").split()
        mask = colour_mask(pixels(s), colour)
        assert classify(mask) == kind, s.id
        answer = s.answers[0] if s.stage == "eval" else s.messages[1].content[0].text
        assert answer == f"the {colour} {kind}, {cell_words(ink_box(mask), s.media[0].size)}", s.id


def test_colour_shape_and_point_answers_match_the_pixels(test_sets):
    for s in test_sets["general/colour"]:
        kind = s.messages[0].content[1].text.removeprefix("What colour is the ").rstrip("?")
        assert classify(colour_mask(pixels(s), s.answers[0])) == kind, s.id
    for s in test_sets["general/shape"]:
        colour = s.messages[0].content[1].text.split()[4]
        assert classify(colour_mask(pixels(s), colour)) == s.answers[0], s.id
    for s in test_sets["refer_ground/point"]:
        arr, size = pixels(s), s.media[0].size
        p = dequantize_point(quantize_point(Point(*s.regions[0].point), size), size)
        colour = next(c for c, v in COLOURS.items() if tuple(arr[int(p.y), int(p.x)]) == v)
        assert classify(colour_mask(arr, colour)) == s.answers[0], s.id


def test_count_answer_matches_the_shapes_per_cell(test_sets):
    for s in test_sets["math/count"]:
        kind = s.messages[0].content[1].text.split()[2].removesuffix("s")
        arr = pixels(s)
        fg = (arr != np.array(BACKGROUND, dtype=np.uint8)).any(-1)
        kinds = [
            classify(fg[r : r + 28, c : c + 28])
            for r in range(0, 112, 28)
            for c in range(0, 112, 28)
            if fg[r : r + 28, c : c + 28].any()
        ]
        assert kinds.count(kind) == int(s.answers[0]), s.id


def test_text_rich_digits_are_illegible_in_the_overview(test_sets):
    """The honesty criterion: the code's ink is >= 8 px tall in a tile, < 4 px in the overview."""
    cfg = tiny().image
    for s in test_sets["text_rich/sign"]:
        arr, (w, h) = pixels(s), s.media[0].size
        dark = (arr < 100).all(-1)  # the code is the only near-black ink
        x1, y1, x2, y2 = ink_box(dark)
        geo = tile_geometry((w, h), cfg)
        assert geo.n_sub_images == 4 and geo.has_overview
        tile_px = (y2 - y1) * geo.resized_wh[1] / h
        overview_px = (y2 - y1) * geo.overview_wh[1] / h
        assert tile_px >= 8 and overview_px < 4, (s.id, tile_px, overview_px)
        assert (y2 - y1) == s.meta["text_height_px"] and len(s.answers[0]) == 3
        # The code lies inside one tile, so a tile shows all of it.
        r = cfg.resolution
        assert x1 // r == (x2 - 1) // r and y1 // r == (y2 - 1) // r, s.id


def _ink_width(text: str, font_size: int, fill=syn.si.INK, on=(255, 255, 255)) -> int:
    """Width of ``text``'s dark ink (< 100 in every channel, as the tests threshold it) drawn
    alone: what the answer's word must measure on the image."""
    im = Image.new("RGB", (200, 40), on)
    syn.si.paint_text(im, (4, 4), text, font_size, fill=fill)
    x1, _, x2, _ = ink_box((np.asarray(im) < 100).all(-1))
    return int(x2 - x1)


def test_text_rich_words_are_illegible_in_the_overview_and_are_the_answer(test_sets):
    """The honesty criterion for the word signs: >= 8 px tall in a tile, < 4 px in the overview,
    inside one tile; and the ink drawn is the answer's (its width matches the answer alone)."""
    cfg = tiny().image
    widths = {w: _ink_width(w, drafts.WORD_FONT) for w in syn.SIGN_WORDS}
    for s in test_sets["text_rich/word"]:
        arr, (w, h) = pixels(s), s.media[0].size
        x1, y1, x2, y2 = ink_box((arr < 100).all(-1))  # the word is the only near-black ink
        geo = tile_geometry((w, h), cfg)
        assert geo.n_sub_images == 4 and geo.has_overview
        tile_px = (y2 - y1) * geo.resized_wh[1] / h
        overview_px = (y2 - y1) * geo.overview_wh[1] / h
        assert tile_px >= 8 and overview_px < 4, (s.id, tile_px, overview_px)
        assert s.answers[0] in syn.SIGN_WORDS and x2 - x1 == widths[s.answers[0]], s.id
        r = cfg.resolution
        assert x1 // r == (x2 - 1) // r and y1 // r == (y2 - 1) // r, s.id


def assert_label_on_button(s: Sample, arr: np.ndarray, rgb: tuple[int, int, int]) -> None:
    """The one button filled with ``rgb`` carries the answer: its label's ink is as wide as the
    answer's in the same font and ink (all ten labels have distinct widths)."""
    fill = (arr == np.array(rgb, dtype=np.uint8)).all(-1)
    fill[fill.sum(1) < 40] = False  # rows of a button, not of a white label on another one
    x1, y1, x2, y2 = (int(v) for v in ink_box(fill))
    assert y2 - y1 == 24 and x2 - x1 >= 70, s.id  # one whole button of that fill
    label = (np.abs(arr[y1:y2, x1:x2].astype(int) - rgb) > 60).any(-1)  # ink, dark or white
    lx1, _, lx2, _ = ink_box(label)
    im = Image.new("RGB", (200, 40), rgb)  # the answer alone, in the same ink on that fill
    syn.si.paint_text(im, (4, 4), s.answers[0], drafts.UI_FONT, fill=syn.si.ink_for(rgb))
    rx1, _, rx2, _ = ink_box((np.abs(np.asarray(im).astype(int) - rgb) > 60).any(-1))
    assert lx2 - lx1 == rx2 - rx1, s.id


def test_ui_colour_button_answer_is_the_label_on_the_named_colour(test_sets):
    for s in test_sets["ui/read_colour"]:
        colour = s.messages[0].content[1].text.split()[3]
        arr = pixels(s)
        fills = [c for c in COLOURS if colour_mask(arr, c).any()]
        assert 3 <= len(fills) <= 5, s.id  # every button has its own colour
        assert_label_on_button(s, arr, COLOURS[colour])


def test_ui_selected_button_is_the_only_white_one_and_carries_the_answer(test_sets):
    for s in test_sets["ui/read_selected"] + syn.make_samples(
        "ui/read_selected", 20, 3, split="test"
    ):
        arr = pixels(s)
        fills = [c for c in COLOURS if colour_mask(arr, c).any()]
        assert 2 <= len(fills) <= 4, s.id  # the other buttons, each in its own colour
        for c in fills:
            x1, y1, x2, y2 = ink_box(colour_mask(arr, c))
            assert y2 - y1 == 24 and x2 - x1 >= 70, s.id  # whole buttons, one per colour
        assert_label_on_button(s, arr, (255, 255, 255))


def test_multi_image_answer_is_the_only_image_with_that_shape(test_sets):
    for s in test_sets["multi_image/find"]:
        words = s.messages[0].content[4].text.split("?")[0].split()
        colour, kind = words[-2], words[-1]
        hits = [
            k
            for k in range(4)
            if colour_mask(pixels(s, k), colour).any()
            and classify(colour_mask(pixels(s, k), colour)) == kind
        ]
        assert hits == ["ABCD".index(s.answers[0])], s.id
        assert s.options == ["first", "second", "third", "fourth"]


def test_common_colour_answer_is_the_one_colour_in_two_images(test_sets):
    for s in test_sets["multi_image/common"]:
        assert len(s.media) == 4 and s.answers[0] in syn.si.COLOURS
        seen = [[c for c in syn.si.COLOURS if colour_mask(pixels(s, k), c).any()] for k in range(4)]
        assert all(len(cs) == 1 for cs in seen), (s.id, seen)  # one object, one colour each
        counts = Counter(cs[0] for cs in seen)
        assert sorted(counts.values()) == [1, 1, 2] and counts[s.answers[0]] == 2, (s.id, seen)


def test_video_ball_moves_in_the_answer_direction(test_sets):
    step = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
    for s in test_sets["video/direction"]:
        assert s.meta["video"] and len(s.media) == 4
        centres = []
        for k in range(4):
            arr = pixels(s, k)
            fg = (arr != arr[0, 0]).any(-1)
            ys, xs = np.nonzero(fg)
            centres.append((xs.mean(), ys.mean()))
        d = np.diff(np.array(centres), axis=0)
        dx, dy = step[s.answers[0]]
        assert (d @ np.array([dx, dy]) > 10).all(), (s.id, d)


def test_ui_references(test_sets):
    for s in test_sets["ui/find_button"]:
        arr = pixels(s)
        x1, y1, x2, y2 = (int(v) for v in s.regions[0].box)
        border = np.concatenate(
            [arr[y1, x1:x2], arr[y2 - 1, x1:x2], arr[y1:y2, x1], arr[y1:y2, x2 - 1]]
        )
        assert (border == 255).all(), s.id  # a whole white button, edges included
        assert (arr[y1 - 1, x1:x2] != 255).any() and (arr[y2, x1:x2] != 255).any()
        assert (arr[y1:y2, x1:x2] < 100).all(-1).any()  # with its label inside
        label = s.messages[0].content[1].text.removeprefix("Where is the '").split("'")[0]
        box = format_box(Box(*s.regions[0].box), s.media[0].size)
        assert s.answers == [f"the '{label}' button {box}"], s.id
    for s in test_sets["ui/read_button"]:
        arr, (x, y) = pixels(s), (int(v) for v in s.regions[0].point)
        fg = (arr != arr[-1, 0]).any(-1)  # not the screen background (that corner is background)
        width, height = run_length(fg[y], x), run_length(fg[:, x], y)
        assert width >= 70 and height == 24, s.id  # the point is on a button (76–92 × 24 px)
        assert s.answers[0] in syn.UI_LABELS


def test_grounded_caption_boxes_are_the_named_shapes_in_reading_order():
    for s in syn.make_samples("caption/grounded", 30, 4):
        check_schema(s)
        parts = s.messages[0].content
        assert [p.type for p in parts[1:]] == ["text", "region"] * len(s.regions) + ["text"]
        arr, centres = pixels(s), []
        for k, reg in enumerate(s.regions):
            colour, kind = reg.label.split()
            assert (
                parts[1 + 2 * k].text.endswith(f" {colour} {kind} ")
                and parts[2 + 2 * k].region == k
            )
            mask = colour_mask(arr, colour)
            assert ink_box(mask) == reg.box and classify(mask) == kind, s.id
            centres.append(
                (
                    round((reg.box[1] + reg.box[3]) / 2 * 3 / 112 - 0.5),
                    round((reg.box[0] + reg.box[2]) / 2 * 3 / 112 - 0.5),
                )
            )
        assert centres == sorted(centres), s.id  # row by row, left to right
        assert parts[1].text.startswith("A ") and parts[-1].text == "."


def test_ocr_words_transcribe_signs_and_buttons_top_to_bottom():
    kinds = Counter()
    for s in syn.make_samples("ocr/words", 30, 6):
        check_schema(s)
        text = s.messages[0].content[1].text
        if s.regions:  # a screen: one line per button, top to bottom, each its button's label
            kinds["screen"] += 1
            assert text.split("\n") == [r.label for r in s.regions], s.id
            assert [r.box[1] for r in s.regions] == sorted(r.box[1] for r in s.regions), s.id
            assert set(text.split("\n")) <= set(syn.UI_LABELS), s.id
            arr = pixels(s)
            for r in s.regions:  # the label's ink lies inside its button
                x1, y1, x2, y2 = (int(v) for v in r.box)
                assert len(np.unique(arr[y1:y2, x1:x2].reshape(-1, 3), axis=0)) > 1, s.id
        else:  # a long sign with one word (the text_rich/word layout)
            kinds["sign"] += 1
            assert text in syn.SIGN_WORDS and sorted(s.media[0].size) == [112, 448], s.id
    assert kinds["screen"] and kinds["sign"]


def test_ocr_page_regions_are_the_lines():
    for s in syn.make_samples("ocr/pages", 10, 5):
        arr = pixels(s)
        dark = arr.min(-1) < 128
        inside = np.zeros_like(dark)
        for r in s.regions:
            x1, y1, x2, y2 = (int(v) for v in r.box)
            inside[y1:y2, x1:x2] = True
            assert dark[y1:y2, x1:x2].any()
        assert not (dark & ~inside).any(), s.id
        assert s.messages[0].content[1].text == "\n".join(r.label for r in s.regions)


def test_generate_corpus_is_deterministic_and_indexed(tmp_path):
    a = corpus_mod.generate_corpus(tmp_path / "a", seed=5, sizes=SMALL)
    b = corpus_mod.generate_corpus(tmp_path / "b", seed=5, sizes=SMALL, workers=2)
    files = sorted(
        p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file()
    )
    assert files == sorted(
        p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*") if p.is_file()
    )
    for f in files:  # index.json included: it holds no absolute path
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f
    assert (
        a.counts()
        == b.counts()
        == {
            f"{'test' if k.startswith('test/') else 'train'}/{k.removeprefix('test/')}": v
            for k, v in SMALL.items()
        }
    )
    again = corpus_mod.CorpusIndex.read(tmp_path / "a")
    assert again.files == a.files and set(again.categories) >= {"general", "ocr", "video"}
    for task in syn.TASKS:
        for s in again.load(task):
            check_schema(s)
            for k in range(len(s.media)):
                pixels(s, k)  # absolute path, PNG size == Media.size
    test_file = again.file("math/count", "test")
    assert test_file.stage == "eval" and test_file.chance == pytest.approx(1 / 6)
    video = again.load("video/direction", "test")[0]
    frames = load_video_frames(tmp_path / "a" / video.meta["frames_dir"], tiny().video)
    assert [f.size for f in frames] == [m.size for m in video.media]


def test_generate_corpus_rejects_unknown_size_keys(tmp_path):
    with pytest.raises(ValueError, match="unknown size keys"):
        corpus_mod.generate_corpus(tmp_path, seed=0, sizes={"general/colours": 3})
    with pytest.raises(ValueError, match="only SFT tasks have test sets"):
        syn.make_samples("caption/shapes", 1, 0, split="test")


def test_reverse_test_words_are_held_out_of_training():
    prompt = lambda s: s.messages[0].content[0].text  # noqa: E731
    train = {prompt(s) for s in syn.make_samples("text_only/reverse", 600, 0)}
    test = {prompt(s) for s in syn.make_samples("text_only/reverse", 200, 0, split="test")}
    assert len(train) > 300 and len(test) > 90 and not train & test
    words = {p.split()[-1].rstrip(".") for p in test}
    facts = " ".join(s.messages[0].content[0].text for s in syn.make_samples("text/facts", 300, 0))
    assert not {w for w in words if f"letters {w} reversed" in facts}  # nor in pre-training
    assert synchance.chance_baseline("text_only/reverse") == 1 / 128


def test_text_only_answers_follow_from_the_question():
    for s in syn.make_samples("text_only/add", 30, 0):
        a, b = s.messages[0].content[0].text.removeprefix("What is ").rstrip("?").split(" + ")
        assert s.messages[1].content[0].text == str(int(a) + int(b))
    for s in syn.make_samples("text_only/reverse", 30, 0):
        word = s.messages[0].content[0].text.split()[-1].rstrip(".")
        assert s.messages[1].content[0].text == word[::-1] and len(s.media) == 0


def test_shape_vocabulary_is_the_drawn_kinds():
    assert set(syn.TASKS["general/shape"].vocab) == set(SHAPES)
    rng = random.Random(0)
    assert len({syn.TASKS["text_rich/sign"].build(rng).answer for _ in range(50)}) > 40
    assert Box(*syn.make_samples("ui/find_button", 1, 0)[0].regions[0].box).area > 0
