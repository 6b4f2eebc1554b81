"""Training fast paths: flex-attention block masks, per-block torch.compile without graph
breaks, per-block-type activation checkpointing (full and selective), FSDP2 prefetch and mixed
precision (2 processes, gloo).  CPU tests use the ``aot_eager`` backend: graph breaks are a
Dynamo property, the same under inductor; tests marked ``cuda`` run on a GPU machine only."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch._dynamo.utils import counters
from torch.utils.flop_counter import FlopCounterMode

import mm15.model.attention as attention
from mm15.model.attention import document_causal_mask
from mm15.model.lm import Decoder
from mm15.model.rope import rope_cos_sin, rope_inv_freq
from mm15.presets import tiny
from mm15.train.parallel import (
    BlockPolicy,
    DistInfo,
    ParallelConfig,
    apply_attention,
    apply_checkpointing,
    apply_compile,
    apply_fsdp2,
    checkpoint_modes,
    parallelize,
)
from tests.test_parallel import spawn
from tests.train_fixtures import tiny_batch, tiny_model

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def packed_docs(B: int = 2, T: int = 150) -> torch.Tensor:
    """Documents of varied lengths (one a single token), with padding (-1) at one row's end."""
    doc = torch.zeros(B, T, dtype=torch.long)
    doc[0, 50:], doc[0, 130:] = 1, -1
    doc[1, 70:], doc[1, 71:], doc[1, 140:] = 1, 2, 3
    return doc


def decoders(attention: str) -> tuple[Decoder, Decoder]:
    """The same weights twice: the default (SDPA) and ``attention``."""
    torch.manual_seed(0)
    ref = Decoder(tiny().lm)
    fast = copy.deepcopy(ref)
    fast.attention = attention
    return ref, fast


# ---- attention -------------------------------------------------------------------------------


def test_dense_mask_is_the_original_rule():
    """The refactored mask equals the rule written out independently (default path unchanged)."""
    g = torch.Generator().manual_seed(0)
    for q_start, T, S in ((0, 9, 9), (5, 3, 8), (7, 1, 8)):
        q_doc = torch.randint(-1, 3, (2, T), generator=g)
        k_doc = torch.randint(-1, 3, (2, S), generator=g)
        want = torch.zeros(2, 1, T, S, dtype=torch.bool)
        for b in range(2):
            for t in range(T):
                for s in range(S):
                    want[b, 0, t, s] = s <= q_start + t and bool(q_doc[b, t] == k_doc[b, s])
        assert torch.equal(document_causal_mask(q_doc, k_doc, q_start), want)


def test_flex_equals_sdpa_on_packed_rows_and_is_used(monkeypatch):
    ref, flex = decoders("flex")
    ids = torch.randint(0, 512, (2, 150), generator=torch.Generator().manual_seed(1))
    doc = packed_docs()
    calls = {"flex": 0, "sdpa": 0}
    real_for, real_sdpa = attention.flex_attention_for, F.scaled_dot_product_attention

    def counting_for(device):
        calls["flex"] += 1
        return real_for(device)

    def counting_sdpa(*a, **k):
        calls["sdpa"] += 1
        return real_sdpa(*a, **k)

    monkeypatch.setattr(attention, "flex_attention_for", counting_for)
    monkeypatch.setattr(F, "scaled_dot_product_attention", counting_sdpa)
    with torch.no_grad():
        want = ref(ids, document_ids_BT=doc).logits
        assert calls == {"flex": 0, "sdpa": 4}  # the default stays on SDPA
        got = flex(ids, document_ids_BT=doc).logits
    assert calls == {"flex": 4, "sdpa": 4}  # every layer took the flex path, none SDPA
    assert (got - want).abs().max().item() < 1e-5
    # without document ids (plain causal) and with a KV cache, flex configs keep SDPA
    with torch.no_grad():
        flex(ids)
        cache = attention.KVCache.allocate(flex.cfg, 2, 160, torch.float32, "cpu")
        flex(ids, document_ids_BT=doc, cache=cache)
    assert calls["flex"] == 4


def test_parallelize_sets_the_attention_kernel():
    model = tiny_model()
    info = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), backend="none")
    assert model.lm.attention == "sdpa"  # the default, and what generation and checkpoints use
    parallelize(model, ParallelConfig(attention="flex"), info)
    assert model.lm.attention == "flex"
    with pytest.raises(ValueError, match="attention must be one of"):
        apply_attention(model, "xformers")  # type: ignore[arg-type]


def test_flex_block_mask_skips_masked_tiles():
    """Two 128-token documents: the key tile of document 0 is never visited by document 1."""
    doc = torch.cat([torch.zeros(128), torch.ones(128)]).long()[None]
    mask = attention.document_block_mask(doc)
    dense = mask.to_dense()[0, 0]  # (query blocks, key blocks) visited
    assert dense.tolist() == [[1, 0], [0, 1]]


def test_flex_cannot_train_on_cpu():
    _, flex = decoders("flex")
    ids = torch.zeros(1, 8, dtype=torch.long)
    with pytest.raises(NotImplementedError, match="use attention='sdpa' on CPU"):
        flex(ids, document_ids_BT=torch.zeros(1, 8, dtype=torch.long))


