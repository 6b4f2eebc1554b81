"""`mm15 chat`: prompts built as training formats them, multi-image, video, multi-turn, visual
prompts, grounded answers parsed and drawn, n_max at inference, and clear errors."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from types import SimpleNamespace

import av
import numpy as np
import pytest
from PIL import Image

from mm15.cli.chat import main
from mm15.config import FormatConfig
from mm15.data.coords import Box, Point, format_box, format_point
from mm15.data.layout import plan_image
from mm15.data.pipeline import format_sample
from mm15.data.schema import Media, Message, Part, Sample
from mm15.model.generate import GenerationResult
from mm15.services.chat_session import ChatError, ChatSession, load_media, parse_visual_prompt
from mm15.services.checkpoint import load_checkpoint
from mm15.services.inference import GenerationSettings, generate_for_samples

GREY = (128, 128, 128)


@pytest.fixture(scope="module")
def ckpt(tiny_ckpt_dir):
    model, tok = load_checkpoint(tiny_ckpt_dir)
    return SimpleNamespace(dir=str(tiny_ckpt_dir), model=model, tok=tok)


@pytest.fixture
def imgs(tmp_path) -> SimpleNamespace:
    """a: 200x100 grey (tiny preset: 112 px tiles, (n_min, n_max) = (1, 4), 16 tokens/tile),
    b: 120x80 noise, big: 336x336 (2x2 + overview at n_max 4, 3x3 + overview at n_max 9)."""
    rng = np.random.default_rng(0)
    a, b, big = tmp_path / "a.png", tmp_path / "b.png", tmp_path / "big.png"
    Image.new("RGB", (200, 100), GREY).save(a)
    Image.fromarray(rng.integers(0, 256, (80, 120, 3), dtype=np.uint8)).save(b)
    Image.fromarray(rng.integers(0, 256, (336, 336, 3), dtype=np.uint8)).save(big)
    return SimpleNamespace(a=str(a), b=str(b), big=str(big), dir=tmp_path)


def _write_video(path: Path, n: int, size: int = 32) -> Path:
    codec = next(c for c in ("libx264", "mpeg4") if c in av.codecs_available)
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=10)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        for i in range(n):
            rgb = np.full((size, size, 3), i * 12, dtype=np.uint8)
            for pkt in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                out.mux(pkt)
        for pkt in stream.encode():
            out.mux(pkt)
    return path


@pytest.fixture
def fake(monkeypatch):
    """Replace the model call: record each prompt, answer with queued replies (else "ok")."""
    calls: list[SimpleNamespace] = []
    replies: list[str] = []

    def generate(self, ex):
        text = self.tokenizer.decode(ex.input_ids, skip_special=False)
        calls.append(SimpleNamespace(ex=ex, text=_collapse(text), history=list(self.history)))
        return GenerationResult([], "stop", replies.pop(0) if replies else "ok")

    monkeypatch.setattr(ChatSession, "generate", generate)
    return SimpleNamespace(calls=calls, replies=replies)


def _collapse(text: str) -> str:
    return re.sub(r"(?:<image>)+", "[T]", text)


def _run(capsys, ckpt, *argv: str, stdin: str | None = None, monkeypatch=None):
    if stdin is not None:
        monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    code = main(["--model", ckpt.dir, "--max-new-tokens", "6", *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def _image_tokens(ex, ckpt) -> int:
    return ex.input_ids.count(ckpt.tok.image_token_id)


# ---------------------------------------------------------------------------------------------
# Prompts are the training format; generation is the inference path's


def test_one_shot_single_image_matches_the_training_formatter_and_generation(ckpt, imgs, capsys):
    # The conversation reader prepends images with no placeholder to the first user turn.
    sample = Sample(
        id="s",
        source="t",
        category="eval",
        stage="eval",
        media=[Media(path=imgs.a)],
        messages=[Message("user", [Part.m(0), Part.t("What is this?")])],
    )
    fmt = FormatConfig()
    want = format_sample(
        sample, tokenizer=ckpt.tok, model_cfg=ckpt.model.cfg, fmt=fmt, for_generation=True
    )
    session = ChatSession(ckpt.model, ckpt.tok, load_media([imgs.a], cfg=ckpt.model.cfg))
    assert session.example("What is this?").input_ids == want.input_ids
    assert _collapse(session.prompt_text("What is this?")).startswith("<|bos|>User: (0,")
    assert session.prompt_text("What is this?").endswith("What is this?\nAssistant:\n")

    settings = GenerationSettings(max_new_tokens=6, stop_strings=["\nUser:"])
    (ref,) = generate_for_samples(ckpt.model, ckpt.tok, [sample], settings)
    code, out, err = _run(capsys, ckpt, "--image", imgs.a, "--json", "What is this?")
    assert code == 0, err
    got = json.loads(out)
    assert got == {"text": ref.text, "regions": [], "issues": []}
    assert _run(capsys, ckpt, "--image", imgs.a, "--json", "What is this?")[1] == out  # greedy


def test_two_images_at_their_placeholders(ckpt, imgs, capsys, fake):
    code, _, err = _run(
        capsys, ckpt, "--image", imgs.a, "--image", imgs.b, "Compare <image> with <image> please"
    )
    assert code == 0, err
    (call,) = fake.calls
    ks = [ref.plan.image_index for ref in call.ex.images]
    assert ks == [0, 1]
    t = call.text
    # Whitespace next to a media part is dropped, as the conversation reader does.
    assert t.index("User: Compare(0,") < t.index("]with(1,") < t.index("]please\nAssistant:\n")
    sizes = [ref.plan.size_wh for ref in call.ex.images]
    assert sizes == [(200, 100), (120, 80)]


def test_two_images_real_generation_runs(ckpt, imgs, capsys):
    code, out, err = _run(capsys, ckpt, "--image", imgs.a, "--image", imgs.b, "--json", "Same?")
    assert code == 0, err
    assert set(json.loads(out)) == {"text", "regions", "issues"}


def test_video_frames_sampled_per_video_config(ckpt, tmp_path, capsys, fake):
    clip = _write_video(tmp_path / "clip.mp4", 20)
    code, _, err = _run(capsys, ckpt, "--video", str(clip), "What changes?")
    assert code == 0, err
    (call,) = fake.calls
    n = ckpt.model.cfg.video.num_frames  # 8 of the 20 frames, one tile each (§5)
    assert [r.frame for r in call.ex.images] == list(range(n))
    assert _image_tokens(call.ex, ckpt) == n * ckpt.model.cfg.connector.num_tokens
    assert all(f"({k},1,1)" in call.text for k in range(n))
    assert call.text.endswith("]What changes?\nAssistant:\n")


def test_video_real_generation_runs(ckpt, tmp_path, capsys):
    clip = _write_video(tmp_path / "clip.mp4", 5)  # fewer frames than num_frames: all of them
    code, out, err = _run(capsys, ckpt, "--video", str(clip), "--json", "Describe.")
    assert code == 0, err
    assert "text" in json.loads(out)


# ---------------------------------------------------------------------------------------------
# Interactive multi-turn


def test_interactive_history_grows_and_reset_forgets(ckpt, imgs, capsys, monkeypatch, fake):
    fake.replies += ["reply one", "reply two", "reply three"]
    stdin = "first question\n\nsecond question\n/reset\nthird\n/quit\nnever read\n"
    code, out, err = _run(capsys, ckpt, "--image", imgs.a, stdin=stdin, monkeypatch=monkeypatch)
    assert code == 0, err
    assert out.splitlines() == ["reply one", "reply two", "reply three"]
    assert [len(c.history) for c in fake.calls] == [0, 1, 0]
    first, second, third = (c.text for c in fake.calls)
    assert first.endswith("]first question\nAssistant:\n")
    # The second prompt holds the first exchange, closed by EOS, as training renders it.
    assert second.startswith(first)
    assert second[len(first) :] == "reply one<|eos|>\nUser: second question\nAssistant:\n"
    assert "first question" not in third and third.endswith("]third\nAssistant:\n")
    assert third.count("(0,1,1)") == 1  # the image is shown again after /reset


def test_interactive_eof_exits_cleanly_and_bad_turns_are_skipped(
    ckpt, imgs, capsys, monkeypatch, fake
):
    stdin = "hello\nnow <image> again\nbye"  # no /quit, no final newline
    code, out, err = _run(capsys, ckpt, "--image", imgs.a, stdin=stdin, monkeypatch=monkeypatch)
    assert code == 0
    assert "error: user turn 2 has an image/video placeholder" in err
    assert "Traceback" not in err
    assert out.splitlines() == ["ok", "ok"] and len(fake.calls) == 2
    assert fake.calls[1].history == [("hello", "ok")]


def test_interactive_real_model_two_turns(ckpt, imgs):
    session = ChatSession(
        ckpt.model,
        ckpt.tok,
        load_media([imgs.a], cfg=ckpt.model.cfg),
        settings=GenerationSettings(max_new_tokens=4),
    )
    r1 = session.answer("Hi")
    n1 = len(session.example("Next").input_ids)
    session.answer("Next")
    assert session.history == [("Hi", r1.text), ("Next", session.history[1][1])]
    assert len(session.example("Third").input_ids) > n1


# ---------------------------------------------------------------------------------------------
# Visual prompts, grounded answers, drawing


def test_visual_prompts_render_in_the_coordinate_language(ckpt, imgs, capsys, fake):
    code, _, err = _run(
        capsys,
        ckpt,
        "--image",
        imgs.a,
        "--point",
        "50,25",
        "--box",
        "20,10,100,50",
        "What is at <region> and in <region>?",
    )
    assert code == 0, err
    assert "]What is at <250,250> and in <100,100,499,499>?\nAssistant:\n" in fake.calls[0].text
    # Without markers they are appended; with two images every tag names its image (MM1.5 §3.1, Fig. 1, Fig. 3).
    code, _, err = _run(
        capsys,
        ckpt,
        "--image",
        imgs.a,
        "--image",
        imgs.b,
        "--box",
        "1:30,20,60,40",
        "--point",
        "50,25",
        "Describe",
    )
    assert code == 0, err
    assert "]Describe <1:250,250,499,499> <0:250,250>\nAssistant:\n" in fake.calls[1].text
    # The same text the coordinate library renders.
    assert format_box(Box(30, 20, 60, 40, image=1), (120, 80), image_index="always") == (
        "<1:250,250,499,499>"
    )
    assert format_point(Point(50, 25), (200, 100), image_index="never") == "<250,250>"


def test_parse_visual_prompt_forms():
    assert parse_visual_prompt("2:1.5,3", "point").shape == Point(1.5, 3, image=2)
    assert parse_visual_prompt("1,2,3,4", "box").shape == Box(1, 2, 3, 4)


def test_grounded_reply_is_parsed_and_drawn(ckpt, imgs, capsys, fake):
    fake.replies.append("the cat <120,40,560,300>.")
    out_png = imgs.dir / "out" / "drawn.png"
    code, out, err = _run(
        capsys, ckpt, "--image", imgs.a, "--json", "--draw", str(out_png), "Where is the cat?"
    )
    assert code == 0, err
    (region,) = json.loads(out)["regions"]
    # Bins → pixels of the original 200x100 image: x1 = 120·200/1000, x2 = 561·200/1000 …
    assert region["label"] == "cat" and region["image"] == 0
    assert region["tag"] == "<120,40,560,300>"
    assert region["box"] == pytest.approx([24.0, 4.0, 112.2, 30.1])
    drawn = np.asarray(Image.open(out_png).convert("RGB")).astype(int)
    assert drawn.shape == (100, 200, 3)
    assert (drawn[25, 24] != GREY).any() and (drawn[25, 111] != GREY).any()  # left/right edges
    assert (drawn[29, 80] != GREY).any()  # bottom edge
    assert (drawn[24, 80] == GREY).all() and (drawn[80, 150] == GREY).all()  # inside, outside


def test_grounded_text_mode_and_multi_image_drawing(ckpt, imgs, capsys, fake):
    fake.replies.append("a dog <1:0,0,499,499> and <5,5>")
    code, out, err = _run(
        capsys,
        ckpt,
        "--image",
        imgs.a,
        "--image",
        imgs.b,
        "--draw",
        str(imgs.dir / "o.png"),
        "Where?",
    )
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == "a dog <1:0,0,499,499> and <5,5>"
    assert lines[1] == "  [0] dog: box (0, 0, 60, 40) px on image 1"
    assert lines[2] == "  [1] dog: point (1.1, 0.55) px on image 0"
    # One file per image that has a region, named OUT-k.
    assert (imgs.dir / "o-0.png").exists() and (imgs.dir / "o-1.png").exists()
    assert not (imgs.dir / "o.png").exists()


def test_malformed_tags_are_reported_not_dropped(ckpt, imgs):
    session = ChatSession(ckpt.model, ckpt.tok, load_media([imgs.a], cfg=ckpt.model.cfg))
    reply = session.record("q", "box <10,10,5,5> here <3:1,2>")
    assert reply.regions == [] and len(reply.issues) == 2
    assert session.history == [("q", "box <10,10,5,5> here <3:1,2>")]


# ---------------------------------------------------------------------------------------------
# n_min / n_max at inference (Table 2)


def test_n_max_override_changes_image_tokens(ckpt, imgs, capsys, fake):
    tpt = ckpt.model.cfg.connector.num_tokens
    assert _run(capsys, ckpt, "--image", imgs.big, "Read it.")[0] == 0
    assert _run(capsys, ckpt, "--image", imgs.big, "--n-max", "9", "Read it.")[0] == 0
    default, raised = (_image_tokens(c.ex, ckpt) for c in fake.calls)
    assert default == 5 * tpt and raised == 10 * tpt  # 2x2 + overview vs 3x3 + overview
    image_cfg = ckpt.model.cfg.image
    plan = plan_image(
        (336, 336), type(image_cfg)(**{**vars(image_cfg), "n_max": 9}), tokens_per_tile=tpt
    )
    assert raised == plan.image_tokens
    assert ckpt.model.cfg.image.n_max == 4  # the model's own config is untouched


def test_raised_n_max_real_generation_runs(ckpt, imgs, capsys):
    code, _, err = _run(capsys, ckpt, "--image", imgs.big, "--n-max", "9", "--json", "Read.")
    assert code == 0, err


# ---------------------------------------------------------------------------------------------
# Errors: clear message, status 2, no traceback


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--image", "{dir}/missing.png", "Hi"], "missing.png: file not found"),
        (
            ["--image", "{a}", "<image> and <image>?"],
            "the prompt has 2 <image> placeholder(s) but 1 image(s) were given",
        ),
        (
            ["--image", "{a}", "--point", "250,10", "Hi"],
            "--point '250,10' lies outside image 0 ({a}, 200x100 pixels)",
        ),
        (["--image", "{a}", "--box", "1:0,0,5,5", "Hi"], "is on image 1 but 1 image(s) were given"),
        (
            ["--image", "{a}", "--point", "1,1", "<region> <region>"],
            "2 <region> marker(s) but 1 visual prompt(s)",
        ),
        (["--video", "{dir}/bad.mp4", "Hi"], "bad.mp4: cannot decode video"),
        (["--video", "{dir}/none.mp4", "Hi"], "none.mp4: file not found"),
        (["--video", "{dir}/clip.mp4", "--point", "1,1", "Hi"], "not a video"),
        (["--image", "{a}", "--n-min", "3", "--n-max", "2", "Hi"], "need 1 <= n_min <= n_max"),
    ],
)
def test_bad_inputs_exit_2_with_a_clear_message(ckpt, imgs, capsys, argv, message):
    (imgs.dir / "bad.mp4").write_bytes(b"not a video at all")
    _write_video(imgs.dir / "clip.mp4", 3)
    fill = {"dir": str(imgs.dir), "a": imgs.a}
    code, out, err = _run(capsys, ckpt, *(a.format(**fill) for a in argv))
    assert code == 2
    assert err.startswith("error: ") and message.format(**fill) in err
    assert "Traceback" not in err and out == ""


def test_missing_checkpoint_and_bad_flag(capsys, imgs):
    assert main(["--model", str(imgs.dir), "--image", imgs.a, "Hi"]) == 2
    assert "is not an mm15 checkpoint" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["--model", str(imgs.dir), "--point", "1,2,3", "Hi"])
    assert e.value.code == 2
    assert "want 2 pixel values" in capsys.readouterr().err


def test_text_only_chat_and_context_limit(ckpt):
    session = ChatSession(ckpt.model, ckpt.tok, settings=GenerationSettings(max_new_tokens=3))
    assert session.prompt_text("Hi") == "<|bos|>User: Hi\nAssistant:\n"
    assert session.answer("Hi").finish_reason in ("stop", "length")
    limit = ckpt.model.cfg.lm.max_seq_len
    long = ChatSession(ckpt.model, ckpt.tok, settings=GenerationSettings(max_new_tokens=limit))
    with pytest.raises(ChatError, match=f"exceeds the model's max_seq_len={limit}"):
        long.answer("Hi")
