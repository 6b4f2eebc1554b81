"""Judged benchmarks (mm15.eval.judge, mm15.eval.judged_tasks): each benchmark's official score
extraction on hand-computed cases, the reply cache, failure accounting, the readers on the
lmms-eval layouts, a stub OpenAI-compatible judge, and `mm15 eval` judged by a local
`mm15 serve` of the tiny model."""

from __future__ import annotations

import json

import pytest

from mm15.cli.eval import main
from mm15.eval import judge_prompts as jp
from mm15.eval.judge import Judge, JudgeCache, JudgeConfig, cache_key
from mm15.eval.judge_scores import (
    aggregate_judged,
    ferret_answer,
    mathvista_normalize,
    mathvista_rule,
    mmvet_score,
    review_scores,
    videoqa_verdict,
)
from mm15.eval.judged_tasks import _ferret_prompt, _mathvista_prompt, judge_rows
from mm15.eval.readers import read_items
from mm15.eval.runner import EvalSettings, run_eval
from mm15.eval.task_spec import Columns, TaskSpec
from mm15.eval.tasks import TASKS
from mm15.services.checkpoint import load_checkpoint
from tests.judge_fixtures import StubJudge, write_benchmarks

MC = {"question_type": "multi_choice", "answer_type": "text", "choices": ["3/11", "8/11", "6/11"]}
INT = {"question_type": "free_form", "answer_type": "integer", "choices": None}
FLOAT2 = {"question_type": "free_form", "answer_type": "float", "precision": 2.0}


# ---------------------------------------------------------------------------------------------
# Official extraction, by hand


def test_mathvista_rules_before_the_judge():
    assert mathvista_rule("", MC) == ""
    assert mathvista_rule("8/11", MC) == "8/11"  # an option's text, as written
    assert mathvista_rule("B", MC) is None  # a letter needs the judge
    assert mathvista_rule("14", INT) == "14"
    assert mathvista_rule("14.0", INT) is None  # int("14.0") fails: the judge extracts
    assert mathvista_rule("1.5", FLOAT2) == "1.5"
    assert mathvista_rule("about 1.5", FLOAT2) is None


def test_mathvista_normalization():
    assert mathvista_normalize("B", MC) == "8/11"
    assert mathvista_normalize("(c) 6/11", MC) == "6/11"  # "(c)" → C
    assert mathvista_normalize("8/12", MC) == "8/11"  # nearest by edit distance (1)
    assert mathvista_normalize("", MC) == "3/11"  # all at distance 4: the first
    assert mathvista_normalize("14.7", INT) == "14"  # int(float(...))
    assert mathvista_normalize("fourteen", INT) is None
    assert mathvista_normalize("1.456", FLOAT2) == "1.46"
    assert (
        mathvista_normalize("[2007, 2008]", {"question_type": "free_form", "answer_type": "list"})
        == "[2007, 2008]"
    )


def test_mmvet_score_reads_the_first_token():
    assert mmvet_score("0.5") == 0.5
    assert mmvet_score("1.0 (totally right)") == 1.0
    assert mmvet_score("0.3\n") == 0.3
    assert mmvet_score(" 0.5") is None  # split(" ")[0] is empty
    assert mmvet_score("1.5") is None and mmvet_score("-0.1") is None  # outside [0, 1]
    assert mmvet_score("0.5,") is None and mmvet_score("nan") is None


def test_review_scores_official_parse():
    assert review_scores("8 9\nAssistant 2 is better.") == (8.0, 9.0)
    assert review_scores("8,9") == (8.0, 9.0)
    assert review_scores("7.5 6") == (7.5, 6.0)
    assert review_scores("8, 9") is None  # "8  9" splits into three parts
    assert review_scores("Scores: 8 9") is None
    assert review_scores("\n8 9") is None  # the first line is empty


