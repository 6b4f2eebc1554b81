"""The vLLM model plugin (mm15/vllm; docs/serving.md, "Serving with vLLM").

Without vLLM (always): the plugin imports without vLLM, its entry point is declared, and the
blocks it puts in place of each ``<image>`` token, applied to the checkpoint's own chat template,
give exactly the ids of mm15's pipeline; the worst-case image follows ``n_max``.

With vLLM (``.venv-vllm`` from scripts/setup-vllm.sh, or ``MM15_VLLM_PYTHON``; skipped, saying
so, without one): one subprocess of that venv loads the plugin through vLLM's entry-point
loader, then runs one engine per tiny random checkpoint (dense Llama-style and Qwen2-MoE
decoders, fp32) on single-image, multi-image, text-only and multi-turn chats.  vLLM's prompt
ids, image-token counts and greedy answers must equal mm15's token for token.  Then the official
``openai`` client talks to vLLM's OpenAI server about images, a grounded answer included.
Timings (docs/serving.md): ~20 s for the engines' subprocess, ~35 s for the server test.
"""

from __future__ import annotations

import base64
import sys
import tomllib
from pathlib import Path

import pytest
from transformers import PreTrainedTokenizerFast

from mm15.data.coord_parse import parse_regions
from mm15.data.media import load_video
from mm15.hf.processing import MM15Processor
from mm15.tokenizer import byte_tokenizer
from mm15.vllm.inputs import PromptPipeline, image_token_count, largest_image, media_blocks
from tests.vllm_fixtures import (
    CONVERSATIONS,
    MAX_IMAGES,
    MAX_TOKENS,
    MAX_VIDEOS,
    REPO,
    make_checkpoint,
    mm15_reference,
    mm15_sample,
    once,
    run_vllm_side,
    shared_dir,
    vllm_python,
    vllm_server,
    with_paths,
    write_images,
)
from tests.vllm_side import video_url

VLLM_PYTHON, NO_VLLM = vllm_python()
needs_vllm = pytest.mark.skipif(VLLM_PYTHON is None, reason=NO_VLLM)
MODELS = ("dense", "moe")


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict:
    """Both tiny checkpoints with their exports, the images and the conversations with paths,
    built once per run (pytest-xdist workers share them)."""
    root = shared_dir(tmp_path_factory)

    def build() -> dict:
        images = write_images(root)
        ckpts = {
            name: [str(p) for p in make_checkpoint(root, moe=name == "moe", seed=i)]
            for i, name in enumerate(MODELS)
        }
        convs = {k: with_paths(v, images) for k, v in CONVERSATIONS.items()}
        return {"root": str(root), "ckpts": ckpts, "convs": convs}

    return once(root / "built.json", build)


def _pipeline(hf_dir: Path) -> PromptPipeline:
    processor = MM15Processor.from_pretrained(hf_dir)
    tok = processor.mm15_tokenizer()
    return PromptPipeline(tok, processor.pipeline_config(tok.image_token_id))


# ---- without vLLM -------------------------------------------------------------------------------


def test_plugin_imports_without_vllm():
    import mm15.vllm
    import mm15.vllm.inputs

    assert "vllm" not in sys.modules
    assert callable(mm15.vllm.register)


def test_entry_point_is_declared():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["entry-points"]["vllm.general_plugins"] == {"mm15": "mm15.vllm:register"}


@pytest.mark.parametrize(
    "index, name", [(i, k) for i, k in enumerate(CONVERSATIONS) if k != "text only"]
)
def test_blocks_in_the_chat_template_give_the_pipelines_ids(built, references, index, name):
    """What vLLM does with a chat: render the export's template, tokenise, replace each image
    and video token by its block (mm15.vllm.inputs).  It must give mm15's ids."""
    hf_dir = Path(built["ckpts"]["dense"][1])
    conv = built["convs"][name]
    hf_tok = PreTrainedTokenizerFast.from_pretrained(hf_dir)
    messages = [{**m, "content": _template_content(m["content"])} for m in conv]
    text = hf_tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    pipe = _pipeline(hf_dir)
    media = [
        load_video(m, pipe.cfg.video, pipe.cfg.image) if m.kind == "video" else m.decoded.size
        for m in mm15_sample(conv).media
    ]
    blocks = media_blocks(media, pipe)
    placeholders = {pipe.tokenizer.image_token_id, hf_tok.convert_tokens_to_ids("<video>")}
    ids = []
    for i in hf_tok(text, add_special_tokens=False).input_ids:
        ids += blocks.pop(0) if i in placeholders else [i]
    assert not blocks
    assert ids == references["dense"][index]["prompt_token_ids"]


