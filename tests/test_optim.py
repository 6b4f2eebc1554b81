"""AdaFactor equals torch.optim.Adafactor (one process), AdamW builder, clipping, LR schedule."""

from __future__ import annotations

import copy
import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from mm15.model.params import mm1_peak_lr
from mm15.train.optim import AdaFactor, OptimConfig, build_optimizer, clip_grad_norm_
from mm15.train.schedule import build_scheduler, lr_at
from tests.train_fixtures import tiny_batch, tiny_model


class Shapes(nn.Module):
    """Parameters of every rank the optimiser factors differently: 0-D, 1-D, 2-D, 3-D, 4-D."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.scalar = nn.Parameter(torch.randn((), generator=g))
        self.vec = nn.Parameter(torch.randn(5, generator=g))
        self.mat = nn.Parameter(torch.randn(7, 3, generator=g))
        self.stack = nn.Parameter(torch.randn(2, 3, 4, generator=g))
        self.conv = nn.Parameter(torch.randn(3, 1, 3, 3, generator=g) * 0.1)

    def loss(self, seed: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        total = self.scalar.square()
        for p in (self.vec, self.mat, self.stack, self.conv):
            total = total + (p.tanh() * torch.randn(p.shape, generator=g)).sum()
        return total


def run_steps(model: nn.Module, opt: torch.optim.Optimizer, steps: int, loss_fn) -> None:
    for s in range(steps):
        opt.zero_grad()
        loss_fn(model, s).backward()
        opt.step()


@settings(max_examples=15, deadline=None)
@given(
    lr=st.floats(1e-3, 0.5),
    beta2_decay=st.floats(-1.0, -0.3),
    weight_decay=st.sampled_from([0.0, 0.1]),
    d=st.sampled_from([1.0, 2.0]),
    eps2=st.sampled_from([1e-3, 1.0]),
    maximize=st.booleans(),
)
def test_adafactor_matches_torch_on_every_parameter_rank(
    lr, beta2_decay, weight_decay, d, eps2, maximize
):
    ours, ref = Shapes(), Shapes()
    kw = dict(
        lr=lr,
        beta2_decay=beta2_decay,
        eps=(None, eps2),
        d=d,
        weight_decay=weight_decay,
        maximize=maximize,
    )
    run_steps(ours, AdaFactor(ours.parameters(), **kw), 4, lambda m, s: m.loss(s))
    run_steps(ref, torch.optim.Adafactor(ref.parameters(), **kw), 4, lambda m, s: m.loss(s))
    for (name, p), q in zip(ours.named_parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=lambda m, n=name: f"{n}: {m}")
    assert not torch.equal(ours.mat, Shapes().mat)  # the comparison is of trained weights


def test_adafactor_matches_torch_on_tiny_mm15():
    ours = tiny_model()
    ref = copy.deepcopy(ours)
    batch = tiny_batch(ours.cfg)

    def loss_fn(model, _step):
        return model(**batch).loss

    kw = dict(lr=0.05, weight_decay=0.01)
    run_steps(ours, AdaFactor(ours.parameters(), **kw), 3, loss_fn)
    run_steps(ref, torch.optim.Adafactor(ref.parameters(), **kw), 3, loss_fn)
    moved = 0.0
    for (name, p), q, p0 in zip(
        ours.named_parameters(), ref.parameters(), tiny_model().parameters(), strict=True
    ):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=lambda m, n=name: f"{n}: {m}")
        moved = max(moved, (p - p0).abs().max().item())
    assert moved > 1e-3


def test_adafactor_step_sizes_on_a_first_step():
    """At t=1 the second moment is G², so U = sign(G) and RMS(U) = 1: the step is exactly
    lr (absolute) or max(ε₂, RMS(θ))·min(lr, 1) (relative, torch's)."""
    theta = torch.tensor([3.0, -4.0, 0.5, 2.0])
    grad = torch.tensor([0.2, -1.0, 3.0, -0.01])
    rms = theta.square().mean().sqrt()
    for step_size, expected in (("absolute", 0.1), ("relative", rms.item() * 0.1)):
        p = nn.Parameter(theta.clone())
        p.grad = grad.clone()
        AdaFactor([p], lr=0.1, step_size=step_size).step()
        torch.testing.assert_close(p.detach(), theta - expected * grad.sign())


def test_adafactor_resume_from_state_dict_is_exact():
    a, b = Shapes(), Shapes()
    opt_a = AdaFactor(a.parameters(), lr=0.1)
    run_steps(a, opt_a, 2, lambda m, s: m.loss(s))
    b.load_state_dict(a.state_dict())
    opt_b = AdaFactor(b.parameters(), lr=0.1)
    opt_b.load_state_dict(copy.deepcopy(opt_a.state_dict()))
    for model, opt in ((a, opt_a), (b, opt_b)):
        opt.zero_grad()
        model.loss(7).backward()
        opt.step()
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q)


