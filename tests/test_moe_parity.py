"""MoE feed-forward and its aux losses against transformers' MoE code (pinned 5.23.0), fp32.

What each reference computes (E experts, K top-k, N tokens, P_e mean softmax probability):

* ``mixtral.modeling_mixtral.load_balancing_loss_func(logits, E, top_k, attention_mask)``:
  E · Σ_e (top-k assignments to e / N) · P_e, masked rows left out of N, counts and P.  With
  top_k=K it is our "all_choices"; with top_k=1 (only the first choice counted) "first_choice".
* ``nllb_moe.modeling_nllb_moe.load_balancing_loss_func``: the same formula (the pre-5.x Mixtral
  one: one-hot (N, K, E), then Σ_k Σ_e), so the same two identities.  NllbMoe's model calls it
  with top_k=2, i.e. all choices, although its Top2Router (capacity-limited) is GShard-style.
* ``switch_transformers...load_balancing_loss_func(probs_GSE, expert_indices_GS)``: per group g,
  E · Σ_e f_{g,e} P_{g,e} with f from the given indices, then the mean over groups, no mask.
  The Switch model passes ``logits.argmax(-1)``: the first choice, i.e. GShard / Mesh-TF
  ``_top_2_gating``'s density_1 form.  Given (G, S, K) indices, f_e = P(e among the top k).
  ``router_z_loss_func`` = mean over tokens of logsumexp(logits)².
* ``MixtralSparseMoeBlock``: router = linear, softmax (fp32), top-k, renormalised (always, no
  norm_topk_prob switch in Mixtral), experts stacked as ``gate_up_proj`` (E, 2F, D) = [w1; w3]
  and ``down_proj`` (E, D, F) = w2, SwiGLU.
"""

from __future__ import annotations

import copy
from dataclasses import replace

import pytest
import torch
import transformers
from transformers import MixtralConfig
from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock
from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func as mixtral_lb
from transformers.models.nllb_moe.modeling_nllb_moe import load_balancing_loss_func as nllb_lb
from transformers.models.switch_transformers import modeling_switch_transformers as switch

from mm15.config import MoEConfig
from mm15.model import moe as moe_mod
from mm15.model.moe import MoEFeedForward

assert transformers.__version__ == "5.23.0", "parity tests are pinned to transformers 5.23.0"

D, F_HIDDEN = 16, 24


def _layer(E: int, K: int, lb: str, impl: str = "grouped", seed: int = 0) -> MoEFeedForward:
    torch.manual_seed(seed)
    cfg = MoEConfig(num_experts=E, top_k=K, load_balance=lb, impl=impl)  # type: ignore[arg-type]
    layer = MoEFeedForward(D, F_HIDDEN, cfg)
    layer.init_weights(std=0.3, out_std=0.3)
    return layer


def _inputs(B: int, T: int, seed: int, pad: bool) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, D, generator=g)
    valid = torch.rand(B, T, generator=g) > 0.3 if pad else torch.ones(B, T, dtype=torch.bool)
    valid[0, 0] = True  # at least one real token
    return x, valid


