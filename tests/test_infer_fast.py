"""Inference fast paths: the static-shape decode step (eager and torch.compile) gives what the
eager cached decode gives, and a batch's images are encoded in one encoder call."""

from __future__ import annotations

import os
import shutil
from dataclasses import replace

import pytest
import torch
from PIL import Image
from torch._dynamo.utils import counters

import mm15.model.generate as gen
from mm15.config import LMConfig, MoEConfig
from mm15.data.prompt_encoding import encode_prompt
from mm15.model.attention import KVCache
from mm15.model.generate import generate, static_decode_step
from mm15.model.lm import Decoder
from mm15.model.mm15 import MM15
from mm15.presets import tiny
from mm15.services.inference import GenerationSettings, Prompt, generate_text, prompt_embeddings
from mm15.tokenizer import byte_tokenizer
from tests.decoder_fixtures import NEW, PROMPTS, lm_config, sharp_decoder, tokens

CFG = lm_config(max_seq_len=512)


def _decoder(cfg: LMConfig = CFG, seed: int = 0) -> Decoder:
    return sharp_decoder(cfg, seed)


_tokens = tokens


@pytest.mark.parametrize("moe", [False, True])
def test_static_decode_equals_eager_greedy(moe):
    cfg = replace(CFG, moe=MoEConfig(num_experts=4, every=2)) if moe else CFG
    decoder = _decoder(cfg)
    eager = generate(decoder, PROMPTS, max_new_tokens=NEW)
    static = generate(decoder, PROMPTS, max_new_tokens=NEW, decode_mode="static")
    assert _tokens(static) == _tokens(eager)
    assert len({t for r in eager for t in r.tokens}) > 3  # not a degenerate repeat


def test_static_decode_logits_match_the_forward_with_cache():
    """Step by step, the static step's logits equal Decoder.forward's on the same cache."""
    decoder = _decoder(seed=2)
    ids = torch.tensor([[0, 0, 5, 6, 7], [1, 2, 3, 4, 9]])
    doc = torch.tensor([[-1, -1, 0, 0, 0], [0, 0, 0, 0, 0]])
    pos = torch.tensor([[0, 0, 0, 1, 2], [0, 1, 2, 3, 4]])
    caches = [KVCache.allocate(CFG, 2, 9, torch.float32, "cpu") for _ in range(2)]
    for c in caches:
        decoder(ids, position_ids_BT=pos, document_ids_BT=doc, cache=c)
    tok = torch.tensor([[11], [12]])
    for step in range(4):
        new_pos = pos[:, -1:] + step + 1
        ref = decoder(
            tok, position_ids_BT=new_pos, document_ids_BT=torch.zeros_like(tok), cache=caches[0]
        ).logits[:, -1]
        got = static_decode_step(decoder, caches[1], tok, new_pos, torch.tensor([5 + step]))
        torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
        tok = ref.argmax(-1, keepdim=True)
    assert caches[1].length == 5  # the static step leaves the length alone


def test_static_decode_with_embeds_eos_and_sampling():
    decoder = _decoder(seed=1)
    g = torch.Generator().manual_seed(3)
    embeds = [torch.randn(len(p), CFG.dim, generator=g) for p in PROMPTS]
    first = generate(decoder, PROMPTS, prompt_embeds=embeds, max_new_tokens=NEW)
    eos = first[0].tokens[3]  # ends row 0 early, the others maybe later or never
    kw = dict(prompt_embeds=embeds, max_new_tokens=NEW, eos_token_ids=[eos])
    eager, static = (generate(decoder, PROMPTS, decode_mode=m, **kw) for m in ("eager", "static"))
    assert [(r.tokens, r.finish_reason) for r in static] == [
        (r.tokens, r.finish_reason) for r in eager
    ]
    assert eager[0].finish_reason == "stop"
    assert len(eager[0].tokens) == first[0].tokens.index(eos) < 4
    sample = dict(max_new_tokens=NEW, temperature=0.9, top_k=20, top_p=0.9)
    runs = [
        generate(
            decoder, PROMPTS, generator=torch.Generator().manual_seed(5), decode_mode=m, **sample
        )
        for m in ("eager", "static")
    ]
    assert _tokens(runs[0]) == _tokens(runs[1])