def test_videoqa_verdict():
    assert videoqa_verdict("{'pred': 'yes', 'score': 4}") == (True, 4)
    assert videoqa_verdict("{'pred': 'no', 'score': 4.8}") == (False, 4)  # int(4.8)
    assert videoqa_verdict("{'pred': 'Yes.', 'score': '3'}") == (True, 3)
    assert videoqa_verdict("{'pred': 'maybe', 'score': 2}") is None
    assert videoqa_verdict("{'pred': 'yes', 'score': '4.8'}") is None  # int("4.8") fails
    assert videoqa_verdict("yes, 4") is None and videoqa_verdict("[1, 2]") is None


def test_ferret_answers_and_prompts():
    assert ferret_answer("A bell <850,523,897,582> on it.", "refer_desc") == "A bell on it."
    assert (
        ferret_answer("The bike <100,200,299,399> and <5,5>.", "ground_conv")
        == "The bike [0.100, 0.200, 0.300, 0.400] and [0.0055, 0.0055]."
    )
    # 0–1 boxes of the question become mm15 tags: floor(x1 * 1000), ceil(x2 * 1000) - 1
    assert _ferret_prompt({"question": "What is [0.850, 0.523, 0.898, 0.583]?"}) == (
        "What is <850,523,897,582>?"
    )


def test_mathvista_prompt_is_lmms_eval_format_prompt():
    row = {**MC, "question": "What fraction is blue?", "choices": ["1/2", "1/3"]}
    assert _mathvista_prompt(row) == (
        "What fraction is blue?\nA. 1/2\nB. 1/3\n"
        "Answer with the option's letter from the given choices directly."
    )
    row = {"question": "How much?", "unit": "$", "choices": None, **FLOAT2}
    assert _mathvista_prompt(row) == (
        "How much? (Unit: $)\nAnswer the question using a single floating-point number "
        "with two decimal places."
    )


# ---------------------------------------------------------------------------------------------
# The cache


def test_cache_skips_and_counts_corrupt_lines(tmp_path):
    path = tmp_path / "cache.jsonl"
    cache = JudgeCache(path)
    cache.put("k1", "m", "0.5")
    cache.put("k2", "m", "8 9")
    with open(path, "a") as f:
        f.write('{"key": "k3"}\nnot json\n{"key": "k4", "reply": "torn')  # crash mid-line
    again = JudgeCache(path)
    assert again.entries == {"k1": "0.5", "k2": "8 9"} and again.corrupt == 3
    again.put("k5", "m", "1.0")  # starts on a fresh line, not glued to the torn one
    third = JudgeCache(path)
    assert third.get("k5") == "1.0" and third.corrupt == 3


def test_cache_key_covers_model_prompt_and_params():
    msgs = [{"role": "user", "content": "x"}]
    key = cache_key("gpt-4", msgs, {"temperature": 0, "max_tokens": 3})
    assert key == cache_key("gpt-4", [dict(m) for m in msgs], {"max_tokens": 3, "temperature": 0})
    assert key != cache_key("gpt-4o", msgs, {"temperature": 0, "max_tokens": 3})
    assert key != cache_key(
        "gpt-4", [{"role": "user", "content": "y"}], {"temperature": 0, "max_tokens": 3}
    )
    assert key != cache_key("gpt-4", msgs, {"temperature": 0.5, "max_tokens": 3})


def test_judge_needs_an_endpoint_and_its_key(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match=r"judge\.url"):
        Judge(JudgeConfig(), tmp_path / "c.jsonl")
    monkeypatch.delenv("MM15_TEST_KEY", raising=False)
    with pytest.raises(ValueError, match="MM15_TEST_KEY"):
        Judge(JudgeConfig(url="http://x", model="m", api_key_env="MM15_TEST_KEY"), tmp_path / "c")


# ---------------------------------------------------------------------------------------------
# A stub endpoint with fixed replies: scores, failures, cache hits


def _reply(messages: list[dict]) -> str | int:
    text = messages[-1]["content"]
    if text.startswith("Compare the ground truth"):  # MM-Vet
        return "unsure" if "Explain the joke." in text else "0.7"
    if messages[0]["content"] == jp.REVIEWER_SYSTEM:  # LLaVA-Bench / Ferret-Bench
        return {"conv": "8 4\nAssistant 1 is more accurate.", "detail": "10 5"}.get(
            text.split("[Question]\n")[1].split(".")[0].rsplit(" ", 1)[-1], "8, 9"
        )
    if text.endswith("Extracted answer: "):  # MathVista
        return "B" if text.endswith("\n\nB\n\nExtracted answer: ") else "14"
    return (
        "{'pred': 'yes', 'score': 4}"
        if "Predicted Answer: a cat" in text
        else "{'pred': 'no', 'score': 1}"
    )


