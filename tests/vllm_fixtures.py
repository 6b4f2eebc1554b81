"""What tests/test_vllm_plugin.py builds: tiny mm15 checkpoints and their HF exports, the
conversations both engines answer, mm15's own answers, and the run of the vLLM side.

vLLM's CPU attention refuses head_dim 16 (the ``tiny`` preset's), so these decoders have
head_dim 64 (two heads of a 128-wide model, one KV head); everything else is ``tiny``'s.  The
vLLM side runs in the interpreter of a separate venv (scripts/setup-vllm.sh): ``MM15_VLLM_PYTHON``
or ``.venv-vllm/bin/python``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from mm15.config import ModelConfig
from mm15.data.prompt_encoding import EncodedPrompt, encode_sample
from mm15.data.schema import Media, Message, Part, Sample
from mm15.model.mm15 import MM15
from mm15.presets import tiny
from mm15.services.checkpoint import load_checkpoint, save_checkpoint
from mm15.services.inference import GenerationSettings, generate_for_samples
from mm15.tokenizer import byte_tokenizer

REPO = Path(__file__).resolve().parents[1]
VLLM_SIDE = REPO / "tests" / "vllm_side.py"
MAX_TOKENS = 12
MAX_IMAGES = 4
MAX_VIDEOS = 1
IMAGE_SIZES = {"wide": (200, 150), "tall": (90, 300), "small": (64, 64), "strip": (300, 120)}
# A clip of 12 JPEG frames, 80x60: the tiny preset shows 8 (VideoConfig.num_frames), picked by
# mm15's uniform rule from the 12 frames vLLM decodes.
CLIP_FRAMES, CLIP_SIZE = 12, (80, 60)


def _image(name: str) -> dict:
    return {"type": "image", "name": name}


def _text(text: str) -> dict:
    return {"type": "text", "text": text}


def _video() -> dict:
    return {"type": "video", "name": "clip"}


# Image parts name an image of IMAGE_SIZES; with_paths() fills in its PNG file.  Two images are
# split (fewer than split_below_images = 3), three are not (MM1.5 §4).
CONVERSATIONS: dict[str, list[dict]] = {
    "one image": [{"role": "user", "content": [_image("wide"), _text("Describe the picture.")]}],
    "two images": [
        {"role": "user", "content": [_image("wide"), _image("tall"), _text("Which is brighter?")]}
    ],
    "three images": [
        {
            "role": "user",
            "content": [_image("small"), _text("and"), _image("tall"), _image("strip")],
        }
    ],
    "text only": [{"role": "user", "content": "Write a haiku about tiles."}],
    "multi-turn": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [_image("strip"), _text("What is it?")]},
        {"role": "assistant", "content": "A box."},
        {"role": "user", "content": "And its colour?"},
    ],
    "video": [{"role": "user", "content": [_video(), _text("What happens?")]}],
    "image and video": [
        {"role": "user", "content": [_image("small"), _text("Is it in"), _video(), _text("?")]}
    ],
}


def vllm_python() -> tuple[Path | None, str]:
    """The vLLM venv's interpreter (None when there is none) and, without one, why."""
    env = os.environ.get("MM15_VLLM_PYTHON")
    path = Path(env) if env else REPO / ".venv-vllm" / "bin" / "python"
    if path.is_file():
        return path, ""
    where = f"MM15_VLLM_PYTHON={env} is not a file" if env else f"no {path.relative_to(REPO)}"
    return None, (
        f"vLLM tier skipped: {where} (make .venv-vllm with `bash scripts/setup-vllm.sh`, "
        "~6 min, 3.8 GB, or point MM15_VLLM_PYTHON at a python with vLLM 0.32 and mm15)"
    )


