"""Fast demo experiments: cache the early stages, vary SFT, score chosen tasks (docs/demo.md).

    python dev/demo_exp.py OUT [prefix=align,pretrain,cpt] [tasks=general/colour,...]
        [sft_steps=N] [sft_lr=X] [freeze=vision,connector] [eval=task,...] [threads=N]
        [init=CHECKPOINT] [DemoConfig field=value ...]

The corpus and tokenizer are made once in OUT (from the DemoConfig); the model after the
``prefix`` stages is cached per (prefix, config) so SFT variants start from the same weights.
Training starts from ``init`` if given, else from the demo's pre-trained encoder
(``encoder_steps``, cached per step count; ``encoder_steps=0``: a random model).
"""

import hashlib
import json
import shutil
import sys
import time
from pathlib import Path

import torch

from mm15.checkpoint import load_checkpoint
from mm15.data.synthetic import SFT_TASKS
from mm15.data.synthetic_corpus import CorpusIndex, generate_corpus
from mm15.demo import DemoConfig, _pretrain_encoder, _texts, corpus_sizes, demo_train_config
from mm15.eval.synthetic_suite import evaluate_synthetic
from mm15.tokenizer import MM15Tokenizer, train_bpe_tokenizer
from mm15.train.loop import train

out = Path(sys.argv[1])
kv = dict(a.split("=", 1) for a in sys.argv[2:])
torch.set_num_threads(int(kv.pop("threads", "2")))
prefix = [s for s in kv.pop("prefix", "align,pretrain,cpt").split(",") if s]
tasks = kv.pop("tasks", ",".join(SFT_TASKS)).split(",")
evals = kv.pop("eval", ",".join(tasks)).split(",")
sft_steps = int(kv.pop("sft_steps", "0"))
sft_lr = float(kv.pop("sft_lr", "0"))
init = kv.pop("init", None)
freeze = [f for f in kv.pop("freeze", "").split(",") if f]
fields = {f.name: f.type for f in DemoConfig.__dataclass_fields__.values()}
cfg = DemoConfig(**{k: (int(v) if fields[k] in ("int", int) else
                        float(v) if fields[k] in ("float", float) else v == "1")
                    for k, v in kv.items()})  # fmt: skip

out.mkdir(parents=True, exist_ok=True)
if (out / "corpus" / "index.json").exists():
    corpus = CorpusIndex.read(out / "corpus")
else:
    corpus = generate_corpus(out / "corpus", seed=cfg.seed, sizes=corpus_sizes(cfg))
tok_dir = out / "tokenizer"
if not tok_dir.exists():
    train_bpe_tokenizer(_texts(corpus), vocab_size=cfg.vocab_size, max_digits=cfg.max_digits).save(
        tok_dir
    )
vocab = len(MM15Tokenizer.load(tok_dir))

tc = demo_train_config(cfg, corpus, tok_dir, out / "run", vocab)
if init is None and cfg.encoder_steps:  # the demo's encoder stage, cached per step count
    init = str(out / f"encoder-{cfg.encoder_steps}")
    if not Path(init).exists():
        _pretrain_encoder(cfg, tc, MM15Tokenizer.load(tok_dir), Path(init))
by_name = {s.name: s for s in tc.stages}
key = hashlib.sha1(json.dumps([prefix, repr(cfg), init]).encode()).hexdigest()[:10]
cache = out / f"prefix-{key}"
t0 = time.perf_counter()
if prefix and not (cache / "model").exists():
    tc.stages = [by_name[n] for n in prefix]
    tc.run_dir = str(cache / "run")
    tc.init_from = init
    shutil.rmtree(cache, ignore_errors=True)
    res = train(tc)
    shutil.move(str(res.final_model), cache / "model")
    print(f"prefix {prefix} trained in {time.perf_counter() - t0:.0f} s -> {cache}", flush=True)

sft = by_name["sft"]
sft.steps = sft_steps or sft.steps
sft.lr = sft_lr or sft.lr
sft.freeze = freeze
sft.mixture.sources = [s for s in sft.mixture.sources if s.name in tasks]
sft.datasets = [d for d in sft.datasets if d.name in tasks]
tc.stages = [sft]
tc.init_from = str(cache / "model") if prefix else init
tc.run_dir = str(out / "run-sft")
shutil.rmtree(out / "run-sft", ignore_errors=True)
t1 = time.perf_counter()
res = train(tc)
print(f"sft {sft.steps} steps in {time.perf_counter() - t1:.0f} s", flush=True)
model, tok = load_checkpoint(res.final_model)
suite = evaluate_synthetic(model, tok, corpus, tasks=evals, max_new_tokens=24)
per_task: dict[str, list[float]] = {}
for it in suite.items:
    per_task.setdefault(it["task"], []).append(it["score"])
from collections import Counter  # noqa: E402

for t, s in per_task.items():
    preds = Counter(i["prediction"] for i in suite.items if i["task"] == t).most_common(3)
    print(f"{t:22s} {sum(s) / len(s):.2f}  top preds {preds}", flush=True)
