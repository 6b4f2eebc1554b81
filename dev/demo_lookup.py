"""Which question-conditioned lookups can the tiny preset learn, and how fast?  (docs/demo-log.md)

Toy vocabulary, 16 image tokens + one question token + the answer, 32 scenes a step, AdamW:

    python dev/demo_lookup.py shapecol 400 lr1      # colour of the <shape>, 2 objects (chance 1/6)
    python dev/demo_lookup.py colpos 300 base       # quadrant of the <colour> object (chance 1/4)
    python dev/demo_lookup.py poscol 300 base       # colour of the object in quadrant q (1/6)
    python dev/demo_lookup.py count 300 base        # how many objects, 1-4 (1/4)

Variant flags (joined by "_"): lr1 (lr 1e-3 instead of 3e-3), lm128 (decoder width 128),
l2 (2 decoder layers), t4 (4 tokens per tile).  Prints the accuracy over the last 50 steps.
"""

import random
import sys
import time

import torch

from mm15.data.splitting import tile_image
from mm15.demo.data import images as si
from mm15.model.mm15 import MM15, next_token_loss_sum
from mm15.presets import tiny

torch.set_num_threads(2)
task, steps, variant = sys.argv[1], int(sys.argv[2]), sys.argv[3]
IMAGE, SHAPE0, COLOUR0, POS0, Q = 63, 20, 10, 30, 41
C, S = list(si.COLOURS), list(si.SHAPES)


def scene(rng):
    if task == "shapecol":  # colour of the <shape>, 2 objects in 3x3
        ss, cs = rng.sample(range(4), 2), rng.sample(range(6), 2)
        im, _ = si.grid_scene(rng, [(S[s], C[c]) for s, c in zip(ss, cs, strict=True)])
        return im, [SHAPE0 + ss[0]], COLOUR0 + cs[0]
    if task == "poscol":  # colour of the object in quadrant q, 2 objects in 2x2
        ss, cs = [rng.randrange(4) for _ in range(2)], rng.sample(range(6), 2)
        im, d = si.grid_scene(
            rng, [(S[s], C[c]) for s, c in zip(ss, cs, strict=True)], grid=2, fill=(0.6, 0.9)
        )
        return im, [POS0 + d[0].cell], COLOUR0 + cs[0]
    if task == "colpos":  # where (quadrant) is the <colour> object, 2 objects in 2x2
        ss, cs = [rng.randrange(4) for _ in range(2)], rng.sample(range(6), 2)
        im, d = si.grid_scene(
            rng, [(S[s], C[c]) for s, c in zip(ss, cs, strict=True)], grid=2, fill=(0.6, 0.9)
        )
        return im, [COLOUR0 + cs[0]], POS0 + d[0].cell
    if task == "colpos3":  # where (cell of 3x3) is the <colour> object, 3 objects
        ss, cs = [rng.randrange(4) for _ in range(3)], rng.sample(range(6), 3)
        im, d = si.grid_scene(
            rng, [(S[s], C[c]) for s, c in zip(ss, cs, strict=True)], grid=3, fill=(0.7, 0.95)
        )
        return im, [COLOUR0 + cs[0]], POS0 + d[0].cell
    if task == "count":  # how many objects (1-4), 3x3
        n = rng.randint(1, 4)
        im, d = si.grid_scene(rng, [(S[rng.randrange(4)], C[rng.randrange(6)]) for _ in range(n)])
        return im, [Q], POS0 + n
    raise SystemExit(task)


torch.manual_seed(0)
rng = random.Random(0)
cfg = tiny(vocab_size=64)
cfg.image_token_id = IMAGE
if "lm128" in variant:
    cfg.lm.dim, cfg.lm.ffn_hidden = 128, 256
if "l2" in variant:
    cfg.lm.n_layers = 2
if "t4" in variant:
    cfg.connector.num_tokens = 4
k = cfg.connector.num_tokens
model = MM15(cfg)
model.init_weights()
lr = 1e-3 if "lr1" in variant else 3e-3
opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95))
t0 = time.time()
hits = []
for step in range(steps):
    items = [scene(rng) for _ in range(32)]
    tiles = torch.cat([tile_image(im, cfg.image).tiles for im, _, _ in items])
    q = torch.tensor([s for _, s, _ in items])
    a = torch.tensor([c for _, _, c in items])
    ids = torch.cat([torch.full((32, k), IMAGE), q, a[:, None]], 1)
    labels = ids.clone()
    labels[:, : ids.shape[1] - 1] = -100
    out = model(ids, pixels_NCHW=tiles)
    total, n = next_token_loss_sum(out.logits, labels)
    opt.zero_grad()
    (total / n).backward()
    opt.step()
    hits.append((out.logits[:, -2].argmax(-1) == a).float().mean().item())
    if step % 50 == 49:
        print(
            task,
            variant,
            step + 1,
            round((total / n).item(), 3),
            "acc(last50)",
            round(sum(hits[-50:]) / 50, 2),
            flush=True,
        )
print(task, variant, "s", round(time.time() - t0, 1))
