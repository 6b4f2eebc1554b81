"""How fast does the tiny encoder + connector alone learn a scene property?  (docs/demo-log.md)

Mean-pooled image tokens → a linear head, trained directly (no decoder), 32 images a step:

    python dev/demo_encoder_probe.py base 150 shape     # shape of one large object (chance 1/4)
    python dev/demo_encoder_probe.py base 150 colour    # its colour (1/6)
    python dev/demo_encoder_probe.py base 150 small     # shape of one small object in a 3x3 grid

Variant flags: w128 (encoder width 128), img112 (positions learnt at 112 px), kaiming (PyTorch's
default init for the connector instead of Honeybee's N(0, 0.02)); 4th argument: the LR.
"""

import random
import sys
import time

import torch
from torch import nn

from mm15.data.splitting import tile_image
from mm15.demo.data import images as si
from mm15.model.mm15 import MM15
from mm15.presets import tiny

torch.set_num_threads(2)
variant = sys.argv[1]
steps = int(sys.argv[2])
task = sys.argv[3] if len(sys.argv) > 3 else "shape"
torch.manual_seed(0)
rng = random.Random(0)
cfg = tiny(vocab_size=64)
cfg.image_token_id = 63
if "w128" in variant:
    cfg.vision.width = 128
    cfg.vision.mlp_dim = 256
if "img112" in variant:
    cfg.vision.image_size = 112
if "p8" in variant:
    cfg.vision.patch_size = 8
    cfg.vision.image_size = 56
m = MM15(cfg)
m.init_weights()
if "kaiming" in variant:
    for mod in m.connector.modules():
        if isinstance(mod, (nn.Conv2d, nn.Linear)):
            mod.reset_parameters()
head = nn.Linear(64, 4 if task == "shape" else 6)
params = list(m.vision.parameters()) + list(m.connector.parameters()) + list(head.parameters())
opt = torch.optim.AdamW(
    params, lr=float(sys.argv[4]) if len(sys.argv) > 4 else 3e-3, betas=(0.9, 0.95)
)


def item():
    s, c = rng.randrange(4), rng.randrange(6)
    if task in ("shape", "colour"):
        im, _ = si.grid_scene(rng, [(si.SHAPES[s], list(si.COLOURS)[c])], grid=1, fill=(0.7, 1.0))
    else:  # small object in 3x3 grid
        im, _ = si.grid_scene(rng, [(si.SHAPES[s], list(si.COLOURS)[c])])
    return im, (s if task in ("shape", "small") else c)


t0 = time.time()
for step in range(steps):
    items = [item() for _ in range(32)]
    tiles = torch.cat([tile_image(im, cfg.image).tiles for im, _ in items])
    y = torch.tensor([a for _, a in items])
    tok = m.encode_tiles(tiles)  # N,K,D
    logits = head(tok.mean(1))
    loss = nn.functional.cross_entropy(logits, y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    if step % 25 == 24:
        print(
            variant,
            task,
            step + 1,
            round(loss.item(), 3),
            (logits.argmax(-1) == y).float().mean().item(),
            flush=True,
        )
print("s", round(time.time() - t0, 1))
