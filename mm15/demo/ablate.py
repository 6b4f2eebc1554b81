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
SFT from the same weights, and a second ablation over the same seeds and ``OUT`` trains only the
arms it has not run: the default arm is shared by the first three.  Every arm is evaluated on every
category of the corpus, trained or not.

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
from typing import Any

from mm15.demo.config import DEMO_SFT_TASKS, DemoConfig
from mm15.demo.data.corpus import CorpusIndex, generate_corpus
from mm15.demo.recipe import (
    corpus_sizes,
    corpus_texts,
    demo_train_config,
    pretrain_encoder_checkpoint,
    sft_image,
)
from mm15.overrides import apply_overrides
from mm15.tokenizer import MM15Tokenizer, train_bpe_tokenizer


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


# SFT knobs added after arms were first cached, with their defaults: while every one of them
# holds its default an arm's key leaves them out, so the arms cached before them stay valid.
LATER_SFT_KNOBS: dict[str, Any] = {"grid": None, "coords": "image"}


def arm_key(prefix: Path, cfg: DemoConfig) -> str:
    """The cache key of an arm: its prefix and every setting (see ``LATER_SFT_KNOBS``)."""
    settings = dataclasses.asdict(cfg)
    if all(settings["sft"][k] == v for k, v in LATER_SFT_KNOBS.items()):
        settings["sft"] = {k: v for k, v in settings["sft"].items() if k not in LATER_SFT_KNOBS}
    return _key([str(prefix), settings])


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
    corpus = generate_corpus(corpus_dir, seed=cfg.seed, sizes=corpus_sizes(full))
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
    missing = [g for g in regrids if out is None or "reread" not in _entry(out, g)]
    if out is not None and not missing:
        _log(f"[seed {cfg.seed}] {label}: cached in {folder}")
        return out
    if out is None or not (model_dir / "config.json").is_file():
        shutil.rmtree(folder, ignore_errors=True)
        tok_len = len(MM15Tokenizer.load(tok_dir))
        tc = demo_train_config(cfg, corpus, tok_dir, folder / "run", tok_len)
        tc.stages = [s for s in tc.stages if s.name == "sft"]
        tc.init_from = str(prefix)
        t = time.perf_counter()
        result = train(tc)
        seconds = time.perf_counter() - t
        shutil.move(str(result.final_model), model_dir)
        shutil.rmtree(folder / "run", ignore_errors=True)  # the final model is what is kept
        out = {
            "seed": cfg.seed,
            "arm": label,
            "categories": _suite(cfg, corpus, model_dir),
            "sft_tasks": list(cfg.sft.tasks),
            "sft_seconds": round(seconds, 1),
        }
        _log(
            f"[seed {cfg.seed}] {label}: SFT in {seconds:.0f} s, {_scores_line(out['categories'])}"
        )
        missing = list(regrids)
    out["regrids"] = [r for r in out.get("regrids", []) if tuple(r["grid"]) not in missing]
    trained = _suite(cfg, corpus, model_dir, detail=True) if missing else None
    for grid in missing:
        categories = _suite(cfg, corpus, model_dir, grid)
        reread = _reread(trained, grid)
        out["regrids"].append({"grid": list(grid), "categories": categories, "reread": reread})
        _log(f"[seed {cfg.seed}] {label} at grid {tuple(grid)}: {_scores_line(categories)}")
        _log(f"  its training-grid answers read on that grid's frame: {_scores_line(reread)}")
    scores.write_text(json.dumps(out, indent=1) + "\n")
    return out


def _suite(
    cfg: DemoConfig,
    corpus: CorpusIndex,
    model_dir: Path,
    grid: tuple[int, int] | None = None,
    *,
    detail: bool = False,
) -> Any:
    """The categories of the held-out suite: images as SFT showed them, or at ``grid``
    (``detail``: the whole :class:`~mm15.eval.synthetic_suite.SuiteResult` and the model)."""
    from mm15.eval.synthetic_suite import evaluate_synthetic
    from mm15.services.checkpoint import load_checkpoint

    model, tok = load_checkpoint(model_dir, grid_coords=True)
    model.cfg.image = sft_image(cfg, model.cfg.image) or model.cfg.image  # as SFT showed images
    if grid is not None:
        model.cfg.image = dataclasses.replace(model.cfg.image, n_min=grid[0], n_max=grid[1])
    suite = evaluate_synthetic(model, tok, corpus, tasks=list(DEMO_SFT_TASKS))
    return (suite, model.cfg) if detail else suite.categories


