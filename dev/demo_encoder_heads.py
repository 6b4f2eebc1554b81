"""The demo's encoder stage alone, with chosen heads: held-out probe accuracies (docs/demo-log.md).

    python dev/demo_encoder_heads.py [steps=1000] [heads=colour,shape,place,word] [lr=6e-3]
        [text_share=0.5] [threads=1]

Trains a fresh ``tiny`` model's encoder and connector with :func:`mm15.demo.encoder.pretrain_encoder`
(seed 0) and prints the accuracies on the held-out scenes and the time taken.
"""

import sys
import time

import torch

from mm15.demo.encoder import EncoderPretrainConfig, pretrain_encoder
from mm15.model.mm15 import MM15
from mm15.presets import tiny

kv = dict(a.split("=", 1) for a in sys.argv[1:])
torch.set_num_threads(int(kv.get("threads", "1")))
cfg = tiny(vocab_size=64)
cfg.image_token_id = 63
torch.manual_seed(0)
model = MM15(cfg)
model.init_weights()
t0 = time.perf_counter()
enc = EncoderPretrainConfig(
    steps=int(kv.get("steps", "1000")),
    heads=tuple(kv.get("heads", "colour,shape,place,word").split(",")),
    text_share=float(kv.get("text_share", "0.5")),
    lr=float(kv.get("lr", "6e-3")),
    log_every=100,
)
acc = pretrain_encoder(model, enc)
print(", ".join(f"{k} {v:.3f}" for k, v in acc.items()), f"({time.perf_counter() - t0:.0f} s)")
