"""Benchmarks scored by a judge model (MM1.5 §4.1: MathVista and MM-Vet, Table 5; LLaVA-Bench
(In-the-Wild), Table 5; Ferret-Bench, Table 7; open-ended video QA, Tables 10–11), each with its
official judge prompt (:mod:`mm15.eval.judge_prompts`) and score extraction.

The model's answers are generated as for any task; then :func:`judge_rows` asks the judge
(:class:`mm15.eval.judge.Judge`) about every answered item and :func:`mm15.eval.judge_scores.aggregate_judged` scores
the benchmark.  An item whose judgement failed (an HTTP error after the client's retries, a reply
the official extraction cannot read) keeps score 0 and stays in the denominator; its
``judge.failed`` says why and ``details["n_judge_failed"]`` counts it.

* **mathvista** (testmini): the official extraction — rules first (an option's text, an integer
  or float answer as written), else the judge extracts the answer with MathVista's demo prompt;
  then the official normalisation (option letter → text, nearest option by edit distance,
  ``int``/``round(precision)``) and exact string match.  Score: accuracy.
* **mmvet**: the official few-shot grader prompt; the first space-separated token of the reply is
  the score in [0, 1]; unreadable replies are re-asked with the official suffix at temperature
  0.0, 0.5, 1.0, 1.5 (5 asks in all).  Score: the mean; details: per capability.
* **llava_bench**, **ferret_bench**: the judge scores the reference (GPT-4) answer and the
  model's on 1–10 in one review; the first line must be exactly two numbers.  Score (per
  category and overall): mean model score / mean reference score (official
  ``summarize_gpt_review.py``); a failed item adds 0 to the model's mean and nothing to the
  reference's, so without failures this is exactly the official number.  Ferret-Bench answers
  lose their coordinate tags (refer_*) or have them written as 0–1 boxes (ground_conv), as
  Ferret's ``postprocess_answer`` does for its own format.
* metric **videoqa_judge** (ActivityNet-QA style, for the video tasks): Video-ChatGPT's prompt;
  the reply is a Python dict with ``pred`` (yes/no) and ``score`` (0–5).  Score: the share of
  "yes"; details: ``average_score``.
* metric **vcgbench_judge** (VCGBench, Table 10): each dimension asked with its own prompt —
  correctness, detail orientation and context on the Generic questions, temporal on the
  Temporal ones, consistency on each pair of paraphrased questions (both answers in one ask);
  the reply is a Python dict whose ``score`` is read with ``int`` (Video-ChatGPT's
  ``evaluate_benchmark_*.py``).  Details: each dimension's mean (0–5) and ``average_score``, the
  mean of the dimensions present (the paper's number); score: ``average_score / 5``.
* metric **hound_judge** (LLaVA-Hound video QA, Table 11): the caption-grounded grader; the
  score is LLaVA-Hound's ``get_score`` ("Score: N", else the most frequent number, ties
  averaged, else 1) and a score >= 3 is correct (MM1.5 §5.1).  Score: accuracy; details:
  ``average_score`` (1–5).
"""

from __future__ import annotations

import functools
import re
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from mm15.data.coords import Box, CoordinateError, format_box
from mm15.eval import judge_prompts as jp
from mm15.eval.judge import Judge, Reply
from mm15.eval.judge_scores import (
    VCG_SETS,
    ferret_answer,
    hound_score,
    hound_truncate,
    mathvista_normalize,
    mathvista_rule,
    mmvet_score,
    review_scores,
    vcg_score,
    videoqa_verdict,
)
from mm15.eval.task_spec import Columns, Row, TaskSpec

JUDGED_METRICS = (
    "mathvista_judge",
    "mmvet_judge",
    "llava_judge",
    "ferret_judge",
    "videoqa_judge",
    "vcgbench_judge",
    "hound_judge",
)
# A box in Ferret-Bench's questions: [x1, y1, x2, y2] in 0–1.
UNIT_BOX = re.compile(r"\[\s*([0-9.]+)\s*,\s*([0-9.]+)\s*,\s*([0-9.]+)\s*,\s*([0-9.]+)\s*\]")
Record = dict[str, Any]  # row["judge"]: failed, reply, calls, cached, and the metric's fields


# ---------------------------------------------------------------------------------------------
# Tasks and their prompts


