"""Fast demo experiments: cache the early stages, vary SFT, score chosen tasks (docs/demo-log.md).

    python dev/demo_exp.py OUT [prefix=align,pretrain,cpt] [tasks=general/colour,...]
        [sft.steps=N] [sft_lr=X] [freeze=vision,connector] [eval=task,...] [threads=N]
        [init=CHECKPOINT] [corpus_tasks=task,...] [DemoConfig path=value ...]

``tasks`` and ``freeze`` are comma-list shorthands for ``sft.tasks`` and ``sft.freeze``; every
other key=value is a DemoConfig override by dotted path (validated as by ``mm15 demo --set``).
The corpus (every SFT task) and tokenizer are made once in OUT; the model after the
``prefix`` stages is cached per (prefix, config) so SFT variants start from the same weights.
Training starts from ``init`` if given, else from the demo's pre-trained encoder
(``encoder.steps``, cached per step count; ``encoder.steps=0``: a random model).
"""

import dataclasses
import hashlib
import json
import shutil
import sys
import time
from collections import Counter
from pathlib import Path

import torch

from mm15.demo.config import DemoConfig
from mm15.demo.data.corpus import CorpusIndex, generate_corpus
from mm15.demo.data.tasks import SFT_TASKS
from mm15.demo.recipe import (
    corpus_sizes,
    corpus_texts,
    demo_train_config,
    pretrain_encoder_checkpoint,
)
from mm15.eval.synthetic_suite import evaluate_synthetic
from mm15.overrides import apply_overrides
from mm15.services.checkpoint import load_checkpoint
from mm15.tokenizer import MM15Tokenizer, train_bpe_tokenizer
from mm15.train.loop import train

out = Path(sys.argv[1])
kv = dict(a.split("=", 1) for a in sys.argv[2:])
torch.set_num_threads(int(kv.pop("threads", "2")))
prefix = [s for s in kv.pop("prefix", "align,pretrain,cpt").split(",") if s]
sft_lr = float(kv.pop("sft_lr", "0"))
init = kv.pop("init", None)
evals_arg = kv.pop("eval", None)
corpus_tasks = kv.pop("corpus_tasks", "")  # SFT tasks the corpus holds (default: all of them)
shorthands = {"tasks": "sft.tasks", "freeze": "sft.freeze"}  # comma lists → DemoConfig lists
sets = [
    f"{shorthands[k]}={json.dumps([x for x in v.split(',') if x])}"
    if k in shorthands
    else f"{k}={v}"
    for k, v in kv.items()
]
cfg = apply_overrides(DemoConfig(), sets)
evals = evals_arg.split(",") if evals_arg else list(cfg.sft.tasks)

out.mkdir(parents=True, exist_ok=True)
if (out / "corpus" / "index.json").exists():
    corpus = CorpusIndex.read(out / "corpus")
else:
    listed = [t for t in corpus_tasks.split(",") if t]
    every_task = dataclasses.replace(  # reused later
        cfg, sft=dataclasses.replace(cfg.sft, tasks=listed or list(SFT_TASKS))
    )
    corpus = generate_corpus(out / "corpus", seed=cfg.seed, sizes=corpus_sizes(every_task))
tok_dir = out / "tokenizer"
if not tok_dir.exists():
    train_bpe_tokenizer(
        corpus_texts(corpus),
        vocab_size=cfg.tokenizer.vocab_size,
        max_digits=cfg.tokenizer.max_digits,
    ).save(tok_dir)
vocab = len(MM15Tokenizer.load(tok_dir))

tc = demo_train_config(cfg, corpus, tok_dir, out / "run", vocab)
if init is None and cfg.encoder.steps:  # the demo's encoder stage, cached per step count
    enc = cfg.encoder
    init = str(out / f"encoder-{enc.steps}-{'-'.join(enc.heads)}-{enc.lr}")
    if not Path(init).exists():
        pretrain_encoder_checkpoint(cfg, tc, MM15Tokenizer.load(tok_dir), Path(init))
by_name = {s.name: s for s in tc.stages}
key_cfg = repr({**dataclasses.asdict(cfg), "sft": None})  # settings the prefix ignores
init_key = init and (Path(init).name if Path(init).parent == out else init)
key = hashlib.sha1(json.dumps([prefix, key_cfg, init_key]).encode()).hexdigest()[:10]
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
sft.lr = sft_lr or sft.lr
tc.stages = [sft]
tc.init_from = str(cache / "model") if prefix else init
tc.run_dir = str(out / "run-sft")
shutil.rmtree(out / "run-sft", ignore_errors=True)
t1 = time.perf_counter()
res = train(tc)
print(f"sft {sft.steps} steps in {time.perf_counter() - t1:.0f} s", flush=True)
model, tok = load_checkpoint(res.final_model)
suite = evaluate_synthetic(model, tok, corpus, tasks=evals)
with open(out / "items.jsonl", "w") as f:  # for dev/demo_answer_hits.py OUT
    f.writelines(json.dumps(it) + "\n" for it in suite.items)
per_task: dict[str, list[float]] = {}
for it in suite.items:
    per_task.setdefault(it["task"], []).append(it["score"])
for t, s in per_task.items():
    preds = Counter(i["prediction"] for i in suite.items if i["task"] == t).most_common(3)
    print(f"{t:22s} {sum(s) / len(s):.2f}  top preds {preds}", flush=True)
