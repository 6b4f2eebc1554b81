"""MoE feed-forward: fast path vs reference loop, fp32 router, aux losses, padding, upcycling.
The comparisons with transformers' MoE code are in tests/test_moe_parity.py."""

from __future__ import annotations

import copy
import math
from dataclasses import replace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mm15.config import LMConfig, ModelConfig, MoEConfig, load_model_config
from mm15.config_json import from_dict, save_json, to_dict
from mm15.model import moe as moe_mod
from mm15.model.lm import Decoder
from mm15.model.moe import MoEFeedForward, upcycle_decoder_state_dict

LB_FORMS = ("first_choice", "all_choices")


def _layer(dim=16, hidden=24, E=4, K=2, seed=0, impl="grouped", lb="first_choice"):
    torch.manual_seed(seed)
    cfg = MoEConfig(num_experts=E, top_k=K, impl=impl, load_balance=lb)
    layer = MoEFeedForward(dim, hidden, cfg)
    layer.init_weights(std=0.3, out_std=0.3)
    return layer


def _run(layer, x, valid=None):
    x = x.clone().requires_grad_(True)
    y, aux = layer(x, valid)
    loss = (
        (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum() + aux.load_balance_loss + aux.z_loss
    )
    loss.backward()
    grads = {n: p.grad.clone() for n, p in layer.named_parameters()}
    return y.detach(), aux, x.grad, grads


def _assert_same(a, b, atol=1e-5):
    (ya, auxa, gxa, ga), (yb, auxb, gxb, gb) = a, b
    assert torch.allclose(ya, yb, atol=atol)
    assert torch.allclose(auxa.load_balance_loss, auxb.load_balance_loss, atol=1e-6)
    assert torch.allclose(auxa.z_loss, auxb.z_loss, atol=1e-6)
    assert torch.equal(auxa.tokens_per_expert, auxb.tokens_per_expert)
    assert torch.allclose(gxa, gxb, atol=atol)
    for name in ga:
        assert torch.allclose(ga[name], gb[name], atol=atol), name


@settings(max_examples=25, deadline=None)
@given(
    B=st.integers(1, 3),
    T=st.integers(1, 9),
    E=st.integers(2, 6),
    K=st.integers(1, 2),
    seed=st.integers(0, 1000),
    pad=st.booleans(),
    kernel=st.booleans(),
    lb=st.sampled_from(LB_FORMS),
)
def test_grouped_equals_loop(B, T, E, K, seed, pad, kernel, lb):
    """``kernel``: also run the torch grouped-GEMM branch (CUDA bf16 in production; torch's
    CPU implementation accepts fp32, so its padding/offset logic is tested here)."""
    if kernel and moe_mod._GROUPED_MM is None:
        return
    grouped = _layer(E=E, K=K, seed=seed, lb=lb)
    loop = copy.deepcopy(grouped)
    loop.cfg = replace(loop.cfg, impl="loop")
    x = torch.randn(B, T, 16, generator=torch.Generator().manual_seed(seed))
    valid = (
        torch.rand(B, T, generator=torch.Generator().manual_seed(seed + 1)) > 0.3 if pad else None
    )
    reference = _run(loop, x, valid)
    with pytest.MonkeyPatch.context() as mp:
        if kernel:
            mp.setattr(moe_mod, "use_grouped_mm", lambda x: True)
        _assert_same(_run(grouped, x, valid), reference)


def test_router_math_is_fp32_under_bf16():
    layer = _layer(seed=2).to(torch.bfloat16)
    x = torch.randn(3, 8, 16).to(torch.bfloat16)
    gates, experts, aux = layer.route(x.reshape(-1, 16), torch.ones(24, dtype=torch.bool))
    ref_logits = x.reshape(-1, 16).float() @ layer.router.weight.float().T
    ref_p, ref_e = ref_logits.softmax(-1).topk(2, dim=-1)
    assert gates.dtype == aux.load_balance_loss.dtype == aux.z_loss.dtype == torch.float32
    assert torch.equal(experts, ref_e)
    assert torch.allclose(gates, ref_p / ref_p.sum(-1, keepdim=True), atol=1e-6)
    y, _ = layer(x)
    assert y.dtype == torch.bfloat16
    # Under autocast the router still sees fp32 (autocast would otherwise run it in bf16).
    layer32 = _layer(seed=2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, experts_ac, aux_ac = layer32.route(
            x.float().reshape(-1, 16), torch.ones(24, dtype=torch.bool)
        )
    ref = (x.reshape(-1, 16).float() @ layer32.router.weight.T).softmax(-1).topk(2, dim=-1)
    assert torch.equal(experts_ac, ref.indices) and aux_ac.z_loss.dtype == torch.float32


def _identity_router(E: int, K: int, lb: str = "first_choice") -> MoEFeedForward:
    """dim == E and router = I, so the input *is* the router logits."""
    layer = _layer(dim=E, hidden=8, E=E, K=K, seed=3, lb=lb)
    with torch.no_grad():
        layer.router.weight.copy_(torch.eye(E))
    return layer


# E=4, K=2; logits = log of the integers below, so each valid token's probabilities are them / 8.
# The last token is padding with extreme logits: it must count for nothing.
HAND_P = [[4, 2, 1, 1], [1, 4, 2, 1], [1, 1, 2, 4], [1, 1, 1, 4096]]
HAND_VALID = [True, True, True, False]
# first / second choices: (e0, e1), (e1, e2), (e3, e2)  →  gates (2/3, 1/3) for every token
# P = column means over the 3 valid tokens = (6, 7, 5, 6) / 24
# first_choice: f = (1, 1, 0, 1)/3      → 4 · (6 + 7 + 0 + 6) / 72  = 19/18
# all_choices:  f = (1, 2, 2, 1)/3      → 4 · (6 + 14 + 10 + 6) / 72 = 2  (Mixtral's scale)
# (before the load_balance field mm15 took the all-choices f / K: 1)
# z = ln(8)² (Σ exp = 8 for every valid token); tokens_per_expert = (1, 2, 2, 1)
HAND_LB = {"first_choice": 19 / 18, "all_choices": 2.0}


@pytest.mark.parametrize("lb", LB_FORMS)
@pytest.mark.parametrize("impl", ["grouped", "loop"])
def test_aux_losses_hand_computed_4_experts(lb, impl):
    layer = _identity_router(E=4, K=2, lb=lb)
    layer.cfg = replace(layer.cfg, impl=impl)
    x = torch.tensor(HAND_P, dtype=torch.float32).log()[None]
    y, aux = layer(x, torch.tensor([HAND_VALID]))
    assert aux.load_balance_loss.item() == pytest.approx(HAND_LB[lb], abs=1e-6)
    assert aux.z_loss.item() == pytest.approx(math.log(8) ** 2, abs=1e-5)
    assert aux.tokens_per_expert.tolist() == [1, 2, 2, 1]
    for n, (e1, e2) in enumerate([(0, 1), (1, 2), (3, 2)]):
        xn = x[0, n : n + 1]
        expected = 2 / 3 * layer._expert(e1, xn) + 1 / 3 * layer._expert(e2, xn)
        assert torch.allclose(y[0, n : n + 1], expected, atol=1e-6)


def test_aux_losses_hand_computed():
    # E=2, K=1, both tokens prefer expert 0 with p = (3/4, 1/4): the two forms coincide.
    # f = (1, 0), P = (3/4, 1/4) → lb = 2 · 3/4 = 1.5; lse = ln 4 → z = ln(4)².
    for lb in LB_FORMS:
        layer = _identity_router(E=2, K=1, lb=lb)
        x = torch.tensor([[[math.log(3), 0.0], [math.log(3), 0.0]]])
        _, aux = layer(x)
        assert aux.load_balance_loss.item() == pytest.approx(1.5, abs=1e-6)
        assert aux.z_loss.item() == pytest.approx(math.log(4) ** 2, abs=1e-6)
        assert aux.tokens_per_expert.tolist() == [2, 0]
    # E=3, K=2, p = (4, 2, 1)/7, z = ln(7)², gates renormalise to (2/3, 1/3).
    # first_choice f = (1, 0, 0) → 3 · 4/7 = 12/7; all_choices f = (1, 1, 0) → 3 · 6/7 = 18/7.
    for lb, want in (("first_choice", 12 / 7), ("all_choices", 18 / 7)):
        layer = _identity_router(E=3, K=2, lb=lb)
        x = torch.tensor([[[math.log(4), math.log(2), 0.0]]])
        y, aux = layer(x)
        assert aux.load_balance_loss.item() == pytest.approx(want, abs=1e-6)
        assert aux.z_loss.item() == pytest.approx(math.log(7) ** 2, abs=1e-5)
        expected = 2 / 3 * layer._expert(0, x[0]) + 1 / 3 * layer._expert(1, x[0])
        assert torch.allclose(y[0], expected, atol=1e-6)
    # Uniform router: Σ_e f_e whatever top-k picks (1, or K = 2), z = ln(E)².
    for lb, want in (("first_choice", 1.0), ("all_choices", 2.0)):
        _, aux = _identity_router(E=4, K=2, lb=lb)(torch.zeros(1, 5, 4))
        assert aux.load_balance_loss.item() == pytest.approx(want, abs=1e-6)
        assert aux.z_loss.item() == pytest.approx(math.log(4) ** 2, abs=1e-6)


@pytest.mark.parametrize("lb", LB_FORMS)
def test_padding_excluded_from_stats(lb):
    layer = _layer(E=4, seed=4, lb=lb)
    real = torch.randn(1, 5, 16)
    pad = 10 * torch.randn(1, 3, 16)  # extreme router logits if they counted
    x = torch.cat([pad, real], dim=1)
    valid = torch.tensor([[False] * 3 + [True] * 5])
    y, aux = layer(x, valid)
    y_ref, aux_ref = layer(real)
    assert torch.allclose(aux.load_balance_loss, aux_ref.load_balance_loss, atol=1e-6)
    assert torch.allclose(aux.z_loss, aux_ref.z_loss, atol=1e-5)
    assert torch.equal(aux.tokens_per_expert, aux_ref.tokens_per_expert)
    assert aux.tokens_per_expert.sum().item() == 5 * 2
    assert torch.allclose(y[:, 3:], y_ref, atol=1e-6)
    _, aux_all = layer(x)
    assert not torch.allclose(aux_all.z_loss, aux_ref.z_loss, atol=1e-3)
    # All padding: zero losses, not NaN.
    _, aux_none = layer(pad, torch.zeros(1, 3, dtype=torch.bool))
    assert aux_none.load_balance_loss.item() == 0.0 and aux_none.z_loss.item() == 0.0


def test_load_balance_setting_round_trips_and_old_configs_get_the_default(tmp_path):
    cfg = ModelConfig()
    cfg.lm.moe = MoEConfig(num_experts=4, load_balance="all_choices")
    path = tmp_path / "config.json"
    save_json(cfg, str(path))
    assert load_model_config(str(path)).lm.moe.load_balance == "all_choices"
    assert from_dict(ModelConfig, to_dict(cfg)) == cfg
    old = to_dict(cfg)  # a config.json written before the field existed
    del old["lm"]["moe"]["load_balance"]
    assert from_dict(ModelConfig, old).lm.moe.load_balance == "first_choice"
    old["lm"]["moe"]["load_balance"] = "top1"
    with pytest.raises(ValueError, match=r"MoEConfig\.load_balance must be one of"):
        from_dict(ModelConfig, old)
    with pytest.raises(ValueError, match="load_balance 'top1'"):
        MoEFeedForward(4, 8, MoEConfig(num_experts=4, load_balance="top1"))  # type: ignore[arg-type]


DENSE = LMConfig(vocab_size=53, dim=16, n_layers=4, n_heads=4, n_kv_heads=2, ffn_hidden=24)


@pytest.mark.parametrize("impl", ["grouped", "loop"])
def test_upcycled_equals_dense(impl):
    torch.manual_seed(0)
    dense = Decoder(DENSE).eval()
    moe_cfg = replace(DENSE, moe=MoEConfig(num_experts=4, top_k=2, every=2, impl=impl))
    sd = upcycle_decoder_state_dict(dense.state_dict(), moe_cfg, seed=7)
    moe = Decoder(moe_cfg).eval()
    moe.load_state_dict(sd, strict=True)
    assert isinstance(moe.layers[1].ffn, MoEFeedForward) and not isinstance(
        moe.layers[0].ffn, MoEFeedForward
    )
    assert moe.layers[1].ffn.router.weight.abs().sum() > 0
    ids = torch.randint(0, 53, (2, 9))
    out = moe(ids)
    assert torch.allclose(out.logits, dense(ids).logits, atol=1e-5)
    assert out.moe_stats.tokens_per_expert.shape == (2, 4)
    assert out.moe_stats.tokens_per_expert.sum(1).tolist() == [2 * 9 * 2] * 2
    # Breaking one expert's copy breaks the equality (the comparison is sensitive).
    sd["layers.1.ffn.w2"][0] += 1.0
    moe.load_state_dict(sd)
    assert not torch.allclose(moe(ids).logits, dense(ids).logits, atol=1e-3)


def test_decoder_aux_loss_and_padding():
    cfg = replace(
        DENSE,
        moe=MoEConfig(num_experts=4, top_k=2, every=1, load_balance_coef=0.5, z_loss_coef=0.25),
    )
    torch.manual_seed(1)
    decoder = Decoder(cfg)
    ids = torch.randint(0, 53, (1, 8))
    doc = torch.tensor([[-1, -1, 0, 0, 0, 1, 1, 1]])
    out = decoder(ids, document_ids_BT=doc)
    s = out.moe_stats
    expected = 0.5 * s.load_balance_loss.sum() + 0.25 * s.z_loss.sum()
    assert torch.allclose(out.aux_loss, expected)
    assert s.tokens_per_expert.sum(1).tolist() == [6 * 2] * 4
    out.aux_loss.backward()
    assert decoder.layers[0].ffn.router.weight.grad.abs().sum() > 0


def test_upcycle_rejects_bad_input():
    sd = Decoder(DENSE).state_dict()
    with pytest.raises(ValueError, match="moe is None"):
        upcycle_decoder_state_dict(sd, DENSE, seed=0)
    wide = replace(DENSE, moe=MoEConfig(num_experts=2, expert_hidden=48))
    with pytest.raises(ValueError, match="expert_hidden 48"):
        upcycle_decoder_state_dict(sd, wide, seed=0)
    del sd["layers.1.ffn.w3.weight"]
    with pytest.raises(ValueError, match=r"layers\.1\.ffn\.w3\.weight"):
        upcycle_decoder_state_dict(sd, replace(DENSE, moe=MoEConfig(num_experts=2)), seed=0)