def _logits(layer: MoEFeedForward, x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.linear(x.reshape(-1, D), layer.router.weight)


@pytest.mark.parametrize("E,K", [(4, 1), (4, 2), (6, 2), (6, 3)])
@pytest.mark.parametrize("pad", [False, True])
def test_load_balance_matches_mixtral_and_nllb(E, K, pad):
    """all_choices = their function at top_k=K, first_choice = the same at top_k=1, with the
    padding mask as their ``attention_mask``."""
    for seed in range(3):
        x, valid = _inputs(2, 7, 10 * E + K + seed, pad)
        mask = valid.long()
        for lb, ref_k in (("all_choices", K), ("first_choice", 1)):
            layer = _layer(E, K, lb, seed=seed)
            _, aux = layer(x, valid)
            logits = (_logits(layer, x),)
            want = mixtral_lb(logits, E, ref_k, mask)
            assert torch.allclose(aux.load_balance_loss, want, rtol=1e-6, atol=1e-6), lb
            assert torch.allclose(nllb_lb(logits, E, ref_k, mask), want, rtol=1e-6, atol=1e-6)
            # The no-mask path (histc counting) gives the same on all-valid batches.
            if not pad:
                assert torch.allclose(
                    aux.load_balance_loss, mixtral_lb(logits, E, ref_k), atol=1e-6
                )


@pytest.mark.parametrize("E,K", [(4, 2), (8, 2), (5, 3)])
def test_load_balance_and_z_loss_match_switch_transformers(E, K):
    """One group (B=1, no padding): Switch's loss with the argmax indices its model passes is
    first_choice; with the (1, T, K) top-k indices it is all_choices; z-loss is ST-MoE's."""
    for seed in range(3):
        x, _ = _inputs(1, 11, 100 + E + seed, pad=False)
        logits_1TE = _logits(_layer(E, K, "first_choice", seed=seed), x)[None]
        probs = logits_1TE.softmax(-1)
        first = switch.load_balancing_loss_func(probs, logits_1TE.argmax(-1))
        every = switch.load_balancing_loss_func(probs, probs.topk(K, dim=-1).indices)
        for lb, want in (("first_choice", first), ("all_choices", every)):
            _, aux = _layer(E, K, lb, seed=seed)(x)
            assert torch.allclose(aux.load_balance_loss, want, rtol=1e-6, atol=1e-6), lb
            assert torch.allclose(aux.z_loss, switch.router_z_loss_func(logits_1TE), rtol=1e-6)


def test_hand_computed_case_matches_the_references():
    """tests/test_moe.py's hand-computed 4-expert case, through the reference functions."""
    from tests.test_moe import HAND_LB, HAND_P, HAND_VALID

    logits = (torch.tensor(HAND_P, dtype=torch.float32).log(),)
    mask = torch.tensor([HAND_VALID]).long()
    assert mixtral_lb(logits, 4, 2, mask).item() == pytest.approx(HAND_LB["all_choices"], abs=1e-6)
    assert mixtral_lb(logits, 4, 1, mask).item() == pytest.approx(HAND_LB["first_choice"], abs=1e-6)
    real = logits[0][:3][None]
    first = switch.load_balancing_loss_func(real.softmax(-1), real.argmax(-1))
    assert first.item() == pytest.approx(HAND_LB["first_choice"], abs=1e-6)


def _mixtral_block(layer: MoEFeedForward) -> MixtralSparseMoeBlock:
    cfg = layer.cfg
    hf_cfg = MixtralConfig(
        hidden_size=D,
        intermediate_size=F_HIDDEN,
        num_local_experts=cfg.num_experts,
        num_experts_per_tok=cfg.top_k,
        router_jitter_noise=0.0,
        hidden_act="silu",
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=8,
        experts_implementation="eager",
    )
    block = MixtralSparseMoeBlock(hf_cfg).eval()
    assert block.experts.gate_up_proj.shape == (cfg.num_experts, 2 * F_HIDDEN, D)
    assert block.experts.down_proj.shape == (cfg.num_experts, D, F_HIDDEN)
    with torch.no_grad():
        block.gate.weight.copy_(layer.router.weight)
        block.experts.gate_up_proj.copy_(torch.cat([layer.w1, layer.w3], dim=1))
        block.experts.down_proj.copy_(layer.w2)
    return block


_IMPLS = ["grouped", "loop", "grouped_mm"]


@pytest.mark.parametrize("impl", _IMPLS)
@pytest.mark.parametrize("K", [2, 3])
def test_moe_block_matches_mixtral_sparse_moe_block(impl, K):
    """The whole feed-forward with the same weights: router (indices, renormalised gates),
    outputs, gradients, and the all_choices loss on the router logits Mixtral's gate returns.
    ``grouped_mm``: the grouped path through torch's grouped-GEMM kernel (CPU accepts fp32)."""
    if impl == "grouped_mm" and moe_mod._GROUPED_MM is None:
        pytest.skip("this torch has no grouped_mm")
    E = 6
    layer = _layer(E, K, "all_choices", impl="loop" if impl == "loop" else "grouped", seed=K)
    block = _mixtral_block(layer)
    x, _ = _inputs(2, 9, seed=K, pad=False)

    ref_logits, ref_gates, ref_experts = block.gate(x)
    gates, experts, _ = layer.route(x.reshape(-1, D), torch.ones(18, dtype=torch.bool))
    assert torch.equal(experts, ref_experts)
    assert (gates - ref_gates).abs().max().item() <= 1e-6

    x_ours, x_ref = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    with pytest.MonkeyPatch.context() as mp:
        if impl == "grouped_mm":
            mp.setattr(moe_mod, "use_grouped_mm", lambda x: True)
        y, aux = layer(x_ours)
    recorded = []  # the router logits, as MixtralModel's OutputRecorder takes them
    hook = block.gate.register_forward_hook(lambda mod, args, out: recorded.append(out[0]))
    y_ref = block(x_ref)
    hook.remove()
    assert torch.equal(recorded[0], ref_logits)
    assert y.dtype == y_ref.dtype == torch.float32
    assert (y - y_ref).abs().max().item() <= 1e-5
    lb_ref = mixtral_lb((recorded[0],), E, K)
    assert (aux.load_balance_loss - lb_ref).abs().item() <= 1e-6

    w = torch.linspace(-1, 1, y.numel()).view_as(y)
    ((y * w).sum() + aux.load_balance_loss).backward()
    ((y_ref * w).sum() + lb_ref).backward()
    assert (x_ours.grad - x_ref.grad).abs().max().item() <= 1e-5
    w1_grad, w3_grad = block.experts.gate_up_proj.grad.split(F_HIDDEN, dim=1)
    pairs = {
        "router": (layer.router.weight.grad, block.gate.weight.grad),
        "w1": (layer.w1.grad, w1_grad),
        "w3": (layer.w3.grad, w3_grad),
        "w2": (layer.w2.grad, block.experts.down_proj.grad),
    }
    for name, (ours, ref) in pairs.items():
        assert (ours - ref).abs().max().item() <= 1e-5, name


def test_first_choice_block_output_is_the_same_block():
    """The loss form changes only the aux loss: outputs and routing are Mixtral's either way."""
    layer = _layer(4, 2, "first_choice", seed=5)
    other = copy.deepcopy(layer)
    other.cfg = replace(other.cfg, load_balance="all_choices")
    x, valid = _inputs(2, 5, seed=5, pad=True)
    (y1, a1), (y2, a2) = layer(x, valid), other(x, valid)
    assert torch.equal(y1, y2) and torch.equal(a1.tokens_per_expert, a2.tokens_per_expert)
    assert torch.equal(a1.z_loss, a2.z_loss)
    assert not torch.allclose(a1.load_balance_loss, a2.load_balance_loss)
    assert (y1 - _mixtral_block(layer)(x)).abs().max().item() <= 1e-5