def _template_content(content: str | list[dict]) -> str | list[dict]:
    if isinstance(content, str):
        return content
    return [{"type": p["type"]} if p["type"] in ("image", "video") else p for p in content]


def test_a_video_is_one_placeholder_in_the_exports_template(built):
    """The export's chat template writes one ``<video>`` per video part (expanded into the
    frames by the processors), the checkpoint's one ``<image>`` per frame."""
    ckpt, hf_dir = map(Path, built["ckpts"]["dense"])
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "?"}]}]
    render = {"tokenize": False, "add_generation_prompt": True}
    exported = PreTrainedTokenizerFast.from_pretrained(hf_dir).apply_chat_template(
        messages, **render
    )
    own = PreTrainedTokenizerFast.from_pretrained(ckpt).apply_chat_template(messages, **render)
    assert exported.count("<video>") == 1 and "<image>" not in exported
    assert own.count("<image>") == 8 and "<video>" not in own  # tiny: VideoConfig.num_frames


@pytest.mark.parametrize("n_max", [4, 9])
def test_largest_image_follows_n_max(built, n_max):
    """vLLM's dummy image (MM15ProcessingInfo) has the most image tokens an image can have:
    n_max sub-images and the overview, K tokens each (MM1.5 Table 1)."""
    pipe = _pipeline(Path(built["ckpts"]["dense"][1]))
    pipe.cfg.image.n_max = n_max
    block = media_blocks([largest_image(pipe)], pipe)[0]
    assert image_token_count(block, pipe) == (n_max + 1) * pipe.cfg.connector.num_tokens


# ---- with vLLM ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vllm_run(built) -> dict:
    """One subprocess of the vLLM venv: registration, then one engine per model (once per run)."""
    root = Path(built["root"])
    spec = {
        "models": {name: hf for name, (_, hf) in built["ckpts"].items()},
        "conversations": list(built["convs"].values()),
        "max_tokens": MAX_TOKENS,
        "max_images": MAX_IMAGES,
        "max_videos": MAX_VIDEOS,
        "max_model_len": 2048,
    }
    out = once(root / "vllm_run.json", lambda: run_vllm_side(VLLM_PYTHON, spec, root))
    print("vLLM side timings (s):", {k: round(v, 1) for k, v in out["timings"].items()})
    return out


@pytest.fixture(scope="module")
def references(built) -> dict:
    """mm15's answers to the conversations, per model (once per run)."""
    convs = list(built["convs"].values())

    def compute() -> dict:
        return {name: mm15_reference(Path(c), convs) for name, (c, _) in built["ckpts"].items()}

    return once(Path(built["root"]) / "references.json", compute)


@needs_vllm
def test_vllm_loads_the_plugin(vllm_run):
    reg = vllm_run["registration"]
    assert vllm_run["vllm_version"] == "0.32.0"
    assert "mm15=mm15.vllm:register" in reg["entry_points"]
    assert reg["registered"] and reg["multimodal"]
    assert reg["class"] == "mm15.vllm.model.MM15ForConditionalGeneration"


@needs_vllm
@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("index, name", list(enumerate(CONVERSATIONS)))
def test_vllm_prompt_equals_mm15(vllm_run, references, model, index, name):
    got = vllm_run["models"][model]["results"][index]
    ref = references[model][index]
    assert got["prompt_token_ids"] == ref["prompt_token_ids"], name
    image_id = byte_tokenizer().image_token_id
    assert got["prompt_token_ids"].count(image_id) == ref["image_tokens"], name


@needs_vllm
@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("index, name", list(enumerate(CONVERSATIONS)))
def test_vllm_greedy_equals_mm15(vllm_run, references, model, index, name):
    got = vllm_run["models"][model]["results"][index]
    ref = references[model][index]
    assert _answer(got["token_ids"], got["finish_reason"], ref) == ref["token_ids"], name
    assert got["finish_reason"] == ref["finish_reason"], name


