"""The report of ``mm15 demo --ablate NAME`` (:mod:`mm15.demo.ablate`): per arm the scores per
seed, their mean and range, the margin, the seed spread and the verdict, as JSON, markdown and
a plot (``OUT/ablation-<NAME>.json`` / ``.md`` / ``.png``)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mm15.demo.ablate import Ablation


def grid_entry(result: dict[str, Any], grid: Sequence[int]) -> dict[str, Any]:
    """An arm's evaluation at inference grid ``grid`` ({} if it has none)."""
    return next((r for r in result.get("regrids", []) if r["grid"] == list(grid)), {})


def at_grid(result: dict[str, Any], grid: Sequence[int], key: str = "categories") -> dict[str, Any]:
    """An arm's categories at inference grid ``grid`` (``key="reread"``: its training-grid
    answers read on that grid's frame)."""
    return grid_entry(result, grid)[key]


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
        cats = [r["categories"] if grid is None else at_grid(r, grid, key) for r in results]
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
                lines.append(row(f"{label}, grid {_grid_name(grid)}", b))
            for grid, b in a.get("reread", {}).items():
                lines.append(
                    row(f"{label}, training-grid answers on {_grid_name(grid)}'s frame", b)
                )
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


def _grid_name(key: str) -> str:
    """A report's grid key ("3,3") as the text names grids: "(3, 3)"."""
    return f"({key.replace(',', ', ')})"


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
            bars.append((f"grid {_grid_name(grid)}", b, i, label))
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
