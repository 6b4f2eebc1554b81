"""mm15 serve through the official openai client: models, chat (streaming and not), batching,
grounded regions, stop strings, the CLI's settings."""

from __future__ import annotations

import argparse
import threading
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest

from mm15.cli.serve import config_from_args, register
from mm15.data.coords import dequantize_box, dequantize_point
from mm15.serve.app import create_app
from mm15.serve.server import BackgroundServer
from mm15.services.checkpoint import load_checkpoint
from mm15.services.inference import generate_encoded
from tests.serve_fixtures import Scripted, config, data_url, get, image_message, png_bytes

IMAGE = data_url(png_bytes((200, 100)))
ANSWER = "the red square <100,200,300,400> and the dot <500,500>."


@pytest.fixture(scope="module")
def loaded(tiny_ckpt_dir):
    return load_checkpoint(tiny_ckpt_dir)


@pytest.fixture(scope="module")
def real(loaded):
    """The tiny random model behind the server; a gate can hold its first generate call."""
    model, tok = loaded
    gate = {"event": None}
    calls = []

    def gated(prompts, settings, on_token):
        calls.append(len(prompts))
        if gate["event"] is not None:
            assert gate["event"].wait(timeout=30)
            gate["event"] = None
        return generate_encoded(model, tok, prompts, settings, on_token=on_token)

    app = create_app(model, tok, config(engine={"max_batch": 4}), generate_fn=gated)
    with BackgroundServer(app) as server:
        server.gate, server.calls = gate, calls
        yield server


@pytest.fixture(scope="module")
def scripted(loaded):
    model, tok = loaded
    app = create_app(model, tok, config(), generate_fn=Scripted(tok, ANSWER))
    with BackgroundServer(app) as server:
        yield server


def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0, timeout=60)


def test_models_list(real):
    models = client(real).models.list()
    assert [m.id for m in models.data] == ["tiny"]
    assert client(real).models.retrieve("tiny").id == "tiny"


def test_chat_non_streaming_is_deterministic(real):
    kw = dict(model="tiny", messages=image_message("what is this?", IMAGE), max_tokens=12)
    first = client(real).chat.completions.create(**kw, temperature=0)
    again = client(real).chat.completions.create(**kw)  # the server's default is greedy too
    choice = first.choices[0]
    assert choice.message.role == "assistant" and choice.finish_reason in ("stop", "length")
    assert again.choices[0].message.content == choice.message.content
    assert first.usage.completion_tokens <= 12
    # tiny preset: 16 tokens per tile, a 200×100 image is at least one tile plus text
    assert first.usage.prompt_tokens > 16
    assert isinstance(choice.message.model_extra["regions"], list)


def test_streaming_adds_up_to_the_non_streaming_answer(real):
    kw = dict(model="tiny", messages=image_message("describe", IMAGE), max_tokens=16, temperature=0)
    full = client(real).chat.completions.create(**kw)
    stream = client(real).chat.completions.create(
        **kw, stream=True, stream_options={"include_usage": True}
    )
    deltas, finish, usage, regions = [], None, None, None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            deltas.append(choice.delta.content or "")
            if choice.finish_reason is not None:
                finish, regions = choice.finish_reason, choice.delta.model_extra["regions"]
    assert "".join(deltas) == full.choices[0].message.content
    assert finish == full.choices[0].finish_reason
    assert usage.completion_tokens == full.usage.completion_tokens
    assert regions == full.choices[0].message.model_extra["regions"]


def test_concurrent_requests_share_a_generate_call_and_answer_as_alone(real):
    questions = [f"question number {i}" for i in range(4)]
    kw = dict(model="tiny", max_tokens=10, temperature=0)
    alone = [
        client(real).chat.completions.create(messages=image_message(q, IMAGE), **kw)
        for q in questions
    ]
    real.calls.clear()
    gate = threading.Event()
    real.gate["event"] = gate  # hold the first call so the other three queue behind it
    engine = real.app.state.engine
    with ThreadPoolExecutor(4) as pool:
        first = pool.submit(
            client(real).chat.completions.create, messages=image_message(questions[0], IMAGE), **kw
        )
        assert engine.wait_until(lambda e: e.running == 1, timeout=30)
        rest = [
            pool.submit(
                client(real).chat.completions.create, messages=image_message(q, IMAGE), **kw
            )
            for q in questions[1:]
        ]
        assert engine.wait_until(lambda e: e.pending == 4, timeout=30)
        gate.set()
        batched = [first.result(), *(f.result() for f in rest)]
    assert real.calls == [1, 3]
    assert [b.choices[0].message.content for b in batched] == [
        a.choices[0].message.content for a in alone
    ]


def test_multi_turn_with_system_message(real):
    messages = [
        {"role": "system", "content": "Answer briefly."},
        *image_message("what colour?", IMAGE),
        {"role": "assistant", "content": "red"},
        {"role": "user", "content": [{"type": "text", "text": "and the shape?"}]},
    ]
    single = client(real).chat.completions.create(
        model="tiny", messages=image_message("what colour?", IMAGE), max_tokens=4
    )
    multi = client(real).chat.completions.create(model="tiny", messages=messages, max_tokens=4)
    assert multi.usage.prompt_tokens > single.usage.prompt_tokens


