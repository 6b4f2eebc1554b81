"""Each judged benchmark's official reading of a model answer or a judge's reply (pure functions,
tested by hand): MathVista's rule-based extraction and normalisation, MM-Vet's grade, the
LLaVA/Ferret reviewer's two scores, Video-ChatGPT's dict replies (ActivityNet-QA, VCGBench),
LLaVA-Hound's ``get_score`` and truncation, and Ferret-Bench's answer post-processing.  The
tasks that use them: :mod:`mm15.eval.judged_tasks`.
"""

from __future__ import annotations

import ast
import re
from collections import Counter, defaultdict
from collections.abc import Callable
from typing import Any

from mm15.data.coord_parse import replace_regions, strip_regions
from mm15.data.coords import NUM_BINS
from mm15.eval.benchmarks import levenshtein
from mm15.eval.task_spec import TaskSpec

VCG_DIMENSIONS = ("correctness", "detail_orientation", "context", "temporal", "consistency")
VCG_SETS = {  # VCGBench question set → the dimensions its answers are judged on
    "generic": ("correctness", "detail_orientation", "context"),
    "temporal": ("temporal",),
    "consistency": ("consistency",),
}
MMVET_CAPABILITIES = ("rec", "ocr", "know", "gen", "spat", "math")
HOUND_MAX_WORDS = 256  # LLaVA-Hound's maybe_truncate: longer predictions keep their first 256 words


def mathvista_rule(response: str, meta: dict[str, Any]) -> str | None:
    """MathVista ``extract_answer`` before the judge: "" for an empty response, the response
    itself when it is an option's text or reads as the integer / float asked for; None when
    the judge must extract."""
    if response == "":
        return ""
    if meta["question_type"] == "multi_choice" and response in (meta.get("choices") or []):
        return response
    for kind, cast in (("integer", int), ("float", float)):
        if meta["answer_type"] == kind:
            try:
                return str(cast(response))
            except ValueError:
                pass
    return None


def mathvista_normalize(extraction: str, meta: dict[str, Any]) -> str | None:
    """MathVista ``normalize_extracted_answer``: an option's text for multiple choice (the
    letter's, "(B)" included, else the nearest by edit distance), ``int``, or ``round`` to the
    question's precision; None when a number does not read."""
    choices = [str(c) for c in meta.get("choices") or []]
    if meta["question_type"] == "multi_choice":
        text = extraction.strip()
        letter = re.findall(r"\(([a-zA-Z])\)", text)
        text = letter[0].upper() if letter else text
        letters = [chr(ord("A") + i) for i in range(len(choices))]
        if text in letters:
            return choices[letters.index(text)]
        return min(choices, key=lambda c: levenshtein(text, c)) if choices else None
    try:
        if meta["answer_type"] == "integer":
            return str(int(float(extraction)))
        if meta["answer_type"] == "float":
            return str(round(float(extraction), int(meta["precision"])))
    except (ValueError, TypeError, OverflowError):
        return None
    return str(extraction)


def mmvet_score(reply: str) -> float | None:
    """MM-Vet: the reply's first space-separated token as a float in [0, 1], else None."""
    try:
        score = float(reply.split(" ")[0].strip())
    except ValueError:
        return None
    return score if 0.0 <= score <= 1.0 else None


def review_scores(reply: str) -> tuple[float, float] | None:
    """LLaVA / Ferret ``parse_score``: the first line, commas as spaces, split on single spaces,
    must be exactly two numbers (reference's, model's); "8 9" and "8,9" read, "8, 9" does not."""
    parts = reply.split("\n")[0].replace(",", " ").split(" ")
    if len(parts) != 2:
        return None
    try:
        return float(parts[0]), float(parts[1])
    except ValueError:
        return None


def _reply_dict(reply: str) -> tuple[dict, int] | None:
    """Video-ChatGPT's reading of a reply: a Python dict literal whose ``score`` reads as
    ``int`` (4.8 → 4, "3" → 3, "4.8" fails); (the dict, the score) or None."""
    try:
        value = ast.literal_eval(reply)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return None
    if not isinstance(value, dict):
        return None
    try:
        return value, int(value.get("score"))  # type: ignore[arg-type]
    except (ValueError, TypeError, OverflowError):
        return None


def videoqa_verdict(reply: str) -> tuple[bool, int] | None:
    """Video-ChatGPT: the reply as a Python dict literal; "yes" in ``pred`` (lower case) is
    correct, else "no" in it is wrong; ``score`` as ``int``.  None when any of that fails."""
    read = _reply_dict(reply)
    if read is None or not isinstance(read[0].get("pred"), str):
        return None
    pred = read[0]["pred"].lower()
    return ("yes" in pred, read[1]) if "yes" in pred or "no" in pred else None


def vcg_score(reply: str) -> int | None:
    """VCGBench (``evaluate_benchmark_*.py``): ``int(ast.literal_eval(reply)["score"])``; the
    official scripts check no range, and neither does this.  None when it does not read."""
    read = _reply_dict(reply)
    return None if read is None else read[1]


def hound_score(reply: str) -> float:
    """LLaVA-Hound's ``get_score``: the number after the first "Score: "; else the most
    frequent number in the reply (a tie: the mean of the tied numbers); else 1."""
    m = re.search(r"Score: (\d+\.?\d*)", reply)
    if m:
        return float(m.group(1))
    counts = Counter(float(v) for v in re.findall(r"\b\d+\.?\d*\b", reply)).most_common()
    if not counts:
        return 1.0
    tied = [v for v, n in counts if n == counts[0][1]]
    return sum(tied) / len(tied)


