"""The demo's stand-in for a pretrained CLIP encoder: dense pre-training on synthetic scenes.

MM1.5 starts from a CLIP ViT pre-trained on billions of image–text pairs; nothing here may
download weights, and a randomly initialised encoder trained only through the decoder learns to
see far too slowly for a 10-minute demo (docs/demo-log.md measures this).  This stage trains the
encoder and the connector alone, before the paper's stages, on freshly drawn grid scenes with
targets that CLIP's features would give a probe for free: per connector token (a cell of the
tile), the colour and the shape of the object covering most of the cell, or "background" (dense,
like a detector's pre-training), and optionally the token's own place in the grid, the covering
object's box and the word written in the cell (``HEADS``; the demo's choice is measured in
docs/demo-log.md).  Pooled targets (which colours/shapes occur, the object count) were tried and
made the later SFT learn less, so they are not offered.

Linear heads read the targets and are discarded afterwards; the decoder is not touched.  The
stage is deterministic for a seed (scenes come from ``random.Random(f"{seed}/encoder/{step}")``).
"""

from __future__ import annotations

import functools
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import Tensor, nn
from torch.nn import functional as F

from mm15.data.coords import Box, intersection_area
from mm15.data.splitting import normalise_tiles
from mm15.demo.config import ENCODER_HEADS
from mm15.demo.data import images as si
from mm15.demo.data.drafts import SIGN_WORDS, UI_FONT, UI_LABELS, WORD_FONT
from mm15.model.mm15 import MM15

COLOURS, SHAPES = tuple(si.COLOURS), si.SHAPES
HEADS = ENCODER_HEADS  # colour, shape, place, box, word
WORDS = tuple(dict.fromkeys((*UI_LABELS, *SIGN_WORDS)))  # what the "word" head reads
IGNORE = -100  # cross-entropy's ignore index: background tokens have no box
MIN_COVER, MIN_INK = 0.15, 0.3  # token_targets' thresholds (see there)


@dataclass(kw_only=True)
class EncoderPretrainConfig:
    steps: int = 300
    batch: int = 64  # scenes per step (one tile each)
    lr: float = 3e-3  # constant: a decaying schedule measured worse for the SFT that follows
    seed: int = 0
    log_every: int = 50
    eval_scenes: int = 256  # the held-out batch the returned accuracies are measured on
    # Dense heads: "colour", "shape" (the covering object's), "place" (the token's own cell in
    # the tile's token grid), "box" (the covering object's box corners in tenths of the tile),
    # "word" (the button label or sign word most of whose ink lies in the token's cell).
    heads: tuple[str, ...] = ("colour", "shape")
    text_share: float = 0.5  # with a "word" head: this share of the scenes are text tiles
    word_weight: float = 3.0  # loss weight of word classes against background (rarer)

    def __post_init__(self) -> None:
        if bad := sorted(set(self.heads) - set(HEADS)):
            raise ValueError(f"unknown encoder heads {bad}; choose from {HEADS}")
        if not self.heads:
            raise ValueError("heads is empty; give at least one of " + ", ".join(HEADS))


@dataclass
class SceneTargets:
    tiles_NCHW: Tensor  # normalised tiles, one per scene
    colour_NK: Tensor  # per token: colour index, len(COLOURS) = background
    shape_NK: Tensor  # per token: shape index, len(SHAPES) = background
    box_NK4: Tensor  # per token: the covering object's x1, y1, x2, y2 in tenths; IGNORE if none
    word_NK: Tensor  # per token: index in WORDS, len(WORDS) = no word


