"""The chat format is part of the model: training records it in the checkpoint, and chat, serve,
eval and Hugging Face's ``apply_chat_template`` all prompt with it (issue 21).

A tiny model is trained one step with a stage format unlike the default; every inference path
is then checked to build exactly the prompt ids the formatter builds with THAT format (and not
the default's).  Old checkpoints (config.json without ``format``) load the default.
"""

from __future__ import annotations

import dataclasses
import io
import json
import shutil

import pytest
from transformers import PreTrainedTokenizerFast

import mm15.data.prompt_encoding as prompt_encoding
import mm15.services.inference as inference
from mm15.config import LEGACY_ASSISTANT_PREFIX, FormatConfig, load_model_config
from mm15.config_json import to_dict
from mm15.data.chat_template import TOKENIZER_CONFIG, chat_template, sample_messages
from mm15.data.pipeline import format_sample
from mm15.data.schema import Media, Message, Part, Sample
from mm15.eval.runner import EvalSettings, run_eval
from mm15.presets import tiny
from mm15.serve.app import create_app
from mm15.serve.server import BackgroundServer
from mm15.services.chat_session import ChatSession, load_media
from mm15.services.checkpoint import init_from_parts, load_checkpoint
from mm15.train.config import TrainConfig, model_format, stage_format
from mm15.train.loop import train
from tests.serve_fixtures import Scripted, config, data_url, png_bytes, post
from tests.train_fixtures import train_config, write_corpus

