"""Autoregressive generation with a static KV cache (evaluation decodes greedily, MM1.5 §4.1, Tables 4–14).

Batched prompts are left-padded: padding carries document id -1 (so real tokens never attend
to it, see :mod:`mm15.model.attention`) and position ids start at 0 at each prompt's first real
token, so a padded row computes what it would compute alone.

Trimming convention for :class:`GenerationResult`:
- ``tokens`` never contain the eos token that ended a row;
- a stop string ends a row at the token that completed it; that token is kept in ``tokens``
  (token and string boundaries need not align), and ``text`` (when ``decode`` is given) is
  cut just before the earliest stop string;
- ``on_token(row, token)`` (streaming, servers) sees every token sampled for a row that is
  still running, the eos that ends it included; returning ``False`` ends the row after that
  token (kept unless it is an eos) with finish_reason ``"stop"``.

Decode modes (``decode_mode``; the prompt is always prefilled by ``Decoder.forward``):
- ``"eager"`` (default): each new token goes through ``Decoder.forward`` with the cache sliced
  to its current length;
- ``"static"``: each new token goes through :func:`static_decode_step`, which has the same
  shapes at every step (the whole cache buffer, visibility from the cached document ids, the
  write position a tensor), so it can be captured once;
- ``"compile"``: that step through ``torch.compile`` (``mode="reduce-overhead"`` on CUDA, i.e.
  CUDA graphs: one launch per token instead of one per kernel; inductor's default on CPU).
  The cache length is rounded up to a multiple of 256 so nearby prompt lengths share a graph;
  each (batch size, length bucket) compiles once, up to Dynamo's recompile limit
  (``torch._dynamo.config.cache_size_limit``), beyond which the step runs uncompiled.
All three give the same greedy tokens (tests/test_infer_fast.py).  MoE layers route a
data-dependent number of tokens per expert, so ``"compile"`` breaks the graph there (correct,
but without the CUDA-graph gain).

Shape legend: B prompts, T sequence so far, S cache length, D model width, V vocab.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor

from mm15.model.attention import KVCache
from mm15.model.lm import Decoder
from mm15.model.rope import rope_cos_sin, rope_inv_freq

DecodeMode = Literal["eager", "static", "compile"]

# Temperatures below this sample as argmax: logits / 1e-40 overflow fp32 to inf (then NaN
# probabilities), and such a temperature already means "the top token" (vLLM's _SAMPLING_EPS).
GREEDY_BELOW = 1e-5


@dataclass
class GenerationResult:
    tokens: list[int]  # new tokens only; see the module docstring for trimming
    finish_reason: Literal["stop", "length"]
    text: str | None = None  # decode(tokens) cut before the stop string; None without decode


@dataclass
class _Row:
    tokens: list[int] = field(default_factory=list)
    finish_reason: Literal["stop", "length"] | None = None
    stop_at: int | None = None  # character index of the stop string in the decoded text


def sample_next(
    logits_BV: Tensor,
    *,
    temperature: float,
    top_p: float,
    top_k: int,
    generator: torch.Generator | None,
) -> Tensor:
    """(B,) next tokens: argmax when temperature < ``GREEDY_BELOW``, else top-k / nucleus
    sampling."""
    if temperature < GREEDY_BELOW:
        return logits_BV.argmax(dim=-1)
    logits_BV = logits_BV.float() / temperature
    if top_k > 0:
        kth_B1 = logits_BV.topk(min(top_k, logits_BV.shape[-1]), dim=-1).values[:, -1:]
        logits_BV = logits_BV.masked_fill(logits_BV < kth_B1, float("-inf"))
    if top_p < 1.0:
        sorted_BV, idx_BV = logits_BV.sort(dim=-1, descending=True)
        probs_BV = sorted_BV.softmax(dim=-1)
        # Drop a token when the mass before it already reaches top_p (the top-1 always stays).
        # Explicitly, since a top_p below fp32's range (1e-300) compares as 0 with the mass 0.
        drop_BV = probs_BV.cumsum(dim=-1) - probs_BV >= top_p
        drop_BV[:, 0] = False
        logits_BV = logits_BV.scatter(-1, idx_BV, sorted_BV.masked_fill(drop_BV, float("-inf")))
    probs_BV = logits_BV.softmax(dim=-1)
    return torch.multinomial(probs_BV, 1, generator=generator)[:, 0]


def _check_args(prompts, prompt_embeds, max_new_tokens, temperature, top_p, stop_strings, decode):
    if not prompts:
        raise ValueError("generate: no prompts")
    for i, p in enumerate(prompts):
        if len(p) == 0:
            raise ValueError(f"generate: prompt {i} is empty")
        if prompt_embeds is not None and prompt_embeds[i].shape[0] != len(p):
            raise ValueError(
                f"generate: prompt {i} has {len(p)} tokens but prompt_embeds[{i}] has "
                f"{prompt_embeds[i].shape[0]} rows"
            )
    if prompt_embeds is not None and len(prompt_embeds) != len(prompts):
        raise ValueError(f"generate: {len(prompts)} prompts but {len(prompt_embeds)} prompt_embeds")
    if max_new_tokens < 0 or temperature < 0 or not 0.0 < top_p <= 1.0:
        raise ValueError(
            f"generate: need max_new_tokens >= 0, temperature >= 0, 0 < top_p <= 1; got "
            f"{max_new_tokens}, {temperature}, {top_p}"
        )
    if stop_strings and decode is None:
        raise ValueError("generate: stop_strings need a decode function")


def _left_pad(decoder: Decoder, prompts, prompt_embeds) -> tuple[Tensor, Tensor, Tensor]:
    """Embeddings (B, T, D), document ids (B, T: 0 real, -1 pad), positions (B, T)."""
    weight = decoder.embed.weight
    lens = torch.tensor([len(p) for p in prompts], device=weight.device)
    T = int(lens.max())
    pad_B1 = (T - lens)[:, None]
    idx_T = torch.arange(T, device=weight.device)
    doc_BT = torch.where(idx_T >= pad_B1, 0, -1)
    pos_BT = (idx_T - pad_B1).clamp(min=0)
    if prompt_embeds is None:
        ids_BT = torch.zeros(len(prompts), T, dtype=torch.long, device=weight.device)
        for i, p in enumerate(prompts):
            ids_BT[i, T - len(p) :] = torch.tensor(p, dtype=torch.long)
        return decoder.embed(ids_BT), doc_BT, pos_BT
    x_BTD = weight.new_zeros(len(prompts), T, weight.shape[1])
    for i, e in enumerate(prompt_embeds):
        x_BTD[i, T - e.shape[0] :] = e.to(weight)
    return x_BTD, doc_BT, pos_BT


class _IndexWriter:
    """Stands in for the :class:`KVCache` inside ``Block.forward`` during a static step: writes
    the new key/value at the tensor position ``idx_1`` and returns the whole buffers."""

    def __init__(self, cache: KVCache, idx_1: Tensor):
        self.cache, self.idx_1 = cache, idx_1

    def update(self, layer: int, k_BK1Dh: Tensor, v_BK1Dh: Tensor) -> tuple[Tensor, Tensor]:
        k_BKSDh, v_BKSDh = self.cache.k[layer], self.cache.v[layer]
        k_BKSDh.index_copy_(2, self.idx_1, k_BK1Dh)
        v_BKSDh.index_copy_(2, self.idx_1, v_BK1Dh)
        return k_BKSDh, v_BKSDh


def static_decode_step(
    decoder: Decoder, cache: KVCache, tokens_B1: Tensor, pos_B1: Tensor, idx_1: Tensor
) -> Tensor:
    """(B, V) logits of one new token per row, written to cache column ``idx_1`` (a (1,) long
    tensor; all rows share it: prompts are left-padded).  Every tensor has the same shape at
    every step: attention runs over the whole buffer (S = ``cache.max_len``) under the rule of
    :func:`mm15.model.attention.document_causal_mask` — key column ≤ ``idx_1`` and the same
    document id (0: prompt and generated tokens; padding and unwritten columns carry -1) — with
    the query's position a tensor, not a Python int.  ``cache.length`` is neither read nor moved."""
    x_B1D = decoder.embed(tokens_B1)
    cos_sin = rope_cos_sin(rope_inv_freq(decoder.cfg, x_B1D.device), pos_B1)
    cache.doc_ids_BS.index_fill_(1, idx_1, 0)
    k_idx_S = torch.arange(cache.max_len, device=x_B1D.device)
    mask_B11S = ((k_idx_S <= idx_1) & (cache.doc_ids_BS == 0))[:, None, None, :]
    writer = _IndexWriter(cache, idx_1)
    for block in decoder.layers:
        x_B1D, _ = block(x_B1D, cos_sin, mask_B11S, writer, None)
    return decoder.logits(decoder.norm(x_B1D)[:, -1])