def hound_truncate(pred: str) -> str:
    """LLaVA-Hound's ``maybe_truncate``: over 256 words, the first 256 joined by spaces."""
    words = pred.split()
    return " ".join(words[:HOUND_MAX_WORDS]) if len(words) > HOUND_MAX_WORDS else pred


def ferret_answer(pred: str, category: str) -> str:
    """Ferret's ``postprocess_answer`` for mm15's tags: dropped in refer_desc / refer_reason,
    written as "[x1, y1, x2, y2]" in 0–1 (3 decimals) in ground_conv."""
    if category in ("refer_desc", "refer_reason"):
        return strip_regions(pred)
    if category != "ground_conv":
        return pred

    def unit(_image: int, _indexed: bool, ints: tuple[int, ...], _label: str) -> str:
        if len(ints) == 4:  # bins → the box's edges (mm15.data.coords.dequantize_box)
            return (
                "["
                + ", ".join(f"{v / NUM_BINS:.3f}" for v in (*ints[:2], *(i + 1 for i in ints[2:])))
                + "]"
            )
        return "[" + ", ".join(f"{(v + 0.5) / NUM_BINS:.4f}" for v in ints) + "]"  # bin centre

    return replace_regions(pred, unit)


# ---------------------------------------------------------------------------------------------
# Aggregation


def _relative(rows: list[dict]) -> float:
    """Mean model score / mean reference score; failed and error rows add 0 to the model's."""
    pairs = [r["judge"]["scores"] for r in rows if (r.get("judge") or {}).get("scores")]
    if not pairs or not rows:
        return 0.0
    ref = sum(p[0] for p in pairs) / len(pairs)
    model = sum(p[1] for p in pairs) / len(rows)
    return model / ref if ref > 0 else 0.0


def _by(rows: list[dict], groups: Callable[[dict], list[str]], fn: Callable) -> dict[str, float]:
    parts: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        for g in groups(r):
            parts[g].append(r)
    return {g: fn(rs) for g, rs in sorted(parts.items())}


def _mean(rows: list[dict]) -> float:
    return sum(r["score"] for r in rows) / len(rows) if rows else 0.0


def _meta(row: dict, key: str) -> str:
    return str((row["meta"] or {}).get(key) or "all")


def _capabilities(row: dict) -> list[str]:
    caps = (row["meta"] or {}).get("capability") or []
    caps = caps.split(",") if isinstance(caps, str) else caps
    return [c.strip() for c in caps if c.strip() in MMVET_CAPABILITIES]


def aggregate_judged(spec: TaskSpec, rows: list[dict]) -> tuple[float, dict[str, Any]]:
    """(benchmark score, details) of a judged task (module docstring); details count the
    judged items, the failed judgements by reason, the judge calls made and the cache hits."""
    recs = [r["judge"] for r in rows if r.get("judge")]
    failed = Counter(rec["failed"].split(":", 1)[0] for rec in recs if rec["failed"])
    details: dict[str, Any] = {
        "n_judged": len(recs) - sum(failed.values()),
        "n_judge_failed": sum(failed.values()),
        "judge_failures": dict(sorted(failed.items())),
        "judge_calls": sum(rec["calls"] for rec in recs),
        "judge_cache_hits": sum(rec["cached"] for rec in recs),
    }
    if spec.metric in ("llava_judge", "ferret_judge"):
        details["categories"] = _by(rows, lambda r: [_meta(r, "category")], _relative)
        return _relative(rows), details
    if spec.metric == "mmvet_judge":
        details["capabilities"] = _by(rows, _capabilities, _mean)
    elif spec.metric == "mathvista_judge":
        details["question_types"] = _by(rows, lambda r: [_meta(r, "question_type")], _mean)
    elif spec.metric == "videoqa_judge":
        total = sum((r.get("judge") or {}).get("score_0_5", 0) for r in rows)
        details["average_score"] = total / len(rows) if rows else 0.0
    elif spec.metric == "hound_judge":
        total = sum((r.get("judge") or {}).get("score_1_5", 0) for r in rows)
        details["average_score"] = total / len(rows) if rows else 0.0
    elif spec.metric == "vcgbench_judge":
        dims = vcg_dimensions(rows)
        details["dimensions"] = dims
        details["average_score"] = sum(dims.values()) / len(dims) if dims else 0.0
        return details["average_score"] / 5, details
    return _mean(rows), details


def vcg_dimensions(rows: list[dict]) -> dict[str, float]:
    """Each VCGBench dimension's mean score (0–5) over its set's items (a consistency pair is
    one item); failed judgements and error items add 0 and stay in the denominator."""
    units: dict[str, set[str]] = defaultdict(set)
    sums: Counter[str] = Counter()
    for r in rows:
        meta = r["meta"] or {}
        kind = meta.get("vcg_set")
        if kind not in VCG_SETS:
            continue
        units[kind].add(meta["pair"] if kind == "consistency" else r["id"])
        sums.update((r.get("judge") or {}).get("scores") or {})
    return {
        dim: sums[dim] / len(units[kind])
        for dim in VCG_DIMENSIONS
        for kind, dims in VCG_SETS.items()
        if dim in dims and units[kind]
    }