def _mathvista_prompt(row: Row) -> str:
    """lmms-eval ``mathvista_testmini`` (shot_type "format-prompt", zero-shot)."""
    question = row["question"] + (f" (Unit: {row['unit']})" if row.get("unit") else "")
    choices = row.get("choices") or []
    letters = "\n".join(f"{chr(ord('A') + i)}. {c}" for i, c in enumerate(choices))
    kind = row.get("question_type")
    if kind != "multi_choice" and row.get("answer_type") == "float":
        kind = f"float{int(row['precision'])}" if row.get("precision") else None
    elif kind != "multi_choice":
        kind = row.get("answer_type")
    return "\n".join(e for e in (question, letters, jp.MATHVISTA_HINTS.get(kind or "", "")) if e)


def _ferret_prompt(row: Row) -> str:
    """The question, its "[x1, y1, x2, y2]" boxes (0–1) written as mm15 coordinate tags."""

    def tag(m: re.Match) -> str:
        try:
            return format_box(Box(*(float(v) for v in m.groups())), (1.0, 1.0))
        except (CoordinateError, ValueError):
            return m.group(0)

    return UNIT_BOX.sub(tag, row["question"])


def judged_specs() -> list[TaskSpec]:
    """MathVista (knowledge), LLaVA-Bench and MM-Vet (general), Ferret-Bench (refer_ground)."""
    return [
        TaskSpec(
            name="mathvista",
            category="knowledge",
            metric="mathvista_judge",
            split="testmini",
            prompt=_mathvista_prompt,
            max_new_tokens=1024,
            columns=Columns(
                images=("decoded_image",),
                answer="answer",
                id="pid",
                keep=("query", "question_type", "answer_type", "choices", "precision", "unit"),
            ),
        ),
        TaskSpec(
            name="llava_bench",
            category="general",
            metric="llava_judge",
            split="train",
            prompt=lambda r: r["question"],
            max_new_tokens=1024,
            columns=Columns(
                answer="gpt_answer", id="question_id", keep=("question", "caption", "category")
            ),
        ),
        TaskSpec(
            name="mmvet",
            category="general",
            metric="mmvet_judge",
            split="test",
            prompt=lambda r: r["question"],
            max_new_tokens=1024,
            columns=Columns(answer="answer", id="question_id", keep=("question", "capability")),
        ),
        TaskSpec(
            name="ferret_bench",
            category="refer_ground",
            metric="ferret_judge",
            split="test",
            prompt=_ferret_prompt,
            max_new_tokens=1024,
            columns=Columns(
                answer="gpt_answer", id="question_id", keep=("question", "context", "category")
            ),
        ),
    ]


# ---------------------------------------------------------------------------------------------
# Asking the judge


def _ask(judge: Judge, rec: Record, messages: list[dict[str, str]], **params: Any) -> Reply:
    reply = judge.ask(messages, **params)
    rec["cached" if reply.cached else "calls"] += 1
    rec["reply"] = reply.text
    if reply.error:
        rec["failed"] = reply.error
    return reply


def _ask_read(
    judge: Judge,
    rec: Record,
    messages: list[dict[str, str]],
    read: Callable[[str], Any],
    unreadable: str,
    **params: Any,
) -> Any:
    """The judge's reply as ``read`` reads it; None when the call failed (``rec["failed"]`` says
    why) or the reply does not read (``rec["failed"]`` = "unparseable: " + ``unreadable``)."""
    reply = _ask(judge, rec, messages, **params)
    if reply.text is None:
        return None
    value = read(reply.text)
    if value is None:
        rec["failed"] = f"unparseable: {unreadable}"
    return value


def _text(meta: dict[str, Any], key: str) -> str:
    value = meta.get(key)
    return "\n".join(map(str, value)) if isinstance(value, list) else str(value or "")


def _mathvista(judge: Judge, spec: TaskSpec, row: dict, rec: Record) -> float:
    meta, pred = row["meta"], row["prediction"].strip()
    extraction = mathvista_rule(pred, meta)
    if extraction is None:
        prompt = f"{jp.MATHVISTA_DEMO.strip()}\n\n{meta['query']}\n\n{pred}\n\nExtracted answer: "
        reply = _ask(
            judge, rec, [{"role": "user", "content": prompt}], temperature=0, max_tokens=256
        )
        if reply.text is None:
            return 0.0
        extraction = reply.text.strip()
        if not extraction:
            rec["failed"] = "unparseable: the judge extracted nothing"
            return 0.0
    rec["extraction"] = extraction
    rec["normalized"] = mathvista_normalize(extraction, meta)
    return float(rec["normalized"] == str(row["reference"][0]))


