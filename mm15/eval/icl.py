"""Multimodal in-context learning (MM1.5 §4.1, Table 8): a k-shot prompt builder and the
VL-ICL image-to-text tasks, 4-shot (the paper's protocol).

**The k-shot prompt** (:func:`kshot_sample`): a conversation in the model's own chat template,
one user turn per support example (its images, then its question) answered by an assistant
turn holding the support answer, then the query's user turn; the task instruction opens the
first user turn.  So the answers the model sees are in its own voice, interleaved with the
images they belong to.

**VL-ICL** (Zong et al., ys-zong/VL-ICL; data: its Hugging Face release, one folder per task
holding ``query.json`` and ``support.json``, JSON lists; image paths are relative to the
release's root, the folder above the task folders).  Fields, as VL-ICL's ``utils/`` read them:
a query has ``image`` (a path or a list), ``question``, ``answer`` and optionally ``id``;
``operator_induction*`` queries add ``operator`` ("+", "-", "x") and their support answers are
lists of three (one per operator); ``open_mi`` queries carry ``classes`` and ``support``
(class → ``{"images": [...]}``), and each shot is "This is a" + the class name for two classes
(so 4-shot shows 8 examples); ``matching_mi`` support rows hold a ``same`` and a ``diff``
example (4-shot: 8 examples).  Shots are drawn as VL-ICL draws them (``random`` seeded with
0, queries in file order), with its "detailed" task descriptions; answers are scored with
VL-ICL's matching (:func:`vlicl_match`).
"""

from __future__ import annotations

import functools
import json
import random
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mm15.data.schema import Media, Message, Part, Sample, SampleError
from mm15.eval.item_stream import ItemStream
from mm15.eval.task_spec import EvalItem, TaskSpec

N_SHOT = 4  # MM1.5 Table 8: "4-shot accuracy reported for each subtask"
SEED = 0  # VL-ICL's default --seed
OPERATORS = {"+": 0, "-": 1, "x": 2}
# VL-ICL's "detailed" task descriptions (utils/ICL_utils.py get_task_instruction)
INSTRUCTIONS = {
    "clevr": "The image contains objects of different shapes, colors, sizes and materials. The "
    "question describes the attribute and its value. You need to find all objects within the "
    "image that satisfy the condition. You should induce what operation to use according to "
    "the results of the in-context examples and then calculate the result.",
    "matching_mi": "According to the few-shot examples, induce what operation to do and "
    'determine the output for the two new images. Answer with "yes" or "no".',
    "open_mi": "Induce the concept from the in-context examples. Answer the question with a "
    "single word or phase.",
    "operator_induction": "The image contains two digit numbers and a ? representing the "
    "mathematical operator. Induce the mathematical operator (addition, multiplication, minus) "
    "according to the results of the in-context examples and calculate the result.",
    "operator_induction_interleaved": "There are two input images, each representing a single "
    "digit number. Induce the mathematical operator (addition, multiplication, minus) that is "
    "applied between the two images according to the results of the in-context examples. "
    "Calculate the result for the new query images.",
    "textocr": "An image will be provided where a red box is drawn around the text of interest. "
    "Answer with the text inside the red box. Ensure that the transcription is precise, "
    "reflecting the exact characters, including letters, numbers, symbols.",
}


@dataclass
class Shot:
    """One example: its images, question and (for support examples) answer."""

    images: list[Media]
    question: str
    answer: str | None = None


def kshot_sample(sample_id: str, instruction: str, support: Sequence[Shot], query: Shot) -> Sample:
    """The k-shot conversation (module docstring): media numbered in order of appearance."""
    media: list[Media] = []
    messages: list[Message] = []
    for k, shot in enumerate([*support, query]):
        parts = [Part.t(instruction + "\n")] if k == 0 and instruction else []
        parts += [Part.m(len(media) + i) for i in range(len(shot.images))]
        parts.append(Part.t(shot.question))
        media += shot.images
        messages.append(Message("user", parts))
        if k < len(support):
            if shot.answer is None:
                raise ValueError(f"{sample_id}: support example {k} has no answer")
            messages.append(Message("assistant", [Part.t(shot.answer)]))
    return Sample(
        id=sample_id,
        source="eval/icl",
        category="eval",
        stage="eval",
        media=media,
        messages=messages,
    )


def vlicl_match(task: str, pred: str, answer: str) -> float:
    """VL-ICL's scoring (evals/eval.py): the prediction is cut at its first newline, else at
    its first "." (when that is not the first character); operator induction keeps the first
    integer; matching_mi is right when "yes" occurs in it exactly when the answer is "yes";
    the others need case-insensitive equality."""
    text = pred.strip().strip("\n")
    cut = text.find("\n")
    if cut <= 0:
        cut = text.find(".")
    if cut > 0:
        text = text[:cut]
    if task == "matching_mi":
        return float(("yes" in text.lower()) == (str(answer).lower() == "yes"))
    if "operator_induction" in task:
        m = re.search(r"\d+", text)
        text = m.group() if m else ""
    return float(text.lower() == str(answer).lower())


