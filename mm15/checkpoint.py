"""mm15 checkpoint directories: save, load, and assemble one from pretrained parts.

A checkpoint directory holds::

    config.json            the resolved ModelConfig (every setting, nothing implicit)
    model.safetensors      weights (or model-0000k-of-0000n.safetensors + index when large)
    tokenizer.json         the decoder's fast tokenizer with <image> added
    mm15_tokenizer.json    image/BOS/EOS/pad tokens

Writes are atomic: everything goes to a temporary sibling directory that is renamed into place
only when complete, so an interrupted save never leaves a directory that loads.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from pathlib import Path

import torch

from mm15.config import ModelConfig, load_model_config, save_json
from mm15.model.hf_lm import load_hf_decoder
from mm15.model.hf_vision import load_vision_encoder
from mm15.model.mm15 import MM15
from mm15.model.moe import upcycle_decoder_state_dict
from mm15.model.weights_io import load_tensors, save_tensors
from mm15.tokenizer import MM15Tokenizer

CONFIG_FILE = "config.json"
SHARD_BYTES = 5 * 2**30


def save_checkpoint(model: MM15, tokenizer: MM15Tokenizer, out_dir: str | Path) -> Path:
    """Write ``model`` and ``tokenizer`` to ``out_dir`` atomically (replacing what was there)."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        save_json(model.cfg, str(tmp / CONFIG_FILE))
        save_tensors(model.state_dict(), tmp, max_shard_bytes=SHARD_BYTES)
        tokenizer.save(tmp)
        old = None
        if out_dir.exists():
            old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
            out_dir.rename(old)
        tmp.rename(out_dir)
        if old is not None:
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def load_checkpoint(
    path: str | Path, *, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
) -> tuple[MM15, MM15Tokenizer]:
    """Load an mm15 checkpoint directory; missing or unexpected weights are an error."""
    path = Path(path)
    if not (path / CONFIG_FILE).exists():
        raise FileNotFoundError(f"{path} is not an mm15 checkpoint (no {CONFIG_FILE})")
    cfg = load_model_config(str(path / CONFIG_FILE))
    tokenizer = MM15Tokenizer.load(path)
    if tokenizer.image_token_id != cfg.image_token_id:
        raise ValueError(
            f"{path}: config image_token_id {cfg.image_token_id} but the tokenizer's "
            f"{tokenizer.meta.image_token!r} is {tokenizer.image_token_id}"
        )
    with torch.device("meta"):
        model = MM15(cfg)
    state = load_tensors(path)
    _check_keys(model, state, where=str(path))
    model.load_state_dict(state, assign=True, strict=True)
    model = model.to(device=device, dtype=dtype) if dtype else model.to(device)
    return model.eval(), tokenizer


def _check_keys(model: torch.nn.Module, state: dict, *, where: str) -> None:
    expected = set(model.state_dict())
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise ValueError(
            f"{where}: weights do not match the config: missing {missing[:8]}"
            f"{' …' if len(missing) > 8 else ''}, unexpected {unexpected[:8]}"
            f"{' …' if len(unexpected) > 8 else ''}"
        )


def init_from_parts(
    *,
    vision: str | Path,
    llm: str | Path,
    preset: ModelConfig,
    out: str | Path,
    seed: int = 0,
    upcycle_moe: bool = False,
) -> Path:
    """Assemble an mm15 checkpoint from a pretrained encoder and decoder (``mm15 init``).

    The encoder's and decoder's architectures come from their own configs; the connector, image
    front end and MoE layout from ``preset``.  The connector is freshly initialised (seeded).
    With ``upcycle_moe`` the preset's MoE layout is applied and every expert starts as a copy of
    the dense feed-forward it replaces (sparse upcycling; MM1 §3.3 converts dense → MoE).
    """
    vision_cfg, vision_sd = load_vision_encoder(vision)
    # The architecture comes from the checkpoint; which layer feeds the connector is ours.
    vision_cfg = dataclasses.replace(vision_cfg, feature_layer=preset.vision.feature_layer)
    lm_cfg, lm_sd = load_hf_decoder(llm)
    tokenizer = MM15Tokenizer.load(llm).with_image_token(preset.image_token)
    if upcycle_moe:
        if preset.lm.moe is None:
            raise ValueError("--upcycle-moe needs a preset with an MoE layout (e.g. 3b-moe)")
        lm_cfg = dataclasses.replace(lm_cfg, moe=dataclasses.replace(preset.lm.moe))
        lm_sd = upcycle_decoder_state_dict(lm_sd, lm_cfg, seed=seed)
    lm_cfg, lm_sd = _fit_vocab(lm_cfg, lm_sd, len(tokenizer))
    cfg = dataclasses.replace(
        preset, vision=vision_cfg, lm=lm_cfg, image_token_id=tokenizer.image_token_id
    )
    torch.manual_seed(seed)
    model = MM15(cfg)
    model.init_weights()
    state = model.state_dict()
    for prefix, part in (("vision.", vision_sd), ("lm.", lm_sd)):
        for k, v in part.items():
            if prefix + k not in state:
                raise ValueError(f"pretrained weight {prefix + k} has no place in the model")
            state[prefix + k] = v
    model.load_state_dict(state, strict=True)
    return save_checkpoint(model, tokenizer, out)


def _fit_vocab(cfg, state: dict, vocab: int):
    """Grow the embedding (and untied head) when the tokenizer gained tokens such as <image>.

    New rows start at the mean of the existing embeddings, a common choice that keeps the new
    token's initial logits unremarkable.
    """
    if vocab <= cfg.vocab_size:
        return cfg, state
    state = dict(state)
    for key in [k for k in state if k in ("embed.weight", "output.weight")]:
        w = state[key]
        extra = w.float().mean(0, keepdim=True).expand(vocab - w.shape[0], -1).to(w.dtype)
        state[key] = torch.cat([w, extra], 0)
    return dataclasses.replace(cfg, vocab_size=vocab), state
