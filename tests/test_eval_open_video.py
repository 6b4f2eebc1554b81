"""Open-ended video benchmarks judged by a model (MM1.5 §5.1, Tables 10–11): ActivityNet-QA,
VCGBench and LLaVA-Hound — each judge reply format read by hand, the readers on fixtures in
the lmms-eval / LLaVA-Hound layouts with real clips and frame folders, failures kept in the
denominator, and `mm15 eval` through the CLI against a stub judge (the re-run asks nothing)."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from registry_fixtures import write_video

from mm15.cli import main
from mm15.eval import judge_prompts as jp
from mm15.eval.judge import Judge, JudgeConfig
from mm15.eval.judge_scores import aggregate_judged, hound_score, hound_truncate, vcg_score
from mm15.eval.judged_tasks import judge_rows
from mm15.eval.open_video_tasks import activitynetqa_prompt, hound_question
from mm15.eval.tasks import TASKS
from tests.eval_fixtures import hound_release
from tests.judge_fixtures import StubJudge

# ---------------------------------------------------------------------------------------------
# Judge replies, by hand


def test_vcg_score_is_int_of_the_dict_score():
    assert vcg_score("{'score': 4}") == 4
    assert vcg_score("{'score': 4.8}") == 4  # int(4.8), as evaluate_benchmark_*.py
    assert vcg_score("{'score': '3'}") == 3
    assert vcg_score("{'score': 7}") == 7  # the official scripts check no range
    assert vcg_score("{'score': '4.8'}") is None  # int("4.8") fails
    assert vcg_score("{''score': 4}") is None  # the prompt's own example does not parse
    assert vcg_score("Score: 4") is None and vcg_score("{'pred': 'yes'}") is None


def test_hound_score_official_get_score():
    assert hound_score("Explanation: close.\nScore: 4") == 4.0
    assert hound_score("Explanation: 2 cats, not 5.\nScore: 3.5") == 3.5  # "Score: " wins
    assert hound_score("I give it 2. Really 2, not 5.") == 2.0  # most frequent number
    assert hound_score("between 2 and 5") == 3.5  # a tie: the mean of the tied numbers
    assert hound_score("no grade") == 1.0  # no number: 1
    assert hound_truncate("a  b c") == "a  b c"  # 256 words or fewer: as written
    long = " ".join(f"w{i}" for i in range(300))
    assert hound_truncate(long).split() == long.split()[:256]


def test_prompts_shown_to_the_model():
    assert activitynetqa_prompt("what is the man doing") == (
        "What is the man doing? Answer the question using a single word or phrase."
    )
    assert (
        activitynetqa_prompt("WHO Runs")
        == "Who runs? Answer the question using a single word or phrase."
    )
    assert hound_question("<video>\nWhat happens next?") == "What happens next?"


# ---------------------------------------------------------------------------------------------
# Fixtures in the real layouts


def _parquet(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    """lmms-lab/ActivityNetQA, lmms-lab/VideoChatGPT and ShareGPTVideo's test set, each with
    a few rows, real MPEG-4 clips and a frame folder."""
    anet = tmp_path_factory.mktemp("anet")
    write_video(anet / "all_test/v_abc.mp4", frames=3, size=(16, 16))
    _parquet(
        anet / "Generation/test-00000-of-00001.parquet",
        [
            {"video_name": "abc", "question": "what is he doing", "answer": "running",
             "question_id": "v_abc_1", "type": 0},
            {"video_name": "gone", "question": "is it day", "answer": "yes",
             "question_id": "v_gone_2", "type": 3},
            {"video_name": "abc", "question": "what colour", "answer": "",
             "question_id": "v_abc_3", "type": 4},
        ],
    )  # fmt: skip
    vcg = tmp_path_factory.mktemp("vcg")
    for name in ("v1", "v2"):
        write_video(vcg / f"Test_Videos/{name}.mp4", frames=3, size=(16, 16))
    _parquet(
        vcg / "Generic/test-00000-of-00001.parquet",
        [
            {"video_name": "v1", "question": "Describe the video.", "answer": "A dog runs."},
            {"video_name": "v2", "question": "Who is there?", "answer": "A man."},
        ],
    )
    _parquet(
        vcg / "Temporal/test-00000-of-00001.parquet",
        [{"video_name": "v1", "question": "What happens first?", "answer": "The dog sits."}],
    )
    _parquet(
        vcg / "Consistency/test-00000-of-00001.parquet",
        [  # lmms-eval's layout: one question per row, the other "None"
            {"video_name": "v1", "question_1": "What animal is it?", "question_2": "None",
             "answer": "A dog."},
            {"video_name": "v1", "question_1": "None", "question_2": "Which animal appears?",
             "answer": "A dog."},
            {"video_name": "v2", "question_1": "Who is it?", "question_2": "Which person?",
             "answer": "A man."},  # both in one row
            {"video_name": "v2", "question_1": "What does he hold?", "question_2": "None",
             "answer": "A cup."},  # its paraphrase is missing
        ],
    )  # fmt: skip
    hound = tmp_path_factory.mktemp("hound")
    hound_release(hound)
    return {"anet": anet, "vcg": vcg, "hound": hound}


def _items(task, root, limit=None):
    spec = TASKS[task]
    return list(spec.reader(spec, root, split=None, limit=limit))


def test_activitynetqa_reader(roots):
    ok, gone, empty = _items("activitynetqa", roots["anet"])
    assert ok.id == "v_abc_1" and ok.references == ["running"]
    assert ok.sample.media[0].kind == "video" and ok.sample.media[0].path.endswith("v_abc.mp4")
    assert ok.sample.messages[0].content[-1].text == (
        "What is he doing? Answer the question using a single word or phrase."
    )
    assert ok.meta == {"question": "what is he doing", "type": 0}  # the judge sees it raw
    assert gone.error.startswith("missing:") and "'v_gone'" in gone.error
    assert empty.error.startswith("empty:")
    assert TASKS["activitynetqa"].metric == "videoqa_judge"


def test_vcgbench_reader_pairs_the_consistency_questions(roots):
    items = _items("vcgbench", roots["vcg"])
    sets = [(i.meta["vcg_set"], i.meta.get("which")) for i in items]
    assert sets == [
        ("consistency", 1), ("consistency", 2), ("consistency", 1), ("consistency", 2),
        ("consistency", 1), ("generic", None), ("generic", None), ("temporal", None),
    ]  # fmt: skip
    q1, q2, both1, both2, lone = items[:5]
    assert q1.meta["pair"] == q2.meta["pair"] and q1.id.endswith(":q1") and q2.id.endswith(":q2")
    assert q1.sample.messages[0].content[-1].text == "What animal is it?"
    assert q2.sample.messages[0].content[-1].text == "Which animal appears?"
    assert q1.references == q2.references == ["A dog."]
    assert both1.meta["pair"] == both2.meta["pair"] != q1.meta["pair"]
    assert both2.meta["question"] == "Which person?"
    assert lone.error.startswith("malformed:") and lone.sample is None
    generic = items[5]
    assert generic.sample.media[0].path.endswith("Test_Videos/v1.mp4")
    assert generic.sample.messages[0].content[-1].text == "Describe the video."
    # one config's folder alone is read as that config
    (temporal,) = _items("vcgbench", roots["vcg"] / "Temporal")
    assert temporal.meta["vcg_set"] == "temporal"
    assert temporal.sample.media[0].path.endswith("Test_Videos/v1.mp4")  # clips beside it


def test_hound_reader_frame_folders(roots):
    ok, gone = _items("llava_hound_msvd", roots["hound"])
    assert ok.id == "msvd_0" and ok.references == ["A dog runs on the grass."]
    assert ok.sample.media[0].path.endswith("video_data/test/msvd/vid1")  # a frame folder
    assert ok.sample.messages[0].content[-1].text == "What runs?"
    assert ok.meta["caption"] == "A dog runs on grass."
    assert gone.error.startswith("missing:")
    with pytest.raises(FileNotFoundError, match=r"ssv2\.qa\.jsonl"):
        _items("llava_hound_ssv2", roots["hound"])


# ---------------------------------------------------------------------------------------------
# Judged by a stub endpoint: hand-computed scores, failures in the denominator


def _rows(items, preds):
    return [
        {
            "task": i.task,
            "id": i.id,
            "prediction": p if i.error is None else None,
            "reference": i.references,
            "score": 0.0,
            "error": i.error,
            "meta": i.meta,
        }
        for i, p in zip(items, preds, strict=True)
    ]


def _vcg_reply(messages):
    system, user = messages[0]["content"], messages[1]["content"]
    if "Predicted Answer: broken" in user:
        return "{'score': 'high'}"  # unreadable: a failed judgement
    for dim, score in (("factual accuracy", 4), ("detail orientation", 3),
                       ("contextual understanding", 5), ("temporal understanding", 2)):  # fmt: skip
        if f"evaluating the {dim}" in system:
            return f"{{'score': {score}}}"
    assert "Predicted Answer to Question 2:" in user  # consistency: both answers in one ask
    return "{'score': 1}"


def _judge(stub, path):
    return Judge(JudgeConfig(url=stub.url, model="m", api_key_env=None, max_retries=0), path)


def test_vcgbench_scores_by_hand(roots, tmp_path):
    items = _items("vcgbench", roots["vcg"])
    preds = ["a dog", "a dog", "a man", "a man", "", "dog runs", "broken", "sits"]
    rows = _rows(items, preds)
    spec = TASKS["vcgbench"]
    with StubJudge(_vcg_reply) as stub:
        judge_rows(spec, rows, _judge(stub, tmp_path / "c.jsonl"))
        # generic: 3 asks + 1 (the broken one fails at its first); temporal 1; 2 pairs: 1 each
        assert stub.calls == 3 + 1 + 1 + 2
    score, d = aggregate_judged(spec, rows)
    # generic: 2 items, one failed → correctness 4/2, detail 3/2, context 5/2; temporal 2/1;
    # consistency: 3 pairs (the lone question's included) → (1 + 1 + 0) / 3
    assert d["dimensions"] == pytest.approx(
        {
            "correctness": 2.0,
            "detail_orientation": 1.5,
            "context": 2.5,
            "temporal": 2.0,
            "consistency": 2 / 3,
        }
    )
    assert d["average_score"] == pytest.approx((2 + 1.5 + 2.5 + 2 + 2 / 3) / 5)
    assert score == pytest.approx(d["average_score"] / 5)
    assert d["n_judge_failed"] == 1 and d["judge_failures"] == {"unparseable": 1}
    assert rows[6]["score"] == 0.0 and rows[6]["judge"]["failed"].startswith("unparseable:")
    assert rows[5]["score"] == pytest.approx((4 + 3 + 5) / 3 / 5)
    assert rows[1]["judge"]["paired_with"] == rows[0]["id"] and rows[1]["score"] == 0.2
    assert rows[1]["judge"]["calls"] == 0 and d["judge_calls"] == 7
    assert d["n_judged"] + d["n_judge_failed"] == 7  # every row with a prediction


def test_unpaired_consistency_question_is_a_failed_judgement(roots, tmp_path):
    items = _items("vcgbench", roots["vcg"] / "Consistency")[:2]
    items[1].error = "corrupt: its clip did not decode"  # the paraphrase's answer is lost
    rows = _rows(items, ["a dog", "a dog"])
    with StubJudge(_vcg_reply) as stub:
        judge_rows(TASKS["vcgbench"], rows, _judge(stub, tmp_path / "c.jsonl"))
        assert stub.calls == 0
    score, d = aggregate_judged(TASKS["vcgbench"], rows)
    assert rows[0]["judge"]["failed"].startswith("unpaired:") and score == 0.0
    assert d["dimensions"] == {"consistency": 0.0} and d["n_judge_failed"] == 1


def test_hound_and_activitynetqa_judged(roots, tmp_path):
    def reply(messages):
        text = messages[-1]["content"]
        if text.startswith("Given the following inputs:"):  # LLaVA-Hound: one user message
            assert len(messages) == 1 and "**Ground Truth Video Caption**: A dog" in text
            return "Explanation: right.\nScore: 4" if "Answer**: A dog runs." in text else 500
        return "{'pred': 'yes', 'score': 5}"

    hound = _items("llava_hound_msvd", roots["hound"])
    rows = _rows(hound, ["A dog runs.", None])
    extra = dict(rows[0], id="msvd_x", prediction="A cat sits.")  # the judge fails: HTTP 500
    rows.append(extra)
    with StubJudge(reply) as stub:
        judge_rows(TASKS["llava_hound_msvd"], rows, _judge(stub, tmp_path / "c.jsonl"))
        score, d = aggregate_judged(TASKS["llava_hound_msvd"], rows)
        assert score == pytest.approx(1 / 3) and d["average_score"] == pytest.approx(4 / 3)
        assert d["n_judge_failed"] == 1 and d["judge_failures"] == {"http": 1}
        anet = _items("activitynetqa", roots["anet"])
        rows = _rows(anet, ["running", None, None])
        judge_rows(TASKS["activitynetqa"], rows, _judge(stub, tmp_path / "c.jsonl"))
        sent = stub.requests[-1]["messages"][1]["content"]
        assert (
            "Question: what is he doing\nCorrect Answer: running\nPredicted Answer: running" in sent
        )
    score, d = aggregate_judged(TASKS["activitynetqa"], rows)
    assert score == pytest.approx(1 / 3) and d["average_score"] == pytest.approx(5 / 3)


# ---------------------------------------------------------------------------------------------
# `mm15 eval` end to end


def test_cli_eval_vcgbench_against_a_stub_judge(tiny_ckpt_dir, roots, tmp_path, capsys):
    with StubJudge(lambda m: "{'score': 3}") as stub:
        argv = ["eval", "--model", str(tiny_ckpt_dir), "--task", "vcgbench"]
        argv += ["--data", str(roots["vcg"]), "--max-new-tokens", "2", "--device", "cpu"]
        judge = ["--set", f"judge.url={stub.url}", "--set", "judge.model=stub"]
        judge += ["--set", "judge.api_key_env=null"]
        assert main([*argv, "--out", str(tmp_path / "a"), *judge]) == 0
        calls = stub.calls
        cache = tmp_path / "a" / "judge_cache.jsonl"
        again = [*argv, "--out", str(tmp_path / "b"), *judge, "--set", f"judge.cache={cache}"]
        assert main(again) == 0
        assert stub.calls == calls  # the re-run asked nothing
    a, b = (
        json.loads((tmp_path / o / "summary.json").read_text())["benchmarks"]["vcgbench"]
        for o in "ab"
    )
    # the tiny model's answers are noise, but every judged ask returns 3: each dimension's
    # mean is 3 x (judged units / units); the lone consistency question is an error item
    assert a["n"] == 8 and a["n_errors"] == 1 and a["errors"] == {"malformed": 1}
    assert a["details"]["dimensions"]["correctness"] == 3.0
    assert a["details"]["dimensions"]["consistency"] == pytest.approx(2.0)
    assert a["details"]["judge_calls"] == calls == 3 * 2 + 1 + 2
    assert b["details"]["judge_calls"] == 0 and b["details"]["judge_cache_hits"] == calls
    assert b["score"] == a["score"] == pytest.approx(a["details"]["average_score"] / 5)
    assert a["details"]["n_judged"] + a["details"]["n_judge_failed"] + a["n_errors"] == a["n"]
    assert "| vcgbench |" in capsys.readouterr().out
    assert jp.VCG_PROMPTS.keys() == set(a["details"]["dimensions"])