@needs_vllm
@pytest.mark.parametrize("model", MODELS)
def test_vllm_sizes_its_caches_by_n_max_and_frames(vllm_run, built, model):
    """vLLM's worst image: n_max sub-images and the overview; its worst video: num_frames
    frames, one tile each (MM1.5 §5)."""
    pipe = _pipeline(Path(built["ckpts"][model][1]))
    tokens = pipe.cfg.connector.num_tokens
    assert vllm_run["models"][model]["max_tokens_per_item"] == {
        "image": (pipe.cfg.image.n_max + 1) * tokens,
        "video": pipe.cfg.video.num_frames * tokens,
    }


def _answer(tokens: list[int], finish_reason: str, ref: dict) -> list[int]:
    """vLLM's answer as mm15 reports it: vLLM keeps the EOS that ended it, mm15 does not."""
    if finish_reason == "stop" and tokens and tokens[-1] in ref["eos_ids"]:
        return tokens[:-1]
    return tokens


def _openai_messages(conversation: list[dict]) -> list[dict]:
    """Spec messages with each image and video as a ``data:`` URL part, as an OpenAI client
    sends them (a video as its JPEG frames)."""

    def part(p: dict) -> dict:
        if p["type"] == "video":
            return {"type": "video_url", "video_url": {"url": video_url(p["path"])}}
        if p["type"] != "image":
            return p
        data = base64.b64encode(Path(p["path"]).read_bytes()).decode()
        return {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{data}"}}

    return [
        {
            **m,
            "content": m["content"]
            if isinstance(m["content"], str)
            else [*map(part, m["content"])],
        }
        for m in conversation
    ]


# A box whose bins are ordered whatever the random model picks (x1, y1 < 50 <= 500 <= x2, y2).
GROUNDED = r"the square <0[0-4][0-9],0[0-4][0-9],[5-9][0-9][0-9],[5-9][0-9][0-9]>"


@needs_vllm
def test_openai_client_against_vllm_server(built, references, tmp_path):
    """The official openai client against vLLM's OpenAI server (AsyncLLM in its engine process):
    image and video chats give mm15's prompt ids and greedy answer; a grounded answer (its form forced by
    vLLM's structured outputs, the model being random) parses with mm15's coordinate parser."""
    from openai import OpenAI

    names = list(CONVERSATIONS)
    with vllm_server(VLLM_PYTHON, Path(built["ckpts"]["dense"][1]), tmp_path / "server.log") as srv:
        url = srv.url
        client = OpenAI(base_url=url, api_key="unused")
        model = client.models.list().data[0].id
        for name in ("one image", "two images", "image and video"):
            ref = references["dense"][names.index(name)]
            reply = client.chat.completions.create(
                model=model,
                messages=_openai_messages(built["convs"][name]),
                max_tokens=MAX_TOKENS,
                temperature=0,
                extra_body={"return_token_ids": True},
            )
            got = reply.model_dump()
            assert got["prompt_token_ids"] == ref["prompt_token_ids"], name
            assert reply.usage.prompt_tokens == len(ref["prompt_token_ids"]), name
            choice = got["choices"][0]
            answer = _answer(choice["token_ids"], choice["finish_reason"], ref)
            assert answer == ref["token_ids"], name
        conv = built["convs"]["one image"]
        grounded = client.chat.completions.create(
            model=model,
            messages=_openai_messages(conv),
            max_tokens=40,
            temperature=0,
            extra_body={"structured_outputs": {"regex": GROUNDED}},
        )
    text = grounded.choices[0].message.content
    size = mm15_sample(conv).media[0].decoded.size
    parsed = parse_regions(text, [size])
    assert not parsed.errors and len(parsed.regions) == 1, text
    box = parsed.regions[0].shape
    assert parsed.regions[0].label == "square" and box.image == 0
    assert 0 <= box.x1 < box.x2 <= size[0] and 0 <= box.y1 < box.y2 <= size[1], text


@needs_vllm
def test_serving_benchmark_runs_both_servers_on_equal_work():
    """benchmarks/vllm_vs_mm15_bench.py through its own argument parsing, at its smallest: both
    servers answer every request, with the same prompt tokens and the same answer ids."""
    import subprocess

    cmd = [sys.executable, str(REPO / "benchmarks" / "vllm_vs_mm15_bench.py")]
    cmd += ["--requests", "4", "--rounds", "1", "--concurrency", "1", "--max-tokens", "8"]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert run.returncode == 0, run.stderr[-2000:]
    out = run.stdout
    assert "(equal)" in out and "decode to mm15 serve's text: yes" in out, out
    assert "| 1 | **vLLM / mm15** |" in out and out.count("errors 0") == 2, out
