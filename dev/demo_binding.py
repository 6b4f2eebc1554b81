"""Can the tiny preset learn question-conditioned binding?  (docs/demo-log.md, "Open problem")

"What colour is the <shape>?" over scenes of N objects with distinct shapes and colours, after a
50-step solid-colour warm-up that opens the image pathway.  Prints loss and accuracy every 50
steps (32 images a step):

    python dev/demo_binding.py 2 400          # 2 objects, 400 steps
    python dev/demo_binding.py 2 450 shapes   # + steps 50-150 name the shape of one large object
"""

from __future__ import annotations

import random
import sys
import time

import torch
from PIL import Image

from mm15.data.splitting import tile_image
from mm15.demo.data import images as si
from mm15.model.mm15 import MM15, next_token_loss_sum
from mm15.presets import tiny

IMAGE, SHAPE0, COLOUR0, WHAT_SHAPE = 63, 20, 10, 41  # token ids of the toy vocabulary


def scene(
    rng: random.Random, step: int, n_objects: int, shapes_warmup: bool
) -> tuple[Image.Image, int, int]:
    """(image, question token, answer token): a solid tile during warm-up, then (optionally) a
    large single object whose shape is asked, then a scene of ``n_objects``."""
    colours, shapes = list(si.COLOURS), list(si.SHAPES)
    if step < 50:
        c = rng.randrange(len(colours))
        return Image.new("RGB", (112, 112), si.COLOURS[colours[c]]), SHAPE0, COLOUR0 + c
    if shapes_warmup and step < 150:
        s, c = rng.randrange(len(shapes)), rng.randrange(len(colours))
        image, _ = si.grid_scene(rng, [(shapes[s], colours[c])], grid=1, fill=(0.7, 1.0))
        return image, WHAT_SHAPE, SHAPE0 + s
    ss = rng.sample(range(len(shapes)), n_objects)
    cs = rng.sample(range(len(colours)), n_objects)
    image, _ = si.grid_scene(rng, [(shapes[s], colours[c]) for s, c in zip(ss, cs, strict=True)])
    return image, SHAPE0 + ss[0], COLOUR0 + cs[0]


def main(n_objects: int, steps: int, shapes_warmup: bool = False, batch: int = 32) -> None:
    torch.manual_seed(0)
    rng = random.Random(0)
    cfg = tiny(vocab_size=64)
    cfg.image_token_id = IMAGE
    k = cfg.connector.num_tokens
    model = MM15(cfg)
    model.init_weights()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, betas=(0.9, 0.95))
    t0 = time.time()
    for step in range(steps):
        items = [scene(rng, step, n_objects, shapes_warmup) for _ in range(batch)]
        tiles = torch.cat([tile_image(im, cfg.image).tiles for im, _, _ in items])
        q = torch.tensor([s for _, s, _ in items])
        a = torch.tensor([c for _, _, c in items])
        ids = torch.cat([torch.full((batch, k), IMAGE), q[:, None], a[:, None]], 1)
        labels = ids.clone()
        labels[:, : k + 1] = -100
        out = model(ids, pixels_NCHW=tiles)
        total, n = next_token_loss_sum(out.logits, labels)
        opt.zero_grad()
        (total / n).backward()
        opt.step()
        if step % 50 == 49:
            acc = (out.logits[:, k].argmax(-1) == a).float().mean().item()
            print(
                f"step {step + 1:4d} loss {(total / n).item():.3f} accuracy {acc:.2f}", flush=True
            )
    print(f"{time.time() - t0:.1f} s")


if __name__ == "__main__":
    main(
        int(sys.argv[1]) if len(sys.argv) > 1 else 2, int(sys.argv[2]) if len(sys.argv) > 2 else 400
    )
