"""Video in mm15 serve: the ``video_url`` part (vLLM's shape) through the official openai client,
answered as mm15's own pipeline and generate answer the same clip; vLLM's ``data:video/jpeg``
frame list; file:// below the media root only; every bad video a 4xx with its code."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import av
import openai
import pytest
import torch
from PIL import Image

from mm15.data.pipeline import format_sample
from mm15.data.prompt_encoding import encode_example
from mm15.data.schema import Media, Message, Part, Sample
from mm15.data.video import sample_decoded_frames, uniform_indices
from mm15.serve.app import create_app
from mm15.serve.config import ServeConfig
from mm15.serve.fetch import Fetcher
from mm15.serve.prepare import PixelBudget, check_request, prepare_prompt
from mm15.serve.schemas import APIError, parse_request
from mm15.serve.server import BackgroundServer
from mm15.services.checkpoint import load_checkpoint
from mm15.services.inference import GenerationSettings, generate_encoded
from tests.registry_fixtures import write_video
from tests.serve_fixtures import Scripted, config, data_url, get, png_bytes, post

QUESTION = "What happens in the video?"
K = 20  # frames in the test clip; the tiny model shows VideoConfig.num_frames = 8 of them


def video_message(*urls: str, text: str = QUESTION) -> list[dict]:
    parts = [{"type": "video_url", "video_url": {"url": u}} for u in urls]
    return [{"role": "user", "content": [*parts, {"type": "text", "text": text}]}]


def request(messages, **kw) -> dict:
    return {"model": "tiny", "messages": messages, "max_tokens": 4, **kw}


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    """A 20-frame MPEG-4 clip whose frames differ (write_video: grey level 30·f mod 255)."""
    path = tmp_path_factory.mktemp("clips") / "clip.mp4"
    write_video(path, frames=K, size=(48, 32))
    return path


@pytest.fixture(scope="module")
def loaded(tiny_ckpt_dir):
    return load_checkpoint(tiny_ckpt_dir)


def reference(loaded, media: Media, text: str = QUESTION):
    """mm15's own prompt for one video and a question: the training pipeline's Sample."""
    model, tok = loaded
    sample = Sample(
        id="ref",
        source="test",
        category="eval",
        stage="eval",
        media=[media],
        messages=[Message("user", [Part.m(0), Part.t(text)])],
    )
    ex = format_sample(sample, tokenizer=tok, model_cfg=model.cfg, for_generation=True)
    return encode_example(ex, model.cfg)


def prepared(loaded, body: dict, cfg: ServeConfig | None = None, budget=None):
    model, tok = loaded
    cfg = cfg or config()
    req = parse_request(json.dumps(body).encode())
    params = check_request(req, cfg)
    return prepare_prompt(req, params, cfg, model.cfg, tok, Fetcher(cfg.media), budget)


def jpeg_frames(path: Path) -> list[bytes]:
    """Every frame of a clip as JPEG bytes (what a vLLM client sends)."""
    out = []
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            buf = io.BytesIO()
            frame.to_image().save(buf, "JPEG", quality=95)
            out.append(buf.getvalue())
    return out


def jpeg_data_url(frames: list[bytes]) -> str:
    return "data:video/jpeg;base64," + ",".join(base64.b64encode(f).decode() for f in frames)


def test_a_video_is_the_pipelines_prompt_for_the_same_clip(loaded, clip):
    model, _ = loaded
    budget = PixelBudget(64_000_000, 1.0)
    url = data_url(clip.read_bytes(), "video/mp4")
    got = prepared(loaded, request(video_message(url)), budget=budget)
    want = reference(loaded, Media(kind="video", path=str(clip)))  # decoded from the file
    n = model.cfg.video.num_frames
    assert len(want.plans) == n < K  # the sampler chose 8 of 20 frames, one tile each
    assert got.encoded.input_ids == want.input_ids
    assert torch.equal(got.encoded.pixels, want.pixels)
    assert got.sizes == [(48, 32)] * n
    assert budget.free == budget.total  # the frames' pixels were given back


def test_vllm_jpeg_frame_list_samples_like_decoded_frames(loaded, clip):
    frames = jpeg_frames(clip)
    assert len(frames) == K
    got = prepared(loaded, request(video_message(jpeg_data_url(frames))))
    decoded = [Image.open(io.BytesIO(f)).convert("RGB") for f in frames]
    picked = sample_decoded_frames(decoded, loaded[0].cfg.video)
    want = reference(loaded, Media(kind="video", decoded=picked))
    assert got.encoded.input_ids == want.input_ids
    assert torch.equal(got.encoded.pixels, want.pixels)
    # the same frames an mp4 of this clip gives: floor((i + 0.5)·20/8)
    assert uniform_indices(K, 8) == [1, 3, 6, 8, 11, 13, 16, 18]


@pytest.fixture(scope="module")
def real(loaded, clip):
    model, tok = loaded
    cfg = config(media={"media_root": str(clip.parent)})
    with BackgroundServer(create_app(model, tok, cfg)) as server:
        yield server


def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0, timeout=60)


@pytest.mark.parametrize("form", ["mp4 data URL", "jpeg frames", "file under the root"])
def test_openai_client_video_chat_answers_as_generate(loaded, real, clip, form):
    model, tok = loaded
    if form == "jpeg frames":
        frames = jpeg_frames(clip)
        url = jpeg_data_url(frames)
        decoded = [Image.open(io.BytesIO(f)).convert("RGB") for f in frames]
        media = Media(kind="video", decoded=sample_decoded_frames(decoded, model.cfg.video))
    else:
        url = data_url(clip.read_bytes(), "video/mp4") if form == "mp4 data URL" else clip.as_uri()
        media = Media(kind="video", path=str(clip))
    r = client(real).chat.completions.create(
        model="tiny", messages=video_message(url), max_tokens=12, temperature=0
    )
    want = reference(loaded, media)
    [result] = generate_encoded(model, tok, [want], GenerationSettings(max_new_tokens=12))
    assert r.usage.prompt_tokens == len(want.input_ids)
    assert r.choices[0].message.content == result.text
    assert r.usage.completion_tokens == len(result.tokens)


@pytest.fixture(scope="module")
def guarded(loaded, clip, tmp_path_factory):
    """A scripted server with small video limits and a media root beside (not above) the clip."""
    model, tok = loaded
    root = tmp_path_factory.mktemp("root")
    write_video(root / "inside.mp4", frames=4, size=(32, 32))
    cfg = config(
        media={
            "media_root": str(root),
            "max_video_bytes": 40_000,
            "max_video_frames": 30,
            "max_image_pixels": 3_000,
            "max_pixels_in_flight": 20_000,
        },
        limits={"max_videos": 1},
    )
    app = create_app(model, tok, cfg, generate_fn=Scripted(tok, "ok"))
    with BackgroundServer(app) as server:
        server.root = root
        yield server


def _mp4(frames: int, size: tuple[int, int], tmp: Path) -> bytes:
    path = tmp / f"v{frames}x{size[0]}x{size[1]}.mp4"
    write_video(path, frames=frames, size=size)
    return path.read_bytes()


def _bad_inputs(clip: Path, tmp: Path) -> dict[str, tuple[list[dict], str]]:
    mp4 = clip.read_bytes()
    playlist = b"#EXTM3U\n#EXTINF:1,\nfile:///etc/passwd\n"
    big_frame = jpeg_data_url([png_bytes((100, 40), fmt="JPEG")])  # 4,000 px > 3,000
    return {
        "bad base64": (video_message("data:video/mp4;base64,@@@@"), "invalid_video_url"),
        "not base64-encoded": (video_message("data:video/mp4,abcd"), "invalid_video_url"),
        "image media type": (video_message(data_url(mp4, "image/png")), "invalid_video_url"),
        "not a video (PNG)": (
            video_message(data_url(png_bytes(), "video/mp4")),
            "video_unreadable",
        ),
        "not a video (text)": (
            video_message(data_url(b"hello " * 50, "video/mp4")),
            "video_unreadable",
        ),
        "an HLS playlist": (video_message(data_url(playlist, "video/mp4")), "video_unreadable"),
        "truncated mp4": (video_message(data_url(mp4[:300], "video/mp4")), "video_unreadable"),
        "bad jpeg frame": (video_message(jpeg_data_url([b"not a jpeg"] * 3)), "video_unreadable"),
        "empty jpeg frame": (video_message("data:video/jpeg;base64,,"), "invalid_video_url"),
        "too many bytes": (video_message(data_url(bytes(50_000), "video/mp4")), "video_too_large"),
        "frames above the pixel bound": (
            video_message(data_url(_mp4(4, (64, 64), tmp), "video/mp4")),
            "video_too_large",
        ),
        "jpeg frame above the pixel bound": (video_message(big_frame), "video_too_large"),
        "frames above the pixel budget": (  # 8 sampled frames × 52×52 = 21,632 > 20,000
            video_message(data_url(_mp4(12, (52, 52), tmp), "video/mp4")),
            "video_too_large",
        ),
        "too many frames": (
            video_message(data_url(_mp4(31, (16, 16), tmp), "video/mp4")),
            "video_too_long",
        ),
        "too many videos": (
            video_message(data_url(mp4, "video/mp4"), data_url(mp4, "video/mp4")),
            "too_many_videos",
        ),
        "fetching disabled": (video_message("https://videos.example.org/a.mp4"), "fetch_disabled"),
        "unsupported scheme": (
            video_message("ftp://videos.example.org/a.mp4"),
            "invalid_video_url",
        ),
        "file outside the root": (video_message(clip.as_uri()), "path_outside_root"),
        "missing file": (None, "video_missing"),
        "video in an assistant message": (
            [
                {
                    "role": "assistant",
                    "content": video_message(data_url(mp4, "video/mp4"))[0]["content"],
                }
            ],
            "invalid_request",
        ),
    }


def test_bad_videos_get_a_clear_4xx(guarded, clip, tmp_path):
    for name, (messages, code) in _bad_inputs(clip, tmp_path).items():
        if messages is None:
            messages = video_message(f"file://{guarded.root}/absent.mp4")
        status, _, body = post(f"{guarded.url}/v1/chat/completions", request(messages))
        assert (status, body["error"]["code"]) == (400, code), (name, body)
    budget = guarded.app.state.pixel_budget
    assert budget.free == budget.total  # every refusal gave back what it held
    inside = video_message(f"file://{guarded.root}/inside.mp4")
    status, _, body = post(f"{guarded.url}/v1/chat/completions", request(inside))
    assert status == 200 and body["usage"]["prompt_tokens"] > 4 * 16, body  # 4 frames, 16 each
    assert get(f"{guarded.url}/health") == (200, {"status": "ok"})


def test_local_files_need_a_media_root(loaded, clip):
    model, tok = loaded
    app = create_app(model, tok, config(), generate_fn=Scripted(tok, "ok"))
    with BackgroundServer(app) as server:
        status, _, body = post(
            f"{server.url}/v1/chat/completions", request(video_message(clip.as_uri()))
        )
    assert (status, body["error"]["code"]) == (400, "local_files_disabled")


def test_the_page_can_attach_a_video(loaded):
    model, tok = loaded
    app = create_app(model, tok, config(), generate_fn=Scripted(tok, "ok"))
    with BackgroundServer(app) as server:
        _, page = get(f"{server.url}/")
        _, js = get(f"{server.url}/static/app.js")
    assert 'id="video"' in page and 'accept="video/' in page
    assert '"video_url"' in js and 'createElement("video")' in js


def test_http_video_follows_the_fetch_rules_and_the_video_byte_limit(loaded, clip):
    """Fetching on (a loopback origin, allowed in code as for an intranet): the clip is fetched
    and sampled; above max_video_bytes the download is cut with the video's code."""
    import http.server
    import threading

    body = clip.read_bytes()

    class Origin(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Origin)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/clip.mp4"
    media = {"allow_fetch_hosts": ("127.0.0.1",), "allow_private_addresses": True}
    try:
        got = prepared(loaded, request(video_message(url)), config(media=media))
        want = reference(loaded, Media(kind="video", path=str(clip)))
        assert got.encoded.input_ids == want.input_ids
        assert torch.equal(got.encoded.pixels, want.pixels)
        small = config(media={**media, "max_video_bytes": len(body) - 1})
        with pytest.raises(APIError, match="max_video_bytes") as err:
            prepared(loaded, request(video_message(url)), small)
        assert err.value.code == "video_too_large"
    finally:
        server.shutdown()
        server.server_close()
