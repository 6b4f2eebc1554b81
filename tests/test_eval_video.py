"""Video multiple choice with "Best Option: (" (MM1.5 §5, Tables 10–11) and MVBench as
multi-image (Table 9): the option read from the continuation, the readers on fixtures in the
lmms-eval / release layouts with real clips, the prompt the model sees, and `mm15 eval`."""

from __future__ import annotations

import json

import pytest

from mm15.cli.eval import main
from mm15.data.prompt_encoding import encode_sample
from mm15.eval.tasks import TASKS, score_item
from mm15.eval.video_tasks import ANSWER_PREFIX, best_option_choice
from mm15.services.checkpoint import load_checkpoint
from tests.eval_fixtures import mvbench_release, video_mc_release, videomme_release

OPTS = ["a cat", "a dog", "a bird", "a fish"]


def test_best_option_choice():
    assert best_option_choice("B) a dog", OPTS) == 1
    assert best_option_choice("C", OPTS) == 2
    assert best_option_choice(" A", OPTS) == 0
    assert best_option_choice("E) none", OPTS) is None  # no fifth option, no text match
    assert best_option_choice("Because it is a fish", OPTS) == 3  # text after the letter rule
    assert best_option_choice("Dogs", OPTS) is None  # "D" followed by a letter is a word


def _items(task, root, split=None, limit=None):
    spec = TASKS[task]
    return list(spec.reader(spec, root, split=split, limit=limit))


@pytest.fixture(scope="module")
def video_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    videomme_release(root / "videomme", OPTS)
    return root


def test_videomme_reader(video_root):
    items = _items("videomme", video_root / "videomme")
    assert [i.id for i in items] == ["q0", "q1", "q2", "q3"]
    ok = items[0]
    assert ok.options == OPTS and ok.references == ["B"]  # "A. " prefixes stripped
    assert ok.sample.media[0].kind == "video" and ok.sample.media[0].path.endswith("v1.mp4")
    assert ok.sample.meta["answer_prefix"] == ANSWER_PREFIX
    assert ok.sample.messages[0].content[-1].text.endswith("(D) a fish\nOnly give the best option.")
    assert ok.meta["task_type"] == "Counting Problem"
    assert items[2].error.startswith("missing:") and "'gone'" in items[2].error
    assert items[3].error.startswith("malformed:")  # answer Z is not an option
    assert score_item(TASKS["videomme"], ok, "B) a dog") == 1.0
    assert score_item(TASKS["videomme"], ok, "A) a cat") == 0.0


def test_prompt_ends_with_best_option(video_root, tiny_ckpt_dir):
    model, tok = load_checkpoint(tiny_ckpt_dir)
    item = _items("videomme", video_root / "videomme", limit=1)[0]
    enc = encode_sample(item.sample, tokenizer=tok, model_cfg=model.cfg)
    text = tok.decode([i for i in enc.input_ids if i != tok.image_token_id])
    assert text.endswith(model.cfg.format.assistant_prefix + "Best Option: (")


def test_egoschema_nextqa_intentqa_layouts(tmp_path):
    video_mc_release(tmp_path)
    (ego,) = _items("egoschema", tmp_path)
    assert ego.references == ["B"] and ego.options == ["x", "y"]
    (nq,) = _items("nextqa", tmp_path)  # default split: val
    assert nq.references == ["C"] and len(nq.options) == 5 and nq.meta == {"type": "CW"}
    (iq,) = _items("intentqa", tmp_path)  # default split: test
    assert iq.references == ["A"] and iq.sample.media[0].path.endswith("e1.mp4")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        _items("nextqa", tmp_path / "nosuch")


def test_mvbench_frames_are_images(tmp_path):
    mvbench_release(tmp_path)
    ok, bad = _items("mvbench", tmp_path)
    assert [m.kind for m in ok.sample.media] == ["image"] * 16  # MVBench's 16 frames
    assert ok.references == ["B"] and ok.meta == {"subtask": "action_antonym"}
    assert bad.error.startswith("malformed:")


def test_cli_eval_video_task(tiny_ckpt_dir, video_root, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["--model", str(tiny_ckpt_dir), "--task", "videomme", "--data", str(video_root)]
    argv += ["--out", str(out), "--batch-size", "2", "--max-new-tokens", "2", "--device", "cpu"]
    assert main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    bench = summary["benchmarks"]["videomme"]
    assert bench["n"] == 4 and bench["n_errors"] == 2 and bench["category"] == "video"
    assert bench["errors"] == {"malformed": 1, "missing": 1}
    rows = [json.loads(line) for line in (out / "items.jsonl").read_text().splitlines()]
    assert all(isinstance(r["prediction"], str) for r in rows[:2])
    assert bench["score"] == sum(r["score"] for r in rows) / 4
    assert "| videomme |" in capsys.readouterr().out
