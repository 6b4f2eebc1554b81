"""Video multiple-choice benchmarks (MM1.5 §5, Tables 10–11: VideoMME, EgoSchema, NExTQA,
IntentQA) and MVBench as a multi-image benchmark (Table 9).

**Prompt.** The question, its options as "(A) …" lines and "Only give the best option.", and
the reply starts with the structured answer prompt ``"Best Option: ("`` (§5: "most existing
methods use structured answer prompts (e.g. "Best Option: (")"), written after the assistant
marker through ``Sample.meta["answer_prefix"]`` (:mod:`mm15.data.pipeline`).  The option is
read from the continuation (:func:`best_option_choice`): its first character when that is an
option letter, else :func:`mm15.eval.metrics.extract_choice` on the whole continuation.

**Frames.** A video benchmark's clip is one ``Media(kind="video")``: the pipeline samples
``ModelConfig.video.num_frames`` frames with mm15's one sampler (:func:`mm15.data.media.load_video`)
and shows each as one tile (§5).  MVBench is run as the paper runs it, as a multi-image
benchmark: :data:`MVBENCH_FRAMES` frames sampled by the same sampler, shown as images (each
planned and split as any image of a multi-image sample).

**Layouts** (column names from lmms-eval's task YAMLs; docs/evaluation.md):

* ``videomme``: lmms-lab/Video-MME, ``videomme/test-*.parquet``: ``videoID``, ``question``,
  ``options`` ("A. …"), ``answer`` (letter); clips ``<videoID>.mp4`` (or .MP4 / .mkv).
* ``egoschema``: lmms-lab/egoschema config ``Subset`` (the 500 answered questions),
  ``Subset/test-*.parquet``: ``video_idx``, ``question``, ``option`` ("A. …"), ``answer``
  (option index); clips ``<video_idx>.mp4``.
* ``nextqa``: lmms-lab/NExTQA config ``MC``: ``video``, ``question``, ``a0``..``a4``,
  ``answer`` (index); clips ``<video>.mp4``.  The paper reports the val split, which NExT-QA's
  own release has as ``val.csv`` with the same columns: both are read.
* ``intentqa``: IntentQA's release ``{train,val,test}.csv`` (NExT-QA's columns; the clip column
  is ``video_id`` or ``video``); clips ``<id>.mp4``.  lmms-eval has no IntentQA task.
* ``mvbench``: OpenGVLab/MVBench, ``json/<subtask>.json``: ``video``, ``question``,
  ``candidates``, ``answer`` (a candidate's text); clips under ``video/<subtask folder>/``.

Clips are found under ``--data``: at the path the row names, else anywhere below by file name
(lmms-eval unpacks them to ``$HF_HOME/<cache_dir>``; link that folder inside ``--data``).  A
missing or undecodable clip is an error item (score 0, in the denominator).
"""

from __future__ import annotations

import csv
import functools
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from mm15.config import ImageConfig, VideoConfig
from mm15.data.media import load_video
from mm15.data.schema import Media, Message, Part, Sample, SampleError
from mm15.data.sources.rows import RowStore
from mm15.eval.item_stream import ItemStream
from mm15.eval.metrics import extract_choice
from mm15.eval.table_files import find_files, iter_rows
from mm15.eval.task_spec import EvalItem, TaskSpec

ANSWER_PREFIX = "Best Option: ("  # MM1.5 §5
MVBENCH_FRAMES = 16  # MVBench's own protocol (Li et al. 2024, §4: 16 frames per clip)
VIDEO_SUFFIXES = (".mp4", ".MP4", ".mkv", ".webm", ".avi", ".mov")
_IDS = ("question_id",)  # NExT-QA's qid counts within a clip: not an id
_LETTER_PREFIX = re.compile(r"^\s*\(?([A-Z])[.):]\s*")
# MVBench subtask → clip folder (OpenGVLab/MVBench's layout, as lmms-eval's mvbench task reads it)
MVBENCH_FOLDERS = {
    "object_interaction": "star/Charades_segment",
    "action_sequence": "star/Charades_segment",
    "action_prediction": "star/Charades_segment",
    "action_localization": "sta/sta_video_segment",
    "moving_count": "clevrer/video_validation",
    "fine_grained_pose": "nturgbd_convert",
    "character_order": "perception/videos",
    "object_shuffle": "perception/videos",
    "egocentric_navigation": "vlnqa",
    "moving_direction": "clevrer/video_validation",
    "episodic_reasoning": "tvqa/video_fps3_hq_segment",
    "fine_grained_action": "Moments_in_Time_Raw/videos",
    "scene_transition": "scene_qa/video",
    "state_change": "perception/videos",
    "moving_attribute": "clevrer/video_validation",
    "action_antonym": "ssv2_video_mp4",
    "unexpected_action": "FunQA_test/test",
    "counterfactual_inference": "clevrer/video_validation",
    "object_existence": "clevrer/video_validation",
    "action_count": "perception/videos",
}


