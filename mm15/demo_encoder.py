"""The demo's stand-in for a pretrained CLIP encoder: dense pre-training on synthetic scenes.

MM1.5 starts from a CLIP ViT pre-trained on billions of image–text pairs; nothing here may
download weights, and a randomly initialised encoder trained only through the decoder learns to
see far too slowly for a 10-minute demo (docs/demo.md measures this).  This stage trains the
encoder and the connector alone, before the paper's stages, on freshly drawn grid scenes with
targets that CLIP's features would give a probe for free: per connector token (a cell of the
tile), the colour and the shape of the object covering most of the cell, or "background" (dense,
like a detector's pre-training).  Pooled targets (which colours/shapes occur, the object count)
and each token's place in the grid were tried as extra heads and made the later SFT learn
less (docs/demo.md), so they are not used.

Linear heads read the targets and are discarded afterwards; the decoder is not touched.  The
stage is deterministic for a seed (scenes come from ``random.Random(f"{seed}/encoder/{step}")``).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from mm15.data import synthetic_images as si
from mm15.data.coords import Box, intersection_area
from mm15.data.splitting import tile_image
from mm15.model.mm15 import MM15

COLOURS, SHAPES = tuple(si.COLOURS), si.SHAPES


@dataclass(kw_only=True)
class EncoderPretrainConfig:
    steps: int = 300
    batch: int = 64  # scenes per step (one tile each)
    lr: float = 3e-3  # constant: a decaying schedule measured worse for the SFT that follows
    seed: int = 0
    log_every: int = 50
    eval_scenes: int = 256  # the held-out batch the returned accuracies are measured on


@dataclass
class SceneTargets:
    tiles_NCHW: Tensor  # normalised tiles, one per scene
    colour_NK: Tensor  # per token: colour index, len(COLOURS) = background
    shape_NK: Tensor  # per token: shape index, len(SHAPES) = background


def token_targets(drawn: list[si.Drawn], size_wh: tuple[int, int], grid: int,
                  min_cover: float = 0.15) -> tuple[Tensor, Tensor]:  # fmt: skip
    """Per cell of a ``grid × grid`` token layout (row-major): the colour and shape index of the
    object whose box covers most of the cell (at least ``min_cover`` of it), else background."""
    w, h = size_wh
    cw, ch = w / grid, h / grid
    colour = torch.full((grid * grid,), len(COLOURS))
    shape = torch.full((grid * grid,), len(SHAPES))
    for cell in range(grid * grid):
        x0, y0 = (cell % grid) * cw, (cell // grid) * ch
        box = Box(x0, y0, x0 + cw, y0 + ch)
        best, cover = None, min_cover * cw * ch
        for d in drawn:
            if (area := intersection_area(d.box, box)) > cover:
                best, cover = d, area
        if best is not None:
            colour[cell], shape[cell] = COLOURS.index(best.colour), SHAPES.index(best.kind)
    return colour, shape


def draw_batch(rng: random.Random, n: int, token_grid: int) -> SceneTargets:
    """``n`` grid scenes of 1–6 objects (grids 1–4, as in the demo's tasks) with targets."""
    cfg = si.demo_image_config()
    tiles, cols, shps = [], [], []
    for _ in range(n):
        grid = rng.choice((1, 2, 3, 3, 4))
        k = rng.randint(1, min(grid * grid, 6))
        items = [(rng.choice(SHAPES), rng.choice(COLOURS)) for _ in range(k)]
        image, drawn = si.grid_scene(
            rng, items, grid=grid, fill=(0.75, 1.0) if grid == 1 else (0.6, 0.9)
        )
        tiles.append(tile_image(image, cfg, allow_split=False).tiles[0])
        c, s = token_targets(drawn, image.size, token_grid)
        cols.append(c)
        shps.append(s)
    return SceneTargets(torch.stack(tiles), torch.stack(cols), torch.stack(shps))


class ProbeHeads(nn.Module):
    """Linear read-outs of the connector's tokens: colour and shape per token."""

    def __init__(self, dim: int):
        super().__init__()
        self.colour = nn.Linear(dim, len(COLOURS) + 1)
        self.shape = nn.Linear(dim, len(SHAPES) + 1)

    def losses(self, tokens_NKD: Tensor, t: SceneTargets) -> dict[str, Tensor]:
        return {
            "colour": F.cross_entropy(self.colour(tokens_NKD).flatten(0, 1), t.colour_NK.flatten()),
            "shape": F.cross_entropy(self.shape(tokens_NKD).flatten(0, 1), t.shape_NK.flatten()),
        }

    @torch.no_grad()
    def accuracy(self, tokens_NKD: Tensor, t: SceneTargets) -> dict[str, float]:
        """Colour and shape accuracy on foreground tokens (those covered by an object)."""
        fg = t.shape_NK < len(SHAPES)
        col = (self.colour(tokens_NKD).argmax(-1) == t.colour_NK)[fg].float().mean()
        shp = (self.shape(tokens_NKD).argmax(-1) == t.shape_NK)[fg].float().mean()
        return {"colour": col.item(), "shape": shp.item()}


def pretrain_encoder(model: MM15, cfg: EncoderPretrainConfig,
                     log: Callable[[str], None] = print) -> dict[str, float]:  # fmt: skip
    """Train ``model.vision`` and ``model.connector`` on dense scene targets, in place.

    Returns the probe accuracies on a fixed held-out batch (seed stream ``…/encoder-eval``).
    """
    grid = round(model.cfg.connector.num_tokens**0.5)
    if grid * grid != model.cfg.connector.num_tokens:
        raise ValueError(f"connector.num_tokens={model.cfg.connector.num_tokens} is not a square")
    torch.manual_seed(cfg.seed)
    heads = ProbeHeads(model.cfg.lm.dim)
    params = [*model.vision.parameters(), *model.connector.parameters(), *heads.parameters()]
    opt = torch.optim.AdamW(params, lr=cfg.lr, betas=(0.9, 0.95), weight_decay=0.0)
    model.train()
    t0 = time.perf_counter()
    for step in range(1, cfg.steps + 1):
        batch = draw_batch(random.Random(f"{cfg.seed}/encoder/{step}"), cfg.batch, grid)
        losses = heads.losses(model.encode_tiles(batch.tiles_NCHW), batch)
        loss = sum(losses.values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if step % cfg.log_every == 0 or step == cfg.steps:
            log(f"[encoder] step {step}/{cfg.steps} loss {loss.item():.3f} "
                f"({time.perf_counter() - t0:.0f} s)")  # fmt: skip
    model.eval()
    held_out = draw_batch(random.Random(f"{cfg.seed}/encoder-eval"), cfg.eval_scenes, grid)
    with torch.no_grad():
        acc = heads.accuracy(model.encode_tiles(held_out.tiles_NCHW), held_out)
    model.zero_grad(set_to_none=True)
    return acc