_COMPILED: dict[str, Callable[..., Tensor]] = {}


def _compiled_step(cache: KVCache) -> Callable[..., Tensor]:
    """:func:`static_decode_step` compiled for the cache's device (built once per mode)."""
    cuda = cache.doc_ids_BS.device.type == "cuda"
    mode = "reduce-overhead" if cuda else "default"
    if cuda:  # CUDA graphs may then write the cache in place instead of copying it per step
        for t in [*cache.k, *cache.v, cache.doc_ids_BS]:
            torch._dynamo.mark_static_address(t)
    if mode not in _COMPILED:
        _COMPILED[mode] = torch.compile(static_decode_step, mode=mode, dynamic=False)
    compiled = _COMPILED[mode]

    def step(*args: object) -> Tensor:
        # Each call is a new decode step: CUDA graphs may reuse the previous step's output
        # memory (its logits were consumed by sampling before this call).
        torch.compiler.cudagraph_mark_step_begin()
        return compiled(*args)

    return step


TokenCallback = Callable[[int, int], bool | None]  # (row, token) -> False ends the row


def _last_logits(
    decoder: Decoder, x_BTD: Tensor, pos_BT: Tensor, doc_BT: Tensor, cache: KVCache | None
) -> Tensor:
    """(B, V) logits at the last position (the eager step, and every mode's prefill)."""
    out = decoder(
        embeds_BTD=x_BTD,
        position_ids_BT=pos_BT,
        document_ids_BT=doc_BT,
        cache=cache,
        compute_logits=False,
    )
    return decoder.logits(out.hidden[:, -1])


