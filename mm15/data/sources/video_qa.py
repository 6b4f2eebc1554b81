"""Video QA annotations (on-disk layouts: mm15/data/registry.toml): VideoChat2-IT and
ActivityNet-QA.  Videos are ``Media(kind="video")`` paths (a file or a folder of frames), as the
conversation reader gives them; frames are sampled at formatting time, never here.

* :class:`VideoChat2Reader`: a JSON list (or JSONL) of ``{"video" | "image": path, "QA": [{"i",
  "q", "a"}, …], "start"?, "end"?}``.  The first QA's ``i`` (the task instruction) becomes the
  system message; each QA a user → assistant pair, the media prepended to the first question.
  ``start`` / ``end`` (seconds) are kept in ``meta["clip"] = [start, end]`` (either may be
  None): the media layer does not cut clips yet, so the whole video is sampled.
* :class:`ActivityNetQAReader`: the original ``{split}_q.json`` (``question, question_id,
  video_name``) joined on ``question_id`` with the ``{split}_a.json`` next to it (``answer,
  question_id, type``); or lmms-eval's table (Parquet / Arrow / JSONL with ``video_name,
  question, answer, question_id``).  The video is ``v_<video_name>.<ext>`` under ``root``, the
  first of ``video_exts`` that exists (``missing`` if none).  ``user: [video, question]`` →
  ``assistant: answer``, and ``Sample.answers = [answer]``; at ``stage="eval"`` there is no
  assistant turn.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mm15.data.schema import Category, Media, Message, Part, Sample, SampleError, Stage
from mm15.data.sources.canonical import PathLike, as_paths, finish, media_under_root, parse_json
from mm15.data.sources.conversation import (
    ConversationReader,
    _as_list,
    _media_path,
    build_messages,
)
from mm15.data.sources.rows import RowStore

ANET_COLUMNS = ("video_name", "question", "answer", "question_id")


class VideoChat2Reader(ConversationReader):
    """Map-style reader of VideoChat2-IT annotation files (module docstring); the options are
    the conversation reader's (``root``, ``video_root``, ``allow_absolute_paths``, ``fmt``)."""

    def __init__(
        self,
        paths: PathLike | Sequence[PathLike],
        *,
        source: str,
        category: Category = "video",
        stage: Stage = "sft",
        **kwargs: Any,
    ):
        super().__init__(paths, source=source, category=category, stage=stage, **kwargs)

    def __getitem__(self, i: int) -> Sample:
        rec, where, row = self._record(i)
        absolute = self.allow_absolute_paths
        images = [
            _media_path(e, self.root, "image", where, absolute)
            for e in _as_list(rec.get("image"), "image", where)
        ]
        videos = [
            _media_path(e, self.video_root, "video", where, absolute)
            for e in _as_list(rec.get("video"), "video", where)
        ]
        if not images and not videos:
            raise SampleError("missing", f"{where}: no 'video' or 'image'")
        media = [Media(path=str(p)) for p in images]
        media += [Media(kind="video", path=str(p)) for p in videos]
        messages = build_messages(
            _qa_turns(rec.get("QA"), where),
            num_images=len(images),
            num_videos=len(videos),
            fmt=self.fmt,
            where=where,
        )
        meta: dict[str, Any] = {}
        if rec.get("start") is not None or rec.get("end") is not None:
            meta["clip"] = _clip(rec.get("start"), rec.get("end"), where)
        sample = Sample(
            id=self._sample_id(rec, i, row),
            source=self.source,
            category=self.category,
            stage=self.stage,
            media=media,
            messages=messages,
            meta=meta,
        )
        return finish(sample, where)


def _qa_turns(qa: Any, where: str) -> list[dict[str, str]]:
    if not isinstance(qa, list) or not qa:
        raise SampleError("empty", f"{where}: no 'QA' list")
    turns = []
    for n, item in enumerate(qa):
        if not isinstance(item, dict):
            raise SampleError("malformed", f"{where}: QA {n} is {type(item).__name__}")
        q, a = item.get("q"), item.get("a")
        if not isinstance(q, str) or not isinstance(a, str):
            raise SampleError("malformed", f"{where}: QA {n} needs string 'q' and 'a'")
        instruction = item.get("i") if n == 0 else None
        if isinstance(instruction, str) and instruction.strip():
            turns.append({"role": "system", "content": instruction})
        turns += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
    return turns


def _clip(start: Any, end: Any, where: str) -> list[float | None]:
    out = []
    for name, v in (("start", start), ("end", end)):
        if v is None:
            out.append(None)
            continue
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v < 0:
            raise SampleError("malformed", f"{where}: {name} = {v!r} is not seconds >= 0")
        out.append(float(v))
    if None not in out and out[0] >= out[1]:
        raise SampleError("malformed", f"{where}: start {out[0]} is not before end {out[1]}")
    return out


