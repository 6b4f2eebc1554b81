"""Honeybee C-Abstractor weights (kakaobrain/honeybee ``abstractor.*``) → mm15's connector.

Honeybee (commit 68a8d84, ``honeybee/projectors/projectors.py``) builds the C-Abstractor from
timm modules, so its keys are timm's: ``net.0`` / ``net.2`` are the two ``RegStage``\\ s (blocks
``b1``, ``b2``, ...; ``net.1`` is the parameter-free pool), each ``ConvNormAct`` keeps its norm
as ``bn``, and the projection shortcut is ``downsample``.  mm15's names are ``s1`` / ``s2``,
``blocks.{i}``, ``norm`` and ``shortcut``; everything else (``se.fc1``, ``readout.*``,
``pos_emb``) is the same.

Honeybee's position table has one row per patch of the grid its encoder ran at (old
checkpoints carry one more row, an obsolete CLS slot that Honeybee's ``_load_from_state_dict``
drops; so do we).  That grid becomes ``ConnectorConfig.pos_grid``: the table is kept as trained
and resized on the fly for other grids.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from pathlib import Path

import torch
from safetensors import safe_open

from mm15.config import ConnectorConfig
from mm15.model.weights_io import load_tensors

PREFIX = "abstractor."
_BLOCK = re.compile(r"net\.([02])\.b(\d+)\.(.+)")
_PART = re.compile(r"(conv[123]|downsample)\.(conv|bn)\.(weight|bias)|se\.fc[12]\.(weight|bias)")


def connector_key(key: str) -> str:
    """One Honeybee abstractor key (``abstractor.`` removed) → the mm15 connector key."""
    if key == "pos_emb" or re.fullmatch(r"readout\.\d+\.(weight|bias)", key):
        return key
    m = _BLOCK.fullmatch(key)
    if m is None or int(m.group(2)) < 1 or not _PART.fullmatch(m.group(3)):
        raise ValueError(f"{key!r} is not a C-Abstractor (c-abs) weight")
    rest = m.group(3).replace("downsample.", "shortcut.").replace(".bn.", ".norm.")
    return f"{'s1' if m.group(1) == '0' else 's2'}.blocks.{int(m.group(2)) - 1}.{rest}"


def honeybee_key(key: str) -> str:
    """The inverse of :func:`connector_key` (mm15 connector key → Honeybee abstractor key)."""
    m = re.fullmatch(r"s([12])\.blocks\.(\d+)\.(.+)", key)
    if m is None:
        return key
    rest = m.group(3).replace("shortcut.", "downsample.").replace(".norm.", ".bn.")
    return f"net.{0 if m.group(1) == '1' else 2}.b{int(m.group(2)) + 1}.{rest}"


def read_abstractor(path: str | Path) -> dict[str, torch.Tensor]:
    """The ``abstractor.*`` tensors of a Honeybee checkpoint (prefix removed), or a bare
    abstractor state dict.  ``path``: a safetensors / ``.bin`` file or a directory (sharded HF
    layouts read only the shards that hold abstractor keys; ``.bin`` via weights_only)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"Honeybee checkpoint not found: {path}")
    index = next(
        (
            path / n
            for n in ("model.safetensors.index.json", "pytorch_model.bin.index.json")
            if path.is_dir() and (path / n).is_file()
        ),
        None,
    )
    if index is not None:
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
            raise ValueError(f"{index}: not a weights index ({type(e).__name__}: {e})") from None
        state: dict[str, torch.Tensor] = {}
        for shard in sorted({f for k, f in weight_map.items() if k.startswith(PREFIX)}):
            state.update(_read_file(path / shard))
    elif path.suffix == ".safetensors":
        state = _read_file(path)
    else:
        state = load_tensors(path)
    ours = {k[len(PREFIX) :]: v for k, v in state.items() if k.startswith(PREFIX)}
    if ours:
        return ours
    if "readout.0.weight" in state:  # an abstractor's own state dict
        return state
    raise ValueError(f"{path}: no Honeybee C-Abstractor weights (no {PREFIX}* or readout.* keys)")