@cuda
def test_flex_equals_sdpa_with_gradients_on_cuda():
    ref, flex = (m.cuda() for m in decoders("flex"))
    ids = torch.randint(0, 512, (2, 150), device="cuda")
    doc = packed_docs().cuda()
    ref(ids, document_ids_BT=doc).logits.square().mean().backward()
    flex(ids, document_ids_BT=doc).logits.square().mean().backward()
    for (name, p), q in zip(flex.named_parameters(), ref.parameters(), strict=True):
        assert (p.grad - q.grad).abs().max().item() < 1e-5, name


# ---- torch.compile ---------------------------------------------------------------------------


def block_inputs(T: int = 32):
    cfg = tiny().lm
    doc = torch.zeros(2, T, dtype=torch.long)
    doc[:, 20:] = 1
    cos_sin = rope_cos_sin(rope_inv_freq(cfg), torch.arange(T).expand(2, T))
    x = torch.randn(2, T, cfg.dim, requires_grad=True)
    return x, cos_sin, doc


def steady_state_breaks(module: torch.nn.Module, call, steps: int = 3) -> tuple[int, int, int]:
    """(graphs compiled in the first step, graph breaks over all steps, graphs compiled after
    the first step) when ``call()`` runs ``steps`` times on a freshly compiled ``module``."""
    torch._dynamo.reset()
    counters.clear()
    module.compile(backend="aot_eager")
    call()
    first = counters["stats"]["unique_graphs"]
    for _ in range(steps - 1):
        call()
    later = counters["stats"]["unique_graphs"] - first
    return first, sum(counters["graph_break"].values()), later


def test_flex_decoder_block_compiles_without_graph_breaks():
    """The BlockMask is a graph input like the dense mask (forward only: no CPU flex backward)."""
    block = tiny_model().lm.layers[0]
    x, cos_sin, doc = block_inputs()
    block_mask = attention.document_block_mask(doc)
    with torch.no_grad():
        eager = block(x, cos_sin, block_mask, None, None)[0]
        stats = steady_state_breaks(block, lambda: block(x, cos_sin, block_mask, None, None))
        assert (block(x, cos_sin, block_mask, None, None)[0] - eager).abs().max().item() < 1e-6
    assert stats == (1, 0, 0)


def test_compiled_blocks_have_no_graph_breaks_and_train_like_eager():
    """Decoder blocks, ViT blocks and the connector, forward + backward, with decoder AC: one
    graph per block type in the first step (4 decoder layers and 2 ViT blocks share theirs), no
    graph break, nothing recompiled in the steady state, and eager's loss and gradients."""
    eager, compiled = tiny_model(), tiny_model()
    apply_checkpointing(compiled, {"decoder": "full"})
    apply_compile(
        compiled, dict.fromkeys(("decoder", "vision", "connector"), "default"), backend="aot_eager"
    )
    assert list(compiled.state_dict()) == list(eager.state_dict())  # names unchanged
    batch = tiny_batch(eager.cfg)
    torch._dynamo.reset()
    counters.clear()
    graphs = []
    for _ in range(3):
        compiled.zero_grad()
        loss_c = compiled(**batch).loss
        loss_c.backward()
        graphs.append(counters["stats"]["unique_graphs"])
    assert graphs == [3, 3, 3]
    assert sum(counters["graph_break"].values()) == 0, dict(counters["graph_break"])
    loss_e = eager(**batch).loss
    loss_e.backward()
    assert abs(loss_e.item() - loss_c.item()) < 1e-6
    for (name, p), q in zip(compiled.named_parameters(), eager.parameters(), strict=True):
        assert (p.grad is None) == (q.grad is None), name
        if p.grad is not None:
            assert (p.grad - q.grad).abs().max().item() < 1e-5, name


@cuda
def test_inductor_compiles_blocks_without_graph_breaks_on_cuda():
    model = tiny_model().cuda()
    batch = {k: v.cuda() for k, v in tiny_batch(model.cfg).items()}
    torch._dynamo.reset()
    counters.clear()
    apply_compile(model, dict.fromkeys(("decoder", "vision", "connector"), "default"))
    for _ in range(3):
        model(**batch).loss.backward()
    assert sum(counters["graph_break"].values()) == 0


# ---- activation checkpointing ----------------------------------------------------------------


def test_checkpoint_modes_merge_shorthand_and_block_settings():
    cfg = ParallelConfig(
        activation_checkpointing="decoder", vision=BlockPolicy(checkpoint="selective")
    )
    assert checkpoint_modes(cfg) == {"decoder": "full", "vision": "selective", "connector": "none"}
    cfg = ParallelConfig(
        activation_checkpointing="all", decoder=BlockPolicy(checkpoint="selective")
    )
    assert checkpoint_modes(cfg) == {"decoder": "selective", "vision": "full", "connector": "full"}
    with pytest.raises(ValueError, match="decoder checkpoint mode must be one of"):
        apply_checkpointing(tiny_model(), {"decoder": "some"})  # type: ignore[dict-item]