def _mmvet(judge: Judge, spec: TaskSpec, row: dict, rec: Record) -> float:
    answer = row["reference"][0].replace("<AND>", " <AND> ").replace("<OR>", " <OR> ")
    table_row = " | ".join([row["meta"]["question"], answer, row["prediction"], ""])
    base = f"{jp.MMVET_PROMPT}\n{table_row}"
    asks = [(base, 0.0)] + [(base + jp.MMVET_RETRY_SUFFIX, t) for t in (0.0, 0.5, 1.0, 1.5)]
    for prompt, temperature in asks:
        reply = _ask(
            judge, rec, [{"role": "user", "content": prompt}], temperature=temperature, max_tokens=3
        )
        if reply.text is None:
            return 0.0
        score = mmvet_score(reply.text)
        if score is not None:
            return score
    rec["failed"] = f"unparseable: no score in [0, 1] after {len(asks)} asks"
    return 0.0


def _review(judge: Judge, spec: TaskSpec, row: dict, rec: Record) -> float:
    """LLaVA-Bench / Ferret-Bench: one review of the reference (1) and the model (2)."""
    meta, ferret = row["meta"], spec.metric == "ferret_judge"
    category = str(meta.get("category") or "")
    rules = jp.FERRET_RULES if ferret else jp.LLAVA_RULES
    rule = rules.get(category if ferret else f"llava_bench_{category}")
    if rule is None:
        rec["failed"] = f"unparseable: no judge rule for category {category!r}"
        return 0.0
    answer = ferret_answer(row["prediction"], category) if ferret else row["prediction"]
    # Ferret's script writes "[Context]\" (a backslash, its f-string's typo) where LLaVA's
    # writes "[Context]\n"; each is reproduced as its official script sends it.
    head = "[Context]\\" if ferret else "[Context]\n"
    content = (
        f"{head}{_text(meta, 'context' if ferret else 'caption')}\n\n"
        f"[Question]\n{meta['question']}\n\n"
        f"[Assistant 1]\n{row['reference'][0]}\n\n[End of Assistant 1]\n\n"
        f"[Assistant 2]\n{answer}\n\n[End of Assistant 2]\n\n"
        f"[System]\n{rule}\n\n"
    )
    messages = [
        {"role": "system", "content": jp.REVIEWER_SYSTEM},
        {"role": "user", "content": content},
    ]
    unreadable = "the review's first line is not two scores"
    pair = _ask_read(
        judge, rec, messages, review_scores, unreadable, temperature=0.2, max_tokens=1024
    )
    if pair is None:
        return 0.0
    rec["scores"] = list(pair)  # [reference, model]
    return pair[1] / 10


def _videoqa(judge: Judge, spec: TaskSpec, row: dict, rec: Record) -> float:
    question = row["meta"].get(spec.columns.question or "")
    if question is None:
        raise ValueError(f"task {spec.name}: keep the question column in Columns.keep")
    user = jp.VIDEOQA_USER.format(
        question=question, answer=row["reference"][0], pred=row["prediction"]
    )
    messages = [
        {"role": "system", "content": jp.VIDEOQA_SYSTEM},
        {"role": "user", "content": user},
    ]
    unreadable = "not a dict with a yes/no 'pred' and an integer 'score'"
    verdict = _ask_read(
        judge, rec, messages, videoqa_verdict, unreadable, temperature=0, max_tokens=64
    )
    if verdict is None:
        return 0.0
    rec["correct"], rec["score_0_5"] = verdict
    return float(verdict[0])


def _vcg_ask(judge: Judge, rec: Record, dim: str, head: str) -> int | None:
    system, request = jp.VCG_PROMPTS[dim]
    messages = [{"role": "system", "content": system}, {"role": "user", "content": head + request}]
    unreadable = f"{dim}: not a dict with an integer 'score'"
    return _ask_read(judge, rec, messages, vcg_score, unreadable, temperature=0, max_tokens=64)


