"""PEFT wraps the exported transformers model and trains it (issue 22): LoRA on the native
decoder's attention, one optimiser step on a chat with an image, loss finite, only the LoRA
weights move.  Dense (Llama) and MoE (Qwen2-MoE) exports."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForImageTextToText, AutoProcessor

import mm15  # noqa: F401  (registers the mm15 classes)
from tests.hf_fixtures import hf_export_fixture, picture  # noqa: F401  (fixture)


@pytest.mark.parametrize("family", ["llama", "qwen2_moe"])
def test_lora_trains_one_step(hf_export, family):
    _, out = hf_export(family)
    torch.manual_seed(0)
    model = AutoModelForImageTextToText.from_pretrained(out)
    processor = AutoProcessor.from_pretrained(out)
    # The decoder's projections only (mm15's ViT has q_proj/v_proj too).
    lora = LoraConfig(
        r=4,
        lora_alpha=8,
        target_modules=r".*language_model.*\.(q_proj|v_proj)",
        task_type="CAUSAL_LM",
    )
    peft_model = get_peft_model(model, lora)
    trainable = {n: p for n, p in peft_model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n and "language_model" in n for n in trainable)
    frozen = {
        n: p.detach().clone() for n, p in peft_model.named_parameters() if not p.requires_grad
    }
    before = {n: p.detach().clone() for n, p in trainable.items()}

    messages = [
        {
            "role": "user",
            "content": [
                {"type": "image", "image": picture(120, 80, 3)},
                {"type": "text", "text": "What is it?"},
            ],
        },
        {"role": "assistant", "content": [{"type": "text", "text": "A picture of noise."}]},
    ]
    batch = processor.apply_chat_template(
        messages, tokenize=True, return_dict=True, return_tensors="pt"
    )
    labels = batch["input_ids"].clone()
    labels[labels == model.config.image_token_id] = -100
    peft_model.train()
    loss = peft_model(**batch, labels=labels).loss
    assert torch.isfinite(loss)
    loss.backward()
    torch.optim.AdamW(trainable.values(), lr=1e-2).step()

    changed = [n for n, p in trainable.items() if not torch.equal(p, before[n])]
    assert any("lora_B" in n for n in changed) and any("lora_A" in n for n in changed)
    assert all(torch.equal(p, frozen[n]) for n, p in peft_model.named_parameters() if n in frozen)
