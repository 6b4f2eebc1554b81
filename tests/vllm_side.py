"""The vLLM side of tests/test_vllm_plugin.py, run by ``.venv-vllm``'s python (never by pytest).

``python tests/vllm_side.py SPEC.json OUT.json``: for every model of the spec, one vLLM engine
(in this process: ``VLLM_ENABLE_V1_MULTIPROCESSING=0`` and the ``uni`` executor, which saves
the two process starts that cost ~70 s here; ``vllm serve`` uses the multi-process engine) answers
all conversations greedily in one ``LLM.chat`` batch.  Writes what the test compares with mm15:
the plugin's registration, every prompt's token ids and generated ids, vLLM's largest image-token
count per image and per video (what it sizes its caches by), and how long each part took.
"""

from __future__ import annotations

import base64
import importlib.metadata
import json
import sys
import time
from pathlib import Path

from PIL import Image

ARCH = "MM15ForConditionalGeneration"


def registration() -> dict:
    """What a `vllm` process sees of the plugin, before any engine exists."""
    from vllm.model_executor.models import ModelRegistry, supports_multimodal
    from vllm.plugins import load_general_plugins

    load_general_plugins()
    load_general_plugins()  # vLLM calls it in every process: it must be idempotent
    cls = ModelRegistry._try_load_model_cls(ARCH)
    entry_points = importlib.metadata.entry_points(group="vllm.general_plugins")
    return {
        "entry_points": sorted(f"{e.name}={e.value}" for e in entry_points),
        "registered": ARCH in ModelRegistry.get_supported_archs(),
        "class": None if cls is None else f"{cls.__module__}.{cls.__qualname__}",
        "multimodal": cls is not None and supports_multimodal(cls),
    }


def video_url(folder: str) -> str:
    """A folder of JPEG frames as the ``data:video/jpeg`` URL vLLM decodes frame by frame."""
    frames = sorted(Path(folder).glob("*.jpg"))
    return "data:video/jpeg;base64," + ",".join(
        base64.b64encode(f.read_bytes()).decode() for f in frames
    )


def vllm_part(part: dict) -> dict:
    """A spec part as vLLM takes it: an image as a PIL image, a video as a data URL."""
    if part["type"] == "image":
        return {"type": "image_pil", "image_pil": Image.open(part["path"]).convert("RGB")}
    if part["type"] == "video":
        return {"type": "video_url", "video_url": {"url": video_url(part["path"])}}
    return part


def vllm_messages(conversation: list[dict]) -> list[dict]:
    """Spec messages (parts name a PNG file or a folder of JPEG frames) as vLLM chat messages."""
    out = []
    for msg in conversation:
        content = msg["content"]
        if not isinstance(content, str):
            content = [vllm_part(p) for p in content]
        out.append({"role": msg["role"], "content": content})
    return out


def max_tokens_per_item(llm) -> dict[str, int]:
    """vLLM's largest image-token count of one image and of one video (its profiling of the
    dummy inputs)."""
    from vllm.multimodal import MULTIMODAL_REGISTRY
    from vllm.multimodal.encoder_budget import get_mm_max_toks_per_item

    processor = MULTIMODAL_REGISTRY.create_processor(llm.llm_engine.model_config)
    return dict(get_mm_max_toks_per_item(processor, {"image": 1, "video": 1}, cache=None))


def run_model(model_dir: str, spec: dict, timings: dict, name: str) -> dict:
    from vllm import LLM, SamplingParams

    t = time.perf_counter()
    llm = LLM(
        model=model_dir,
        dtype="float32",
        max_model_len=spec["max_model_len"],
        enforce_eager=True,
        distributed_executor_backend="uni",
        limit_mm_per_prompt={"image": spec["max_images"], "video": spec["max_videos"]},
        seed=0,
    )
    timings[f"{name}.engine_init"] = time.perf_counter() - t
    t = time.perf_counter()
    params = SamplingParams(temperature=0.0, max_tokens=spec["max_tokens"])
    outputs = llm.chat([vllm_messages(c) for c in spec["conversations"]], params)
    timings[f"{name}.generate"] = time.perf_counter() - t
    results = [
        {
            "prompt_token_ids": list(o.prompt_token_ids),
            "token_ids": list(o.outputs[0].token_ids),
            "finish_reason": o.outputs[0].finish_reason,
        }
        for o in outputs
    ]
    out = {"results": results, "max_tokens_per_item": max_tokens_per_item(llm)}
    del llm
    return out


def main(spec_path: str, out_path: str) -> None:
    t0 = time.perf_counter()
    spec = json.loads(Path(spec_path).read_text())
    import vllm

    timings = {"import_vllm": time.perf_counter() - t0}
    out: dict = {"vllm_version": vllm.__version__, "registration": registration()}
    out["models"] = {
        name: run_model(path, spec, timings, name) for name, path in spec["models"].items()
    }
    timings["total"] = time.perf_counter() - t0
    out["timings"] = timings
    Path(out_path).write_text(json.dumps(out))


if __name__ == "__main__":  # vLLM's engine may spawn processes that re-import this file
    main(*sys.argv[1:3])