def _rows(task: str, preds: list[str], refs: list[str], metas: list[dict]) -> list[dict]:
    return [
        {
            "task": task,
            "id": str(i),
            "prediction": p,
            "reference": [r],
            "score": 0.0,
            "error": None,
            "meta": m,
        }
        for i, (p, r, m) in enumerate(zip(preds, refs, metas, strict=True))
    ]


def _judge(stub: StubJudge, cache, **kw) -> Judge:
    cfg = JudgeConfig(url=stub.url, model="judge-model", api_key_env=None, max_retries=1, **kw)
    return Judge(cfg, cache)


def _judge_all(judge: Judge) -> dict[str, tuple[float, dict, list[dict]]]:
    video = TaskSpec(
        name="vqa_open",
        category="general",
        metric="videoqa_judge",
        columns=Columns(keep=("question",)),
    )
    mmvet = _rows(
        "mmvet",
        ["x = -1 or x = -5", "red", "a pun"],
        ["-1<AND>-5", "red<OR>crimson", "It is a pun."],
        [
            {"question": q, "capability": c}
            for q, c in [
                ("What is x?", "ocr,math"),
                ("What colour?", "rec"),
                ("Explain the joke.", "rec,gen"),
            ]
        ],
    )
    llava = _rows(
        "llava_bench",
        ["a", "b", "c"],
        ["A", "B", "C"],
        [
            {"question": f"Question {c}.", "caption": ["cap one", "cap two"], "category": c}
            for c in ("conv", "detail", "complex")
        ],
    )
    mathvista = _rows(
        "mathvista",
        ["The answer is 14.", "B", "14", ""],
        ["14", "8/11", "14", "8/11"],
        [
            {**INT, "query": "Which number is missing?"},
            {**MC, "query": "Q"},
            {**INT, "query": "Which number is missing?"},
            {**MC, "query": "Q"},
        ],
    )
    vqa = _rows(
        "vqa_open",
        ["a cat", "a dog"],
        ["cat", "cat"],
        [{"question": "What animal? cat"}, {"question": "What animal?"}],
    )
    out = {}
    for spec, rows in (
        (TASKS["mmvet"], mmvet),
        (TASKS["llava_bench"], llava),
        (TASKS["mathvista"], mathvista),
        (video, vqa),
    ):
        judge_rows(spec, rows, judge)
        out[spec.name] = (*aggregate_judged(spec, rows), rows)
    return out


