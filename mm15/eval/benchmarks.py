"""Benchmark metrics with their official answer normalisations (MM1.5 §4.1, Tables 4–14; MM1.5 Table 4 and the
slides "Evaluation Benchmarks and Metrics").

Per prediction (each returns a float in [0, 1]):

* :func:`vqa_accuracy` (TextVQA): the EvalAI / MMF answer processor (:func:`vqa_normalize`:
  lower case, commas and "?" dropped, ``processPunctuation``, ``processDigitArticle``) on the
  prediction and every reference, then ``min(#matches / 3, 1)`` averaged over the leave-one-out
  subsets of the references (10 for TextVQA).
* :func:`anls` (DocVQA, InfoVQA): ``max_j s(a_j)`` with ``s = 1 - NL`` if ``NL < 0.5`` else 0,
  ``NL`` = Levenshtein distance / longer length, on lower-cased, whitespace-collapsed strings
  (Biten et al. 2019: at exactly ``NL = 0.5`` the score is 0).
* :func:`relaxed_accuracy` (ChartQA): pix2struct's ``relaxed_correctness``: numbers ("12", "4.5%"
  = 0.045) within 5% of a non-zero target, else case-insensitive string equality.
* :func:`ocrbench_match` (OCRBench): the reference, lower-cased, is a substring of the prediction
  (HME100k formulas: with all spaces removed, case kept).
* :func:`pope_label`, :func:`mme_label`: the official yes/no parsers; :func:`pope_summary` (acc,
  precision, recall, F1 per split and their means) and :func:`mme_summary` (acc + acc+ per
  subtask, summed to perception and cognition) aggregate them.
* :func:`mmmu_open_match`: MMMU's open-question rule (numbers to 2 decimals, else substring).
* :func:`any_box_iou50` (Flickr30k): the first box of the prediction hits any reference box.

Multiple choice and RefCOCO boxes use :func:`mm15.eval.metrics.mc_accuracy` / ``box_iou50``.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

from mm15.data.coords import Box, iou
from mm15.eval.metrics import IOU_THRESHOLD, Size, first_region

# ---------------------------------------------------------------------------------------------
# VQA accuracy (TextVQA): the EvalAI answer processor, as in MMF's EvalAIAnswerProcessor

_CONTRACTION_PAIRS = """
aint=ain't arent=aren't cant=can't couldve=could've couldnt=couldn't couldn'tve=couldn't've
couldnt've=couldn't've didnt=didn't doesnt=doesn't dont=don't hadnt=hadn't hadnt've=hadn't've
hadn'tve=hadn't've hasnt=hasn't havent=haven't hed=he'd hed've=he'd've he'dve=he'd've hes=he's
howd=how'd howll=how'll hows=how's Id've=I'd've I'dve=I'd've Im=I'm Ive=I've isnt=isn't itd=it'd
itd've=it'd've it'dve=it'd've itll=it'll let's=let's maam=ma'am mightnt=mightn't
mightnt've=mightn't've mightn'tve=mightn't've mightve=might've mustnt=mustn't mustve=must've
neednt=needn't notve=not've oclock=o'clock oughtnt=oughtn't ow's'at='ow's'at 'ows'at='ow's'at
'ow'sat='ow's'at shant=shan't shed've=she'd've she'dve=she'd've she's=she's shouldve=should've
shouldnt=shouldn't shouldnt've=shouldn't've shouldn'tve=shouldn't've somebody'd=somebodyd
somebodyd've=somebody'd've somebody'dve=somebody'd've somebodyll=somebody'll
somebodys=somebody's someoned=someone'd someoned've=someone'd've someone'dve=someone'd've
someonell=someone'll someones=someone's somethingd=something'd somethingd've=something'd've
something'dve=something'd've somethingll=something'll thats=that's thered=there'd
thered've=there'd've there'dve=there'd've therere=there're theres=there's theyd=they'd
theyd've=they'd've they'dve=they'd've theyll=they'll theyre=they're theyve=they've twas='twas
wasnt=wasn't wed've=we'd've we'dve=we'd've weve=we've werent=weren't whatll=what'll
whatre=what're whats=what's whatve=what've whens=when's whered=where'd wheres=where's
whereve=where've whod=who'd whod've=who'd've who'dve=who'd've wholl=who'll whos=who's
whove=who've whyll=why'll whyre=why're whys=why's wont=won't wouldve=would've wouldnt=wouldn't
wouldnt've=wouldn't've wouldn'tve=wouldn't've yall=y'all yall'll=y'all'll y'allll=y'all'll
yall'd've=y'all'd've y'alld've=y'all'd've y'all'dve=y'all'd've youd=you'd youd've=you'd've
you'dve=you'd've youll=you'll youre=you're youve=you've
"""
_CONTRACTIONS = dict(pair.split("=") for pair in _CONTRACTION_PAIRS.split())
_NUMBER_WORDS = (
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
)
_NUMBERS = {w: str(i) for i, w in enumerate(_NUMBER_WORDS)} | {"none": "0"}
_ARTICLES = ("a", "an", "the")
_PUNCT = [
    ";",
    "/",
    "[",
    "]",
    '"',
    "{",
    "}",
    "(",
    ")",
    "=",
    "+",
    "\\",
    "_",
    "-",
    ">",
    "<",
    "@",
    "`",
    ",",
    "?",
    "!",
]
# The official regex, lookahead typo "(?!<=" included: a period not followed by a digit.
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
_COMMA_STRIP = re.compile(r"(?<=\d)(\,)+(?=\d)")


def _process_punctuation(text: str) -> str:
    out = text
    for p in _PUNCT:
        if p + " " in text or " " + p in text or _COMMA_STRIP.search(text) is not None:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    # The official code passes re.UNICODE (= 32) as sub's count: at most 32 periods go.
    return _PERIOD_STRIP.sub("", out, count=32)


def _process_digit_article(text: str) -> str:
    words = [_NUMBERS.get(w, w) for w in text.lower().split()]
    return " ".join(_CONTRACTIONS.get(w, w) for w in words if w not in _ARTICLES)


def vqa_normalize(answer: str) -> str:
    """The EvalAI answer processor: "Two dogs." → "2 dogs", "10,000" → "10000"."""
    text = answer.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    text = text.replace("\n", " ").replace("\t", " ").strip()
    return _process_digit_article(_process_punctuation(text))


def vqa_accuracy(pred: str, answers: Sequence[str]) -> float:
    """VQA accuracy: mean over i of ``min(1, #{j != i : a_j == pred} / 3)`` (all normalised)."""
    if not answers:
        raise ValueError("vqa_accuracy needs at least one reference answer")
    p = vqa_normalize(pred)
    gts = [vqa_normalize(a) for a in answers]
    accs = [min(1.0, sum(g == p for j, g in enumerate(gts) if j != i) / 3) for i in range(len(gts))]
    return sum(accs) / len(accs)


# ---------------------------------------------------------------------------------------------
# ANLS (DocVQA, InfoVQA) and relaxed accuracy (ChartQA)


def levenshtein(a: str, b: str) -> int:
    """Edit distance (insertions, deletions, substitutions all cost 1)."""
    if len(a) < len(b):
        a, b = b, a
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def anls(pred: str, answers: Sequence[str], threshold: float = 0.5) -> float:
    """Average Normalized Levenshtein Similarity of one prediction (max over references)."""
    if not answers:
        raise ValueError("anls needs at least one reference answer")
    p = " ".join(pred.strip().lower().split())
    best = 0.0
    for answer in answers:
        g = " ".join(answer.strip().lower().split())
        longest = max(len(p), len(g))
        nl = levenshtein(p, g) / longest if longest else 0.0
        best = max(best, 1.0 - nl if nl < threshold else 0.0)
    return best


def _to_float(text: str) -> float | None:
    try:
        return float(text.rstrip("%")) / 100.0 if text.endswith("%") else float(text)
    except ValueError:
        return None


def relaxed_accuracy(pred: str, target: str, max_relative_change: float = 0.05) -> float:
    """ChartQA: 1.0 if both parse as numbers and ``|p - t| / |t| <= 5%`` (t != 0), else
    case-insensitive equality (so a zero target needs the same string).  The prediction is
    stripped of surrounding whitespace first (a generation artefact)."""
    pred, target = pred.strip(), target.strip()
    p, t = _to_float(pred), _to_float(target)
    if p is not None and t:
        return float(abs(p - t) / abs(t) <= max_relative_change)
    return float(pred.lower() == target.lower())


def ocrbench_match(pred: str, answers: Sequence[str], dataset: str | None = None) -> float:
    """OCRBench: 1.0 if any reference is a substring of the prediction (see module doc)."""
    for answer in answers:
        if dataset == "HME100k":  # handwritten formulas: spaces removed, case kept
            a, p = (s.strip().replace("\n", " ").replace(" ", "") for s in (answer, pred))
        else:
            a, p = (s.lower().strip().replace("\n", " ") for s in (answer, pred))
        if a in p:
            return 1.0
    return 0.0


# ---------------------------------------------------------------------------------------------
# POPE and MME (yes/no benchmarks)


def pope_label(pred: str) -> str:
    """POPE's parser: the first sentence, commas removed; "no" if it has the word "No", "no" or
    "not", else "yes" (so "NO" is a yes, as in the official evaluation)."""
    text = pred.split(".")[0] if "." in pred else pred
    words = text.replace(",", "").split(" ")
    return "no" if {"No", "no", "not"} & set(words) else "yes"


def _binary_stats(pairs: Sequence[tuple[str, str | None]]) -> dict[str, float]:
    """acc/precision/recall/F1/yes-ratio with "yes" positive; a None prediction (an error item)
    counts as the wrong label."""
    tp = fp = fn = tn = 0
    for gt, pred in pairs:
        pred = pred if pred is not None else ("no" if gt == "yes" else "yes")
        tp += gt == "yes" and pred == "yes"
        fp += gt != "yes" and pred == "yes"
        fn += gt == "yes" and pred != "yes"
        tn += gt != "yes" and pred != "yes"
    n = len(pairs)
    prec = tp / (tp + fp) if tp + fp else 0.0
    rec = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
    return {
        "acc": (tp + tn) / n if n else 0.0,
        "precision": prec,
        "recall": rec,
        "f1": f1,
        "yes_ratio": (tp + fp) / n if n else 0.0,
        "n": n,
    }


def pope_summary(items: Iterable[tuple[str, str, str | None]]) -> dict[str, Any]:
    """``items``: (split, reference yes/no, predicted label or None).  Per split stats, and the
    means over splits (MM1.5 §4.1, Tables 4–14: POPE is the mean of random / popular / adversarial)."""
    by_split: dict[str, list[tuple[str, str | None]]] = defaultdict(list)
    for split, gt, pred in items:
        by_split[split].append((gt, pred))
    splits = {s: _binary_stats(p) for s, p in sorted(by_split.items())}
    mean = {
        k: sum(v[k] for v in splits.values()) / len(splits) if splits else 0.0
        for k in ("acc", "f1")
    }
    return {"splits": splits, "mean_acc": mean["acc"], "mean_f1": mean["f1"]}


MME_PERCEPTION = (
    "existence",
    "count",
    "position",
    "color",
    "posters",
    "celebrity",
    "scene",
    "landmark",
    "artwork",
    "OCR",
)
MME_COGNITION = (
    "commonsense_reasoning",
    "numerical_calculation",
    "text_translation",
    "code_reasoning",
)


def mme_label(pred: str) -> str:
    """MME's parser: "yes"/"no" exactly (lower-cased, stripped, periods removed), else whichever
    of "yes"/"no" occurs in the first 4 characters, else "other"."""
    text = pred.lower().strip().replace(".", "")
    if text in ("yes", "no"):
        return text
    head = text[:4]
    return "yes" if "yes" in head else "no" if "no" in head else "other"


def mme_summary(items: Iterable[tuple[str, str, float]]) -> dict[str, Any]:
    """``items``: (subtask, image id, score 0/1).  Per subtask ``acc`` (% of questions right) +
    ``acc+`` (% of images with every question right), max 200; perception and cognition are
    the sums over their subtasks (max 2000 and 800), ``normalized`` the total over its max."""
    per: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for subtask, image, score in items:
        per[subtask][image].append(score)
    subtasks = {}
    for name, images in sorted(per.items()):
        scores = [s for v in images.values() for s in v]
        acc = 100.0 * sum(scores) / len(scores)
        acc_plus = 100.0 * sum(all(s == 1.0 for s in v) for v in images.values()) / len(images)
        subtasks[name] = {"acc": acc, "acc_plus": acc_plus, "score": acc + acc_plus}
    unknown = sorted(set(subtasks) - set(MME_PERCEPTION) - set(MME_COGNITION))
    if unknown:
        raise ValueError(
            f"unknown MME subtask(s) {unknown}; known: {list(MME_PERCEPTION) + list(MME_COGNITION)}"
        )
    perception = sum(v["score"] for k, v in subtasks.items() if k in MME_PERCEPTION)
    cognition = sum(v["score"] for k, v in subtasks.items() if k in MME_COGNITION)
    top = 200.0 * len(subtasks)
    return {
        "subtasks": subtasks,
        "perception": perception,
        "cognition": cognition,
        "total": perception + cognition,
        "normalized": (perception + cognition) / top if top else 0.0,
    }


# ---------------------------------------------------------------------------------------------
# MMMU open questions (the MMMU repository's eval_utils)

_KEY_INDICATORS = ("could be ", "so ", "is ", "thus ", "therefore ", "final ", "answer ", "result ")
_NUM_PATTERNS = (
    r"-?\b\d{1,3}(?:,\d{3})+\b",
    r"-?\d+(?:\.\d+)?[eE][+-]?\d+",
    r"-?(?:\d+\.\d+|\.\d+|\d+\b)(?![eE][+-]?\d+)(?![,\d])",
)


def _mmmu_norm(text: str) -> list[str | float]:
    """A number → [round(float, 2)]; else the lower-cased string (one letter padded by a space
    on either side, so it does not match inside words)."""
    text = text.strip()
    try:
        return [round(float(text.replace(",", "")), 2)]
    except ValueError:
        text = text.lower()
        return [" " + text, text + " "] if len(text) == 1 else [text]


def _key_responses(response: str) -> list[str]:
    """The tail after the last answer indicator of each sentence ("... so the answer is 5")."""
    response = response.strip().strip(".").lower()
    parts = re.split(r"\.\s(?=[A-Z])|\n", response)
    keys = []
    for i, part in enumerate(parts):
        indicators = _KEY_INDICATORS + (("=",) if i == len(parts) - 1 else ())
        tails = [part.split(ind)[-1].strip() for ind in indicators if ind in part]
        shortest = min(tails, key=len) if tails else ""
        if shortest and shortest not in (":", ",", ".", "!", "?", ";", "'"):
            keys.append(shortest)
    return keys or [response]


def mmmu_open_match(pred: str, answers: Sequence[str]) -> float:
    """1.0 if a normalised number of the prediction equals a reference number, or a normalised
    reference string occurs in a normalised prediction string."""
    keys = _key_responses(pred)
    cands = keys + [n for k in keys for pat in _NUM_PATTERNS for n in re.findall(pat, k)]
    preds = {v for c in cands for v in _mmmu_norm(c)}
    golds = [v for a in answers for v in _mmmu_norm(a)]
    for p in preds:
        if isinstance(p, str) and any(isinstance(g, str) and g in p for g in golds):
            return 1.0
        if isinstance(p, float) and p in golds:
            return 1.0
    return 0.0


# ---------------------------------------------------------------------------------------------
# Grounding


def any_box_iou50(pred_text: str, ref_boxes: Sequence[Box], size: Size | Sequence[Size]) -> float:
    """Flickr30k any-box protocol: the prediction's first coordinate tag is a box with
    IoU >= 0.5 against at least one reference box of the phrase."""
    shape = first_region(pred_text, size)
    if not isinstance(shape, Box):
        return 0.0
    return float(any(iou(shape, ref) >= IOU_THRESHOLD for ref in ref_boxes))


# ---------------------------------------------------------------------------------------------
# LVIS-Ref (Ferret's referring object classification)

_NOT_PHRASE = (re.compile(r"\s+not[^,.]*[,.]"), re.compile(r"\s+no[^,.]*[,.]"))


def ferret_class_names(name: str, synonyms: Sequence[str]) -> list[str]:
    """The class name and its synonyms as Ferret's ``eval_lvis.py`` reads them: "_" → " ", and
    a synonym "a_(b)" counts as both "a" and "b"."""
    names = [name.replace("_", " ").strip()]
    for syn in synonyms:
        pieces = syn.split("(") if "(" in syn else [syn]
        names += [p.replace("_", " ").replace(")", "").strip() for p in pieces]
    return [n for n in names if n]


def lvis_ref_match(pred: str, name: str, synonyms: Sequence[str]) -> float:
    """Ferret's LVIS-Ref accuracy for one answer: after dropping negated phrases (a space, then
    "not" or "no", up to the next "," or "." — which also drops words starting with "no"), the
    class name or a synonym occurs in the answer (case-sensitive substring)."""
    text = pred
    for pattern in _NOT_PHRASE:
        text = pattern.sub("", text)
    return float(any(n in text for n in ferret_class_names(name, synonyms)))
