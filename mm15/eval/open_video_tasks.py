"""Open-ended video benchmarks scored by a judge (MM1.5 §5.1, Tables 10–11): ActivityNet-QA,
VCGBench and the seven LLaVA-Hound video-QA sets.  The model answers in free form; the judge
(:mod:`mm15.eval.judge`) scores each answer with the benchmark's own prompt and extraction
(:mod:`mm15.eval.judged_tasks`, metrics ``videoqa_judge``, ``vcgbench_judge``, ``hound_judge``).

Clips are one ``Media(kind="video")`` each, sampled by the model's ``video.num_frames`` with
mm15's one sampler, and looked up under ``--data`` as the multiple-choice video tasks look them
up (:mod:`mm15.eval.video_tasks`): at the named path, in the benchmark's clip folder, else
anywhere below by file name or stem.  A missing clip is an error item (score 0, counted).

**Layouts** (column names from lmms-eval's task YAMLs and utils, and LLaVA-Hound's test code):

* ``activitynetqa``: lmms-lab/ActivityNetQA config ``Generation``, ``test`` split:
  ``video_name``, ``question``, ``answer``, ``question_id``, ``type``; clips
  ``all_test/v_<video_name>.mp4`` (.webm / .mkv).  Prompt: the question capitalised, "?" and
  lmms-eval's " Answer the question using a single word or phrase."; 64 new tokens.
* ``vcgbench``: lmms-lab/VideoChatGPT, ``test`` split of its three configs, each read when
  present: ``Generic`` and ``Temporal`` (``video_name``, ``question``, ``answer``) and
  ``Consistency`` (``video_name``, ``question_1``, ``question_2``, ``answer``); clips
  ``Test_Videos/<video_name>.mp4`` (.MP4 / .mkv).  A consistency row holding both questions is
  one pair; rows holding one question each (the other "None", as lmms-eval's
  ``videochatgpt_process_results_consistency`` expects) pair with the next row of the same
  clip.  Each question is its own item (ids ``…:q1`` / ``…:q2``); the pair is judged once.
  The prompt is the question as written.
* ``llava_hound_<set>`` (``actnet``, ``vidal``, ``webvid`` in domain; ``msvd``, ``msrvtt``,
  ``tgif``, ``ssv2`` out of domain): ShareGPTVideo/test_video_and_instruction,
  ``video_instruction/test/<set>.qa.jsonl``: ``id`` (or ``idx``), ``video`` (a frame folder),
  ``caption`` (the grader's context), ``conversations`` (the question, then the answer); frame
  folders under ``video_data/test/`` (or at ``video`` below ``--data``).  The prompt is the
  question without its ``<video>`` / ``<image>`` tokens.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from mm15.data.schema import Media, Message, Part, Sample, SampleError
from mm15.eval.item_stream import ItemStream
from mm15.eval.table_files import find_files, iter_rows
from mm15.eval.task_spec import EvalItem, TaskSpec
from mm15.eval.video_tasks import _bad, _Clips, _rows_in

ANET_POST = " Answer the question using a single word or phrase."  # lmms-eval's post_prompt
HOUND_SETS = ("actnet", "vidal", "webvid", "msvd", "msrvtt", "tgif", "ssv2")
VCG_CONFIGS = {"Generic": "generic", "Temporal": "temporal", "Consistency": "consistency"}
_SPECIAL = re.compile(r"<(?:video|image)>")
_NONE = (None, "", "None")


def _item(
    spec: TaskSpec,
    item_id: str,
    meta: dict[str, Any],
    clip: Callable[[], Path],
    prompt: str,
    answer: Any,
    where: str,
) -> EvalItem:
    """An open-ended video item: the clip, then the prompt; the answer is the reference."""
    try:
        if not isinstance(answer, str) or not answer.strip():
            raise _bad("empty", f"{where}: no answer")
        if not prompt.strip():
            raise _bad("empty", f"{where}: no question")
        media = Media(kind="video", path=str(clip()))
    except SampleError as e:
        return EvalItem(spec.name, item_id, None, meta=meta, error=str(e))
    sample = Sample(
        id=item_id,
        source=f"eval/{spec.name}",
        category="eval",
        stage="eval",
        media=[media],
        messages=[Message("user", [Part.m(0), Part.t(prompt)])],
        answers=[answer],
    )
    return EvalItem(spec.name, item_id, sample, [answer], meta=meta)


def _stream(
    spec: TaskSpec,
    files: list[Path],
    count: int,
    items: Callable[[Path], Iterator[EvalItem]],
    limit: int | None,
) -> ItemStream:
    if not files:
        raise FileNotFoundError(f"no table for {spec.name}")

    def make() -> Iterator[EvalItem]:
        for path in files:
            yield from items(path)

    return ItemStream(files, count, make, limit=limit)


def _tables(spec: TaskSpec, data: Path, split: str | None, config: str | None) -> list[Path]:
    if data.is_file():
        return [data]
    files = find_files(data, split or spec.split, config, split_required=False)
    return [p for p in files if p.suffix in (".parquet", ".jsonl", ".json")]


def _root(data: Path) -> Path:
    if not data.exists():
        raise FileNotFoundError(f"benchmark data {data} does not exist")
    return data if data.is_dir() else data.parent


# ---------------------------------------------------------------------------------------------
# ActivityNet-QA


def activitynetqa_prompt(question: str) -> str:
    """lmms-eval's ``activitynetqa_doc_to_text``: capitalised, "?" appended, then the post
    prompt."""
    return question.capitalize() + "?" + ANET_POST


def read_activitynetqa(
    spec: TaskSpec, data: str | Path, *, split: str | None = None, limit: int | None = None
) -> ItemStream:
    data = Path(data)
    clips = _Clips(_root(data))
    files = _tables(spec, data, split, spec.config)
    keep = ("question_id", "type", "video_name")

    def items(path: Path) -> Iterator[EvalItem]:
        for row, where, key in iter_rows(path, ("question", "answer"), keep):
            if isinstance(row, SampleError):
                yield EvalItem(spec.name, key, None, error=str(row))
                continue
            item_id = str(row["question_id"]) if row.get("question_id") not in _NONE else key
            question = str(row.get("question") or "")
            meta = {"question": question, "type": row.get("type")}
            name = f"v_{row.get('video_name')}"
            clip = functools.partial(clips.find, name, ["all_test"], where)
            if row.get("video_name") in _NONE:
                clip = functools.partial(_missing, f"{where}: no video_name")
            yield _item(
                spec, item_id, meta, clip, activitynetqa_prompt(question), row["answer"], where
            )

    return _stream(spec, files, sum(_rows_in(p) for p in files), items, limit)


def _missing(detail: str) -> Path:
    raise _bad("empty", detail)


# ---------------------------------------------------------------------------------------------
# VCGBench (Video-ChatGPT's generative benchmark)


def _vcg_items(spec: TaskSpec, path: Path, kind: str, clips: _Clips) -> Iterator[EvalItem]:
    """A config's rows as items; consistency rows as pairs of items (module docstring)."""
    cols = ("question_1", "question_2") if kind == "consistency" else ("question",)
    pending: tuple[dict, str, str] | None = None  # a question-1 row waiting for its question 2

    def one(row: dict, where: str, item_id: str, question: Any, extra: dict) -> EvalItem:
        name = row.get("video_name")
        meta = {"vcg_set": kind, "question": question, "video_name": name, **extra}
        clip = functools.partial(clips.find, str(name), ["Test_Videos"], where)
        if name in _NONE:
            clip = functools.partial(_missing, f"{where}: no video_name")
        text = "" if question in _NONE else str(question)
        return _item(spec, item_id, meta, clip, text, row.get("answer"), where)

    def unpaired(row: dict, where: str, key: str) -> EvalItem:
        meta = {"vcg_set": kind, "pair": key, "which": 1, "video_name": row.get("video_name")}
        error = f"malformed: {where}: a consistency question without its paraphrase"
        return EvalItem(spec.name, f"{key}:q1", None, meta=meta, error=error)

    for row, where, key in iter_rows(path, ("answer",), ("video_name", *cols)):
        if isinstance(row, SampleError):
            meta = {"vcg_set": kind, "pair": key, "which": 1}
            yield EvalItem(spec.name, key, None, meta=meta, error=str(row))
            continue
        if kind != "consistency":
            yield one(row, where, key, row.get("question"), {})
            continue
        q1, q2 = row.get("question_1"), row.get("question_2")
        if q1 not in _NONE and q2 not in _NONE:  # both questions in one row
            for which, q in ((1, q1), (2, q2)):
                yield one(row, where, f"{key}:q{which}", q, {"pair": key, "which": which})
            continue
        if q1 not in _NONE:  # question 1 alone: its paraphrase should come next
            if pending is not None:
                yield unpaired(*pending)
            pending = (row, where, key)
            continue
        if pending is not None and pending[0].get("video_name") == row.get("video_name"):
            first, first_where, pair = pending
            pending = None
            q1 = first.get("question_1")
            yield one(first, first_where, f"{pair}:q1", q1, {"pair": pair, "which": 1})
            yield one(row, where, f"{pair}:q2", q2, {"pair": pair, "which": 2})
            continue
        if pending is not None:
            yield unpaired(*pending)
            pending = None
        meta = {"vcg_set": kind, "pair": key, "which": 2, "video_name": row.get("video_name")}
        error = f"malformed: {where}: a consistency question 2 without its question 1"
        yield EvalItem(spec.name, f"{key}:q2", None, meta=meta, error=error)
    if pending is not None:
        yield unpaired(*pending)