def tiny_vllm_config(*, moe: bool) -> ModelConfig:
    tok = byte_tokenizer()
    cfg = tiny(vocab_size=len(tok), moe=moe)
    # init_std 0.1: with the usual 0.02 the decoder's layers barely move its logits and the
    # greedy answers did not change when vLLM's Qwen2-MoE dropped the router's top-k
    # renormalisation (norm_topk_prob=False); at 0.1 that changes 4 of 5 answers, and so does
    # feeding the tiles in reverse order.
    cfg.lm = dataclasses.replace(
        cfg.lm, dim=128, n_heads=2, n_kv_heads=1, ffn_hidden=256, init_std=0.1
    )
    cfg.image_token_id = tok.image_token_id
    return cfg


def make_checkpoint(root: Path, *, moe: bool, seed: int) -> tuple[Path, Path]:
    """A random tiny mm15 checkpoint (fp32) and its ``mm15 export --hf`` directory."""
    from mm15.hf.export import export_hf

    torch.manual_seed(seed)
    model = MM15(tiny_vllm_config(moe=moe))
    model.init_weights()
    name = "moe" if moe else "dense"
    ckpt = save_checkpoint(model.eval(), byte_tokenizer(), root / name)
    return ckpt, export_hf(ckpt, root / f"{name}-hf")


def write_images(root: Path) -> dict[str, Path]:
    """The PNG images of IMAGE_SIZES and the clip's JPEG frames (``clip/000.jpg`` …)."""
    rng = np.random.default_rng(0)
    paths = {}
    for name, (w, h) in IMAGE_SIZES.items():
        paths[name] = root / f"{name}.png"
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(paths[name])
    clip = root / "clip"
    clip.mkdir(exist_ok=True)
    w, h = CLIP_SIZE
    for f in range(CLIP_FRAMES):
        frame = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        Image.fromarray(frame).save(clip / f"{f:03d}.jpg", quality=90)
    paths["clip"] = clip
    return paths


def clip_frames(folder: str | Path) -> list[Path]:
    return sorted(Path(folder).glob("*.jpg"))


def with_paths(conversation: list[dict], images: dict[str, Path]) -> list[dict]:
    def part(p: dict) -> dict:
        if p["type"] == "video":
            return {"type": "video", "path": str(images[p["name"]])}
        return {"type": "image", "path": str(images[p["name"]])} if p["type"] == "image" else p

    return [
        {
            **m,
            "content": m["content"]
            if isinstance(m["content"], str)
            else list(map(part, m["content"])),
        }
        for m in conversation
    ]


def mm15_sample(conversation: list[dict]) -> Sample:
    """A spec conversation (with paths) as mm15's schema sample: images in order of appearance."""
    media: list[Media] = []
    messages = []
    for m in conversation:
        content = m["content"]
        if isinstance(content, str):
            messages.append(Message(m["role"], [Part.t(content)]))
            continue
        parts = []
        for p in content:
            if p["type"] == "image":
                media.append(Media(decoded=Image.open(p["path"]).convert("RGB")))
                parts.append(Part.m(len(media) - 1))
            elif p["type"] == "video":  # the frames, read and sampled by mm15.data.video
                media.append(Media(kind="video", frames=[str(f) for f in clip_frames(p["path"])]))
                parts.append(Part.m(len(media) - 1))
            else:
                parts.append(Part.t(p["text"]))
        messages.append(Message(m["role"], parts))
    return Sample(
        id="t", source="test", category="eval", stage="eval", media=media, messages=messages
    )


def mm15_reference(ckpt: Path, conversations: list[list[dict]]) -> list[dict]:
    """mm15's prompt ids, image-token count (its planner's) and greedy answer per conversation."""
    model, tok = load_checkpoint(ckpt)
    out = []
    for conv in conversations:
        sample = mm15_sample(conv)
        enc: EncodedPrompt = encode_sample(sample, tokenizer=tok, model_cfg=model.cfg)
        settings = GenerationSettings(max_new_tokens=MAX_TOKENS)
        answer = generate_for_samples(model, tok, [sample], settings)[0]
        out.append(
            {
                "prompt_token_ids": enc.input_ids,
                "image_tokens": sum(p.image_tokens for p in enc.plans),
                "token_ids": answer.tokens,
                "finish_reason": answer.finish_reason,
                "eos_ids": tok.eos_ids,
            }
        )
    return out


