"""Does the model still use the image after each demo stage?  (docs/demo-log.md)

Trains the demo's stages[:k] from scratch (same seed, so prefixes are identical) and measures
teacher-forced accuracy on the colour and shape words of 60 fresh single-object captions
("A red circle."): the image use that alignment builds.  Needs a finished demo directory for
its corpus and tokenizer:

    python dev/demo_stage_probe.py out/demo 1 2 3               # after align, +pretrain, +cpt
    python dev/demo_stage_probe.py out/demo 3 align.steps=200   # DemoConfig overrides: key=value
"""

import random
import shutil
import sys
from pathlib import Path

import torch

from mm15.data.pipeline import format_sample
from mm15.data.sample_images import materialize_pixels
from mm15.demo.config import DemoConfig
from mm15.demo.data import images as si
from mm15.demo.data import tasks as syn
from mm15.demo.data.corpus import CorpusIndex
from mm15.demo.recipe import demo_train_config
from mm15.overrides import apply_overrides
from mm15.services.checkpoint import load_checkpoint
from mm15.train.loop import train

torch.set_num_threads(2)
d = Path(sys.argv[1])
out = d / "stage_probe"
corpus = CorpusIndex.read(d / "corpus")
words = set(si.COLOURS) | set(si.SHAPES)


def probe(model, tok, n=60):
    hits = tot = 0
    for i in range(n):
        draft = syn._object_caption(random.Random(f"probe/{i}"))
        s = syn._assemble(syn.TASKS["caption/object"], draft, "train", i)
        ex = format_sample(s, tokenizer=tok, model_cfg=model.cfg)
        px = materialize_pixels(ex, model.cfg)
        with torch.no_grad():
            lg = model(torch.tensor([ex.input_ids]), pixels_NCHW=px).logits[0]
        for t in range(1, len(ex.input_ids)):
            lab = ex.labels[t]
            if lab == -100 or tok.decode([lab]).strip() not in words:
                continue
            tot += 1
            hits += int(lg[t - 1].argmax()) == lab
    return hits / max(tot, 1)


overrides = [a for a in sys.argv[2:] if "=" in a]  # dotted paths, as `mm15 demo --set`
for k in [int(a) for a in sys.argv[2:] if "=" not in a]:
    cfg = apply_overrides(DemoConfig(), overrides)
    tc = demo_train_config(cfg, corpus, d / "tokenizer", out / f"run{k}", 1600)
    tc.stages = tc.stages[:k]
    shutil.rmtree(out / f"run{k}", ignore_errors=True)
    res = train(tc)
    model, tok = load_checkpoint(res.final_model)
    model.eval()
    print(
        f"after stages {[s.name for s in tc.stages]}: colour/shape word accuracy {probe(model, tok):.2f}",
        flush=True,
    )