class ActivityNetQAReader:
    """Map-style reader of ActivityNet-QA (module docstring).

    ``paths``: ``*_q.json`` files and/or lmms-eval tables.  ``answers``: the answer file of
    each ``*_q.json``, in order (default: the ``*_a.json`` beside it); a missing one is a
    ``ValueError`` naming it.  ``root``: the video folder; ``prompt``: the
    user text, with ``{question}``.
    """

    def __init__(
        self,
        paths: PathLike | Sequence[PathLike],
        *,
        source: str,
        root: PathLike,
        category: Category = "video",
        stage: Stage = "sft",
        answers: PathLike | Sequence[PathLike] | None = None,
        video_exts: Sequence[str] = ("mp4", "mkv", "webm"),
        prompt: str = "{question}",
        allow_absolute_paths: bool = False,
    ):
        if "{question}" not in prompt:
            raise ValueError(f"prompt {prompt!r} has no {{question}} placeholder")
        self.paths = as_paths(paths)
        self.name = self.source = source
        self.category, self.stage, self.prompt = category, stage, prompt
        self.root, self.video_exts = Path(root), tuple(video_exts)
        self.allow_absolute_paths = allow_absolute_paths
        q_files = [p for p in self.paths if p.name.endswith("_q.json")]
        a_files = [q.with_name(q.name[: -len("_q.json")] + "_a.json") for q in q_files]
        if answers is not None:
            a_files = as_paths(answers)
            if len(a_files) != len(q_files):
                raise ValueError(
                    f"answers: {len(a_files)} file(s) for {len(q_files)} *_q.json "
                    "file(s); give one per question file, in order"
                )
        a_of = dict(zip(q_files, a_files, strict=True))
        self._parts: list[list[Any] | RowStore] = []
        self._index: list[tuple[int, int]] = []
        for fi, path in enumerate(self.paths):
            if path in a_of:
                part: list[Any] | RowStore = _join(path, a_of[path])
            elif path.suffix in (".parquet", ".arrow", ".jsonl"):
                part = RowStore([path], ANET_COLUMNS)
                part.check_columns()
            else:
                raise ValueError(
                    f"{path}: expected a *_q.json question file or an lmms-eval "
                    "table (.parquet / .arrow / .jsonl)"
                )
            self._parts.append(part)
            self._index += [(fi, j) for j in range(len(part))]

    def __len__(self) -> int:
        return len(self._index)

    def __getitem__(self, i: int) -> Sample:
        fi, j = self._index[i]
        part = self._parts[fi]
        if isinstance(part, RowStore):
            row, where, key = part.row(j)
        else:
            row, where, key = part[j], f"{self.paths[fi]} row {j}", f"{self.paths[fi].name}:{j}"
        if not isinstance(row, dict):
            raise SampleError("malformed", f"{where}: row is {type(row).__name__}, not an object")
        question, answer, name = row.get("question"), row.get("answer"), row.get("video_name")
        if answer is None and "answer" not in row:
            raise SampleError(
                "missing", f"{where}: no answer with question_id {row.get('question_id')!r}"
            )
        for col, v in (("question", question), ("answer", answer), ("video_name", name)):
            if not isinstance(v, str) or not v.strip():
                raise SampleError(
                    "empty" if isinstance(v, str) or v is None else "malformed",
                    f"{where}: {col} is {v!r:.60}",
                )
        video = self._video(name, where)
        messages = [Message("user", [Part.m(0), Part.t(self.prompt.format(question=question))])]
        if self.stage != "eval":
            messages.append(Message("assistant", [Part.t(answer)]))
        qid = row.get("question_id")
        sample = Sample(
            id=str(qid) if qid is not None else key,
            source=self.source,
            category=self.category,
            stage=self.stage,
            media=[Media(kind="video", path=str(video))],
            messages=messages,
            answers=[answer],
            meta={"video_name": name, **({"type": row["type"]} if "type" in row else {})},
        )
        return finish(sample, where)

    def _video(self, name: str, where: str) -> Path:
        stems = [f"v_{name}"] + ([name] if name.startswith("v_") else [])
        for rel in (f"{stem}.{ext}" for stem in stems for ext in self.video_exts):
            if (self.root / rel).exists():
                return media_under_root(
                    self.root, rel, where, allow_absolute=self.allow_absolute_paths
                )
        raise SampleError(
            "missing",
            f"{where}: no video v_{name}.{{{','.join(self.video_exts)}}} under {self.root}",
        )


def _join(q_path: Path, a_path: Path) -> list[Any]:
    """Rows of ``*_q.json`` with ``answer`` / ``type`` of their answer file."""
    if not a_path.is_file():
        raise ValueError(f"{q_path}: its answer file {a_path} is missing")
    lists = []
    for path in (q_path, a_path):
        try:
            data = parse_json(path.read_bytes(), str(path))
        except SampleError as e:
            raise ValueError(str(e)) from None
        if not isinstance(data, list):
            raise ValueError(f"{path}: an ActivityNet-QA file must hold a list")
        lists.append(data)
    questions, answers = lists
    by_id = {a.get("question_id"): a for a in answers if isinstance(a, dict)}
    rows: list[Any] = []
    for q in questions:
        a = by_id.get(q.get("question_id")) if isinstance(q, dict) else None
        if not isinstance(q, dict):
            rows.append(q)
            continue
        extra = (
            {"answer": a.get("answer"), **({"type": a["type"]} if "type" in a else {})} if a else {}
        )
        rows.append({**q, **extra})
    return rows