def _read_file(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix != ".safetensors":
        return load_tensors(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            keys = [k for k in f.keys() if k.startswith(PREFIX)] or list(f.keys())  # noqa: SIM118
            return {k: f.get_tensor(k) for k in keys}
    except Exception as e:  # safetensors raises its own error types for a bad header
        raise ValueError(f"{path}: not a readable safetensors file: {e}") from None


def honeybee_connector(
    path: str | Path, cfg: ConnectorConfig, *, enc_width: int, out_dim: int
) -> tuple[ConnectorConfig, dict[str, torch.Tensor]]:
    """A Honeybee C-Abstractor as (mm15 connector config, mm15 connector state dict).

    The architecture (hidden width, depth, MLP depth, position table and its grid) comes from
    the weights; the token count (not in the weights: the pool has none) and SE ratio from
    ``cfg``, checked against Honeybee's ``config.json`` when one sits beside the weights.  Every
    mismatch is one ValueError line naming ``path``."""
    from mm15.model.connector import CAbstractor

    src = read_abstractor(path)
    try:
        cfg = _infer_config(src, cfg, path)
        state = {connector_key(k): v for k, v in src.items()}
        pos = state.get("pos_emb")
        if pos is not None and pos.shape[1] == cfg.pos_grid**2 + 1:
            state["pos_emb"] = pos[:, 1:]  # the obsolete CLS slot (Honeybee drops it too)
        with torch.device("meta"):
            model = CAbstractor(
                cfg, enc_width=enc_width, enc_grid=cfg.pos_grid or 1, out_dim=out_dim
            )
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    want = model.state_dict()
    missing = sorted(honeybee_key(k) for k in set(want) - set(state))
    unexpected = sorted(honeybee_key(k) for k in set(state) - set(want))
    if missing or unexpected:
        raise ValueError(
            f"{path}: Honeybee abstractor weights do not fit: missing {missing[:6]}, "
            f"unexpected {unexpected[:6]}"
        )
    for k, v in want.items():
        if tuple(state[k].shape) != tuple(v.shape):
            raise ValueError(
                f"{path}: {PREFIX}{honeybee_key(k)} has shape {list(state[k].shape)}, expected "
                f"{list(v.shape)} (encoder width {enc_width}, LLM width {out_dim}, {cfg})"
            )
    return cfg, state


def _infer_config(src: dict[str, torch.Tensor], cfg: ConnectorConfig, path) -> ConnectorConfig:
    unsupported = sorted(k for k in src if k.split(".")[0] in ("prenorm", "eos_tokens"))
    if unsupported:
        raise ValueError(
            f"Honeybee options prenorm / num_eos_tokens are not supported by mm15 "
            f"(found {unsupported[:3]})"
        )
    if "readout.0.weight" not in src:
        raise ValueError(f"missing {PREFIX}readout.0.weight")
    blocks = {int(m.group(1)) for k in src if (m := re.match(r"net\.0\.b(\d+)\.", k))}
    depth = max(blocks, default=0)
    readout = [int(m.group(1)) for k in src if (m := re.fullmatch(r"readout\.(\d+)\.weight", k))]
    hidden = src["readout.0.weight"].shape[1] if depth else cfg.hidden
    pos_grid, pos = cfg.pos_grid, src.get("pos_emb")
    if pos is not None:
        if pos.ndim != 3 or pos.shape[0] != 1:
            raise ValueError(f"{PREFIX}pos_emb has shape {list(pos.shape)}, expected [1, G², C]")
        rows = pos.shape[1]
        grid = next(
            (
                g
                for g in (math.isqrt(rows), math.isqrt(rows - 1))
                if g and g * g in (rows, rows - 1)
            ),
            0,
        )
        if not grid:
            raise ValueError(
                f"{PREFIX}pos_emb has {rows} rows: neither a square grid G² nor "
                "1 + G² (with the old CLS slot)"
            )
        pos_grid = grid
    hb = _honeybee_projector_config(Path(path))
    if hb.get("num_query_tokens", cfg.num_tokens) != cfg.num_tokens:
        raise ValueError(
            f"Honeybee's config.json has num_query_tokens "
            f"{hb['num_query_tokens']}, the preset {cfg.num_tokens}"
        )
    return dataclasses.replace(
        cfg,
        hidden=hidden,
        depth=depth,
        mlp_depth=max(readout) // 2 + 1,
        pos_emb=pos is not None,
        pos_grid=pos_grid,
    )


def _honeybee_projector_config(path: Path) -> dict:
    """``projector_config`` of Honeybee's config.json beside the weights ({} when absent)."""
    file = (path if path.is_dir() else path.parent) / "config.json"
    try:
        data = json.loads(file.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return {}
    proj = data.get("projector_config") if isinstance(data, dict) else None
    if isinstance(proj, dict) and proj.get("projector_type", "c-abs") != "c-abs":
        raise ValueError(
            f"Honeybee's config.json: projector_type {proj['projector_type']!r}, not 'c-abs'"
        )
    return proj if isinstance(proj, dict) else {}
