"""The demo's task builders: each draws one sample's pictures, prompt and answer from a seeded
``random.Random`` (a :class:`Draft`); :mod:`mm15.demo.data.tasks` lists them as tasks and
assembles drafts into schema samples (its docstring holds the conventions)."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from PIL import Image

from mm15.data.coords import Box
from mm15.data.schema import (
    Part,
    Region,
)
from mm15.demo.data import images as si

Metric = Literal["exact", "mc", "iou50"]
Split = Literal["train", "test"]

POSITIONS = (
    "in the top left corner",
    "at the top",
    "in the top right corner",
    "on the left",
    "in the centre",
    "on the right",
    "in the bottom left corner",
    "at the bottom",
    "in the bottom right corner",
)
# Ten labels whose ink is at most 14 px tall at 18 px (no ascender with a descender), so that at
# WORD_FONT they stay under 4 px in a text_rich overview.
UI_LABELS = ("OK", "Cancel", "Back", "Next", "Save", "Send", "Menu", "Home", "Edit", "Done")
LETTERS = "abcdefgh"  # text_only/reverse words: 3 letters from these, 8³ = 512 answers
REGIONS = tuple(
    f"{r} {c}" for r in ("top", "middle", "bottom") for c in ("left", "centre", "right")
)
ORDINALS = ("first", "second", "third", "fourth")
DIRECTIONS = ("left", "right", "up", "down")
WORDS = (
    "the",
    "total",
    "page",
    "date",
    "name",
    "code",
    "price",
    "order",
    "item",
    "room",
    "box",
    "note",
    "sum",
    "line",
    *si.COLOURS,
    *si.SHAPES,
    *UI_LABELS,
)
SIGN_FONT = 14  # digit ink 10 px: 10 px in a tile, 2.5 px in the overview (checked per sample)
# text_rich/word: a sign shows one of the UI labels (one vocabulary for the encoder's word head),
# ink 13–14 px at WORD_FONT: at least 8 px in a tile, under 4 px in the overview (checked).
SIGN_WORDS = UI_LABELS
WORD_FONT = 18
UI_FONT = 18  # ui/read_colour labels: ink 13–14 px on 24 px buttons


@dataclass
class Draft:
    """What a task builder returns; :func:`mm15.demo.data.tasks.make_samples` turns it into a
    train or test sample."""

    images: list[Image.Image]
    prompt: list[Part]  # user content (SFT) or the document (pre-training)
    answer: str | None = None
    regions: list[Region] = field(default_factory=list)
    answer_region: int | None = None  # the assistant's answer is this region (a box)
    # Words the assistant writes before its answer (text or box): the object named again, as
    # the paper's grounded answers read ("the flour <112,26,316,239>", MM1.5 §3.1, Fig. 1, Fig. 3).  Copied from
    # the question, they carry no information (chance is unchanged), but writing the name
    # first is what lets the demo's decoder learn which object the answer is about
    # (docs/demo.md, ninth session).  Test samples keep it in ``meta["answer_lead"]``.
    answer_lead: str = ""
    options: list[str] | None = None
    meta: dict = field(default_factory=dict)


def _uniform_add(rng: random.Random) -> tuple[int, int, int]:
    """``(a, b, a + b)`` with single digits and the sum uniform over 0..18."""
    s = rng.randint(0, 18)
    a = rng.randint(max(0, s - 9), min(9, s))
    return a, s - a, s


def _items(rng: random.Random, n: int, kind: str, colour: str) -> list[tuple[str, str]]:
    """``(kind, colour)`` first, then ``n - 1`` shapes with other, distinct kinds and colours."""
    kinds = rng.sample([k for k in si.SHAPES if k != kind], n - 1)
    colours = rng.sample([c for c in si.COLOURS if c != colour], n - 1)
    return [(kind, colour), *zip(kinds, colours, strict=True)]


def _phrase(d: si.Drawn) -> str:
    return f"a {d.colour} {d.kind} {POSITIONS[d.cell]}"


def _listing(phrases: list[str]) -> str:
    return phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]


# ---- stage 1 and 2 --------------------------------------------------------------------------


def _caption(rng: random.Random) -> Draft:
    items = _items(rng, rng.randint(1, 4), rng.choice(si.SHAPES), rng.choice(list(si.COLOURS)))
    image, drawn = si.grid_scene(rng, items)
    text = _listing([_phrase(d) for d in sorted(drawn, key=lambda d: d.cell)]) + "."
    return Draft([image], [Part.m(0), Part.t(text[0].upper() + text[1:])])


def _grounded_caption(rng: random.Random) -> Draft:
    """A grounded caption (GRIT / Kosmos-2 style): each object's phrase followed by its box, in
    reading order.  Writing the box of the object just named is the lookup grounding needs."""
    items = _items(rng, rng.randint(1, 4), rng.choice(si.SHAPES), rng.choice(list(si.COLOURS)))
    image, drawn = si.grid_scene(rng, items)
    drawn = sorted(drawn, key=lambda d: d.cell)
    parts, regions = [Part.m(0)], []
    for k, d in enumerate(drawn):
        sep = "A" if k == 0 else (" and a" if k == len(drawn) - 1 else ", a")
        parts += [Part.t(f"{sep} {d.colour} {d.kind} "), Part.r(k)]
        regions.append(Region(media=0, box=_xyxy(d.box), label=f"{d.colour} {d.kind}"))
    return Draft([image], [*parts, Part.t(".")], regions=regions)


def _object_caption(rng: random.Random) -> Draft:
    """One large object filling most of the image: the easiest image–text pair.  A model trained
    from scratch first has to learn that images carry the answer at all; with only small objects
    it settles on text priors (docs/demo.md measures this), large ones open the pathway."""
    kind, colour = rng.choice(si.SHAPES), rng.choice(list(si.COLOURS))
    image, _ = si.grid_scene(rng, [(kind, colour)], grid=1, fill=(0.75, 1.0))
    return Draft([image], [Part.m(0), Part.t(f"A {colour} {kind}.")])


def _interleaved(rng: random.Random) -> Draft:
    images, parts, total = [], [], 0
    for k in range(rng.randint(2, 3)):
        items = _items(rng, rng.randint(1, 2), rng.choice(si.SHAPES), rng.choice(list(si.COLOURS)))
        image, drawn = si.grid_scene(rng, items)
        images.append(image)
        total += len(drawn)
        parts += [
            Part.m(k),
            Part.t(f"Picture {k + 1} shows {_listing([_phrase(d) for d in drawn])}."),
        ]
    parts[-1] = Part.t(parts[-1].text + f" In all there are {total} shapes.")
    return Draft(images, parts)


def _facts(rng: random.Random) -> Draft:
    facts = []
    for _ in range(rng.randint(3, 5)):
        a, b, s = _uniform_add(rng)
        w = rng.choice(TRAIN_WORDS)  # never a held-out test word of text_only/reverse
        facts.append(
            rng.choice(
                [
                    f"{a} + {b} = {s}.",
                    f"The letters {w} reversed are {w[::-1]}.",
                    f"After {a} comes {a + 1}.",
                ]
            )
        )
    return Draft([], [Part.t(" ".join(facts))])


def _ocr_page(rng: random.Random) -> Draft:
    size = rng.choice([(224, 224), (224, 112)])
    n_lines = rng.randint(3, 8) if size[1] == 224 else rng.randint(2, 4)

    def tokens() -> list[str]:
        return [
            rng.choice(WORDS) if rng.random() < 0.7 else str(rng.randint(1, 999))
            for _ in range(rng.randint(1, 3))
        ]

    lines = [" ".join(tokens()) for _ in range(n_lines)]
    image, drawn = si.page_scene(rng, lines, size=size, font_size=12)
    regions = [Region(media=0, box=_xyxy(d.box), label=d.text) for d in drawn]
    return Draft([image], [Part.m(0), Part.t("\n".join(lines))], regions=regions)


def _ocr_words(rng: random.Random) -> Draft:
    """RenderedText-style OCR: a word on a long sign, or a screen's button labels (on white or
    coloured buttons) transcribed top to bottom, each line's region its button."""
    if rng.random() < 0.5:
        word = rng.choice(SIGN_WORDS)
        image, _ = _long_sign(rng, word, WORD_FONT)
        return Draft([image], [Part.m(0), Part.t(word)])
    labels = rng.sample(UI_LABELS, rng.randint(1, 5))
    fills = [rng.choice([None, *si.COLOURS]) for _ in labels]
    image, buttons = si.ui_scene(rng, labels, fills=fills, font_size=UI_FONT)
    regions = [Region(media=0, box=_xyxy(b.box), label=b.text) for b in buttons]
    return Draft([image], [Part.m(0), Part.t("\n".join(labels))], regions=regions)


