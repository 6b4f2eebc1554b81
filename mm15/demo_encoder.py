"""The demo's stand-in for a pretrained CLIP encoder: dense pre-training on synthetic scenes.

MM1.5 starts from a CLIP ViT pre-trained on billions of image–text pairs; nothing here may
download weights, and a randomly initialised encoder trained only through the decoder learns to
see far too slowly for a 10-minute demo (docs/demo.md measures this).  This stage trains the
encoder and the connector alone, before the paper's stages, on freshly drawn grid scenes with
targets that CLIP's features would give a probe for free:

* per connector token (a cell of the tile), the colour and the shape of the object covering most
  of the cell, or "background" (dense, like a detector's pre-training);
* per connector token, its own place in the tile's token grid, so that every image token keeps
  where it is (what grounding, pointing and motion need);
* per image, from the mean of its tokens, which colours, shapes and colour–shape pairs occur, and
  how many objects there are (global, like CLIP's pooled embedding).

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
from mm15.data.splitting import tile_image
from mm15.model.mm15 import MM15

COLOURS, SHAPES = tuple(si.COLOURS), si.SHAPES
MAX_OBJECTS = 16


@dataclass(kw_only=True)
class EncoderPretrainConfig:
    steps: int = 300
    batch: int = 64  # scenes per step (one tile each)
    lr: float = 3e-3
    seed: int = 0
    log_every: int = 50
    eval_scenes: int = 256  # the held-out batch the returned accuracies are measured on


@dataclass
class SceneTargets:
    tiles_NCHW: Tensor  # normalised tiles, one per scene
    colour_NK: Tensor  # per token: colour index, len(COLOURS) = background
    shape_NK: Tensor  # per token: shape index, len(SHAPES) = background
    present_NP: Tensor  # multi-hot: colours, shapes, colour×shape pairs
    count_N: Tensor  # objects in the scene


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
        best, cover = None, min_cover * cw * ch
        for d in drawn:
            b = d.box
            area = max(0.0, min(b.x2, x0 + cw) - max(b.x1, x0)) * max(
                0.0, min(b.y2, y0 + ch) - max(b.y1, y0)
            )
            if area > cover:
                best, cover = d, area
        if best is not None:
            colour[cell], shape[cell] = COLOURS.index(best.colour), SHAPES.index(best.kind)
    return colour, shape


def presence(drawn: list[si.Drawn]) -> Tensor:
    """Multi-hot over colours, shapes and colour×shape pairs present in the scene."""
    nc, ns = len(COLOURS), len(SHAPES)
    out = torch.zeros(nc + ns + nc * ns)
    for d in drawn:
        c, s = COLOURS.index(d.colour), SHAPES.index(d.kind)
        out[c] = out[nc + s] = out[nc + ns + c * ns + s] = 1.0
    return out


def draw_batch(rng: random.Random, n: int, token_grid: int) -> SceneTargets:
    """``n`` grid scenes of 1–6 objects (grids 1–4, as in the demo's tasks) with targets."""
    cfg = si.demo_image_config()
    tiles, cols, shps, pres, counts = [], [], [], [], []
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
        pres.append(presence(drawn))
        counts.append(len(drawn))
    return SceneTargets(torch.stack(tiles), torch.stack(cols), torch.stack(shps),
                        torch.stack(pres), torch.tensor(counts))  # fmt: skip


class ProbeHeads(nn.Module):
    """Linear read-outs of the connector's tokens (dense) and of their mean (global)."""

    def __init__(self, dim: int, num_tokens: int):
        super().__init__()
        nc, ns = len(COLOURS), len(SHAPES)
        self.colour = nn.Linear(dim, nc + 1)
        self.shape = nn.Linear(dim, ns + 1)
        self.present = nn.Linear(dim, nc + ns + nc * ns)
        self.count = nn.Linear(dim, MAX_OBJECTS + 1)
        self.where = nn.Linear(dim, num_tokens)

    def losses(self, tokens_NKD: Tensor, t: SceneTargets) -> dict[str, Tensor]:
        pooled = tokens_NKD.mean(1)
        n, k, _ = tokens_NKD.shape
        return {
            "where": F.cross_entropy(
                self.where(tokens_NKD).flatten(0, 1), torch.arange(k).repeat(n)
            ),
            "colour": F.cross_entropy(self.colour(tokens_NKD).flatten(0, 1), t.colour_NK.flatten()),
            "shape": F.cross_entropy(self.shape(tokens_NKD).flatten(0, 1), t.shape_NK.flatten()),
            "present": F.binary_cross_entropy_with_logits(self.present(pooled), t.present_NP),
            "count": F.cross_entropy(self.count(pooled), t.count_N),
        }

    @torch.no_grad()
    def accuracy(self, tokens_NKD: Tensor, t: SceneTargets) -> dict[str, float]:
        """Foreground-token colour/shape, object-count and token-place accuracy."""
        fg = t.shape_NK < len(SHAPES)
        col = (self.colour(tokens_NKD).argmax(-1) == t.colour_NK)[fg].float().mean()
        shp = (self.shape(tokens_NKD).argmax(-1) == t.shape_NK)[fg].float().mean()
        cnt = (self.count(tokens_NKD.mean(1)).argmax(-1) == t.count_N).float().mean()
        k = tokens_NKD.shape[1]
        where = (self.where(tokens_NKD).argmax(-1) == torch.arange(k)).float().mean()
        return {
            "colour": col.item(),
            "shape": shp.item(),
            "count": cnt.item(),
            "where": where.item(),
        }


def pretrain_encoder(model: MM15, cfg: EncoderPretrainConfig,
                     log: Callable[[str], None] = print) -> dict[str, float]:  # fmt: skip
    """Train ``model.vision`` and ``model.connector`` on dense scene targets, in place.

    Returns the probe accuracies on a fixed held-out batch (seed stream ``…/encoder-eval``).
    """
    grid = round(model.cfg.connector.num_tokens**0.5)
    if grid * grid != model.cfg.connector.num_tokens:
        raise ValueError(f"connector.num_tokens={model.cfg.connector.num_tokens} is not a square")
    torch.manual_seed(cfg.seed)
    heads = ProbeHeads(model.cfg.lm.dim, grid * grid)
    params = [*model.vision.parameters(), *model.connector.parameters(), *heads.parameters()]
    opt = torch.optim.AdamW(params, lr=cfg.lr, betas=(0.9, 0.95), weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 20) * max(0.05, 1 - s / max(cfg.steps, 1))
    )
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
        sched.step()
        if step % cfg.log_every == 0 or step == cfg.steps:
            log(f"[encoder] step {step}/{cfg.steps} loss {loss.item():.3f} "
                f"({time.perf_counter() - t0:.0f} s)")  # fmt: skip
    model.eval()
    held_out = draw_batch(random.Random(f"{cfg.seed}/encoder-eval"), cfg.eval_scenes, grid)
    with torch.no_grad():
        acc = heads.accuracy(model.encode_tiles(held_out.tiles_NCHW), held_out)
    model.zero_grad(set_to_none=True)
    return acc