def shared_dir(tmp_path_factory) -> Path:
    """A directory all pytest-xdist workers of this run share (one per run without xdist)."""
    base = tmp_path_factory.getbasetemp()
    root = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "vllm-plugin"
    root.mkdir(exist_ok=True)
    return root


def once(path: Path, produce: Callable[[], dict]) -> dict:
    """``produce()``'s JSON, computed by the first worker to ask and read by the others."""
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not path.is_file():
            path.write_text(json.dumps(produce()))
    return json.loads(path.read_text())


def vllm_env(python: Path, **extra: str) -> dict[str, str]:
    """The environment the vLLM venv needs here (docs/serving.md, "Serving with vLLM")."""
    venv = python.parent.parent
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),  # this checkout's mm15, whatever the venv's editable install
        "VLLM_CPU_KVCACHE_SPACE": "1",
        **extra,
    }
    if (venv / "lib" / "libiomp5.so").is_file():
        env["LD_PRELOAD"] = str(venv / "lib" / "libiomp5.so")
    return env


def run_vllm_side(python: Path, spec: dict, work: Path, timeout: float = 900) -> dict:
    """tests/vllm_side.py under ``python``, its engines in its own process."""
    spec_path, out_path = work / "vllm_spec.json", work / "vllm_side_out.json"
    spec_path.write_text(json.dumps(spec))
    env = vllm_env(python, VLLM_ENABLE_V1_MULTIPROCESSING="0")
    t = time.perf_counter()
    proc = subprocess.run(
        [str(python), str(VLLM_SIDE), str(spec_path), str(out_path)],
        env=env,
        cwd=work,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"the vLLM side failed (exit {proc.returncode}):\n{proc.stderr[-6000:]}")
    out = json.loads(out_path.read_text())
    out["timings"]["subprocess_wall"] = time.perf_counter() - t
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclasses.dataclass(frozen=True)
class VLLMServer:
    url: str  # the OpenAI API's base URL
    port: int
    pid: int  # the root of its process tree


@contextlib.contextmanager
def vllm_server(
    python: Path, model: Path, log: Path, *, extra_args: Sequence[str] = (), timeout: float = 600
) -> Iterator[VLLMServer]:
    """vLLM's OpenAI server on ``model`` (``python -m vllm.entrypoints.openai.api_server``: the
    ``vllm serve`` command fails on the vllm-cpu distribution), on 127.0.0.1, with
    ``extra_args`` after ours; yields it and stops it (its whole process group) afterwards."""
    port = _free_port()
    args = ["--model", str(model), "--dtype", "float32", "--max-model-len", "2048"]
    args += ["--enforce-eager", "--distributed-executor-backend", "uni"]
    args += ["--limit-mm-per-prompt", json.dumps({"image": MAX_IMAGES, "video": MAX_VIDEOS})]
    args += ["--host", "127.0.0.1", "--port", str(port), *extra_args]
    cmd = [str(python), "-m", "vllm.entrypoints.openai.api_server", *args]
    with open(log, "w") as out:
        proc = subprocess.Popen(
            cmd, env=vllm_env(python), stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        _wait_healthy(proc, f"http://127.0.0.1:{port}/health", log, timeout)
        yield VLLMServer(f"http://127.0.0.1:{port}/v1", port, proc.pid)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _wait_healthy(proc: subprocess.Popen, url: str, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"vLLM's server exited ({proc.returncode}):\n{log.read_text()[-6000:]}"
            )
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=2) as r:
            if r.status == 200:
                return
        time.sleep(0.5)
    raise RuntimeError(f"vLLM's server not healthy after {timeout} s:\n{log.read_text()[-6000:]}")
