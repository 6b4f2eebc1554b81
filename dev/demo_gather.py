"""Why the demo's decoder does not learn "Where is the <colour> <shape>?"  (docs/demo-log.md)

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
* ``say``: the answer names the object before the cell or box ("the yellow star <...>", the
  paper's grounded-answer form), scored on the first decision after the name; ``say`` box
  variants (``say``, ``say_pos``) end with the Acc@IoU≥0.5 of 100 greedy answers on fresh scenes;
* ``first``: loss on the answer's first token only;
* ``recall<n>``: n steps of text-only associative recall first ("User: red star 4, blue
  circle 7. Where is the blue circle?\\nAssistant: 7"), the lookup a pre-trained LLM brings;
* ``mix``: half of every batch is ``say_cell`` (the lookup trained alongside VARIANT);
* ``warm<n>``: n steps of ``say_cell`` first (the lookup alone, learnt cleanly), then VARIANT;
* ``L<n>``: a fresh decoder of n blocks (the encoder and connector kept); ``seed<n>``: its init
  seed (default 0; without ``L<n>`` the checkpoint's own decoder init is used).
"""

from __future__ import annotations

import dataclasses
import random
import sys
import time

import torch

from mm15.data.coords import format_box
from mm15.data.splitting import tile_image
from mm15.demo.data import images as si
from mm15.eval.metrics import box_iou50, first_region
from mm15.model.mm15 import MM15, next_token_loss_sum
from mm15.services.checkpoint import load_checkpoint

torch.set_num_threads(1)
enc, steps, flags = sys.argv[1], int(sys.argv[2]), set(sys.argv[3].split("_"))
value = {
    k: f.removeprefix(k)
    for f in flags
    for k in ("L", "seed", "recall", "warm")
    if f.startswith(k) and f.removeprefix(k).isdigit()
}
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


def sample(flags: set[str] = flags) -> tuple:
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
    if "say" in flags:  # the answer names the object first, as in "the flour <112,26,316,239>"
        said = tok.encode(f"the {c} {s} ")
        if "pos" in flags:  # then the cell in words, then the box; scored on the first word
            row, col = ("top", "middle", "bottom")[target.cell // 3], target.cell % 3
            return (
                image,
                pre + said + tok.encode(f"{row} {('left', 'centre', 'right')[col]} ") + box,
                len(pre),
                len(pre) + len(said) - 1,
            )
        body = tok.encode(str(target.cell)) if "cell" in flags else box
        return image, pre + said + body, len(pre), len(pre) + len(said) - ("cell" in flags)
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


def recall_sample() -> tuple:
    """A text-only associative recall: (None, ids, answer start, scored position)."""
    n = rng.randint(2, 4)
    shapes, colours = rng.sample(range(4), n), rng.sample(range(6), n)
    cells = rng.sample(range(9), n)
    facts = ", ".join(f"{C[c]} {S[s]} {k}" for s, c, k in zip(shapes, colours, cells, strict=True))
    q = rng.randrange(n)
    pre = tok.encode(f"User: {facts}. Where is the {C[colours[q]]} {S[shapes[q]]}?\nAssistant: ")
    return None, pre + tok.encode(str(cells[q])), len(pre), len(pre) - 1


def batch_of(items: list[tuple]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(seq) for _, seq, _, _ in items)
    ids = torch.zeros((len(items), width), dtype=torch.long)
    labels = torch.full((len(items), width), -100)
    for i, (_, seq, a0, _) in enumerate(items):
        a1 = a0 + 1 if "first" in flags else len(seq)
        ids[i, : len(seq)] = torch.tensor(seq)
        labels[i, a0:a1] = ids[i, a0:a1]
    return ids, labels


for p in model.vision.parameters():
    p.requires_grad_(False)
opt = torch.optim.AdamW(
    [p for p in model.parameters() if p.requires_grad], lr=1e-3, betas=(0.9, 0.95), weight_decay=0.0
)
B, t0 = 32, time.time()


def run(name: str, steps: int, draw, images: bool) -> None:
    hits = []
    for step in range(1, steps + 1):
        items = [draw() for _ in range(B)]
        tiles = (
            torch.cat([tile_image(im, cfg.image, allow_split=False).tiles[:1] for im, *_ in items])
            if images
            else None
        )
        ids, labels = batch_of(items)
        out = model(ids, pixels_NCHW=tiles)
        total, n = next_token_loss_sum(out.logits, labels)
        opt.zero_grad()
        (total / n).backward()
        opt.step()
        pred = out.logits.argmax(-1)
        hits.append(sum(int(pred[i, j] == ids[i, j + 1]) for i, (*_, j) in enumerate(items)) / B)
        if step % 50 == 0:
            print(
                f"{name} step {step} loss {(total / n).item():.3f} "
                f"acc {sum(hits[-50:]) / 50:.2f} ({time.time() - t0:.0f} s)",
                flush=True,
            )


run("recall", int(value.get("recall", 0)), recall_sample, images=False)
run("warm", int(value.get("warm", 0)), lambda: sample({"say", "cell"}), images=True)
run(
    sys.argv[3],
    steps,
    (lambda: sample({"say", "cell"}) if rng.random() < 0.5 else sample())
    if "mix" in flags
    else sample,
    images=True,
)


@torch.no_grad()
def box_accuracy(n: int = 100) -> float:
    """Acc@IoU≥0.5 of greedy boxes written after the name (``say`` box variants)."""
    hit = 0
    for _ in range(n):
        image, seq, a0, scored = sample()
        target = first_region(tok.decode(seq[a0:]), image.size)  # the reference, as written
        assert box_iou50(tok.decode(seq[a0:]), target, image.size) == 1.0  # the scorer's check
        ids = seq[: scored + 1]
        pixels = tile_image(image, cfg.image, allow_split=False).tiles[:1]
        for _ in range(28):
            nxt = int(model(torch.tensor([ids]), pixels_NCHW=pixels).logits[0, -1].argmax())
            ids.append(nxt)
            if tok.decode([nxt]) == ">":
                break
        hit += box_iou50(tok.decode(ids[a0:]), target, image.size)
    return hit / n


if "say" in flags and "cell" not in flags:
    print(f"{sys.argv[3]} box Acc@0.5 {box_accuracy():.2f}", flush=True)