def _vcgbench(judge: Judge, spec: TaskSpec, row: dict, rec: Record, pairs: dict) -> float:
    """One VCGBench item: its set's dimensions, asked in turn (the first failure ends the
    item); a consistency pair is judged on its first question's row (module docstring)."""
    meta = row["meta"]
    if meta["vcg_set"] == "consistency":
        first, second = pairs.get(meta["pair"], (None, None))
        if row is not first:
            return 0.0  # the pair's second question: _mirror_pairs copies the first's record
        if second is None or second["prediction"] is None:
            rec["failed"] = f"unpaired: question 2 of pair {meta['pair']} has no prediction"
            return 0.0
        heads = {
            "consistency": jp.VCG_CONSISTENCY_HEAD.format(
                question1=meta["question"],
                question2=second["meta"]["question"],
                answer=row["reference"][0],
                pred1=row["prediction"],
                pred2=second["prediction"],
            )
        }
    else:
        head = jp.VCG_HEAD.format(
            question=meta["question"], answer=row["reference"][0], pred=row["prediction"]
        )
        heads = {dim: head for dim in VCG_SETS[meta["vcg_set"]]}
    scores = {}
    for dim, head in heads.items():
        score = _vcg_ask(judge, rec, dim, head)
        if score is None:
            return 0.0
        scores[dim] = score
    rec["scores"] = scores
    return sum(scores.values()) / len(scores) / 5


def _consistency_pairs(rows: list[dict]) -> dict[str, tuple[dict | None, dict | None]]:
    """VCGBench consistency rows by pair: (question 1's row, question 2's row)."""
    pairs: dict[str, list[dict | None]] = defaultdict(lambda: [None, None])
    for r in rows:
        meta = r["meta"] or {}
        if meta.get("vcg_set") == "consistency":
            pairs[meta["pair"]][int(meta["which"]) - 1] = r
    return {k: (v[0], v[1]) for k, v in pairs.items()}


def _mirror_pairs(pairs: dict[str, tuple[dict | None, dict | None]]) -> None:
    """A pair's second row takes its first row's score and failure (no calls of its own)."""
    for key, (first, second) in pairs.items():
        if second is None or second["prediction"] is None or second["score"] is None:
            continue
        done = (first or {}).get("judge")
        failed = done["failed"] if done else f"unpaired: question 1 of pair {key} has no prediction"
        second["judge"] = {
            "failed": failed,
            "reply": None,
            "calls": 0,
            "cached": 0,
            "paired_with": first["id"] if first else None,
        }
        second["score"] = 0.0 if failed else first["score"]  # type: ignore[index]


def _hound(judge: Judge, spec: TaskSpec, row: dict, rec: Record) -> float:
    meta = row["meta"]
    prompt = jp.HOUND_PROMPT.format(
        caption=meta["caption"],
        question=meta["question"],
        answer=row["reference"][0],
        prediction=hound_truncate(row["prediction"]),
    )
    # LLaVA-Hound sends temperature 0 and top_p 1 (the API's default) and no token limit; a
    # grade ("Explanation: …\nScore: N") fits 256 tokens.
    reply = _ask(judge, rec, [{"role": "user", "content": prompt}], temperature=0, max_tokens=256)
    if reply.text is None:
        return 0.0
    rec["score_1_5"] = hound_score(reply.text)
    rec["correct"] = rec["score_1_5"] >= 3.0
    return float(rec["correct"])


_JUDGE: dict[str, Callable[[Judge, TaskSpec, dict, Record], float]] = {
    "mathvista_judge": _mathvista,
    "mmvet_judge": _mmvet,
    "llava_judge": _review,
    "ferret_judge": _review,
    "videoqa_judge": _videoqa,
    "hound_judge": _hound,
}


def judge_rows(spec: TaskSpec, rows: list[dict], judge: Judge) -> None:
    """Score every answered row of ``rows`` in place: ``score`` and ``judge`` (the record:
    ``failed`` (None or "reason: detail"), ``reply``, ``calls``, ``cached`` and the metric's
    fields); ``judge.concurrency`` rows at a time."""
    pairs = _consistency_pairs(rows) if spec.metric == "vcgbench_judge" else {}
    fn = (
        functools.partial(_vcgbench, pairs=pairs)
        if spec.metric == "vcgbench_judge"
        else _JUDGE[spec.metric]
    )

    def one(row: dict) -> None:
        rec: Record = {"failed": None, "reply": None, "calls": 0, "cached": 0}
        score = fn(judge, spec, row, rec)
        row["score"], row["judge"] = (0.0 if rec["failed"] else score), rec

    todo = [r for r in rows if r["prediction"] is not None and r["score"] is not None]
    with ThreadPoolExecutor(max_workers=judge.cfg.concurrency) as pool:
        list(pool.map(one, todo))  # re-raises a worker's exception here
    _mirror_pairs(pairs)