TRAINED = FormatConfig(
    system_prefix="[SYS] ",
    user_prefix="<Q> ",
    assistant_prefix="<A> ",
    turn_end=" ||\n",
    region_image_index="always",
)
DEFAULT = FormatConfig()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(model, tokenizer, checkpoint dir, run dir): one SFT step in TRAINED."""
    root = tmp_path_factory.mktemp("fmt")
    write_corpus(root / "corpus", n=4)
    cfg = train_config(root / "corpus", root / "run", steps=1, batch_rows=1)
    cfg = dataclasses.replace(
        cfg, stages=[dataclasses.replace(cfg.stages[1], format=TRAINED)], preflight_samples=2
    )
    result = train(cfg)
    model, tok = load_checkpoint(result.final_model)
    return model, tok, result.final_model, root / "run"


def _expected(sample, model, tok, cfg=None):
    """The formatter's prompt ids for ``sample`` in TRAINED and in the default format, rendered
    on a config whose own format is the default (so TRAINED can only come from ``fmt``)."""
    plain = dataclasses.replace(cfg or model.cfg, format=DEFAULT)
    kw = dict(tokenizer=tok, model_cfg=plain, for_generation=True)
    return format_sample(sample, fmt=TRAINED, **kw).input_ids, format_sample(sample, **kw).input_ids


def test_the_checkpoint_records_the_trained_format(trained):
    model, _, ckpt, run = trained
    assert model.cfg.format == TRAINED
    assert json.loads((ckpt / "config.json").read_text())["format"] == to_dict(TRAINED)
    latest = (run / "checkpoints" / "latest").read_text().strip()
    state = json.loads((run / "checkpoints" / latest / "trainer_state.json").read_text())
    assert state["format"] == to_dict(TRAINED)
    tcfg = json.loads((ckpt / TOKENIZER_CONFIG).read_text())
    assert tcfg["chat_template"] == chat_template(model.cfg) != chat_template(tiny())
    assert (tcfg["bos_token"], tcfg["eos_token"]) == ("<|bos|>", "<|eos|>")


def test_chat_prompts_in_the_trained_format(trained, tmp_path):
    model, tok, _, _ = trained
    (tmp_path / "a.png").write_bytes(png_bytes((90, 60)))
    session = ChatSession(model, tok, load_media([tmp_path / "a.png"], cfg=model.cfg))
    session.history.append(("What is it?", "A red square."))
    ex = session.example("And the colour?")
    want, default = _expected(session.sample("And the colour?"), model, tok, session.cfg)
    assert ex.input_ids == want != default
    assert "<A> A red square.<|eos|> ||\n<Q> And the colour? ||\n<A> " in session.prompt_text(
        "And the colour?"
    )
    assert " ||\n<Q>" in session.settings.stop_strings  # the trained turn end stops a ramble


def test_serve_prompts_in_the_trained_format(trained):
    model, tok, _, _ = trained
    seen = []
    answer = Scripted(tok, "ok")

    def capture(prompts, settings, on_token):
        seen.extend(p.input_ids for p in prompts)
        return answer(prompts, settings, on_token)

    png = png_bytes((64, 48))
    messages = [
        {"role": "system", "content": "Be short."},
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": data_url(png)}},
                {"type": "text", "text": "What is it?"},
            ],
        },
    ]
    with BackgroundServer(create_app(model, tok, config(), generate_fn=capture)) as server:
        status, _, body = post(
            f"{server.url}/v1/chat/completions",
            {"model": "tiny", "messages": messages, "max_tokens": 4},
        )
    assert status == 200, body
    sample = Sample(
        id="r",
        source="t",
        category="eval",
        stage="eval",
        media=[Media(bytes=png, size=(64, 48))],
        messages=[
            Message("system", [Part.t("Be short.")]),
            Message("user", [Part.m(0), Part.t("What is it?")]),
        ],
    )
    want, default = _expected(sample, model, tok)
    assert seen == [want] and want != default


def test_eval_prompts_in_the_trained_format(trained, tmp_path, monkeypatch):
    model, tok, _, _ = trained
    (tmp_path / "pope").mkdir()
    (tmp_path / "pope" / "a.png").write_bytes(png_bytes((40, 30)))
    rows = [
        {
            "question_id": i,
            "question": f"Is there a cat {i}?",
            "image": "a.png",
            "answer": "yes",
            "category": "random",
        }
        for i in range(2)
    ]
    (tmp_path / "pope" / "pope.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    samples, prompts = [], []
    real_format, real_generate = prompt_encoding.format_sample, inference._generate

    def spy_format(sample, **kw):
        samples.append(sample)
        return real_format(sample, **kw)

    def spy_generate(model, tokenizer, encoded, settings, on_token=None):
        prompts.extend(e.input_ids for e in encoded)
        return real_generate(model, tokenizer, encoded, settings, on_token)

    monkeypatch.setattr(prompt_encoding, "format_sample", spy_format)
    monkeypatch.setattr(inference, "_generate", spy_generate)
    run_eval(
        model,
        tok,
        [("pope", tmp_path / "pope")],
        tmp_path / "out",
        EvalSettings(batch_size=2, max_new_tokens=1),
        progress=io.StringIO(),
    )
    assert len(samples) == len(prompts) == 2
    for sample, ids in zip(samples, prompts, strict=True):
        want, default = _expected(sample, model, tok)
        assert ids == want != default


def test_hugging_face_template_of_the_trained_checkpoint(trained):
    model, tok, ckpt, _ = trained
    hf = PreTrainedTokenizerFast.from_pretrained(ckpt)
    sample = Sample(
        id="t",
        source="t",
        category="eval",
        stage="eval",
        messages=[
            Message("system", [Part.t("S")]),
            Message("user", [Part.t("Hi")]),
            Message("assistant", [Part.t("Yo")]),
            Message("user", [Part.t("?")]),
        ],
    )
    got = hf.apply_chat_template(sample_messages(sample, model.cfg), add_generation_prompt=True)
    want, default = _expected(sample, model, tok)
    assert got["input_ids"] == want != default


def test_old_checkpoints_without_a_format_load_the_format_they_trained_with(
    tiny_ckpt_dir, tmp_path
):
    old = tmp_path / "old"
    shutil.copytree(tiny_ckpt_dir, old)
    data = json.loads((old / "config.json").read_text())
    data.pop("format")
    (old / "config.json").write_text(json.dumps(data))
    (old / TOKENIZER_CONFIG).unlink()  # checkpoints saved before it had none
    legacy = FormatConfig(assistant_prefix=LEGACY_ASSISTANT_PREFIX)  # "Assistant: "
    assert load_model_config(str(old / "config.json")).format == legacy != DEFAULT
    model, _ = load_checkpoint(old)
    assert model.cfg.format == legacy


def test_init_writes_the_default_and_stages_inherit_the_models_format(
    hf_clip_dir, hf_llama_dir, tmp_path
):
    out = init_from_parts(vision=hf_clip_dir, llm=hf_llama_dir, preset=tiny(), out=tmp_path / "c")
    assert json.loads((out / "config.json").read_text())["format"] == to_dict(DEFAULT)
    assert json.loads((out / TOKENIZER_CONFIG).read_text())["chat_template"]
    # A stage without a format trains in the model's: the last earlier stage's, else the start's.
    stages = train_config(tmp_path, tmp_path / "run").stages
    cfg = TrainConfig(
        model=tiny(), stages=[dataclasses.replace(stages[0], format=TRAINED), stages[1]]
    )
    assert [stage_format(cfg, i, model_format(cfg)) for i in (0, 1)] == [TRAINED, TRAINED]
    cfg = dataclasses.replace(cfg, stages=stages)
    assert stage_format(cfg, 1, model_format(cfg)) == DEFAULT
    data = json.loads((out / "config.json").read_text())
    data["format"] = to_dict(TRAINED)
    (out / "config.json").write_text(json.dumps(data))
    assert model_format(dataclasses.replace(cfg, init_from=str(out))) == TRAINED