def _xyxy(b: Box) -> tuple[float, float, float, float]:
    return (b.x1, b.y1, b.x2, b.y2)


# ---- stage 3: single image ------------------------------------------------------------------


def _colour_q(rng: random.Random) -> Draft:
    colour, kind = rng.choice(list(si.COLOURS)), rng.choice(si.SHAPES)
    image, _ = si.grid_scene(rng, _items(rng, rng.randint(1, 4), kind, colour))
    return Draft([image], [Part.m(0), Part.t(f"What colour is the {kind}?")], colour)


def _shape_q(rng: random.Random) -> Draft:
    colour, kind = rng.choice(list(si.COLOURS)), rng.choice(si.SHAPES)
    image, _ = si.grid_scene(rng, _items(rng, rng.randint(1, 4), kind, colour))
    return Draft([image], [Part.m(0), Part.t(f"What shape is the {colour} object?")], kind)


def _long_sign(rng: random.Random, text: str, font_size: int) -> tuple[Image.Image, float]:
    """``text`` on a sign in a 448×112 or 112×448 image (1×4 / 4×1 tiles + overview at 1/4),
    checked legible in its tile and not in the overview (§3.5); returns the image and the
    text's ink height."""
    cfg = si.demo_image_config()
    size = rng.choice([(448, 112), (112, 448)])
    image, sign = si.sign_scene(rng, text, size=size, tile=cfg.resolution, font_size=font_size)
    tile, overview = si.text_px(size, sign.box.height, cfg)
    if not (tile >= si.MIN_TILE_TEXT_PX and overview < si.MAX_OVERVIEW_TEXT_PX):
        raise AssertionError(
            f"sign text {sign.box.height} px on {size}: {tile:.1f} px in a tile,"
            f" {overview:.1f} px in the overview"
        )
    return image, sign.box.height


