"""A non-finite loss or gradient skips the optimiser step (and is reported as skipped)."""

from __future__ import annotations

import pytest
import torch

from mm15.model.mm15 import MM15, next_token_loss_sum
from mm15.presets import tiny
from mm15.train.optim import OptimConfig, build_optimizer
from mm15.train.step import train_step


def _setup():
    torch.manual_seed(0)
    model = MM15(tiny())
    model.init_weights()
    opt = build_optimizer(model, OptimConfig(kind="adamw", lr=1e-2))
    ids = torch.randint(0, 250, (2, 16))
    batch = {
        "input_ids_BT": ids,
        "labels_BT": ids,
        "position_ids_BT": torch.arange(16).expand(2, 16),
        "document_ids_BT": torch.zeros(2, 16, dtype=torch.long),
    }
    return model, opt, batch


def test_finite_step_updates():
    model, opt, batch = _setup()
    before = model.lm.output.weight.detach().clone()
    out = train_step(model, [batch], optimizer=opt, grad_clip=1.0, world_size=1)
    assert not out.skipped and out.tokens == 2 * 15
    assert not torch.equal(before, model.lm.output.weight)


def test_non_finite_loss_skips_the_step():
    model, opt, batch = _setup()
    with torch.no_grad():
        model.lm.norm.weight[0] = float("nan")
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    out = train_step(model, [batch], optimizer=opt, grad_clip=1.0, world_size=1)
    assert out.skipped
    after = model.state_dict()
    assert all(
        torch.equal(
            before[k],
            after[k],
        )
        or torch.isnan(before[k]).any()
        for k in before
    )
    assert not opt.state  # no optimiser state was created: the step never ran
    assert all(p.grad is None for p in model.parameters())


def test_non_finite_gradient_skips_the_step():
    model, opt, batch = _setup()
    model.lm.output.weight.register_hook(lambda g: g * float("inf"))
    before = model.lm.layers[0].attn.wq.weight.detach().clone()
    out = train_step(model, [batch], optimizer=opt, grad_clip=1.0, world_size=1)
    assert out.skipped and torch.isfinite(torch.tensor(out.loss))
    assert torch.equal(before, model.lm.layers[0].attn.wq.weight)


def test_gradient_accumulation_equals_one_big_batch():
    # SGD, so the update is linear in the gradient (Adam's g/sqrt(v) amplifies float noise in
    # near-zero gradients into sign flips).
    model_a, _, batch = _setup()
    model_b, _, _ = _setup()
    opt_a = torch.optim.SGD(model_a.parameters(), lr=0.1)
    opt_b = torch.optim.SGD(model_b.parameters(), lr=0.1)
    batch["labels_BT"] = batch["labels_BT"].clone()
    batch["labels_BT"][1, 6:] = -100  # unequal targets per micro-batch: 15 and 5
    halves = [{k: v[i : i + 1] for k, v in batch.items()} for i in range(2)]
    out_a = train_step(model_a, [batch], optimizer=opt_a, grad_clip=0.0, world_size=1)
    out_b = train_step(model_b, halves, optimizer=opt_b, grad_clip=0.0, world_size=1)
    assert abs(out_a.loss - out_b.loss) < 1e-6 and out_a.tokens == out_b.tokens
    for pa, pb in zip(model_a.parameters(), model_b.parameters(), strict=True):
        assert torch.allclose(pa, pb, atol=1e-6)


def test_logits_only_at_targets_give_the_full_loss_and_gradients():
    """train_step projects only positions with a target onto the vocabulary; the loss and the
    update equal those of the plain full-logits loss (SFT-like sparse labels, two documents)."""
    model_a, _, batch = _setup()
    model_b, _, _ = _setup()
    labels = torch.full_like(batch["labels_BT"], -100)
    labels[0, 5:9], labels[1, 12:] = batch["input_ids_BT"][0, 5:9], batch["input_ids_BT"][1, 12:]
    batch["labels_BT"] = labels
    batch["document_ids_BT"] = torch.tensor([[0] * 7 + [1] * 9, [0] * 16])
    opt_a = torch.optim.SGD(model_a.parameters(), lr=1.0)
    out_a = train_step(model_a, [batch], optimizer=opt_a, grad_clip=0.0, world_size=1)

    full = model_b(
        batch["input_ids_BT"],
        position_ids_BT=batch["position_ids_BT"],
        document_ids_BT=batch["document_ids_BT"],
    )
    assert full.logits.shape == (2, 16, model_b.cfg.lm.vocab_size)
    total, n = next_token_loss_sum(full.logits, labels, batch["document_ids_BT"])
    (total / n).backward()
    # targets: row 0 predicts 6..8 (5 → 6 is inside doc 0, 6 → 7 crosses into doc 1), row 1 13..15
    assert out_a.tokens == int(n) == 3 + 4
    assert abs(out_a.loss - (total / n).item()) < 1e-6
    for (name, pa), pb in zip(model_a.named_parameters(), model_b.parameters(), strict=True):
        expected = pb.detach() - (pb.grad if pb.grad is not None else 0)
        assert torch.allclose(pa, expected, atol=1e-6), name


def test_logits_at_and_labels_are_exclusive():
    model, _, batch = _setup()
    with pytest.raises(ValueError, match="not both"):
        model(
            batch["input_ids_BT"],
            labels_BT=batch["labels_BT"],
            logits_at_BT=torch.ones(2, 16, dtype=torch.bool),
        )