def test_stub_judge_scores_by_hand_then_the_cache_answers(tmp_path):
    with StubJudge(_reply) as stub:
        first = _judge_all(_judge(stub, tmp_path / "cache.jsonl"))
        # MM-Vet 1 + 1 + 5 (the joke: unreadable, re-asked with the suffix at 4 temperatures),
        # LLaVA 3, MathVista 2 (the others by rule), video 2
        assert stub.calls == 7 + 3 + 2 + 2
        score, d, rows = first["mmvet"]
        assert score == pytest.approx(0.7 * 2 / 3)
        assert (
            d["n_judged"] == 2
            and d["n_judge_failed"] == 1
            and d["judge_failures"] == {"unparseable": 1}
        )
        assert d["capabilities"] == pytest.approx(
            {"gen": 0.0, "math": 0.7, "ocr": 0.7, "rec": 0.35}
        )
        temps = [
            r["temperature"]
            for r in stub.requests
            if r["messages"][0]["content"].startswith("Compare")
            and "joke" in r["messages"][0]["content"]
        ]
        assert temps == [0.0, 0.0, 0.5, 1.0, 1.5] and rows[2]["score"] == 0.0
        # LLaVA: (8, 4), (10, 5), "8, 9" unreadable → model 9 / 3 items over reference mean 9
        score, d, rows = first["llava_bench"]
        assert score == pytest.approx((4 + 5) / 3 / 9)
        assert d["categories"] == pytest.approx({"complex": 0.0, "conv": 0.5, "detail": 0.5})
        assert d["n_judge_failed"] == 1 and rows[0]["judge"]["scores"] == [8.0, 4.0]
        review = next(r for r in stub.requests if "Question conv." in r["messages"][-1]["content"])
        assert review["temperature"] == 0.2 and review["max_tokens"] == 1024
        assert review["messages"][1]["content"].startswith(
            "[Context]\ncap one\ncap two\n\n[Question]\n"
        )
        # MathVista: judge "14" ✓, judge "B" → 8/11 ✓, "14" by rule ✓, "" → nearest "3/11" ✗
        score, d, rows = first["mathvista"]
        assert score == 0.75 and [r["judge"]["calls"] for r in rows] == [1, 1, 0, 0]
        assert d["question_types"] == {"free_form": 1.0, "multi_choice": 0.5}
        # video QA: yes (4), no (1)
        score, d, _ = first["vqa_open"]
        assert score == 0.5 and d["average_score"] == 2.5
        calls = stub.calls
        again = _judge_all(_judge(stub, tmp_path / "cache.jsonl"))
        assert stub.calls == calls  # every reply came from the cache, the unreadable ones too
        for name, (score, d, _) in again.items():
            assert score == first[name][0] and d["judge_calls"] == 0 and d["judge_cache_hits"] > 0


def test_http_failures_are_retried_a_bounded_number_of_times_and_counted(tmp_path):
    answer = lambda msgs: 500 if "colour" in msgs[-1]["content"] else "1.0"  # noqa: E731
    with StubJudge(answer) as stub:
        rows = _rows(
            "mmvet",
            ["red", "x"],
            ["red", "x"],
            [{"question": "What colour?"}, {"question": "What?"}],
        )
        judge_rows(TASKS["mmvet"], rows, _judge(stub, tmp_path / "c.jsonl", concurrency=1))
        assert stub.calls == 1 + 2  # the failing call: once, then max_retries=1 more
        score, d = aggregate_judged(TASKS["mmvet"], rows)
        assert score == 0.5 and d["n_judge_failed"] == 1 and d["judge_failures"] == {"http": 1}
        assert rows[0]["judge"]["failed"].startswith("http: InternalServerError")
        judge_rows(TASKS["mmvet"], rows, _judge(stub, tmp_path / "c.jsonl", concurrency=1))
        assert stub.calls == 3 + 2  # failures are not cached: a re-run asks again


# ---------------------------------------------------------------------------------------------
# Readers on the real layouts, and `mm15 eval` end to end


@pytest.fixture(scope="module")
def bench_root(tmp_path_factory):
    return write_benchmarks(tmp_path_factory.mktemp("judged"))


def test_readers_on_the_lmms_eval_layouts(bench_root):
    mmvet = read_items(TASKS["mmvet"], bench_root / "mmvet").items
    assert [i.id for i in mmvet] == ["v1_0", "v1_1", "v1_2"] and mmvet[0].references == [
        "-1<AND>-5"
    ]
    assert mmvet[0].meta == {"question": "What is x?", "capability": "ocr,math"}
    llava = read_items(TASKS["llava_bench"], bench_root / "llava_bench").items
    assert llava[1].references == ["It is red square 1."] and llava[1].meta["category"] == "detail"
    math = read_items(TASKS["mathvista"], bench_root / "mathvista").items
    assert [i.id for i in math] == ["1", "2"] and math[1].references == ["8/11"]
    assert math[1].meta["choices"] == ["3/11", "8/11", "6/11", "3/5"]
    assert (
        math[1]
        .sample.messages[0]
        .content[-1]
        .text.endswith(
            "B. 8/11\nC. 6/11\nD. 3/5\nAnswer with the option's letter from the given choices directly."
        )
    )
    ferret = read_items(TASKS["ferret_bench"], bench_root / "ferret_bench").items
    assert ferret[0].sample.messages[0].content[-1].text == "What is the object <850,523,897,582>?"
    assert ferret[2].meta["category"] == "ground_conv" and all(i.error is None for i in ferret)