def read_vcgbench(
    spec: TaskSpec, data: str | Path, *, split: str | None = None, limit: int | None = None
) -> ItemStream:
    data = Path(data)
    root = _root(data)  # one config's folder given: its clips are beside it
    clips = _Clips(root.parent if root.name in VCG_CONFIGS else root)
    kinds: dict[Path, str] = {}
    for path in _tables(spec, data, split, None):  # a config's kind: the folder it sits in
        parts = (
            (data.name, *path.relative_to(data).parts[:-1])
            if data.is_dir()
            else (path.parent.name,)
        )
        kind = next((k for cfg, k in VCG_CONFIGS.items() if cfg in parts), None)
        if kind is not None:
            kinds[path] = kind
    if not kinds:
        raise FileNotFoundError(
            f"{data}: no table under a Generic/, Temporal/ or Consistency/ folder for {spec.name}"
        )
    files = list(kinds)
    count = 0
    for p in files:
        rows = _rows_in(p)
        count += 2 * rows if kinds[p] == "consistency" else rows
    return _stream(spec, files, count, lambda p: _vcg_items(spec, p, kinds[p], clips), limit)


# ---------------------------------------------------------------------------------------------
# LLaVA-Hound


def hound_question(text: str) -> str:
    """The question of a ``conversations`` turn without its media tokens."""
    return _SPECIAL.sub("", text).strip()


