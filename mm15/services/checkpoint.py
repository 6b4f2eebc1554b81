"""mm15 checkpoint directories: save, load, and assemble one from pretrained parts.

A checkpoint directory holds::

    config.json            the resolved ModelConfig (every setting, nothing implicit), the
                           chat format the model was trained with included (``format``)
    model.safetensors      weights (or model-0000k-of-0000n.safetensors + index when large)
    tokenizer.json         the decoder's fast tokenizer with <image> added
    mm15_tokenizer.json    image/BOS/EOS/pad tokens
    tokenizer_config.json  for transformers: the special tokens and the Jinja ``chat_template``
                           generated from ``format`` (mm15.data.chat_template); mm15 reads
                           config.json, the one source of the format

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

from mm15.config import ModelConfig, load_model_config
from mm15.config_json import save_json
from mm15.data.chat_template import write_hf_tokenizer_config
from mm15.model.hf_lm import load_hf_decoder
from mm15.model.hf_vision import load_vision_encoder
from mm15.model.honeybee import honeybee_connector
from mm15.model.mm15 import MM15
from mm15.model.moe import upcycle_decoder_state_dict
from mm15.model.weights_io import load_tensors, save_tensors, tensor_file
from mm15.services.devices import resolve_device
from mm15.tokenizer import MM15Tokenizer

CONFIG_FILE = "config.json"
SHARD_BYTES = 5 * 2**30


def save_checkpoint(model: MM15, tokenizer: MM15Tokenizer, out_dir: str | Path) -> Path:
    """Write ``model`` and ``tokenizer`` to ``out_dir`` atomically (replacing what was there).

    Only an earlier checkpoint (or an empty directory) is replaced: a file, or a directory of
    something else, is refused before anything is written."""
    out_dir = Path(out_dir)
    _check_replaceable(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        save_json(model.cfg, str(tmp / CONFIG_FILE))
        save_tensors(model.state_dict(), tmp, max_shard_bytes=SHARD_BYTES)
        tokenizer.save(tmp)
        write_hf_tokenizer_config(tmp, tokenizer, model.cfg)
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


def _check_replaceable(out_dir: Path) -> None:
    """A checkpoint replaces only an earlier checkpoint or an empty directory."""
    if not out_dir.exists() and not out_dir.is_symlink():
        return
    if out_dir.is_symlink() or not out_dir.is_dir():
        what = "a symbolic link" if out_dir.is_symlink() else "not a directory"
        raise FileExistsError(
            f"{out_dir} exists and is {what}; refusing to replace it with a checkpoint"
        )
    if any(out_dir.iterdir()) and not (out_dir / CONFIG_FILE).is_file():
        raise FileExistsError(
            f"{out_dir} holds files but no {CONFIG_FILE} (not an mm15 "
            "checkpoint); refusing to replace it"
        )


def load_checkpoint(
    path: str | Path,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    grid_coords: bool = False,
) -> tuple[MM15, MM15Tokenizer]:
    """Load an mm15 checkpoint directory onto ``device`` (``auto``: cuda if any).  The device is
    checked first (``cuda`` on a CPU build of torch is an error that says so); config values,
    the tokenizer files and every weight's name and shape are checked against each other, each
    mismatch a ValueError naming the file.

    A model trained with grid-dependent coordinates (``format.coords="grid"``, the Table 2
    control) is refused unless ``grid_coords``: only training and the demo's evaluation know
    the tiling its coordinates need, while chat, serve, eval and export read coordinates
    against the original image."""
    device = resolve_device(device)
    path = Path(path)
    if not (path / CONFIG_FILE).is_file():
        raise FileNotFoundError(f"{path} is not an mm15 checkpoint (no {CONFIG_FILE})")
    cfg = load_model_config(str(path / CONFIG_FILE))
    if cfg.format.coords != "image" and not grid_coords:
        raise ValueError(
            f"{path}: this model writes coordinates on the split grid's canvas "
            f"(format.coords={cfg.format.coords!r}, the control of `mm15 demo --ablate "
            "inference_grid`); only the demo's evaluation reads them, so it cannot be "
            "chatted with, served, evaluated or exported"
        )
    tokenizer = MM15Tokenizer.load(path)
    try:
        image_token_id = tokenizer.image_token_id
    except KeyError as e:
        raise ValueError(f"{path}: the tokenizer files: {e.args[0]}") from None
    if image_token_id != cfg.image_token_id:
        raise ValueError(
            f"{path}: config image_token_id {cfg.image_token_id} but the tokenizer's "
            f"{tokenizer.meta.image_token!r} is {image_token_id}"
        )
    with torch.device("meta"):
        model = MM15(cfg)
    state = load_tensors(path)
    _check_keys(model, state, where=str(path))
    _check_shapes(model, state, path)
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


def _check_shapes(model: torch.nn.Module, state: dict, path: Path) -> None:
    """Every tensor's shape against the model ``config.json`` describes (meta tensors, so no
    memory), before load_state_dict would fail with one line per tensor."""
    bad = [
        (k, tuple(v.shape), tuple(state[k].shape))
        for k, v in model.state_dict().items()
        if tuple(state[k].shape) != tuple(v.shape)
    ]
    if bad:
        key, want, got = bad[0]
        more = f" (and {len(bad) - 1} more tensor(s) of other shapes)" if len(bad) > 1 else ""
        raise ValueError(
            f"{tensor_file(path, key)}: tensor {key} has shape {list(got)} but "
            f"{path / CONFIG_FILE} implies {list(want)}{more}"
        )


def init_from_parts(
    *,
    vision: str | Path,
    llm: str | Path,
    preset: ModelConfig,
    out: str | Path,
    seed: int = 0,
    upcycle_moe: bool = False,
    connector: str | Path | None = None,
) -> Path:
    """Assemble an mm15 checkpoint from a pretrained encoder and decoder (``mm15 init``).

    The encoder's and decoder's architectures come from their own configs; the connector, image
    front end and MoE layout from ``preset``.  The connector is freshly initialised (seeded), or
    with ``connector`` taken from a Honeybee checkpoint's ``abstractor.*`` weights (its widths,
    depths and position-table grid from the weights, its token count from ``preset``).
    With ``upcycle_moe`` the preset's MoE layout is applied and every expert starts as a copy of
    the dense feed-forward it replaces (sparse upcycling; MM1 §3.3 converts dense → MoE).
    """
    _check_replaceable(Path(out))  # before the parts load, not after
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
    conn_cfg, conn_sd = preset.connector, {}
    if connector is not None:
        conn_cfg, conn_sd = honeybee_connector(
            connector, conn_cfg, enc_width=vision_cfg.width, out_dim=lm_cfg.dim
        )
    cfg = dataclasses.replace(
        preset,
        vision=vision_cfg,
        lm=lm_cfg,
        connector=conn_cfg,
        image_token_id=tokenizer.image_token_id,
    )
    torch.manual_seed(seed)
    model = MM15(cfg)
    model.init_weights()
    state = model.state_dict()
    for prefix, part in (("vision.", vision_sd), ("lm.", lm_sd), ("connector.", conn_sd)):
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