def _sign(rng: random.Random) -> Draft:
    code = str(rng.randint(100, 999))
    image, height = _long_sign(rng, code, SIGN_FONT)
    prompt = [Part.m(0), Part.t("What number is written on the sign?")]
    return Draft([image], prompt, code, meta={"text_height_px": height})


def _sign_word(rng: random.Random) -> Draft:
    word = rng.choice(SIGN_WORDS)
    image, height = _long_sign(rng, word, WORD_FONT)
    prompt = [Part.m(0), Part.t("What word is written on the sign?")]
    return Draft([image], prompt, word, meta={"text_height_px": height})


def _ground(rng: random.Random) -> Draft:
    colour, kind = rng.choice(list(si.COLOURS)), rng.choice(si.SHAPES)
    image, drawn = si.grid_scene(rng, _items(rng, rng.randint(2, 4), kind, colour))
    region = Region(media=0, box=_xyxy(drawn[0].box), label=f"{colour} {kind}")
    prompt = [Part.m(0), Part.t(f"Where is the {colour} {kind}?")]
    # "the yellow star, top left <x1,y1,x2,y2>": the name, its cell (the one-word lookup of
    # refer_ground/region), then the box, which the cell narrows to one object's extent.
    lead = f"the {colour} {kind}, {REGIONS[drawn[0].cell]} "
    return Draft([image], prompt, regions=[region], answer_region=0, answer_lead=lead)


