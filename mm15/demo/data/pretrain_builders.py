"""The demo's builders for pre-training (MM1.5 §3.4, stage 1: captions, grounded captions,
interleaved documents, text) and continual pre-training (§3.3, stage 2: OCR of rendered pages,
signs and screens).  Each draws one sample from a seeded ``random.Random``
(:class:`~mm15.demo.data.drafts.Draft`)."""

from __future__ import annotations

import random

from mm15.data.schema import Part, Region
from mm15.demo.data import images as si
from mm15.demo.data.drafts import (
    POSITIONS,
    SIGN_WORDS,
    TRAIN_WORDS,
    UI_FONT,
    UI_LABELS,
    WORD_FONT,
    WORDS,
    Draft,
    _items,
    _long_sign,
    _uniform_add,
    _xyxy,
)


def _phrase(d: si.Drawn) -> str:
    return f"a {d.colour} {d.kind} {POSITIONS[d.cell]}"


def _listing(phrases: list[str]) -> str:
    return phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]


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
    it settles on text priors (docs/demo-log.md measures this), large ones open the pathway."""
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
