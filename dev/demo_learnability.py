"""How fast does the tiny preset learn a visual attribute?  (docs/demo-log.md, "Open problem")

Trains the `tiny` MM15 directly (no data pipeline) on one question per image and prints the
answer accuracy every 25 steps.  Two image kinds:

    python dev/demo_learnability.py solid    # whole tile one colour: learnt in ~25 steps
    python dev/demo_learnability.py object   # one small shape on grey (the demo's scenes)
    python dev/demo_learnability.py curriculum 201   # 50 solid steps, then small shapes

Extra arguments override the model config, e.g. `connector.num_tokens=64 vision.width=128`.
"""

from __future__ import annotations

import random
import sys
import time

import torch

from mm15.data.splitting import tile_image
from mm15.demo.data import images as si
from mm15.model.mm15 import MM15, next_token_loss_sum
from mm15.presets import tiny


def main(kind: str, overrides: list[str], steps: int = 101, batch: int = 32) -> None:
    torch.manual_seed(0)
    rng = random.Random(0)
    cfg = tiny(vocab_size=64)
    cfg.image_token_id = 63
    for kv in overrides:
        path, value = kv.split("=")
        obj = cfg
        *parents, leaf = path.split(".")
        for p in parents:
            obj = getattr(obj, p)
        setattr(obj, leaf, type(getattr(obj, leaf))(value))
    k = cfg.connector.num_tokens
    model = MM15(cfg)
    model.init_weights()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, betas=(0.9, 0.95))
    colours = list(si.COLOURS)
    t0 = time.time()
    for step in range(steps):
        tiles, answers = [], []
        for _ in range(batch):
            c = rng.randrange(len(colours))
            if kind == "solid" or (kind == "curriculum" and step < 50):
                from PIL import Image

                image = Image.new("RGB", (112, 112), si.COLOURS[colours[c]])
            else:
                image, _ = si.grid_scene(rng, [(rng.choice(si.SHAPES), colours[c])])
            tiles.append(tile_image(image, cfg.image).tiles)
            answers.append(c)
        a = torch.tensor(answers)
        ids = torch.cat(
            [torch.full((batch, k), 63), torch.full((batch, 1), 5), (10 + a)[:, None]], 1
        )
        labels = ids.clone()
        labels[:, : k + 1] = -100
        out = model(ids, pixels_NCHW=torch.cat(tiles))
        total, n = next_token_loss_sum(out.logits, labels)
        opt.zero_grad()
        (total / n).backward()
        opt.step()
        if step % 25 == 0:
            acc = (out.logits[:, k].argmax(-1) == 10 + a).float().mean().item()
            print(f"step {step:4d} loss {(total / n).item():.3f} accuracy {acc:.2f}", flush=True)
    print(f"{time.time() - t0:.1f} s")


if __name__ == "__main__":
    args = sys.argv[2:]
    steps = int(args.pop(0)) if args and args[0].isdigit() else 101
    main(sys.argv[1] if len(sys.argv) > 1 else "object", args, steps=steps)
