"""Why the demo's decoder does not learn "Where is the <colour> <shape>?"  (docs/demo.md)

A toy of the grounding lookup on the demo's own pieces: the pre-trained encoder of a demo run
(ViT frozen, as in SFT), the demo tokenizer and chat words, grid scenes of 2-4 objects with
distinct colours and shapes, 32 fresh scenes a step, AdamW at 1e-3.  It prints, every 50 steps,
the loss and the accuracy of the answer's first decision over those 50 steps:

    python dev/demo_gather.py ENCODER_DIR STEPS VARIANT
    # ENCODER_DIR: OUT/encoder of `mm15 demo --out OUT` (or dev/demo_exp.py's encoder-* dir)

VARIANT joins flags with "_":

* the answer: ``cell`` (the object's cell 0-8, one token), ``box`` (its box in the coordinate
  language, scored on the first digit after "<"), ``pos`` ("top left " then the box, scored on
  the first word);
* the layout: ``at`` puts the cell right after the colour word ("... Where is the yellow" →
  "3"; no shape, no chat words), ``sep`` adds "?" between them; otherwise "User: <image> Where
  is the yellow star?\\nAssistant: " + answer, and ``qfirst`` puts the question before the image;
* ``first``: loss on the answer's first token only;
* ``L<n>``: a fresh decoder of n blocks (the encoder and connector kept); ``seed<n>``: its init
  seed (default 0; without ``L<n>`` the checkpoint's own decoder init is used).
"""

from __future__ import annotations

import dataclasses
import random
import sys
import time

import torch

from mm15.checkpoint import load_checkpoint
from mm15.data import synthetic_images as si
from mm15.data.coords import format_box
from mm15.data.splitting import tile_image
from mm15.model.mm15 import MM15, next_token_loss_sum

torch.set_num_threads(1)
enc, steps, flags = sys.argv[1], int(sys.argv[2]), set(sys.argv[3].split("_"))
value = {k: f.removeprefix(k) for f in flags for k in ("L", "seed")
         if f.startswith(k) and f.removeprefix(k).isdigit()}  # fmt: skip
model, tok = load_checkpoint(enc)
cfg = model.cfg
torch.manual_seed(int(value.get("seed", 0)))
if "L" in value:
    fresh = MM15(dataclasses.replace(cfg, lm=dataclasses.replace(cfg.lm, n_layers=int(value["L"]))))
    fresh.init_weights()
    fresh.vision.load_state_dict(model.vision.state_dict())
    fresh.connector.load_state_dict(model.connector.state_dict())
    model, cfg = fresh, fresh.cfg
C, S = list(si.COLOURS), list(si.SHAPES)
IMG, K = tok.image_token_id, cfg.connector.num_tokens
rng = random.Random(0)


def sample() -> tuple:
    """(image, token ids, answer start, position whose next token is scored)."""
    n = rng.randint(2, 4)
    shapes, colours = rng.sample(range(4), n), rng.sample(range(6), n)
    image, drawn = si.grid_scene(rng, [(S[s], C[c]) for s, c in zip(shapes, colours, strict=True)])
    c, s, target = C[colours[0]], S[shapes[0]], drawn[0]
    image_ids = [IMG] * K
    if "at" in flags or "sep" in flags:
        pre = (
            image_ids
            + tok.encode(f" Where is the {c}")
            + (tok.encode("?") if "sep" in flags else [])
        )
    elif "qfirst" in flags:
        pre = tok.encode(f"User: Where is the {c} {s}?") + image_ids + tok.encode("\nAssistant: ")
    else:
        pre = tok.encode("User: ") + image_ids + tok.encode(f" Where is the {c} {s}?\nAssistant: ")
    box = tok.encode(format_box(target.box, image.size))
    if "cell" in flags or "at" in flags or "sep" in flags:
        ans, scored = tok.encode(str(target.cell)), len(pre) - 1
    elif "pos" in flags:
        row = ("top", "middle", "bottom")[target.cell // 3]
        ans, scored = (
            tok.encode(f"{row} {('left', 'centre', 'right')[target.cell % 3]} ") + box,
            len(pre) - 1,
        )
    else:  # box: the first digit, predicted at "<"
        ans, scored = box, len(pre)
    return image, pre + ans, len(pre), scored


for p in model.vision.parameters():
    p.requires_grad_(False)
opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3,
                        betas=(0.9, 0.95), weight_decay=0.0)  # fmt: skip
B, hits, t0 = 32, [], time.time()
for step in range(1, steps + 1):
    items = [sample() for _ in range(B)]
    tiles = torch.cat([tile_image(im, cfg.image, allow_split=False).tiles[:1] for im, *_ in items])
    width = max(len(seq) for _, seq, _, _ in items)
    ids = torch.zeros((B, width), dtype=torch.long)
    labels = torch.full((B, width), -100)
    for i, (_, seq, a0, _) in enumerate(items):
        ids[i, : len(seq)] = torch.tensor(seq)
        labels[i, a0 : a0 + 1 if "first" in flags else len(seq)] = ids[
            i, a0 : a0 + 1 if "first" in flags else len(seq)
        ]
    out = model(ids, pixels_NCHW=tiles)
    total, n = next_token_loss_sum(out.logits, labels)
    opt.zero_grad()
    (total / n).backward()
    opt.step()
    pred = out.logits.argmax(-1)
    hits.append(sum(int(pred[i, j] == ids[i, j + 1]) for i, (*_, j) in enumerate(items)) / B)
    if step % 50 == 0:
        print(f"{sys.argv[3]} step {step} loss {(total / n).item():.3f} "
              f"acc {sum(hits[-50:]) / 50:.2f} ({time.time() - t0:.0f} s)", flush=True)  # fmt: skip
