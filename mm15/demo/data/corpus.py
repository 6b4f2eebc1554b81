"""The synthetic corpus on disk: JSONL files per (task, split) plus ``index.json``.

:func:`generate_corpus` writes what :mod:`mm15.demo.data.tasks` generates; :class:`CorpusIndex`
finds and loads it again.
"""

from __future__ import annotations

import dataclasses
import json
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from mm15.data.schema import Category, Sample, Stage, sample_from_json, sample_to_json
from mm15.demo.data.chance import chance_baseline
from mm15.demo.data.tasks import SFT_TASKS, TASKS, Metric, Split, make_samples

# ---- the corpus on disk ---------------------------------------------------------------------

DEFAULT_SIZES: dict[str, int] = {
    "caption/shapes": 1000,
    "caption/object": 500,
    "caption/grounded": 500,
    "interleaved/shapes": 300,
    "text/facts": 600,
    "ocr/pages": 500,
    "ocr/words": 500,
    **{t: 400 for t in SFT_TASKS},
    **{f"test/{t}": 100 for t in SFT_TASKS},
}


@dataclass(frozen=True)
class CorpusFile:
    """One JSONL file of the corpus: the samples of one (task, split)."""

    task: str
    split: Split
    stage: Stage  # "eval" for test files
    category: Category
    path: str  # relative to the corpus root
    count: int
    metric: Metric | None = None
    chance: float | None = None  # chance_baseline(task) for test files


@dataclass
class CorpusIndex:
    """What :func:`generate_corpus` wrote; saved as ``index.json`` in the corpus root."""

    root: Path
    seed: int
    files: list[CorpusFile]

    def file(self, task: str, split: Split = "train") -> CorpusFile:
        for f in self.files:
            if (f.task, f.split) == (task, split):
                return f
        raise KeyError(f"corpus {self.root} has no {split} file for task {task!r}")

    def load(self, task: str, split: Split = "train") -> list[Sample]:
        """The samples of one file, with ``Media.path`` made absolute (resolved against root)."""
        lines = (self.root / self.file(task, split).path).read_text().splitlines()
        samples = [sample_from_json(line) for line in lines if line.strip()]
        for s in samples:
            for m in s.media:
                m.path = str(self.root.resolve() / m.path) if m.path else None
        return samples

    @property
    def categories(self) -> list[str]:
        return sorted({f.category for f in self.files})

    def counts(self) -> dict[str, int]:
        """``{"split/task": samples}``."""
        return {f"{f.split}/{f.task}": f.count for f in self.files}

    def save(self) -> Path:
        out = self.root / "index.json"
        body = {"seed": self.seed, "files": [dataclasses.asdict(f) for f in self.files]}
        out.write_text(json.dumps(body, indent=1) + "\n")
        return out

    @classmethod
    def read(cls, root: str | Path) -> CorpusIndex:
        body = json.loads((Path(root) / "index.json").read_text())
        return cls(Path(root), body["seed"], [CorpusFile(**f) for f in body["files"]])


def _write_file(root: Path, task: str, split: Split, n: int, seed: int) -> CorpusFile:
    """Generate and write one (task, split): PNGs under ``media/``, samples as JSON lines."""
    spec, slug = TASKS[task], task.replace("/", "_")
    rel = f"{'test' if split == 'test' else spec.stage}/{slug}.jsonl"
    (root / rel).parent.mkdir(parents=True, exist_ok=True)
    with open(root / rel, "w", encoding="utf-8") as f:
        for i, sample in enumerate(make_samples(task, n, seed, split=split)):
            stem = f"media/{slug}/{split}/{i:06d}"
            video = bool(sample.meta.get("video"))
            if video:
                sample.meta["frames_dir"] = stem
            for k, m in enumerate(sample.media):
                m.path = f"{stem}/f{k}.png" if video else f"{stem}_{k}.png"
                (root / m.path).parent.mkdir(parents=True, exist_ok=True)
                (root / m.path).write_bytes(m.bytes)
                m.bytes = None
            f.write(sample_to_json(sample) + "\n")
    if split == "train":
        return CorpusFile(task, split, spec.stage, spec.category, rel, n)
    return CorpusFile(
        task, split, "eval", spec.category, rel, n, spec.metric, chance_baseline(task)
    )


def generate_corpus(
    out_dir: str | Path, *, seed: int = 0, sizes: dict[str, int] | None = None, workers: int = 1
) -> CorpusIndex:
    """Write the synthetic corpus under ``out_dir`` and return (and save) its index.

    ``sizes`` overrides :data:`DEFAULT_SIZES`: keys are task names (training samples) and
    ``"test/<task>"`` (held-out samples of an SFT task); 0 skips a file.  ``workers`` > 1 writes
    files in parallel processes; the output does not depend on it.  Files of an earlier run
    that this one does not write are left in place; ``index.json`` lists this run's files.
    """
    unknown = sorted(set(sizes or {}) - set(DEFAULT_SIZES))
    if unknown:
        raise ValueError(f"unknown size keys {unknown}; valid keys: {sorted(DEFAULT_SIZES)}")
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    jobs = []
    for key, n in {**DEFAULT_SIZES, **(sizes or {})}.items():
        if n > 0:
            split = "test" if key.startswith("test/") else "train"
            jobs.append((root, key.removeprefix("test/"), split, n, seed))
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            files = list(pool.map(_write_file, *zip(*jobs, strict=True)))
    else:
        files = [_write_file(*job) for job in jobs]
    index = CorpusIndex(root, seed, files)
    index.save()
    return index