def _region(rng: random.Random) -> Draft:
    """The cell of the named object, in words ("top left" … "bottom right"): the lookup of
    ``_ground`` with a one-word decision per row and column instead of four coordinates."""
    cell = rng.randrange(9)
    colour, kind = rng.choice(list(si.COLOURS)), rng.choice(si.SHAPES)
    items = _items(rng, rng.randint(2, 4), kind, colour)
    while True:  # the named object's cell is the drawn answer (uniform over the 9)
        image, drawn = si.grid_scene(rng, items)
        if drawn[0].cell == cell:
            break
    prompt = [Part.m(0), Part.t(f"In which part of the image is the {colour} {kind}?")]
    return Draft([image], prompt, REGIONS[cell], answer_lead=f"the {colour} {kind}, ")


def _refer(rng: random.Random) -> Draft:
    kind, colour = rng.choice(si.SHAPES), rng.choice(list(si.COLOURS))
    image, drawn = si.grid_scene(rng, _items(rng, rng.randint(2, 4), kind, colour))
    point = si.point_inside(image, drawn[0].box, rng)
    prompt = [Part.m(0), Part.t("What shape is at "), Part.r(0), Part.t("?")]
    return Draft([image], prompt, kind, regions=[Region(media=0, point=point)])


def _count(rng: random.Random) -> Draft:
    n, kind = rng.randint(1, 6), rng.choice(si.SHAPES)
    others = [k for k in si.SHAPES if k != kind]
    kinds = [kind] * n + [rng.choice(others) for _ in range(rng.randint(0, 4))]
    image, _ = si.grid_scene(rng, [(k, rng.choice(list(si.COLOURS))) for k in kinds], grid=4)
    return Draft([image], [Part.m(0), Part.t(f"How many {kind}s are there?")], str(n))


def _add_image(rng: random.Random) -> Draft:
    a, b, s = _uniform_add(rng)
    image, _ = si.expression_scene(rng, f"{a} + {b}")
    return Draft([image], [Part.m(0), Part.t("What is the result of the sum shown?")], str(s))


def _ui_find(rng: random.Random) -> Draft:
    labels = rng.sample(UI_LABELS, rng.randint(3, 5))
    image, buttons = si.ui_scene(rng, labels)
    target = rng.choice(buttons)
    region = Region(media=0, box=_xyxy(target.box), label=f"{target.text} button")
    prompt = [Part.m(0), Part.t(f"Where is the '{target.text}' button?")]
    return Draft(
        [image],
        prompt,
        regions=[region],
        answer_region=0,
        answer_lead=f"the '{target.text}' button ",
    )


def _ui_read(rng: random.Random) -> Draft:
    label = rng.choice(UI_LABELS)
    labels = [label, *rng.sample([x for x in UI_LABELS if x != label], rng.randint(2, 4))]
    rng.shuffle(labels)
    image, buttons = si.ui_scene(rng, labels)
    box = next(b.box for b in buttons if b.text == label)
    point = (rng.uniform(box.x1 + 3, box.x2 - 3), rng.uniform(box.y1 + 3, box.y2 - 3))
    prompt = [Part.m(0), Part.t("What does the button at "), Part.r(0), Part.t(" say?")]
    return Draft([image], prompt, label, regions=[Region(media=0, point=point)])


def _ui_answer_screen(
    rng: random.Random,
    fills_for: Callable[[int], list[str | None]],
    question: Callable[[list[str | None]], str],
) -> Draft:
    """A screen of 3–5 buttons in random order; the answer is the first label, drawn on
    ``fills_for(n)[0]``.  ``meta["labels"]`` lists the screen's labels top to bottom."""
    label = rng.choice(UI_LABELS)
    labels = [label, *rng.sample([x for x in UI_LABELS if x != label], rng.randint(2, 4))]
    fills = fills_for(len(labels))
    order = list(range(len(labels)))
    rng.shuffle(order)
    shown = [labels[k] for k in order]
    image, _ = si.ui_scene(rng, shown, fills=[fills[k] for k in order], font_size=UI_FONT)
    return Draft([image], [Part.m(0), Part.t(question(fills))], label, meta={"labels": shown})