def _decode_setup(
    decoder: Decoder, B: int, max_len: int, use_cache: bool, decode_mode: DecodeMode
) -> tuple[KVCache | None, Callable[..., Tensor] | None]:
    """The KV cache (None without ``use_cache``) and the static step (None when eager)."""
    if decode_mode not in ("eager", "static", "compile"):
        raise ValueError(f"generate: unknown decode_mode {decode_mode!r} (eager, static, compile)")
    if decode_mode != "eager" and not use_cache:
        raise ValueError(f"generate: decode_mode {decode_mode!r} needs use_cache=True")
    if not use_cache:
        return None, None
    if decode_mode == "compile":  # fewer distinct shapes, fewer recompilations
        max_len = -(-max_len // 256) * 256
    weight = decoder.embed.weight
    cache = KVCache.allocate(decoder.cfg, B, max_len, weight.dtype, weight.device)
    if decode_mode == "eager":
        return cache, None
    return cache, _compiled_step(cache) if decode_mode == "compile" else static_decode_step


def _advance(
    rows: list[_Row],
    next_B: list[int],
    eos: set[int],
    stops,
    decode,
    on_token: TokenCallback | None = None,
) -> None:
    for i, (row, tok) in enumerate(zip(rows, next_B, strict=True)):
        if row.finish_reason is not None:
            continue
        go_on = on_token is None or on_token(i, tok) is not False
        if tok in eos:
            row.finish_reason = "stop"
            continue
        row.tokens.append(tok)
        if not go_on:
            row.finish_reason = "stop"
            continue
        if stops:
            text = decode(row.tokens)
            found = [text.find(s) for s in stops if s in text]
            if found:
                row.finish_reason, row.stop_at = "stop", min(found)


@torch.no_grad()
def generate(
    decoder: Decoder,
    prompts: list[list[int]],
    *,
    prompt_embeds: list[Tensor] | None = None,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_p: float = 1.0,
    top_k: int = 0,
    generator: torch.Generator | None = None,
    eos_token_ids: Sequence[int] = (),
    stop_strings: Sequence[str] = (),
    decode: Callable[[list[int]], str] | None = None,
    use_cache: bool = True,
    on_token: TokenCallback | None = None,
    decode_mode: DecodeMode = "eager",
) -> list[GenerationResult]:
    """Continue each prompt until eos, a stop string, or ``max_new_tokens`` new tokens.

    ``prompt_embeds[i]`` (T_i, D), when given, replaces the embedding of prompt i (the
    multimodal model puts image features at image-token positions); generated tokens are
    embedded with ``decoder.embed``.  ``use_cache=False`` recomputes the whole sequence every
    step (the reference the cache is tested against).  ``on_token``, ``decode_mode``: see the
    module docstring.
    """
    _check_args(prompts, prompt_embeds, max_new_tokens, temperature, top_p, stop_strings, decode)
    x_BTD, doc_BT, pos_BT = _left_pad(decoder, prompts, prompt_embeds)
    B, T0 = doc_BT.shape
    weight = decoder.embed.weight
    cache, step_fn = _decode_setup(decoder, B, T0 + max_new_tokens, use_cache, decode_mode)
    rows = [_Row() for _ in range(B)]
    eos = set(eos_token_ids)
    step_x, step_doc, step_pos = x_BTD, doc_BT, pos_BT
    if max_new_tokens > 0:  # prefill
        logits_BV = _last_logits(decoder, step_x, step_pos, step_doc, cache)
    for step in range(max_new_tokens):
        next_B = sample_next(
            logits_BV, temperature=temperature, top_p=top_p, top_k=top_k, generator=generator
        )
        _advance(rows, next_B.tolist(), eos, stop_strings, decode, on_token)
        if all(r.finish_reason is not None for r in rows) or step == max_new_tokens - 1:
            break
        new_pos = pos_BT[:, -1:] + step + 1
        if step_fn is not None:
            idx_1 = torch.full((1,), T0 + step, dtype=torch.long, device=weight.device)
            logits_BV = step_fn(decoder, cache, next_B[:, None], new_pos, idx_1)
            continue
        step_x, step_doc, step_pos = _eager_inputs(
            decoder, next_B, new_pos, None if use_cache else (step_x, step_doc, step_pos)
        )
        logits_BV = _last_logits(decoder, step_x, step_pos, step_doc, cache)
    return [_result(r, decode) for r in rows]


def _eager_inputs(
    decoder: Decoder,
    next_B: Tensor,
    new_pos_B1: Tensor,
    so_far: tuple[Tensor, Tensor, Tensor] | None,
) -> tuple[Tensor, Tensor, Tensor]:
    """The eager step's embeddings, document ids and positions: the new tokens alone (with a
    cache), or appended to ``so_far``, the whole sequence (without one)."""
    new_x = decoder.embed(next_B[:, None])
    new_doc = torch.zeros_like(next_B)[:, None]
    if so_far is None:
        return new_x, new_doc, new_pos_B1
    step_x, step_doc, step_pos = so_far
    return (
        torch.cat([step_x, new_x], dim=1),
        torch.cat([step_doc, new_doc], dim=1),
        torch.cat([step_pos, new_pos_B1], dim=1),
    )


def _result(row: _Row, decode: Callable[[list[int]], str] | None) -> GenerationResult:
    """A finished row as returned: ``text`` cut before its stop string (module docstring)."""
    text = decode(row.tokens) if decode is not None else None
    if text is not None and row.stop_at is not None:
        text = text[: row.stop_at]
    return GenerationResult(row.tokens, row.finish_reason or "length", text)