# ---------------------------------------------------------------------------------------------
# VL-ICL's layout


def _bad(reason: str, detail: str) -> SampleError:
    return SampleError(reason, detail)  # type: ignore[arg-type]


def _images(root: Path, value: Any, where: str) -> list[Media]:
    paths = [value] if isinstance(value, str) else value
    if not isinstance(paths, list) or not paths:
        raise _bad("missing", f"{where}: no image paths in {value!r:.80}")
    out = []
    for p in paths:
        full = root / str(p)
        if not full.is_file():
            raise _bad("missing", f"{where}: image {p} not found under {root}")
        out.append(Media(kind="image", path=str(full)))
    return out


def _answer(value: Any, task: str) -> str:
    return str(value)  # VL-ICL's format_answer: numbers as text


def select_shots(
    task: str, query: dict[str, Any], support: list[dict[str, Any]], n: int, rng: random.Random
) -> list[dict[str, Any]]:
    """VL-ICL's ``select_demonstration`` for the image-to-text tasks (same draws, same order)."""
    if "operator_induction" in task:
        picked = rng.sample(support, n)
        k = OPERATORS[query["operator"]]
        return [{**s, "answer": s["answer"][k]} for s in picked]
    if task == "open_mi":
        cls = query["answer"]
        other = rng.choice([c for c in query["classes"] if c != cls])
        order = [cls, other] if rng.choice([True, False]) else [other, cls]
        return [
            {"image": [query["support"][c]["images"][i]], "answer": c, "question": "This is a"}
            for i in range(n)
            for c in order
        ]
    if task == "matching_mi":
        return [s[part] for s in rng.sample(support, n) for part in ("same", "diff")]
    return rng.sample(support, n)


def _root_and_folder(data: Path, task: str) -> tuple[Path, Path]:
    if (data / "query.json").is_file():
        return data.parent, data
    if (data / task / "query.json").is_file():
        return data, data / task
    raise FileNotFoundError(f"{data}: no query.json (nor {task}/query.json), VL-ICL's layout")


def _load(path: Path) -> list[dict[str, Any]]:
    try:
        rows = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not JSON: {e}") from None
    if not isinstance(rows, list):
        raise ValueError(f"{path}: expected a JSON list, got {type(rows).__name__}")
    return rows


def _item(spec: TaskSpec, task: str, root: Path, q: Any, i: int, shots) -> EvalItem:
    item_id = str(q.get("id", i)) if isinstance(q, dict) else str(i)
    where = f"{task}/query.json:{i}"
    try:
        if not isinstance(q, dict) or q.get("answer") in (None, "") or "question" not in q:
            raise _bad("malformed", f"{where}: a query needs question, answer and image")
        support = [
            Shot(_images(root, s.get("image"), where), s["question"], _answer(s["answer"], task))
            for s in shots(q)
        ]
        query = Shot(_images(root, q.get("image"), where), str(q["question"]))
    except SampleError as e:
        return EvalItem(spec.name, item_id, None, error=str(e))
    except (KeyError, IndexError, TypeError, ValueError) as e:
        err = f"malformed: {where}: cannot draw {N_SHOT} shots: {e!r}"
        return EvalItem(spec.name, item_id, None, error=err)
    answer = _answer(q["answer"], task)
    sample = kshot_sample(item_id, INSTRUCTIONS[task], support, query)
    sample.answers = [answer]
    return EvalItem(spec.name, item_id, sample, [answer], meta={"n_shot": N_SHOT})


def read_vlicl(
    spec: TaskSpec,
    data: str | Path,
    *,
    split: str | None = None,
    limit: int | None = None,
    task: str,
) -> ItemStream:
    """The 4-shot items of one VL-ICL task (``data``: the release root or the task folder)."""
    root, folder = _root_and_folder(Path(data), task)
    queries, support = _load(folder / "query.json"), _load(folder / "support.json")
    if task != "open_mi" and len(support) < N_SHOT:
        raise ValueError(f"{folder}/support.json has {len(support)} examples, {N_SHOT} needed")

    def make() -> Iterator[EvalItem]:
        rng = random.Random(SEED)
        for i, q in enumerate(queries):
            yield _item(
                spec, task, root, q, i, lambda q: select_shots(task, q, support, N_SHOT, rng)
            )

    files = [folder / "query.json", folder / "support.json"]
    return ItemStream(files, len(queries), make, limit=limit)


def icl_specs() -> list[TaskSpec]:
    """The six VL-ICL image-to-text tasks of Table 8."""
    return [
        TaskSpec(
            name=f"vlicl_{task}",
            category="icl",
            metric="vlicl",
            max_new_tokens=15,  # VL-ICL's --max-new-tokens
            reader=functools.partial(read_vlicl, task=task),
        )
        for task in INSTRUCTIONS
    ]