def read_hound(
    spec: TaskSpec,
    data: str | Path,
    *,
    split: str | None = None,
    limit: int | None = None,
    name: str,
) -> ItemStream:
    data = Path(data)
    root = _root(data)
    clips = _Clips(root)
    files = [data] if data.is_file() else sorted(root.rglob(f"{name}.qa.jsonl"))
    if not files:
        raise FileNotFoundError(f"{data}: no {name}.qa.jsonl for {spec.name}")

    def items(path: Path) -> Iterator[EvalItem]:
        for row, where, key in iter_rows(
            path, ("conversations",), ("id", "idx", "video", "caption")
        ):
            if isinstance(row, SampleError):
                yield EvalItem(spec.name, key, None, error=str(row))
                continue
            item_id = next((str(row[c]) for c in ("id", "idx") if row.get(c) not in _NONE), key)
            turns = row.get("conversations") or []
            question = answer = ""
            if len(turns) >= 2 and all(isinstance(t, dict) for t in turns[:2]):
                question = hound_question(str(turns[0].get("value") or ""))
                answer = turns[1].get("value")
            meta = {
                "question": question,
                "caption": row.get("caption") or "",
                "video": row.get("video"),
            }
            video = row.get("video")
            clip = functools.partial(
                clips.find, str(video), ["video_data/test", "video_data"], where
            )
            if video in _NONE:
                clip = functools.partial(_missing, f"{where}: no video")
            yield _item(spec, item_id, meta, clip, question, answer, where)

    return _stream(spec, files, sum(_rows_in(p) for p in files), items, limit)


def open_video_specs() -> list[TaskSpec]:
    """ActivityNet-QA and VCGBench (Table 10), the LLaVA-Hound sets (Table 11)."""
    specs = [
        TaskSpec(
            name="activitynetqa",
            category="video",
            metric="videoqa_judge",
            split="test",
            config="Generation",
            max_new_tokens=64,  # lmms-eval's generation_kwargs
            reader=read_activitynetqa,
        ),
        TaskSpec(
            name="vcgbench",
            category="video",
            metric="vcgbench_judge",
            split="test",
            max_new_tokens=1024,  # lmms-eval's videochatgpt generation_kwargs
            reader=read_vcgbench,
        ),
    ]
    for name in HOUND_SETS:
        specs.append(
            TaskSpec(
                name=f"llava_hound_{name}",
                category="video",
                metric="hound_judge",
                max_new_tokens=1024,  # LLaVA-Hound's inference_test_qa default
                reader=functools.partial(read_hound, name=name),
            )
        )
    return specs