@dataclass(frozen=True, kw_only=True)
class VideoLayout:
    """Where a video benchmark's fields live in a row."""

    video: tuple[str, ...]  # the clip column (the first present wins)
    options: tuple[str, ...]  # one list column, or one column per option
    answer: str
    answer_kind: Literal["letter", "index", "text"]
    keep: tuple[str, ...] = ()
    suffixes: tuple[str, ...] = (".parquet", ".jsonl", ".json")
    as_images: int | None = None  # MVBench: this many frames shown as images


def best_option_choice(pred: str, options: list[str]) -> int | None:
    """The option a continuation of "Best Option: (" picks: its first character when that is
    an option letter ("B) the cat" → 1), else :func:`extract_choice` on the whole text."""
    text = pred.strip()
    is_letter = bool(text) and "A" <= text[0] <= "Z" and ord(text[0]) - ord("A") < len(options)
    if is_letter and (len(text) == 1 or not text[1].isalnum()):
        return ord(text[0]) - ord("A")
    return extract_choice(text, options)


def best_option_score(pred: str, options: list[str], letter: str) -> float:
    return float(best_option_choice(pred, options) == ord(letter) - ord("A"))


def video_prompt(question: str, options: list[str]) -> str:
    lines = "\n".join(f"({chr(ord('A') + i)}) {o}" for i, o in enumerate(options))
    return f"Question: {question.strip()}\nOptions:\n{lines}\nOnly give the best option."


# ---------------------------------------------------------------------------------------------
# Rows → items


def _bad(reason: str, detail: str) -> SampleError:
    return SampleError(reason, detail)  # type: ignore[arg-type]


def _options(layout: VideoLayout, row: dict[str, Any], where: str) -> list[str]:
    if len(layout.options) == 1:
        value = row.get(layout.options[0])
        opts = [str(v) for v in value] if isinstance(value, list | tuple) else []
    else:
        opts = [str(row[c]) for c in layout.options if row.get(c) not in (None, "")]
    letters = [_LETTER_PREFIX.match(o) for o in opts]
    if opts and all(m and m.group(1) == chr(ord("A") + i) for i, m in enumerate(letters)):
        opts = [o[m.end() :] for o, m in zip(opts, letters, strict=True)]  # "A. text" → "text"
    if len(opts) < 2:
        raise _bad("malformed", f"{where}: {len(opts)} options in {list(layout.options)}")
    return [o.strip() for o in opts]


def _letter(layout: VideoLayout, value: Any, options: list[str], where: str) -> str:
    text = "" if value is None else str(value).strip()
    if layout.answer_kind == "index" and text.isdigit() and int(text) < len(options):
        return chr(ord("A") + int(text))
    if layout.answer_kind == "letter":
        v = text.strip("()").strip().rstrip(".")
        if len(v) == 1 and "A" <= v.upper() < chr(ord("A") + len(options)):
            return v.upper()
    if layout.answer_kind == "text" and text in options:
        return chr(ord("A") + options.index(text))
    raise _bad("malformed", f"{where}: answer {value!r:.60} is not one of {len(options)} options")


class _Clips:
    """Finds a row's clip under the data root: the named path, MVBench's subtask folder, or
    any video file below the root with that name (indexed once, on first need)."""

    def __init__(self, root: Path) -> None:
        self.root, self._by_name = root, None

    def find(self, name: str, subdirs: list[str], where: str) -> Path:
        for d in ["", *subdirs]:
            p = self.root / d / name
            if p.exists():
                return p
        if self._by_name is None:
            self._by_name = {}
            for p in sorted(self.root.rglob("*")):
                if p.suffix in VIDEO_SUFFIXES and p.is_file():
                    self._by_name.setdefault(p.name, p)
                    self._by_name.setdefault(p.stem, p)
        hit = self._by_name.get(Path(name).name)
        if hit is None:
            raise _bad("missing", f"{where}: no clip {name!r} under {self.root}")
        return hit


def _mvbench_dirs(path: Path) -> list[str]:
    folder = MVBENCH_FOLDERS.get(path.stem)
    if folder is None:
        return []
    return [f"{top}{folder}" for top in ("video/", "", "video/data0613/", "data0613/")]