def _reread(trained: tuple[Any, Any], grid: tuple[int, int]) -> dict[str, dict[str, float]]:
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


def _entry(result: dict[str, Any], grid: Sequence[int]) -> dict[str, Any]:
    """An arm's evaluation at inference grid ``grid`` ({} if it has none)."""
    return next((r for r in result.get("regrids", []) if r["grid"] == list(grid)), {})


def _at_grid(
    result: dict[str, Any], grid: Sequence[int], key: str = "categories"
) -> dict[str, Any]:
    """An arm's categories at inference grid ``grid`` (``key="reread"``: its training-grid
    answers read on that grid's frame)."""
    return _entry(result, grid)[key]


def _scores_line(categories: dict[str, dict[str, float]]) -> str:
    return ", ".join(f"{k} {v['score']:.2f}" for k, v in categories.items())


def summarize(
    ab: Ablation, seeds: list[int], runs: dict[str, list[dict[str, Any]]], *, seconds: float
) -> dict[str, Any]:
    """Per arm the category's score per seed, mean, min and max; the margin (expected arm's
    mean − the other's), the spread (the larger max − min) and whether the trend holds.

    With ``ab.regrids`` the scores compared are those at the first of them; each arm also keeps
    its scores at the training grid (and its drop from there) and at the other grids.  The
    spread then covers the training grid too, and the trend holds when the margin exceeds it
    and the other arm's drop exceeds the expected arm's by more than it."""

    def stats(values: list[float]) -> dict[str, Any]:
        n = len(values)
        return {"scores": values, "mean": sum(values) / n, "min": min(values), "max": max(values)}

    def at(results: list[dict[str, Any]], grid: tuple[int, int] | None, key="categories"):
        cats = [r["categories"] if grid is None else _at_grid(r, grid, key) for r in results]
        return {**stats([c[ab.category]["score"] for c in cats]), "all_categories": cats}

    arms: dict[str, dict[str, Any]] = {}
    for label, results in runs.items():
        if not ab.regrids:
            arms[label] = at(results, None)
            continue
        arms[label] = {
            **at(results, ab.regrids[0]),
            "training_grid": at(results, None),
            "other_grids": {f"{g[0]},{g[1]}": at(results, g) for g in ab.regrids[1:]},
            "reread": {f"{g[0]},{g[1]}": at(results, g, "reread") for g in ab.regrids},
        }
        arms[label]["drop"] = arms[label]["training_grid"]["mean"] - arms[label]["mean"]
    hi, lo = arms[ab.expected.label], arms[ab.other.label]
    margin = hi["mean"] - lo["mean"]
    # the arms of a seed start SFT from the same weights: the per-seed differences, for reading
    per_seed = [a - b for a, b in zip(hi["scores"], lo["scores"], strict=True)]
    series = [*arms.values(), *(a["training_grid"] for a in arms.values() if "training_grid" in a)]
    spread = max(a["max"] - a["min"] for a in series)
    holds = margin > spread
    if ab.regrids:
        holds = holds and lo["drop"] - hi["drop"] > spread
    chance = runs[ab.expected.label][0]["categories"][ab.category]["chance"]
    return {
        "ablation": ab.name,
        "trend": ab.trend,
        "category": ab.category,
        "chance": chance,
        "seeds": seeds,
        "expected": ab.expected.label,
        "other": ab.other.label,
        "regrid": list(ab.regrids[0]) if ab.regrids else None,
        "other_grids": [list(g) for g in ab.regrids[1:]],
        "arms": arms,
        "margin": margin,
        "per_seed_margins": per_seed,
        "spread": spread,
        "holds": holds,
        "seconds": round(seconds, 1),
        # what the arms' SFT took when they were trained (this run or an earlier one)
        "sft_seconds": round(sum(r.get("sft_seconds", 0) for rs in runs.values() for r in rs), 1),
    }


