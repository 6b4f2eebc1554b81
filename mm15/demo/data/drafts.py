"""What the demo's task builders share: the :class:`Draft` each returns, the vocabularies and
font sizes of the synthetic scenes, and the helpers that draw objects, signs and words.  The
builders themselves are :mod:`mm15.demo.data.pretrain_builders` (stages 1 and 2) and
:mod:`mm15.demo.data.sft_builders` (stage 3); :mod:`mm15.demo.data.tasks` lists them as tasks and
assembles drafts into schema samples (its docstring holds the conventions)."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Literal

from PIL import Image

from mm15.data.coords import Box
from mm15.data.schema import Part, Region
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
    # (docs/demo-log.md, ninth session).  Test samples keep it in ``meta["answer_lead"]``.
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


def _xyxy(b: Box) -> tuple[float, float, float, float]:
    return (b.x1, b.y1, b.x2, b.y2)


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


def _held_out_word(word: str) -> bool:
    """A quarter of the 512 words, with every letter at every position, is test-only."""
    return sum((k + 1) * LETTERS.index(c) for k, c in enumerate(word)) % 4 == 0


TRAIN_WORDS = tuple(
    w
    for w in (a + b + c for a in LETTERS for b in LETTERS for c in LETTERS)
    if not _held_out_word(w)
)