def token_targets(
    drawn: list[si.Drawn],
    size_wh: tuple[int, int],
    grid: int,
    min_cover: float = MIN_COVER,
    min_ink: float = MIN_INK,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per cell of a ``grid × grid`` token layout (row-major): the colour and shape index of the
    object whose box covers most of the cell (at least ``min_cover`` of it), else background,
    and that object's box corners in tenths of the image (``IGNORE`` for background).  A tenth
    is the leading digit of the coordinate the decoder writes, clipped to 0–9.

    Coloured objects are shapes and coloured buttons (a button has no shape or box target).
    The word target of a cell is the text (:class:`~mm15.demo.data.images.Drawn` of kind
    "text") with the largest share of its ink box in the cell, among those with ``min_ink`` or
    more of their ink there or most of it (so every word labels at least one cell), else
    "no word"."""
    return tuple(torch.tensor(t) for t in _cell_targets(drawn, size_wh, grid, min_cover, min_ink))


def _cell_targets(
    drawn: list[si.Drawn], size_wh: tuple[int, int], grid: int, min_cover: float, min_ink: float
) -> tuple[list[int], list[int], list[list[int]], list[int]]:
    """:func:`token_targets` as Python lists (a batch makes its tensors once)."""
    w, h = size_wh
    cw, ch = w / grid, h / grid
    n = grid * grid
    # Python lists, made tensors once per batch: per-cell tensor writes and small tensor ops were
    # a quarter of the warm-up's scene drawing (py-spy; the warm-up draws 64,000 scenes).
    colour, shape = [len(COLOURS)] * n, [len(SHAPES)] * n
    corners, word = [[IGNORE] * 4] * n, [len(WORDS)] * n
    objects = [d for d in drawn if d.colour is not None]
    texts = [d for d in drawn if d.kind == "text"]
    cells = _cells(w, h, grid)
    tenths: dict[int, list[int]] = {}  # per object, in float32 as a tensor would hold it
    for k, cell in enumerate(cells):
        best, cover = None, min_cover * cw * ch
        for d in objects:
            if (area := intersection_area(d.box, cell)) > cover:
                best, cover = d, area
        if best is not None:
            colour[k] = COLOURS.index(best.colour)
        if best is not None and best.kind in SHAPES:
            shape[k] = SHAPES.index(best.kind)
            if id(best) not in tenths:
                b = best.box
                t = np.array([b.x1 / w, b.y1 / h, b.x2 / w, b.y2 / h], dtype=np.float32)
                tenths[id(best)] = np.floor(t * np.float32(10)).clip(0, 9).astype(int).tolist()
            corners[k] = tenths[id(best)]
    if texts:  # float32 shares, as torch would hold them; argmax and max take the first best
        shares = np.array(
            [[intersection_area(d.box, c) / max(d.box.area, 1e-9) for c in cells] for d in texts],
            dtype=np.float32,
        )
        own = shares >= np.float32(min_ink)
        own[np.arange(len(texts)), shares.argmax(1)] = True  # every word labels >= 1 cell
        owned = np.where(own, shares, np.float32(-1.0))
        best_text = owned.argmax(0)
        for k in np.flatnonzero(owned.max(0) >= 0).tolist():
            word[k] = WORDS.index(texts[best_text[k]].text)
    return colour, shape, corners, word


@functools.lru_cache(maxsize=32)
def _cells(w: float, h: float, grid: int) -> tuple[Box, ...]:
    """The ``grid × grid`` cells of a ``w × h`` image, row-major (boxes are immutable)."""
    cw, ch = w / grid, h / grid
    return tuple(
        Box((c % grid) * cw, (c // grid) * ch, (c % grid + 1) * cw, (c // grid + 1) * ch)
        for c in range(grid * grid)
    )


def text_scene(rng: random.Random, size: int = 112) -> tuple[Image.Image, list[si.Drawn]]:
    """A tile of words as the demo's UI and text-rich tasks show them at tile resolution: 1–3
    labelled buttons (white or coloured, :data:`UI_FONT`) or 1–2 white signs with a word
    (:data:`WORD_FONT`), on a muted background.  Buttons give a "button" (its box and fill) and
    a "text" (the label's ink) :class:`~mm15.demo.data.images.Drawn`; signs a "text"."""
    image = Image.new("RGB", (size, size), rng.choice(si.MUTED))
    drawn: list[si.Drawn] = []
    if rng.random() < 0.5:
        for band in sorted(rng.sample(range(3), rng.randint(1, 3))):
            label, fill = rng.choice(UI_LABELS), rng.choice([None, *COLOURS])
            bw, bh = int(0.75 * size) + rng.randint(-8, 8), 24
            x0, y0 = (size - bw) // 2 + rng.randint(-3, 3), 4 + band * 37 + rng.randint(0, 6)
            rgb = si.COLOURS[fill] if fill else si.WHITE
            ImageDraw.Draw(image).rectangle((x0, y0, x0 + bw - 1, y0 + bh - 1), fill=rgb)
            tw, th = si.text_wh(label, UI_FONT)
            ink = si.paint_text(
                image,
                (x0 + (bw - tw) // 2, y0 + (bh - th) // 2),
                label,
                UI_FONT,
                fill=si.ink_for(rgb),
            )
            drawn += [
                si.Drawn("button", Box(x0, y0, x0 + bw, y0 + bh), colour=fill),
                si.Drawn("text", ink, text=label),
            ]
    else:
        half = size // 2
        for k in range(rng.randint(1, 2)):
            word = rng.choice(SIGN_WORDS)
            tw, th = si.text_wh(word, WORD_FONT)
            bw, bh = tw + 8, th + 8
            x0, y0 = rng.randint(2, size - bw - 2), k * half + rng.randint(2, half - bh - 2)
            ImageDraw.Draw(image).rectangle((x0, y0, x0 + bw - 1, y0 + bh - 1), fill=si.WHITE)
            drawn.append(
                si.Drawn("text", si.paint_text(image, (x0 + 4, y0 + 4), word, WORD_FONT), text=word)
            )
    return image, drawn


def draw_scene(rng: random.Random, text_share: float = 0.0) -> tuple[Image.Image, list[si.Drawn]]:
    """One scene of :func:`draw_batch`: a text tile with probability ``text_share``, else a grid
    scene of 1–6 objects (grids 1–4, as in the demo's tasks)."""
    if text_share > 0 and rng.random() < text_share:  # 0: the grid-only stream
        return text_scene(rng, si.demo_image_config().resolution)
    grid = rng.choice((1, 2, 3, 3, 4))
    k = rng.randint(1, min(grid * grid, 6))
    items = [(rng.choice(SHAPES), rng.choice(COLOURS)) for _ in range(k)]
    return si.grid_scene(rng, items, grid=grid, fill=(0.75, 1.0) if grid == 1 else (0.6, 0.9))


def draw_batch(
    rng: random.Random, n: int, token_grid: int, text_share: float = 0.0
) -> SceneTargets:
    """``n`` scenes (:func:`draw_scene`) with targets, their tiles normalised in one pass."""
    images, targets = [], []
    for _ in range(n):
        image, drawn = draw_scene(rng, text_share)
        images.append(image)
        targets.append(_cell_targets(drawn, image.size, token_grid, MIN_COVER, MIN_INK))
    return SceneTargets(
        normalise_tiles(images, si.demo_image_config()),
        *(torch.tensor(t) for t in zip(*targets, strict=True)),
    )


class ProbeHeads(nn.Module):
    """Linear read-outs of the connector's tokens, one per name in ``heads`` (see
    :class:`EncoderPretrainConfig`)."""

    def __init__(
        self,
        dim: int,
        heads: tuple[str, ...] = ("colour", "shape"),
        n_tokens: int = 16,
        word_weight: float = 1.0,
    ):
        super().__init__()
        self.register_buffer("word_w", torch.tensor([word_weight] * len(WORDS) + [1.0]))
        out = {
            "colour": len(COLOURS) + 1,
            "shape": len(SHAPES) + 1,
            "place": n_tokens,
            "box": 4 * 10,
            "word": len(WORDS) + 1,
        }
        self.heads = nn.ModuleDict({h: nn.Linear(dim, out[h]) for h in heads})

    def _logits_targets(
        self, tokens_NKD: Tensor, t: SceneTargets
    ) -> dict[str, tuple[Tensor, Tensor]]:
        n, k, _ = tokens_NKD.shape
        targets = {
            "colour": t.colour_NK,
            "shape": t.shape_NK,
            "place": torch.arange(k).expand(n, k),
            "box": t.box_NK4,
            "word": t.word_NK,
        }
        out = {}
        for name, head in self.heads.items():
            logits = head(tokens_NKD)
            if name == "box":  # four 10-way classifications per token
                logits = logits.unflatten(-1, (4, 10))
            out[name] = (logits.reshape(-1, logits.shape[-1]), targets[name].reshape(-1))
        return out

    def losses(self, tokens_NKD: Tensor, t: SceneTargets) -> dict[str, Tensor]:
        return {
            name: F.cross_entropy(
                lg, tg, ignore_index=IGNORE, weight=self.word_w if name == "word" else None
            )
            for name, (lg, tg) in self._logits_targets(tokens_NKD, t).items()
        }

    @torch.no_grad()
    def accuracy(self, tokens_NKD: Tensor, t: SceneTargets) -> dict[str, float]:
        """Per head: accuracy on foreground tokens (those covered by an object); "place" on all
        tokens, "box" per corner tenth, "word" on tokens with a word."""
        fg = (t.shape_NK < len(SHAPES)).reshape(-1)
        acc = {}
        for name, (lg, tg) in self._logits_targets(tokens_NKD, t).items():
            hit = lg.argmax(-1) == tg
            if name in ("colour", "shape"):
                hit = hit[fg]
            elif name == "box":
                hit = hit[tg != IGNORE]
            elif name == "word":
                hit = hit[tg < len(WORDS)]
            acc[name] = hit.float().mean().item()
        return acc


def pretrain_encoder(
    model: MM15, cfg: EncoderPretrainConfig, log: Callable[[str], None] = print
) -> dict[str, float]:
    """Train ``model.vision`` and ``model.connector`` on dense scene targets, in place.

    Returns the probe accuracies on a fixed held-out batch (seed stream ``…/encoder-eval``).
    """
    grid = round(model.cfg.connector.num_tokens**0.5)
    if grid * grid != model.cfg.connector.num_tokens:
        raise ValueError(f"connector.num_tokens={model.cfg.connector.num_tokens} is not a square")
    torch.manual_seed(cfg.seed)
    heads = ProbeHeads(model.cfg.lm.dim, cfg.heads, grid * grid, cfg.word_weight)
    text_share = cfg.text_share if "word" in cfg.heads else 0.0
    params = [*model.vision.parameters(), *model.connector.parameters(), *heads.parameters()]
    opt = torch.optim.AdamW(params, lr=cfg.lr, betas=(0.9, 0.95), weight_decay=0.0)
    model.train()
    t0 = time.perf_counter()
    for step in range(1, cfg.steps + 1):
        batch = draw_batch(random.Random(f"{cfg.seed}/encoder/{step}"), cfg.batch, grid, text_share)
        losses = heads.losses(model.encode_tiles(batch.tiles_NCHW), batch)
        loss = sum(losses.values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if step % cfg.log_every == 0 or step == cfg.steps:
            log(
                f"[encoder] step {step}/{cfg.steps} loss {loss.item():.3f} "
                f"({time.perf_counter() - t0:.0f} s)"
            )
    model.eval()
    held_out = draw_batch(
        random.Random(f"{cfg.seed}/encoder-eval"), cfg.eval_scenes, grid, text_share
    )
    with torch.no_grad():
        acc = heads.accuracy(model.encode_tiles(held_out.tiles_NCHW), held_out)
    model.zero_grad(set_to_none=True)
    return acc
