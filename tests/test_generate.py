"""Generation: KV cache == recompute, batched == one at a time, eos / stop strings per row."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from mm15.config import LMConfig, MoEConfig
from mm15.model.attention import KVCache
from mm15.model.generate import generate, sample_next
from mm15.model.lm import Decoder
from tests.decoder_fixtures import NEW, PROMPTS, lm_config, sharp_decoder, tokens

CFG = lm_config(max_seq_len=64)


def _decoder(cfg: LMConfig = CFG, seed: int = 0) -> Decoder:
    return sharp_decoder(cfg, seed)


_tokens = tokens


def decode(tokens: list[int]) -> str:
    return "".join(chr(ord("a") + t % 26) for t in tokens)


@pytest.mark.parametrize("moe", [False, True])
def test_cached_equals_uncached_greedy(moe):
    cfg = replace(CFG, moe=MoEConfig(num_experts=4, every=2)) if moe else CFG
    decoder = _decoder(cfg)
    cached = generate(decoder, PROMPTS, max_new_tokens=NEW)
    uncached = generate(decoder, PROMPTS, max_new_tokens=NEW, use_cache=False)
    assert _tokens(cached) == _tokens(uncached)
    assert all(len(r.tokens) == NEW and r.finish_reason == "length" for r in cached)
    assert len({t for r in cached for t in r.tokens}) > 3  # not a degenerate repeat


def test_cached_equals_uncached_sampling():
    decoder = _decoder(seed=1)
    kw = dict(max_new_tokens=NEW, temperature=0.9, top_k=20, top_p=0.9)
    cached = generate(decoder, PROMPTS, generator=torch.Generator().manual_seed(5), **kw)
    uncached = generate(
        decoder, PROMPTS, generator=torch.Generator().manual_seed(5), use_cache=False, **kw
    )
    assert _tokens(cached) == _tokens(uncached)
    other_seed = generate(decoder, PROMPTS, generator=torch.Generator().manual_seed(6), **kw)
    assert _tokens(other_seed) != _tokens(cached)


def test_matches_plain_greedy_loop():
    """Reference without generate's machinery: re-run the whole sequence, take the argmax."""
    decoder = _decoder(seed=7)
    expected = []
    for p in PROMPTS:
        seq = list(p)
        with torch.no_grad():
            for _ in range(NEW):
                seq.append(int(decoder(torch.tensor([seq])).logits[0, -1].argmax()))
        expected.append(seq[len(p) :])
    assert _tokens(generate(decoder, PROMPTS, max_new_tokens=NEW)) == expected


def test_batched_equals_one_at_a_time():
    decoder = _decoder(seed=2)
    batched = generate(decoder, PROMPTS, max_new_tokens=NEW)
    single = [generate(decoder, [p], max_new_tokens=NEW)[0] for p in PROMPTS]
    assert _tokens(batched) == _tokens(single)


def test_prompt_embeds_equal_token_prompts():
    decoder = _decoder(seed=3)
    with torch.no_grad():
        embeds = [decoder.embed(torch.tensor(p)) for p in PROMPTS]
    from_ids = generate(decoder, PROMPTS, max_new_tokens=NEW)
    from_embeds = generate(decoder, PROMPTS, prompt_embeds=embeds, max_new_tokens=NEW)
    assert _tokens(from_ids) == _tokens(from_embeds)
    # Different features at "image" positions change the continuation.
    altered = [e.clone() for e in embeds]
    altered[0][1:4] = torch.randn(3, CFG.dim, generator=torch.Generator().manual_seed(0))
    changed = generate(decoder, PROMPTS, prompt_embeds=altered, max_new_tokens=NEW)
    assert changed[0].tokens != from_ids[0].tokens and changed[1:] == from_ids[1:]
    with pytest.raises(ValueError, match="prompt 1 has 2 tokens but prompt_embeds"):
        generate(
            decoder, PROMPTS, prompt_embeds=[embeds[0], embeds[0], embeds[2]], max_new_tokens=1
        )


def test_eos_ends_each_row():
    decoder = _decoder(seed=4)
    full = _tokens(generate(decoder, PROMPTS, max_new_tokens=NEW))
    eos = full[1][3]  # a token row 1 emits at step 3
    results = generate(decoder, PROMPTS, max_new_tokens=NEW, eos_token_ids=[eos])
    for row, res in zip(full, results, strict=True):
        if eos in row:
            assert res.tokens == row[: row.index(eos)] and res.finish_reason == "stop"
        else:
            assert res.tokens == row and res.finish_reason == "length"
    assert results[1].finish_reason == "stop" and len(results[1].tokens) <= 3


def test_stop_strings_end_each_row():
    decoder = _decoder(seed=5)
    full = _tokens(generate(decoder, PROMPTS, max_new_tokens=NEW))
    stop = decode(full[2][4:6])  # two tokens' text from row 2
    results = generate(decoder, PROMPTS, max_new_tokens=NEW, stop_strings=[stop], decode=decode)
    for row, res in zip(full, results, strict=True):
        hits = [n for n in range(1, NEW + 1) if stop in decode(row[:n])]
        if hits:
            assert res.tokens == row[: hits[0]] and res.finish_reason == "stop"
            assert res.text == decode(row[: hits[0]]).split(stop)[0]
        else:
            assert res.tokens == row and res.finish_reason == "length" and res.text == decode(row)
    assert results[2].finish_reason == "stop" and len(results[2].tokens) <= 6
    with pytest.raises(ValueError, match="decode"):
        generate(decoder, PROMPTS, max_new_tokens=2, stop_strings=["x"])


def test_zero_new_tokens():
    results = generate(_decoder(), PROMPTS, max_new_tokens=0)
    assert [(r.tokens, r.finish_reason) for r in results] == [([], "length")] * 3


def test_cache_matches_full_forward_in_chunks():
    decoder = _decoder(seed=6)
    ids = torch.randint(0, 50, (2, 11))
    doc = torch.tensor([[-1, -1, 0, 0, 0, 0, 1, 1, 1, 1, 1], [0] * 11])
    pos = torch.tensor([[0, 0, 0, 1, 2, 3, 0, 1, 2, 3, 4], list(range(11))])
    with torch.no_grad():
        full = decoder(ids, position_ids_BT=pos, document_ids_BT=doc).logits
        cache = KVCache.allocate(CFG, 2, 16, torch.float32, "cpu")
        parts = [
            decoder(
                ids[:, a:b], position_ids_BT=pos[:, a:b], document_ids_BT=doc[:, a:b], cache=cache
            ).logits
            for a, b in ((0, 4), (4, 5), (5, 11))
        ]
    assert cache.length == 11
    assert torch.allclose(torch.cat(parts, dim=1), full, atol=1e-5)
    with pytest.raises(ValueError, match="overflow"):
        decoder(ids[:, :6], cache=cache)


def test_sampling_filters():
    logits = torch.tensor([[0.0, 3.0, 1.0, 2.0]]).repeat(200, 1)
    gen = torch.Generator().manual_seed(0)
    assert sample_next(logits, temperature=0.0, top_p=1.0, top_k=0, generator=gen).eq(1).all()
    top2 = sample_next(logits, temperature=1.0, top_p=1.0, top_k=2, generator=gen)
    assert set(top2.tolist()) == {1, 3}
    # p ≈ (0.03, 0.64, 0.09, 0.24): nucleus 0.8 keeps tokens 1 and 3 only.
    nucleus = sample_next(logits, temperature=1.0, top_p=0.8, top_k=0, generator=gen)
    assert set(nucleus.tolist()) == {1, 3}
