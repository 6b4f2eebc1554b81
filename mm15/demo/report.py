"""The demo's report: ``report.json``, ``report.md``, a score plot, loss curves and grounded answers
drawn on their images."""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.metadata
import io
import json
import os
import platform
import shutil
from pathlib import Path
from typing import Any

from PIL import Image

from mm15.data.coord_parse import parse_regions
from mm15.data.coords import Box
from mm15.data.draw import draw_regions
from mm15.demo.data.corpus import CorpusIndex
from mm15.model.params import count_params


def write_report(
    out: Path,
    *,
    suite,
    corpus: CorpusIndex,
    train_result,
    train_seconds: float,
    total_seconds: float,
    config,
    model,
) -> dict[str, Any]:
    run_dir = train_result.run_dir
    report = {
        "categories": suite.categories,
        "mmbase": suite.mmbase,
        "tasks": _task_scores(suite.items),
        "wall_seconds": {
            "total": round(total_seconds, 1),
            "train": round(train_seconds, 1),
            "eval": round(suite.seconds, 1),
        },
        "train": {
            stage: {"steps": len(v), "first_loss": v[0], "last_loss": v[-1]}
            for stage, v in train_result.losses.items()
            if v
        },
        "skipped_steps": train_result.skipped_steps,
        "model_params": count_params(model.cfg).total,
        "environment": environment(),
        "config": dataclasses.asdict(config),
        "model_dir": str(out / "model"),
    }
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "items.jsonl").write_text("".join(json.dumps(i) + "\n" for i in suite.items))
    for png in run_dir.glob("loss_*.png"):
        shutil.copy(png, out / png.name)
    _plot_scores(suite.categories, out / "scores.png")
    drawn = _draw_grounded(suite, out / "grounded")
    (out / "report.md").write_text(_markdown(report, drawn))
    return report


# The packages whose versions change the numbers (the lock pins them: scripts/lock.txt).
VERSIONED = ("torch", "numpy", "tokenizers", "pillow", "av")


def environment() -> dict[str, Any]:
    """What the table depends on beyond the config: versions, threads, the CPU."""
    import torch

    versions = {}
    for name in VERSIONED:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "mm15": importlib.metadata.version("mm15"),
        "python": platform.python_version(),
        **versions,
        "threads": torch.get_num_threads(),
        "cores": len(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
        "cpu": _cpu_name(),
        "machine": platform.machine(),
    }


def _cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _task_scores(items: list[dict]) -> dict[str, dict[str, float]]:
    tasks: dict[str, list[float]] = {}
    for i in items:
        tasks.setdefault(i["task"], []).append(i["score"])
    return {t: {"score": sum(v) / len(v), "n": len(v)} for t, v in sorted(tasks.items())}


def _markdown(report: dict, drawn: list[str]) -> str:
    lines = [
        "# mm15 demo report",
        "",
        "| category | score | chance | × chance | n |",
        "|---|---|---|---|---|",
    ]
    for name, c in report["categories"].items():
        ratio = c["score"] / c["chance"] if c["chance"] else float("inf")
        lines.append(f"| {name} | {c['score']:.3f} | {c['chance']:.3f} | {ratio:.1f} | {c['n']} |")
    if report["mmbase"] is not None:
        lines += ["", f"MMBase (mean of general and text-rich here): {report['mmbase']:.3f}"]
    w = report["wall_seconds"]
    lines += [
        "",
        f"Wall time: {w['total']} s (training {w['train']} s, evaluation {w['eval']} s); "
        f"{report['model_params']:,} parameters.",
        _environment_line(report["environment"]),
        "",
        "Per task:",
        "",
    ]
    lines += [f"- {t}: {v['score']:.3f} (n={v['n']})" for t, v in report["tasks"].items()]
    lines += [
        "",
        "Training loss (first → last): "
        + ", ".join(
            f"{s} {v['first_loss']:.2f} → {v['last_loss']:.2f}" for s, v in report["train"].items()
        ),
    ]
    if drawn:
        lines += [
            "",
            "Grounded answers (box 0: the model's answer, box 1: the reference; "
            "a `-no-box` file means the answer held no box and only the reference is drawn):",
            "",
        ]
        lines += [f"![{p}]({p})" for p in drawn]
    return "\n".join(lines) + "\n"


def _environment_line(env: dict[str, Any]) -> str:
    return (
        f"Environment: {env['threads']} threads on {env['cores']} cores ({env['cpu']}), "
        f"Python {env['python']}, torch {env['torch']}, mm15 {env['mm15']}, numpy {env['numpy']}, "
        f"tokenizers {env['tokenizers']}, Pillow {env['pillow']}, PyAV {env['av']}."
    )


def _plot_scores(categories: dict, out_png: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = list(categories)
    fig = Figure(figsize=(1.2 * len(names) + 2, 3.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    xs = range(len(names))
    ax.bar([x - 0.2 for x in xs], [categories[n]["score"] for n in names], 0.4, label="score")
    ax.bar([x + 0.2 for x in xs], [categories[n]["chance"] for n in names], 0.4, label="chance")
    ax.set_xticks(list(xs), names, rotation=30, ha="right")
    ax.set_ylim(0, 1)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_png)


def _draw_grounded(suite, out_dir: Path, per_task: int = 3) -> list[str]:
    """A few box answers drawn on their images: the prediction and the reference."""
    out_dir.mkdir(exist_ok=True)
    paths, counts = [], {}
    for item in suite.items:
        sample = suite.samples[item["id"]]
        if sample.meta.get("metric") != "iou50" or counts.get(item["task"], 0) >= per_task:
            continue
        counts[item["task"]] = counts.get(item["task"], 0) + 1
        ref = sample.regions[sample.meta["answer_region"]]
        media = sample.media[ref.media]
        image = Image.open(media.path if media.path else io.BytesIO(media.bytes)).convert("RGB")
        parsed = parse_regions(item["prediction"], suite.frames[item["id"]])
        regions = [r for r in parsed.regions if isinstance(r.shape, Box)][:1]
        canvas = draw_regions(image, [*[r.shape for r in regions], Box(*ref.box, image=ref.media)])
        name = f"{item['id']}{'' if regions else '-no-box'}.png"
        canvas.resize((canvas.width * 2, canvas.height * 2), Image.Resampling.NEAREST).save(
            out_dir / name
        )
        paths.append(f"grounded/{name}")
    return paths