def test_build_optimizer_adamw_groups_and_step():
    model = tiny_model()
    model.vision.requires_grad_(False)  # a frozen part is left out
    cfg = OptimConfig(kind="adamw", lr=3e-4, weight_decay=0.1)
    cfg.adamw.betas = (0.8, 0.9)
    opt = build_optimizer(model, cfg)
    assert isinstance(opt, torch.optim.AdamW)
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert decay["betas"] == (0.8, 0.9) and decay["lr"] == 3e-4
    assert all(p.ndim >= 2 for p in decay["params"]) and all(p.ndim < 2 for p in no_decay["params"])
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert {id(p) for g in opt.param_groups for p in g["params"]} == trainable
    # one step equals torch's AdamW built by hand with the same groups
    ref = copy.deepcopy(model)
    ref_opt = torch.optim.AdamW(
        [
            {
                "params": [p for p in ref.parameters() if p.requires_grad and p.ndim >= 2],
                "weight_decay": 0.1,
            },
            {
                "params": [p for p in ref.parameters() if p.requires_grad and p.ndim < 2],
                "weight_decay": 0.0,
            },
        ],
        lr=3e-4,
        betas=(0.8, 0.9),
        eps=1e-8,
    )
    batch = tiny_batch(model.cfg)
    run_steps(model, opt, 2, lambda m, s: m(**batch).loss)
    run_steps(ref, ref_opt, 2, lambda m, s: m(**batch).loss)
    for p, q in zip(model.parameters(), ref.parameters(), strict=True):
        assert torch.equal(p, q)


def test_build_optimizer_adafactor_and_errors():
    model = Shapes()
    opt = build_optimizer(model, OptimConfig(lr=2e-5, weight_decay=0.05))
    assert isinstance(opt, AdaFactor)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.05, 0.0]
    assert opt.param_groups[0]["lr"] == 2e-5 and opt.param_groups[0]["step_size"] == "relative"
    with pytest.raises(ValueError, match="adafactor' or 'adamw', got 'sgd'"):
        build_optimizer(model, OptimConfig(kind="sgd"))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no trainable parameters"):
        build_optimizer(model.requires_grad_(False), OptimConfig())


def test_clip_grad_norm_clips_and_measures():
    a, b = nn.Parameter(torch.zeros(3)), nn.Parameter(torch.zeros(2, 2))
    a.grad, b.grad = torch.tensor([3.0, 0.0, 0.0]), torch.tensor([[0.0, 4.0], [0.0, 0.0]])
    assert clip_grad_norm_([a, b], 0.0).item() == pytest.approx(5.0)  # measure only
    assert a.grad[0].item() == 3.0
    assert clip_grad_norm_([a, b], 1.0).item() == pytest.approx(5.0)
    total = torch.cat([a.grad.flatten(), b.grad.flatten()]).norm()
    assert total.item() == pytest.approx(1.0, rel=1e-5)


# ---- schedule --------------------------------------------------------------------------------


def test_lr_schedule_endpoints_and_midpoints():
    kw = dict(peak_lr=2e-5, warmup_steps=100, total_steps=1100)
    assert lr_at(0, **kw) == 0.0
    assert lr_at(50, **kw) == pytest.approx(1e-5)
    assert lr_at(100, **kw) == pytest.approx(2e-5)
    assert lr_at(600, **kw) == pytest.approx(1e-5)  # half-way through the cosine
    assert lr_at(1100, **kw) == 0.0 and lr_at(5000, **kw) == 0.0
    assert lr_at(1099, **kw) < 1e-10
    assert lr_at(600, **kw, min_lr_ratio=0.1) == pytest.approx(2e-6 + 0.5 * 1.8e-5)
    assert lr_at(1100, **kw, min_lr_ratio=0.1) == pytest.approx(2e-6)
    assert lr_at(0, peak_lr=1.0, warmup_steps=0, total_steps=10) == 1.0
    with pytest.raises(ValueError, match="warmup_steps=20, total_steps=10"):
        lr_at(0, peak_lr=1.0, warmup_steps=20, total_steps=10)


@settings(max_examples=30, deadline=None)
@given(warmup=st.integers(0, 50), extra=st.integers(1, 200), ratio=st.floats(0.0, 1.0))
def test_lr_schedule_rises_then_falls(warmup, extra, ratio):
    kw = dict(peak_lr=1.0, warmup_steps=warmup, total_steps=warmup + extra, min_lr_ratio=ratio)
    lrs = [lr_at(s, **kw) for s in range(warmup + extra + 2)]
    assert all(x <= y + 1e-12 for x, y in itertools.pairwise(lrs[: warmup + 1]))
    assert all(x >= y - 1e-12 for x, y in itertools.pairwise(lrs[warmup:]))
    assert max(lrs) == pytest.approx(1.0) and lrs[-1] == pytest.approx(ratio)


def test_scheduler_follows_lr_at_and_resumes_exactly():
    p = nn.Parameter(torch.zeros(2))
    opt = AdaFactor([p], lr=1e-5)
    sched = build_scheduler(opt, warmup_steps=3, total_steps=10)
    seen = []
    for _ in range(5):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx(
        [lr_at(s, peak_lr=1e-5, warmup_steps=3, total_steps=10) for s in range(5)]
    )
    opt2 = AdaFactor([nn.Parameter(torch.zeros(2))], lr=1e-5)
    sched2 = build_scheduler(opt2, warmup_steps=3, total_steps=10)
    opt2.load_state_dict(opt.state_dict())
    sched2.load_state_dict(sched.state_dict())
    assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"]
    sched.step()
    sched2.step()
    assert opt2.param_groups[0]["lr"] == pytest.approx(
        lr_at(6, peak_lr=1e-5, warmup_steps=3, total_steps=10)
    )


def test_mm1_eq1_peak_lr_for_30b():
    # MM1 §4: "For N = 3e10, this fit predicts η = 2.2e-5"
    assert mm1_peak_lr(int(3e10)) == pytest.approx(2.2e-5, rel=0.01)
    assert math.isclose(mm1_peak_lr(int(1e9)), math.exp(-0.4214 * math.log(1e9) - 0.5535))