def _video_item(
    spec: TaskSpec,
    layout: VideoLayout,
    row: dict[str, Any],
    where: str,
    key: str,
    clips: _Clips,
    path: Path,
) -> EvalItem:
    item_id = next((str(row[c]) for c in _IDS if row.get(c) not in (None, "")), key)
    meta = {c: row.get(c) for c in layout.keep}
    if layout.as_images:
        meta["subtask"] = path.stem
    try:
        question = row.get("question")
        if not isinstance(question, str) or not question.strip():
            raise _bad("empty", f"{where}: no question")
        options = _options(layout, row, where)
        letter = _letter(layout, row.get(layout.answer), options, where)
        name = next((row[c] for c in layout.video if row.get(c) not in (None, "")), None)
        if name is None:
            raise _bad("empty", f"{where}: no clip in column(s) {list(layout.video)}")
        clip = Media(kind="video", path=str(clips.find(str(name), _mvbench_dirs(path), where)))
        media = [clip]
        if layout.as_images:  # MVBench as multi-image: the sampled frames as images (Table 9)
            frames = load_video(clip, VideoConfig(num_frames=layout.as_images), ImageConfig())
            media = [Media(kind="image", decoded=f, size=f.size) for f in frames]
    except SampleError as e:
        return EvalItem(spec.name, item_id, None, meta=meta, error=str(e))
    parts = [*(Part.m(i) for i in range(len(media))), Part.t(video_prompt(question, options))]
    sample = Sample(
        id=item_id,
        source=f"eval/{spec.name}",
        category="eval",
        stage="eval",
        media=media,
        messages=[Message("user", parts)],
        answers=[letter],
        options=options,
        meta={"answer_prefix": ANSWER_PREFIX},
    )
    return EvalItem(spec.name, item_id, sample, [letter], options, meta=meta)


def _csv_rows(path: Path) -> Iterator[tuple[dict[str, Any] | SampleError, str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        for i, row in enumerate(csv.DictReader(f)):
            yield row, f"{path}:{i + 2}", f"{path.name}:{i}"  # line 1 is the header


def _table_files(layout: VideoLayout, spec: TaskSpec, data: Path, split: str | None) -> list[Path]:
    if data.is_file():
        return [data]
    split = split or spec.split
    csvs = sorted(p for p in data.rglob("*.csv") if ".csv" in layout.suffixes)
    if split:  # IntentQA / NExT-QA releases: one CSV per split, read alone when present
        csvs = [p for p in csvs if p.stem == split]
    if csvs:
        return csvs
    files = find_files(data, split, spec.config, split_required=False)
    return [p for p in files if p.suffix in layout.suffixes]


def read_video_task(
    spec: TaskSpec,
    data: str | Path,
    *,
    split: str | None = None,
    limit: int | None = None,
    layout: VideoLayout,
) -> ItemStream:
    """Items of a video benchmark in ``data`` (a table file, or a directory with the tables and
    the clips below it)."""
    data = Path(data)
    if not data.exists():
        raise FileNotFoundError(f"benchmark data {data} does not exist")
    files = _table_files(layout, spec, data, split)
    if not files:
        raise FileNotFoundError(f"{data}: no {'/'.join(layout.suffixes)} table for {spec.name}")
    clips = _Clips(data if data.is_dir() else data.parent)
    need = ("question", layout.answer)

    def rows(path: Path):
        if path.suffix == ".csv":
            return _csv_rows(path)
        return iter_rows(path, need, [*layout.video, *layout.options, *layout.keep, *_IDS])

    def make() -> Iterator[EvalItem]:
        for path in files:
            for row, where, key in rows(path):
                if isinstance(row, SampleError):
                    yield EvalItem(spec.name, key, None, error=str(row))
                else:
                    yield _video_item(spec, layout, row, where, key, clips, path)

    count = sum(sum(1 for _ in rows(p)) if p.suffix == ".csv" else _rows_in(p) for p in files)
    return ItemStream(files, count, make, limit=limit)


def _rows_in(path: Path) -> int:
    return len(RowStore([path], []))


def _spec(name: str, category: str, layout: VideoLayout, **kw: Any) -> TaskSpec:
    reader: Callable[..., ItemStream] = functools.partial(read_video_task, layout=layout)
    return TaskSpec(
        name=name,
        category=category,  # type: ignore[arg-type]
        metric="best_option",
        max_new_tokens=16,  # lmms-eval's generation_kwargs for these tasks
        reader=reader,
        **kw,
    )


def video_specs() -> list[TaskSpec]:
    """The four multiple-choice video benchmarks of Tables 10–11, and MVBench (Table 9)."""
    nextqa = VideoLayout(
        video=("video", "video_id"),
        options=("a0", "a1", "a2", "a3", "a4"),
        answer="answer",
        answer_kind="index",
        keep=("type",),
        suffixes=(".parquet", ".jsonl", ".json", ".csv"),
    )
    return [
        _spec(
            "videomme",
            "video",
            VideoLayout(
                video=("videoID",),
                options=("options",),
                answer="answer",
                answer_kind="letter",
                keep=("duration", "domain", "task_type"),
            ),
            split="test",
        ),
        _spec(
            "egoschema",
            "video",
            VideoLayout(
                video=("video_idx",), options=("option",), answer="answer", answer_kind="index"
            ),
            split="test",
            config="Subset",
        ),
        _spec("nextqa", "video", nextqa, split="val"),
        _spec("intentqa", "video", nextqa, split="test"),
        _spec(
            "mvbench",
            "multi_image",
            VideoLayout(
                video=("video",),
                options=("candidates",),
                answer="answer",
                answer_kind="text",
                as_images=MVBENCH_FRAMES,
            ),
        ),
    ]