def test_compile_mode_is_one_graph_and_equals_eager(monkeypatch):
    """generate(decode_mode="compile") with the step traced whole (fullgraph: no graph breaks,
    the precondition for CUDA graphs).  The aot_eager backend keeps this fast on CPU; graph
    breaks are a Dynamo property, the same under inductor."""
    compiled = torch.compile(static_decode_step, backend="aot_eager", fullgraph=True, dynamic=False)
    monkeypatch.setitem(gen._COMPILED, "default", compiled)
    torch._dynamo.reset()
    counters.clear()
    decoder = _decoder()
    eager = generate(decoder, PROMPTS, max_new_tokens=NEW)
    assert _tokens(generate(decoder, PROMPTS, max_new_tokens=NEW, decode_mode="compile")) == (
        _tokens(eager)
    )
    graphs = counters["stats"]["unique_graphs"]
    assert graphs >= 1
    # A longer generation within the same 256-column bucket reuses the graph.
    generate(decoder, PROMPTS, max_new_tokens=NEW + 5, decode_mode="compile")
    assert counters["stats"]["unique_graphs"] == graphs


def test_compile_mode_with_moe_breaks_the_graph_but_stays_exact(monkeypatch):
    """Expert routing has data-dependent shapes: the step compiles in pieces, same tokens."""
    compiled = torch.compile(static_decode_step, backend="aot_eager", dynamic=False)
    monkeypatch.setitem(gen._COMPILED, "default", compiled)
    torch._dynamo.reset()
    counters.clear()
    decoder = _decoder(replace(CFG, moe=MoEConfig(num_experts=4, every=2)))
    eager = generate(decoder, PROMPTS, max_new_tokens=NEW)
    assert _tokens(generate(decoder, PROMPTS, max_new_tokens=NEW, decode_mode="compile")) == (
        _tokens(eager)
    )
    assert sum(counters["graph_break"].values()) > 0


def _cxx() -> str | None:
    return shutil.which(os.environ.get("CXX", "g++")) or shutil.which("c++")


@pytest.mark.skipif(_cxx() is None, reason="no C++ compiler: torch.compile (inductor) needs one")
@pytest.mark.skipif(
    not os.environ.get("MM15_COMPILE_TESTS"),
    reason="inductor compiles for ~40 s cold on 2 CPU cores; set MM15_COMPILE_TESTS=1 to run",
)
def test_compile_mode_inductor_equals_eager():
    decoder = _decoder()
    eager = generate(decoder, PROMPTS, max_new_tokens=NEW)
    compiled = generate(decoder, PROMPTS, max_new_tokens=NEW, decode_mode="compile")
    assert _tokens(compiled) == _tokens(eager)


def test_decode_mode_errors():
    decoder = _decoder()
    with pytest.raises(ValueError, match="unknown decode_mode 'graph'"):
        generate(decoder, PROMPTS, max_new_tokens=2, decode_mode="graph")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="needs use_cache=True"):
        generate(decoder, PROMPTS, max_new_tokens=2, decode_mode="static", use_cache=False)


# ---- one encoder call per batch --------------------------------------------------------------


def _tiny_mm15():
    tok = byte_tokenizer()
    cfg = tiny(vocab_size=len(tok))
    cfg.image_token_id = tok.image_token_id
    torch.manual_seed(0)
    return MM15(cfg).eval(), tok


def test_batch_images_are_encoded_in_one_encoder_call():
    model, tok = _tiny_mm15()
    calls = []
    model.vision.register_forward_hook(lambda m, args, out: calls.append(args[0].shape[0]))
    red, blue = Image.new("RGB", (300, 120), (200, 20, 20)), Image.new("RGB", (90, 200), "blue")
    prompts = [
        Prompt("<image>What colour?", [red]),
        Prompt("No image here."),
        Prompt("<image> and <image>: same?", [blue, red]),
    ]
    encoded = [encode_prompt(p.text, p.images, tokenizer=tok, cfg=model.cfg) for p in prompts]
    n_tiles = sum(e.pixels.shape[0] for e in encoded if e.pixels is not None)
    with torch.no_grad():
        batched = prompt_embeddings(model, encoded)
    assert calls == [n_tiles]  # every tile of the batch, one call
    with torch.no_grad():
        alone = [prompt_embeddings(model, [e])[0] for e in encoded]
    for b, a in zip(batched, alone, strict=True):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)
    calls.clear()
    generate_text(model, tok, prompts, GenerationSettings(max_new_tokens=3))
    assert calls == [n_tiles]  # generation encodes once too (the decode steps see no pixels)
