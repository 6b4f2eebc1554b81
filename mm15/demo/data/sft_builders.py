"""The demo's builders for supervised fine-tuning (MM1.5 §3.2, stage 3), one per SFT task: single
image (general, text_rich, refer_ground, math, ui), then multi-image, video and text-only.  Each
draws one sample's pictures, question and answer from a seeded ``random.Random``
(:class:`~mm15.demo.data.drafts.Draft`)."""

from __future__ import annotations

import random
from collections.abc import Callable

from mm15.data.schema import Part, Region
from mm15.demo.data import images as si
from mm15.demo.data.drafts import (
    DIRECTIONS,
    LETTERS,
    ORDINALS,
    REGIONS,
    SIGN_FONT,
    SIGN_WORDS,
    UI_FONT,
    UI_LABELS,
    WORD_FONT,
    Draft,
    _held_out_word,
    _items,
    _long_sign,
    _uniform_add,
    _xyxy,
)

# ---- single image ---------------------------------------------------------------------------


def _colour_q(rng: random.Random) -> Draft:
    colour, kind = rng.choice(list(si.COLOURS)), rng.choice(si.SHAPES)
    image, _ = si.grid_scene(rng, _items(rng, rng.randint(1, 4), kind, colour))
    return Draft([image], [Part.m(0), Part.t(f"What colour is the {kind}?")], colour)


def _shape_q(rng: random.Random) -> Draft:
    colour, kind = rng.choice(list(si.COLOURS)), rng.choice(si.SHAPES)
    image, _ = si.grid_scene(rng, _items(rng, rng.randint(1, 4), kind, colour))
    return Draft([image], [Part.m(0), Part.t(f"What shape is the {colour} object?")], kind)


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


# ---- multi-image, video, text-only -----------------------------------------------------------


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


def _rev_held_out(draft: Draft) -> bool:
    return _held_out_word(draft.answer[::-1])


def _reverse(rng: random.Random) -> Draft:
    word = "".join(rng.choice(LETTERS) for _ in range(3))
    return Draft([], [Part.t(f"Reverse the letters of {word}.")], word[::-1])
