"""``mm15 demo --ablate NAME``: one of MM1.5's ablation trends, in miniature, over several seeds.

An ablation is two arms of the demo that differ in one setting (``--set`` overrides of
:class:`~mm15.demo.config.DemoConfig`); the paper's trend says which arm scores higher on one
category of the demo's held-out suite:

* ``splitting``: SFT and evaluation with dynamic image splitting against none, on text-rich
  items (MM1.5 Table 1, §3.5);
* ``refer_ground_data``: SFT with and without the referring-and-grounding task, on grounding
  (Acc@0.5; MM1.5 Fig. 5, §3.2);
* ``multi_image_data``: SFT with and without the multi-image task, on multi-image items
  (MM1.5 Fig. 7);
* ``inference_grid``: SFT at the grid ``(n_min, n_max) = (2, 2)``, where a square grounding image
  is a 1×2 grid (the image, a padding tile, the overview), with region coordinates on the
  original image (mm15) against coordinates on the grid's padded canvas (the grid-dependent
  control).  Both are evaluated again at ``(3, 3)``, where the same image gets a 1×3 grid (one
  more padding tile): the view hardly changes, the control's canvas grows by half.  Grounding
  should survive with mm15's coordinates and be lost by the control (MM1.5 Table 2, row 7:
  ``n_min`` 4 → 1 at inference cost 49.5 refer&ground points).  They are also evaluated at
  ``(1, 4)``, where the image is one tile, a layout that SFT never showed.

Per seed the corpus, the tokenizer, the encoder warm-up and every stage before SFT are trained
once and kept under ``OUT/seed<S>/`` (keyed by the settings they depend on), so the arms start
SFT from the same weights.  SFT draws its data in the demo's order, so the default arm is
``mm15 demo`` at that seed, bit for bit.  A second ablation over the same seeds and ``OUT``
trains only the arms it has not run: the default arm is shared by the first three.  Every arm
is evaluated on every category of the corpus, trained or not.

The trend holds when the expected arm's mean beats the other's by more than the seed spread
(the larger of the two arms' max − min over seeds).  For ``inference_grid`` the means compared
are at the first changed grid, the spread covers the training grid too, and the control must
also lose more than the spread beyond what mm15's arm loses from the training grid to there.
``OUT/ablation-<NAME>.json`` / ``.md`` / ``.png`` hold the per-seed scores, means, spread and
verdict.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mm15.demo.ablate_report import grid_entry, summarize, write_report
from mm15.demo.config import DEMO_SFT_TASKS, DemoConfig
from mm15.demo.data.corpus import CorpusIndex, generate_corpus
from mm15.demo.recipe import (
    corpus_sizes,
    corpus_texts,
    demo_threads,
    demo_train_config,
    pretrain_encoder_checkpoint,
    sft_image,
)
from mm15.overrides import apply_overrides
from mm15.tokenizer import MM15Tokenizer, train_bpe_tokenizer

if TYPE_CHECKING:
    from mm15.config import ModelConfig
    from mm15.eval.synthetic_suite import SuiteResult


@dataclass(frozen=True)
class Arm:
    label: str
    sets: tuple[str, ...] = ()  # DemoConfig overrides, as `mm15 demo --set` takes them


@dataclass(frozen=True)
class Ablation:
    name: str
    trend: str  # the paper's finding, with where it is reported
    category: str  # the suite category the trend is about
    expected: Arm  # the arm the paper's trend puts higher
    other: Arm
    # (n_min, n_max) at inference for more evaluations of both arms; the trend is read at the
    # first, the others are reported
    regrids: tuple[tuple[int, int], ...] = ()


def _without(task: str) -> str:
    return "sft.tasks=" + json.dumps([t for t in DEMO_SFT_TASKS if t != task])


ABLATIONS = {
    a.name: a
    for a in [
        Ablation(
            "splitting",
            "dynamic image splitting beats no splitting on text-rich data (MM1.5 Table 1, §3.5)",
            "text_rich",
            Arm("dynamic splitting"),
            Arm("no splitting", ("sft.split=none",)),
        ),
        Ablation(
            "refer_ground_data",
            "referring-and-grounding SFT data creates grounding ability (MM1.5 Fig. 5, §3.2)",
            "refer_ground",
            Arm("with refer&ground data"),
            Arm("without refer&ground data", (_without("refer_ground/box"),)),
        ),
        Ablation(
            "multi_image_data",
            "multi-image SFT data lifts the multi-image score (MM1.5 Fig. 7)",
            "multi_image",
            Arm("with multi-image data"),
            Arm("without multi-image data", (_without("multi_image/common"),)),
        ),
        Ablation(
            "inference_grid",
            "grounding survives a change of the inference grid with coordinates on the original "
            "image, and a grid-dependent control loses it (MM1.5 Table 2, row 7; §3.1)",
            "refer_ground",
            Arm("image coordinates (mm15)", ("sft.grid=[2,2]",)),
            Arm("grid-canvas coordinates (control)", ("sft.grid=[2,2]", "sft.coords=grid")),
            regrids=((3, 3), (1, 4)),
        ),
    ]
}


def _key(value: Any) -> str:
    return hashlib.sha1(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:10]


# The layout of an arm's cache: a change that makes cached arms differ from what this code
# trains bumps it, so they are trained again (2: SFT draws its data as `mm15 demo`'s does).
ARM_CACHE_VERSION = 2


def arm_key(prefix: Path, cfg: DemoConfig) -> str:
    """The cache key of an arm: the cache version, its prefix's folder (which names the
    settings the prefix was trained with) and every setting."""
    return _key([ARM_CACHE_VERSION, prefix.parent.name, dataclasses.asdict(cfg)])


def _log(message: str) -> None:
    print(message, flush=True)


def run_ablation(name: str, *, out: Path, base: DemoConfig, seeds: Sequence[int]) -> dict[str, Any]:
    """Both arms of ablation ``name`` for every seed (cached stages reused), then the report."""
    if name not in ABLATIONS:
        raise ValueError(f"unknown ablation {name!r}; known: {', '.join(ABLATIONS)}")
    if len(seeds) < 2:
        raise ValueError("an ablation needs at least two seeds to report a spread")
    ab = ABLATIONS[name]
    t0 = time.perf_counter()
    runs: dict[str, list[dict[str, Any]]] = {ab.expected.label: [], ab.other.label: []}
    with demo_threads(base):  # as `mm15 demo`: the same numbers on every machine
        for seed in seeds:
            cfg = dataclasses.replace(base, seed=seed)
            seed_dir = out / f"seed{seed}"
            corpus, tok_dir = _corpus(cfg, seed_dir)
            prefix = _prefix(cfg, corpus, tok_dir, seed_dir)
            for arm in (ab.expected, ab.other):
                arm_cfg = apply_overrides(cfg, list(arm.sets))
                runs[arm.label].append(
                    _arm(arm_cfg, corpus, tok_dir, prefix, seed_dir, arm.label, ab.regrids)
                )
    report = summarize(ab, list(seeds), runs, seconds=time.perf_counter() - t0)
    write_report(out, report)
    return report


def _corpus(cfg: DemoConfig, seed_dir: Path) -> tuple[CorpusIndex, Path]:
    """The seed's corpus (every default SFT task: each arm is evaluated on all of them) and its
    tokenizer, made once."""
    corpus_dir, tok_dir = seed_dir / "corpus", seed_dir / "tokenizer"
    full = dataclasses.replace(cfg, sft=dataclasses.replace(cfg.sft, tasks=list(DEMO_SFT_TASKS)))
    marker = seed_dir / "corpus.key"
    key = _key([cfg.seed, corpus_sizes(full), dataclasses.asdict(cfg.tokenizer)])
    if marker.is_file() and marker.read_text() == key and (tok_dir / "tokenizer.json").is_file():
        return CorpusIndex.read(corpus_dir), tok_dir
    _log(f"[seed {cfg.seed}] generating the corpus and tokenizer in {seed_dir}")
    shutil.rmtree(corpus_dir, ignore_errors=True)
    shutil.rmtree(tok_dir, ignore_errors=True)
    corpus = generate_corpus(
        corpus_dir, seed=cfg.seed, sizes=corpus_sizes(full), workers=cfg.threads
    )
    tok = cfg.tokenizer
    train_bpe_tokenizer(
        corpus_texts(corpus), vocab_size=tok.vocab_size, max_digits=tok.max_digits
    ).save(tok_dir)
    marker.write_text(key)
    return corpus, tok_dir


def _prefix(cfg: DemoConfig, corpus: CorpusIndex, tok_dir: Path, seed_dir: Path) -> Path:
    """The model after the encoder warm-up and every stage before SFT, trained once per
    seed and the settings those stages read (every field but ``sft``)."""
    from mm15.train.loop import train

    settings = {**dataclasses.asdict(cfg), "sft": None}
    folder = seed_dir / f"prefix-{_key(settings)}"
    if (folder / "model" / "config.json").is_file():
        _log(f"[seed {cfg.seed}] stages before SFT: cached in {folder}")
        return folder / "model"
    shutil.rmtree(folder, ignore_errors=True)
    tok = MM15Tokenizer.load(tok_dir)
    tc = demo_train_config(cfg, corpus, tok_dir, folder / "run", len(tok))
    t = time.perf_counter()
    if cfg.encoder.steps:
        tc.init_from = str(pretrain_encoder_checkpoint(cfg, tc, tok, folder / "encoder"))
    tc.stages = [s for s in tc.stages if s.name != "sft"]
    result = train(tc)
    shutil.move(str(result.final_model), folder / "model")
    _log(f"[seed {cfg.seed}] stages before SFT trained in {time.perf_counter() - t:.0f} s")
    return folder / "model"


def _arm(
    cfg: DemoConfig,
    corpus: CorpusIndex,
    tok_dir: Path,
    prefix: Path,
    seed_dir: Path,
    label: str,
    regrids: Sequence[tuple[int, int]] = (),
) -> dict[str, Any]:
    """SFT from the cached prefix with the arm's settings, then the whole suite, and again at
    each ``(n_min, n_max)`` of ``regrids`` at inference.  The scores and the model are kept,
    so a grid asked for later is evaluated without training again."""
    from mm15.train.loop import train

    folder = seed_dir / f"arm-{arm_key(prefix, cfg)}"
    scores, model_dir = folder / "scores.json", folder / "model"
    out = json.loads(scores.read_text()) if scores.is_file() else None
    missing = [g for g in regrids if out is None or "reread" not in grid_entry(out, g)]
    if out is not None and not missing:
        _log(f"[seed {cfg.seed}] {label}: cached in {folder}")
        return out
    trained = None  # the suite at the training grid, once: scores and the answers to re-read
    if out is None or not (model_dir / "config.json").is_file():
        shutil.rmtree(folder, ignore_errors=True)
        tok_len = len(MM15Tokenizer.load(tok_dir))
        tc = demo_train_config(cfg, corpus, tok_dir, folder / "run", tok_len)
        sft = [s.name for s in tc.stages].index("sft")
        # A run seeds stage i's data order with seed + i; SFT is this run's only stage, so it
        # takes the demo's index: the default arm is `mm15 demo` at the same seed, bit for bit.
        tc.seed, tc.stages = cfg.seed + sft, [tc.stages[sft]]
        tc.init_from = str(prefix)
        t = time.perf_counter()
        result = train(tc)
        seconds = time.perf_counter() - t
        shutil.move(str(result.final_model), model_dir)
        # the final model and the SFT's losses and audit are kept, not its checkpoints
        shutil.rmtree(folder / "run" / "checkpoints", ignore_errors=True)
        trained = _suite(cfg, corpus, model_dir)
        out = {
            "seed": cfg.seed,
            "arm": label,
            "categories": trained[0].categories,
            "sft_tasks": list(cfg.sft.tasks),
            "sft_seconds": round(seconds, 1),
        }
        _log(
            f"[seed {cfg.seed}] {label}: SFT in {seconds:.0f} s, {_scores_line(out['categories'])}"
        )
        missing = list(regrids)
    out["regrids"] = [r for r in out.get("regrids", []) if tuple(r["grid"]) not in missing]
    if missing and trained is None:
        trained = _suite(cfg, corpus, model_dir)
    for grid in missing:
        categories = _suite(cfg, corpus, model_dir, grid)[0].categories
        reread_cats = reread(trained, grid)
        entry = {"grid": list(grid), "categories": categories, "reread": reread_cats}
        out["regrids"].append(entry)
        _log(f"[seed {cfg.seed}] {label} at grid {tuple(grid)}: {_scores_line(categories)}")
        _log(f"  its training-grid answers read on that grid's frame: {_scores_line(reread_cats)}")
    scores.write_text(json.dumps(out, indent=1) + "\n")
    return out


def _suite(
    cfg: DemoConfig,
    corpus: CorpusIndex,
    model_dir: Path,
    grid: tuple[int, int] | None = None,
) -> tuple[SuiteResult, ModelConfig]:
    """The held-out suite, with images as SFT showed them or at ``grid``, and the model config
    it ran with."""
    from mm15.eval.synthetic_suite import evaluate_synthetic
    from mm15.services.checkpoint import load_checkpoint

    model, tok = load_checkpoint(model_dir, grid_coords=True)
    model.cfg.image = sft_image(cfg, model.cfg.image) or model.cfg.image  # as SFT showed images
    if grid is not None:
        model.cfg.image = dataclasses.replace(model.cfg.image, n_min=grid[0], n_max=grid[1])
    suite = evaluate_synthetic(model, tok, corpus, tasks=list(DEMO_SFT_TASKS))
    return suite, model.cfg


def reread(
    trained: tuple[SuiteResult, ModelConfig], grid: tuple[int, int]
) -> dict[str, dict[str, float]]:
    """The training grid's answers scored as a system on ``grid`` reads them: with the frames
    the model's coordinates have there (``region_frames``).  mm15's frame is the image on every
    grid, so nothing moves; the control's canvas changes with the grid.  This isolates the
    coordinate convention from whether the model still reads the new layout."""
    from mm15.data.sample_images import region_frames
    from mm15.eval.metrics import category_scores, score_sample

    suite, model_cfg = trained
    there = dataclasses.replace(
        model_cfg, image=dataclasses.replace(model_cfg.image, n_min=grid[0], n_max=grid[1])
    )
    items = [
        {
            "category": i["category"],
            "score": score_sample(
                suite.samples[i["id"]],
                i["prediction"],
                region_frames(suite.samples[i["id"]], there),
            ),
        }
        for i in suite.items
    ]
    means = category_scores(items)
    return {c: {**v, "score": means[c]} for c, v in suite.categories.items()}


def _scores_line(categories: dict[str, dict[str, float]]) -> str:
    return ", ".join(f"{k} {v['score']:.2f}" for k, v in categories.items())