def test_regions_are_structured_in_pixels(scripted):
    kw = dict(model="tiny", messages=image_message("where?", IMAGE), max_tokens=100)
    resp = client(scripted).chat.completions.create(**kw)
    msg = resp.choices[0].message
    assert msg.content == ANSWER  # the text keeps its coordinate tags
    box = dequantize_box((100, 200, 300, 400), (200, 100))
    point = dequantize_point((500, 500), (200, 100))
    expected = [
        {
            "label": "red square",
            "image": 0,
            "box": [round(v, 2) for v in (box.x1, box.y1, box.x2, box.y2)],
        },
        {"label": "dot", "image": 0, "point": [round(point.x, 2), round(point.y, 2)]},
    ]
    assert msg.model_extra["regions"] == expected
    assert expected[0]["box"] == [20.0, 20.0, 60.2, 40.1]
    stream = client(scripted).chat.completions.create(**kw, stream=True)
    finals = [
        c.choices[0].delta.model_extra for c in stream if c.choices and c.choices[0].finish_reason
    ]
    assert finals == [{"regions": expected}]


def test_regions_need_an_image(scripted):
    resp = client(scripted).chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "where?"}], max_tokens=100
    )
    assert resp.choices[0].message.content == ANSWER
    assert resp.choices[0].message.model_extra["regions"] == []  # no image: nothing to ground


@pytest.mark.parametrize("stream", [False, True])
def test_stop_string_and_length(scripted, stream):
    kw = dict(model="tiny", messages=image_message("where?", IMAGE))
    if stream:
        chunks = list(client(scripted).chat.completions.create(**kw, stop=["square"], stream=True))
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        finish = [c.choices[0].finish_reason for c in chunks if c.choices][-1]
    else:
        resp = client(scripted).chat.completions.create(**kw, stop=["square"])
        text, finish = resp.choices[0].message.content, resp.choices[0].finish_reason
    assert (text, finish) == ("the red ", "stop")
    resp = client(scripted).chat.completions.create(**kw, max_tokens=5)
    assert (resp.choices[0].message.content, resp.choices[0].finish_reason) == ("the r", "length")
    assert resp.usage.completion_tokens == 5


def test_health_and_web_page(scripted):
    assert get(f"{scripted.url}/health") == (200, {"status": "ok"})
    status, page = get(f"{scripted.url}/")
    assert status == 200 and "/static/app.js" in page
    status, js = get(f"{scripted.url}/static/app.js")
    assert status == 200 and "/v1/chat/completions" in js


def test_cli_flags_become_the_config(tmp_path, monkeypatch):
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="verb", required=True))
    monkeypatch.setenv("MM15_API_KEY", "from-env")
    args = parser.parse_args(
        [
            "serve",
            "--model",
            str(tmp_path / "ckpt"),
            "--port",
            "9001",
            "--allow-fetch",
            "images.example.org",
            "cdn.example.org",
            "--media-root",
            str(tmp_path),
            "--max-images",
            "2",
            "--max-videos",
            "3",
            "--max-video-bytes",
            "1000",
            "--max-video-frames",
            "50",
            "--max-batch",
            "3",
            "--max-queue",
            "5",
        ]
    )
    cfg = config_from_args(args)
    assert (args.port, cfg.model_name, cfg.api_key) == (9001, "ckpt", "from-env")
    assert cfg.media.allow_fetch_hosts == ("images.example.org", "cdn.example.org")
    assert cfg.media.media_root == str(tmp_path) and cfg.limits.max_images == 2
    assert cfg.limits.max_videos == 3
    assert (cfg.media.max_video_bytes, cfg.media.max_video_frames) == (1000, 50)
    assert (cfg.engine.max_batch, cfg.engine.max_queue) == (3, 5)
    assert not cfg.media.allow_private_addresses  # no flag turns the address check off
    args = parser.parse_args(
        ["serve", "--model", "m", "--api-key", "k", "--media-root", "/nonexistent-dir"]
    )
    with pytest.raises(ValueError, match="media-root"):
        config_from_args(args)


def test_generate_on_token_streams_every_token_and_can_end_a_row(loaded):
    """The streaming hook the engine relies on (mm15.model.generate.generate's on_token)."""
    from mm15.model.generate import generate

    model, tok = loaded
    prompts = [tok.encode("first prompt"), tok.encode("second")]
    plain = generate(model.lm, prompts, max_new_tokens=8, eos_token_ids=tok.eos_ids)
    seen: dict[int, list[int]] = {0: [], 1: []}

    def on_token(row: int, token: int) -> bool:
        seen[row].append(token)
        return not (row == 1 and len(seen[1]) == 3)  # end row 1 after its third token

    out = generate(
        model.lm, prompts, max_new_tokens=8, eos_token_ids=tok.eos_ids, on_token=on_token
    )
    eos_seen = tok.eos_ids[:1] if plain[0].finish_reason == "stop" else []
    assert seen[0] == plain[0].tokens + eos_seen
    assert (out[0].tokens, out[0].finish_reason) == (plain[0].tokens, plain[0].finish_reason)
    assert out[1].tokens == plain[1].tokens[:3] == seen[1] and out[1].finish_reason == "stop"