def write_report(out: Path, report: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"ablation-{report['ablation']}"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    stem.with_suffix(".md").write_text(report_markdown(report))
    _plot(report, stem.with_suffix(".png"))


def report_markdown(r: dict[str, Any]) -> str:
    regrid = r.get("regrid")
    lines = [
        f"# Ablation `{r['ablation']}`: {r['trend']}",
        "",
        f"Category: {r['category']} (chance {r['chance']:.3f}); seeds {r['seeds']}; "
        f"{r['seconds']:.0f} s this run; the arms' SFT took {r.get('sft_seconds', 0):.0f} s "
        "in all when trained (cached stages and arms are reused).",
        "",
        "| arm | " + " | ".join(f"seed {s}" for s in r["seeds"]) + " | mean | min–max |",
        "|---|" + "---|" * (len(r["seeds"]) + 2),
    ]

    def row(label: str, a: dict[str, Any]) -> str:
        cells = " | ".join(f"{v:.2f}" for v in a["scores"])
        return f"| {label} | {cells} | {a['mean']:.3f} | {a['min']:.2f}–{a['max']:.2f} |"

    for label, a in r["arms"].items():
        if regrid:
            lines.append(row(f"{label}, training grid", a["training_grid"]))
            lines.append(row(f"{label}, grid {tuple(regrid)}", a))
            for grid, b in a.get("other_grids", {}).items():
                lines.append(row(f"{label}, grid ({grid.replace(',', ', ')})", b))
            for grid, b in a.get("reread", {}).items():
                grid_name = f"({grid.replace(',', ', ')})"
                lines.append(row(f"{label}, training-grid answers on {grid_name}'s frame", b))
        else:
            lines.append(row(label, a))
    verdict = "holds" if r["holds"] else "does not hold"
    where = f" at grid {tuple(regrid)}" if regrid else ""
    lines += [
        "",
        f"Margin{where} {r['margin']:+.3f} (mean of “{r['expected']}” − mean of "
        f"“{r['other']}”), seed spread {r['spread']:.3f}.",
    ]
    if "per_seed_margins" in r:
        wins = sum(m > 0 for m in r["per_seed_margins"])
        lines.append(
            "Per seed, the same difference: "
            + ", ".join(f"{m:+.2f}" for m in r["per_seed_margins"])
            + f" (“{r['expected']}” higher on {wins} of {len(r['seeds'])} seeds)."
        )
    if regrid:
        hi, lo = r["arms"][r["expected"]], r["arms"][r["other"]]
        lines.append(
            f"Drop from the training grid to {tuple(regrid)}: “{r['expected']}” "
            f"{hi['drop']:+.3f}, “{r['other']}” {lo['drop']:+.3f}."
        )
    if regrid:
        lines.append(
            "“On (n_min, n_max)'s frame”: the answers given at the training grid, scored with "
            "the coordinate frame that grid gives them (the same answers, read as a system on "
            "the new grid reads them), which isolates the coordinate convention from whether "
            "the model still reads the new layout."
        )
    rule = "the margin exceeds the spread"
    if regrid:
        rule += " and the control's drop exceeds the other arm's by more than the spread"
    lines.append(f"The paper's trend **{verdict}** (it holds when {rule}).")
    return "\n".join(lines) + "\n"


def _plot(r: dict[str, Any], path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    regrid = r.get("regrid")
    # one bar per arm, or per arm and grid (the training grid, then each inference grid, then
    # the training grid's answers on the first one's frame), coloured by arm
    bars: list[tuple[str, dict[str, Any], int, str]] = []
    for i, (label, a) in enumerate(r["arms"].items()):
        if not regrid:
            bars.append((label, a, i, label))
            continue
        bars.append(("training grid", a["training_grid"], i, label))
        bars.append((f"grid {tuple(regrid)}", a, i, label))
        for grid, b in a.get("other_grids", {}).items():
            bars.append((f"grid ({grid.replace(',', ', ')})", b, i, label))
        first = f"{regrid[0]},{regrid[1]}"
        bars.append((f"answers on\n{tuple(regrid)}'s frame", a["reread"][first], i, label))
    fig = Figure(figsize=(max(4.5, 1.1 * len(bars)), 3.8))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    seen = set()
    for x, (_, a, colour, label) in enumerate(bars):
        legend = label if regrid and label not in seen else None
        seen.add(label)
        ax.bar(x, a["mean"], 0.6, alpha=0.6, color=f"C{colour}", label=legend)
        ax.vlines(x, a["min"], a["max"], color="black")
        ax.scatter([x] * len(a["scores"]), a["scores"], color="black", s=12, zorder=3)
    ax.axhline(r["chance"], color="grey", linestyle="--", label="chance")
    ax.set_xticks(range(len(bars)), [name for name, *_ in bars], fontsize=7 if regrid else None)
    ax.set_ylim(0, 1)
    ax.set_ylabel(r["category"])
    ax.set_title(r["ablation"])
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