def recomputed_flops(model, batch) -> int:
    """Forward FLOPs full checkpointing of the decoder layers and ViT blocks recomputes: the
    blocks' forwards minus each block's last matmul (w2, fc2), whose output backward never
    needs, so non-reentrant checkpointing stops before it (``early_stop``)."""
    with FlopCounterMode(display=False) as fc:
        model(**batch)
    counts = {name: sum(ops.values()) for name, ops in fc.get_flop_counts().items()}
    layers, blocks = range(len(model.lm.layers)), range(len(model.vision.blocks))
    return sum(
        counts[f"MM15.lm.layers.{i}"] - counts[f"MM15.lm.layers.{i}.ffn.w2"] for i in layers
    ) + sum(
        counts[f"MM15.vision.blocks.{i}"] - counts[f"MM15.vision.blocks.{i}.mlp.fc2"]
        for i in blocks
    )


def test_checkpointing_modes_keep_gradients_and_recompute_what_they_say():
    """Backward FLOPs: full recomputes every forward matmul of its blocks, selective none."""
    plain = tiny_model()
    batch = tiny_batch(plain.cfg)
    flops = {}
    for mode in ("none", "full", "selective"):
        model = apply_checkpointing(
            copy.deepcopy(plain), dict.fromkeys(("decoder", "vision"), mode)
        )
        with FlopCounterMode(display=False) as fc:
            model(**batch).loss.backward()
        flops[mode] = fc.get_total_flops()
        for (name, p), q in zip(model.named_parameters(), plain.parameters(), strict=True):
            if mode == "none":
                q.grad = p.grad
            assert (p.grad is None and q.grad is None) or torch.equal(p.grad, q.grad), name
    assert flops["full"] - flops["none"] == recomputed_flops(plain, batch) > 0
    assert flops["selective"] == flops["none"]


# ---- FSDP2: prefetch, mixed precision, compile (2 processes, gloo) -----------------------------


def _fsdp_worker(info: DistInfo) -> dict:
    init = tiny_model()
    batch = tiny_batch(init.cfg)
    ref = apply_fsdp2(copy.deepcopy(init))
    ref_loss = ref(**batch).loss
    ref_loss.backward()

    fast = copy.deepcopy(init)
    apply_checkpointing(fast, {"decoder": "full"})
    apply_compile(fast, {"decoder": "default"}, backend="aot_eager")
    apply_fsdp2(fast, forward_prefetch=2, backward_prefetch=2)
    first = fast.lm.layers[0]._get_fsdp_state()  # private: the lists set_prefetch filled
    losses = []
    for _ in range(2):
        fast.zero_grad()
        loss = fast(**batch).loss
        losses.append(loss.item())
        loss.backward()
    grad_diff = max(
        (p.grad.full_tensor() - q.grad.full_tensor()).abs().max().item()
        for p, q in zip(fast.parameters(), ref.parameters(), strict=True)
        if p.grad is not None
    )

    bf16 = apply_fsdp2(copy.deepcopy(init), param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    seen = []
    bf16.lm.layers[0].attn.wq.register_forward_pre_hook(lambda m, _: seen.append(m.weight.dtype))
    bf16_loss = bf16(**batch).loss
    bf16_loss.backward()
    with torch.no_grad():  # the BlockMask passes FSDP2's bf16 input casting (forward: no CPU bwd)
        packed = dict(batch, document_ids_BT=torch.zeros_like(batch["input_ids_BT"]))
        packed["document_ids_BT"][:, 12:] = 1
        sdpa_packed = bf16(**packed).loss.item()
        apply_attention(bf16, "flex")
        flex_packed = bf16(**packed).loss.item()
    return dict(
        ref=ref_loss.item(),
        losses=losses,
        grad_diff=grad_diff,
        prefetch=[len(first._states_to_forward_prefetch), len(first._states_to_backward_prefetch)],
        bf16_loss=bf16_loss.item(),
        gathered=str(seen[0]),
        packed=[sdpa_packed, flex_packed],
        sharded=sorted({str(p.dtype) for p in bf16.parameters()}),
        grads=sorted({str(p.grad.dtype) for p in bf16.parameters() if p.grad is not None}),
        world=dist.get_world_size(),
    )


def test_fsdp2_prefetch_compile_and_bf16_params(tmp_path):
    for r in spawn(_fsdp_worker, tmp_path):
        assert r["world"] == 2
        assert r["prefetch"] == [2, 2]  # decoder block 0: the next two units; ViT 1, connector
        assert r["losses"] == [r["ref"], r["ref"]]  # compile + AC + prefetch: same maths
        assert r["grad_diff"] < 1e-6
        # bf16 gathered parameters, fp32 shards and fp32 gradients (fp32 reduce-scatter)
        assert r["gathered"] == "torch.bfloat16"
        assert r["sharded"] == r["grads"] == ["torch.float32"]
        assert r["bf16_loss"] != r["ref"] and abs(r["bf16_loss"] - r["ref"]) < 2e-2 * r["ref"]
        sdpa, flex = r["packed"]
        assert abs(sdpa - flex) < 1e-2 * sdpa  # bf16 kernels differ in rounding only
