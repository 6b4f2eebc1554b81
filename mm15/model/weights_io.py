"""Reading and writing tensors on local disk, safely.

Checkpoints are read from local paths only (no hub access at run time).  safetensors is the
format everywhere; a PyTorch ``.bin``/``.pt`` file (open_clip's release format) is read with
``torch.load(weights_only=True)``, which refuses arbitrary pickled objects.  A file that cannot
be read is one ValueError naming it: a truncated or corrupt safetensors header, a pickle holding
objects other than tensors (refused, with no advice to lift the safety check).
"""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

SAFE_INDEX = "model.safetensors.index.json"


def load_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint file or directory, on CPU.

    ``path`` may be a ``.safetensors`` file, a ``.bin``/``.pt``/``.pth`` file, or a directory
    holding ``model.safetensors``, a sharded ``model.safetensors.index.json`` with its shards, or
    exactly one other ``*.safetensors`` file.
    """
    path = Path(path)
    if path.is_dir():
        return _load_dir(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        return _load_safetensors(path)
    if path.suffix in (".bin", ".pt", ".pth"):
        obj = _load_pickle(path)
        if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
            obj = obj["state_dict"]
        if not isinstance(obj, dict):
            raise ValueError(f"{path}: expected a dict of tensors, got {type(obj).__name__}")
        return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    raise ValueError(f"{path}: unsupported checkpoint format {path.suffix!r}")


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except SafetensorError as e:
        raise ValueError(
            f"{path}: not a readable safetensors file (truncated or corrupt): {e}"
        ) from None


def _load_pickle(path: Path) -> object:
    """A PyTorch pickle read with ``weights_only=True``.  torch's refusal advises retrying with
    ``weights_only=False``, which runs whatever code the file holds; we name the offending
    object and suggest safetensors instead."""
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        if found:
            raise ValueError(
                f"{path}: holds pickled objects other than tensors (e.g. {found.group(1)}); "
                "refused for safety, as loading them could run code. Convert it to safetensors "
                "where it is trusted (safetensors.torch.save_file of its state dict)"
            ) from None
        why = "corrupt, or a pickle torch's safe loader does not read"
        raise ValueError(
            f"{path}: not a readable PyTorch weights file ({why}); convert it to safetensors"
        ) from None
    except (RuntimeError, EOFError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"{path}: not a readable PyTorch weights file: {first}") from None


def weights_index(path: Path) -> dict[str, str]:
    """The ``weight_map`` of a sharded checkpoint's index (tensor name → shard file name)."""
    index = path / SAFE_INDEX
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
        raise ValueError(
            f"{index}: not a safetensors index (JSON with a weight_map): {type(e).__name__}: {e}"
        ) from None
    if not isinstance(weight_map, dict):
        raise ValueError(f"{index}: weight_map is not an object")
    return weight_map


def tensor_file(path: str | Path, name: str) -> Path:
    """The file of checkpoint ``path`` (a file, or a directory as :func:`load_tensors` reads
    it) that holds tensor ``name``, for error messages."""
    path = Path(path)
    if not path.is_dir():
        return path
    if (path / SAFE_INDEX).exists():
        shard = weights_index(path).get(name)
        return path / shard if isinstance(shard, str) else path / SAFE_INDEX
    if (path / "model.safetensors").exists():
        return path / "model.safetensors"
    files = sorted(p for p in path.iterdir() if p.suffix in (".safetensors", ".bin", ".pt", ".pth"))
    return files[0] if len(files) == 1 else path


def _load_dir(path: Path) -> dict[str, torch.Tensor]:
    index = path / SAFE_INDEX
    if index.exists():
        weight_map = weights_index(path)
        tensors: dict[str, torch.Tensor] = {}
        for shard in sorted(set(weight_map.values())):
            shard_path = path / shard
            if not shard_path.exists():
                raise FileNotFoundError(f"{index} names shard {shard}, which is missing")
            tensors.update(_load_safetensors(shard_path))
        missing = sorted(set(weight_map) - set(tensors))
        if missing:
            raise ValueError(f"{index}: tensors listed but absent from shards: {missing[:5]}")
        return tensors
    single = path / "model.safetensors"
    if single.exists():
        return _load_safetensors(single)
    candidates = sorted(path.glob("*.safetensors"))
    if len(candidates) == 1:
        return _load_safetensors(candidates[0])
    bins = sorted(p for p in path.iterdir() if p.suffix in (".bin", ".pt", ".pth"))
    if not candidates and len(bins) == 1:
        return load_tensors(bins[0])
    raise FileNotFoundError(
        f"{path}: no model.safetensors, {SAFE_INDEX}, or single weights file "
        f"(found {[p.name for p in candidates + bins]})"
    )


def save_tensors(
    tensors: dict[str, torch.Tensor], path: str | Path, *, max_shard_bytes: int = 0
) -> None:
    """Write ``tensors`` as ``model.safetensors`` (or shards + index when above the limit)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    if max_shard_bytes <= 0 or total <= max_shard_bytes:
        save_file(tensors, str(path / "model.safetensors"))
        return
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, t in tensors.items():
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = t
        size += nbytes
    weight_map = {}
    for i, shard in enumerate(shards):
        fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(path / fname))
        weight_map.update(dict.fromkeys(shard, fname))
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (path / SAFE_INDEX).write_text(json.dumps(index, indent=2))