def test_run_eval_judges_after_generation_and_reruns_from_the_cache(
    tiny_ckpt_dir, bench_root, tmp_path
):
    model, tok = load_checkpoint(tiny_ckpt_dir)
    tasks = [(t, bench_root / t) for t in ("mmvet", "llava_bench", "mathvista", "ferret_bench")]

    def generic(m: list[dict]) -> str:
        return "0.5" if m[-1]["content"].startswith("Compare") else "7 7" if len(m) == 2 else "14"

    with StubJudge(generic) as stub:
        settings = EvalSettings(max_new_tokens=4, judge=_judge(stub, tmp_path / "cache.jsonl"))
        first = run_eval(model, tok, tasks, tmp_path / "a", settings)
        assert stub.calls > 0
        calls = stub.calls
        settings.judge = _judge(stub, tmp_path / "cache.jsonl")
        again = run_eval(model, tok, tasks, tmp_path / "b", settings)
        assert stub.calls == calls
    for name, b in first["benchmarks"].items():
        d = b["details"]
        assert d["n_judged"] + d["n_judge_failed"] + b["n_errors"] == b["n"], name
        assert again["benchmarks"][name]["score"] == b["score"]
    assert first["benchmarks"]["mmvet"]["score"] == 0.5
    assert first["benchmarks"]["llava_bench"]["score"] == 1.0
    items = [json.loads(x) for x in (tmp_path / "a" / "items.jsonl").read_text().splitlines()]
    assert all("judge" in r for r in items if r["task"] in ("mmvet", "llava_bench"))


def test_cli_eval_judged_by_a_local_mm15_serve(tiny_ckpt_dir, bench_root, tmp_path, capsys):
    """The tiny model grades MM-Vet through `mm15 serve`: its replies are noise, so most
    grades do not read (each re-asked up to 5 times, then counted as failed); the re-run sends
    the server nothing."""
    from mm15.serve.app import create_app
    from mm15.serve.server import BackgroundServer
    from mm15.services.inference import generate_encoded
    from tests.serve_fixtures import config

    model, tok = load_checkpoint(tiny_ckpt_dir)
    model.cfg.lm.max_seq_len = 4096  # MM-Vet's grader prompt is ~2400 byte tokens (RoPE: no cap)
    served = []

    def generate(prompts, settings, on_token):
        served.append(len(prompts))
        return generate_encoded(model, tok, prompts, settings, on_token=on_token)

    app = create_app(model, tok, config(), generate_fn=generate)
    with BackgroundServer(app) as server:
        argv = [
            "--model",
            str(tiny_ckpt_dir),
            "--task",
            "mmvet",
            "--data",
            str(bench_root / "mmvet"),
            "--max-new-tokens",
            "4",
        ]
        judge = [
            "--set",
            f"judge.url={server.url}/v1",
            "--set",
            "judge.model=tiny",
            "--set",
            "judge.api_key_env=null",
            "--set",
            "judge.concurrency=1",
        ]
        assert main([*argv, "--out", str(tmp_path / "a"), *judge]) == 0
        asked = sum(served)
        assert asked >= 3  # at least one judge call per item
        assert (
            main(
                [
                    *argv,
                    "--out",
                    str(tmp_path / "b"),
                    *judge,
                    "--set",
                    f"judge.cache={tmp_path / 'a' / 'judge_cache.jsonl'}",
                ]
            )
            == 0
        )
        assert sum(served) == asked
    a, b = (
        json.loads((tmp_path / o / "summary.json").read_text())["benchmarks"]["mmvet"] for o in "ab"
    )
    assert a["details"]["n_judged"] + a["details"]["n_judge_failed"] == 3
    assert a["details"]["judge_calls"] == asked and b["details"]["judge_calls"] == 0
    assert b["details"]["judge_cache_hits"] == asked and b["score"] == a["score"]
    # no judge configured: a usage error before the weights load
    assert main([*argv, "--out", str(tmp_path / "c")]) == 2
    assert "judge.url" in capsys.readouterr().err