def _ui_read_colour(rng: random.Random) -> Draft:
    """A screen of 3–5 buttons, each filled with another colour; read the named one's label."""
    return _ui_answer_screen(
        rng,
        lambda n: rng.sample(list(si.COLOURS), n),
        lambda fills: f"What does the {fills[0]} button say?",
    )


def _ui_read_selected(rng: random.Random) -> Draft:
    """A screen of 3–5 buttons: the selected one white, the others each in another colour (as a
    selected tab is often drawn); read the selected label.  Finding it needs no match to a word
    of the question, unlike ``ui/read_colour``, and, as on the text_rich signs, the answer is
    dark ink on white."""
    return _ui_answer_screen(
        rng,
        lambda n: [None, *rng.sample(list(si.COLOURS), n - 1)],
        lambda _: "What does the highlighted button say?",
    )


# ---- stage 3: multi-image, video, text-only -------------------------------------------------


def _find_image(rng: random.Random) -> Draft:
    colour, kind, answer = rng.choice(list(si.COLOURS)), rng.choice(si.SHAPES), rng.randrange(4)
    pool = [(k, c) for k in si.SHAPES for c in si.COLOURS if (k, c) != (kind, colour)]
    items = rng.sample(pool, 3)
    items.insert(answer, (kind, colour))
    images = [si.grid_scene(rng, [it], grid=1, fill=(0.35, 0.6))[0] for it in items]
    options = "\n".join(f"{'ABCD'[i]}. {o}" for i, o in enumerate(ORDINALS))
    text = f"Which image shows the {colour} {kind}?\n{options}\nAnswer with the letter."
    return Draft(
        images, [*map(Part.m, range(4)), Part.t(text)], "ABCD"[answer], options=list(ORDINALS)
    )


def _common_colour(rng: random.Random) -> Draft:
    """Four images of one object each; two share a colour (the answer), the others differ.  No
    single image tells which colour repeats; naming any colour seen scores 1/3 (2× chance)."""
    colour, *others = rng.sample(list(si.COLOURS), 3)
    colours = [colour, colour, *others]
    rng.shuffle(colours)
    images = [
        si.grid_scene(rng, [(rng.choice(si.SHAPES), c)], grid=1, fill=(0.35, 0.6))[0]
        for c in colours
    ]
    text = "Two of these images show the same colour. Which colour is it?"
    return Draft(images, [*map(Part.m, range(4)), Part.t(text)], colour)


def _direction(rng: random.Random) -> Draft:
    direction = rng.choice(DIRECTIONS)
    frames, _ = si.motion_frames(rng, direction)
    text = "Which way does the ball move: left, right, up or down?"
    prompt = [*map(Part.m, range(len(frames))), Part.t(text)]
    return Draft(frames, prompt, direction, meta={"video": True})


def _add_text(rng: random.Random) -> Draft:
    a, b, s = _uniform_add(rng)
    return Draft([], [Part.t(f"What is {a} + {b}?")], str(s))


def _held_out_word(word: str) -> bool:
    """A quarter of the 512 words, with every letter at every position, is test-only."""
    return sum((k + 1) * LETTERS.index(c) for k, c in enumerate(word)) % 4 == 0


TRAIN_WORDS = tuple(
    w
    for w in (a + b + c for a in LETTERS for b in LETTERS for c in LETTERS)
    if not _held_out_word(w)
)


def _rev_held_out(draft: Draft) -> bool:
    return _held_out_word(draft.answer[::-1])


def _reverse(rng: random.Random) -> Draft:
    word = "".join(rng.choice(LETTERS) for _ in range(3))
    return Draft([], [Part.t(f"Reverse the letters of {word}.")], word[::-1])
