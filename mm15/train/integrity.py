"""What a training checkpoint must pass before anything in it is unpickled (docs/training.md,
"Trust model").

Two independent defences, because they answer different threats:

* **Checksums** (:func:`write_manifest` / :func:`verify_checkpoint`): ``MANIFEST.json`` records
  the SHA-256 of every file of a checkpoint; it is written before ``COMPLETE`` and the rename
  into place, and checked before a resume reads any of them.  A flipped bit, a truncated shard,
  a missing or an added file refuses the load, naming the file.  A manifest proves integrity,
  not authorship: whoever can rewrite a file can rewrite the manifest too.
* **No arbitrary unpickling** (:class:`SafeReader` / :class:`SafeLoadPlanner`): DCP reads
  ``dcp/.metadata`` with plain ``pickle.load`` and the non-tensor items (optimiser hyper-
  parameters) with ``torch.load(weights_only=False)`` (torch 2.13), so a planted file runs code.
  Here ``.metadata`` goes through an unpickler that admits only the classes DCP's ``Metadata``
  is made of (:data:`_METADATA_GLOBALS`), and byte items through ``torch.load(weights_only=True)``.
  Tensors were already read with ``weights_only=True`` by DCP itself.

Hashing and verification are collective: rank ``r`` hashes every ``world``-th file, so a large
checkpoint is read once in total, not once per rank.
"""

from __future__ import annotations

import hashlib
import io
import json
import pickle
from pathlib import Path, PurePosixPath
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.metadata import Metadata, StorageMeta

MANIFEST = "MANIFEST.json"
_UNHASHED = {MANIFEST, "COMPLETE"}  # the manifest itself, and the marker written after it
_CHUNK = 1 << 20


class CheckpointIntegrityError(ValueError):
    """A training checkpoint failed its checksums or held something other than plain data."""


# ---- checksums ---------------------------------------------------------------------------------


def _dist_on() -> bool:
    return dist.is_available() and dist.is_initialized()


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _files(root: Path) -> list[str]:
    """Every file below ``root`` (POSIX-style relative names, sorted), manifest and marker aside."""
    names = [p.relative_to(root).as_posix() for p in root.rglob("*") if not p.is_dir()]
    return sorted(n for n in names if n not in _UNHASHED)


def _hash_share(root: Path, names: list[str]) -> tuple[dict[str, str], str | None]:
    """Collective: this rank's share of ``names`` hashed, gathered on every rank; plus the first
    error any rank met (an unreadable file), so that every rank can raise together."""
    rank, world = (dist.get_rank(), dist.get_world_size()) if _dist_on() else (0, 1)
    mine: dict[str, str] = {}
    error = None
    for name in names[rank::world]:
        try:
            mine[name] = _sha256(root / name)
        except OSError as e:
            error = f"{name}: cannot read ({type(e).__name__}: {e})"
            break
    parts = [(mine, error)]
    if _dist_on():
        parts = [None] * world
        dist.all_gather_object(parts, (mine, error))
    merged = {k: v for part, _ in parts for k, v in part.items()}
    return merged, next((e for _, e in parts if e is not None), None)


def hash_checkpoint_files(root: Path) -> dict[str, str]:
    """Collective: SHA-256 of every file below ``root`` as rank 0 lists them."""
    names = _files(root) if not _dist_on() or dist.get_rank() == 0 else None
    if _dist_on():
        box = [names]
        dist.broadcast_object_list(box, src=0)
        names = box[0]
    hashes, error = _hash_share(root, names)
    if error is not None:
        raise OSError(f"hashing {root}: {error}")
    return hashes


def write_manifest(root: Path, hashes: dict[str, str]) -> None:
    """Rank 0: ``MANIFEST.json`` holding ``hashes`` plus those of files written since (the
    trainer state and config rank 0 writes last); every file below ``root`` must be covered."""
    files = dict(hashes)
    for name in _files(root):
        if name not in files:
            files[name] = _sha256(root / name)
    with open(root / MANIFEST, "w") as f:
        json.dump({"algorithm": "sha256", "files": dict(sorted(files.items()))}, f, indent=1)
        f.write("\n")


def _manifest_problem(root: Path) -> tuple[dict[str, str], str | None]:
    """Rank 0: the manifest's hashes, or why the checkpoint cannot be verified at all."""
    try:
        doc = json.loads((root / MANIFEST).read_text())
    except FileNotFoundError:
        return {}, f"{MANIFEST} is missing (saved before checksums, or tampered with)"
    except (OSError, ValueError) as e:
        return {}, f"{MANIFEST} is unreadable: {e}"
    files = doc.get("files") if isinstance(doc, dict) else None
    if doc.get("algorithm") != "sha256" or not isinstance(files, dict):
        return {}, f"{MANIFEST} is not a sha256 file list"
    present = set(_files(root))
    if missing := sorted(set(files) - present):
        return {}, f"{missing[0]}: listed in {MANIFEST} but missing ({len(missing)} missing)"
    if extra := sorted(present - set(files)):
        return {}, f"{extra[0]}: not listed in {MANIFEST} ({len(extra)} unlisted file(s))"
    return files, None


def verify_checkpoint(root: str | Path) -> None:
    """Collective: raise :class:`CheckpointIntegrityError` (on every rank) unless every file of
    checkpoint ``root`` is listed in its manifest with the SHA-256 it has now, and no file is
    missing or unlisted."""
    root = Path(root)
    expected: dict[str, str] = {}
    problem = None
    if not _dist_on() or dist.get_rank() == 0:
        expected, problem = _manifest_problem(root)
    if _dist_on():
        box = [(expected, problem)]
        dist.broadcast_object_list(box, src=0)
        expected, problem = box[0]
    if problem is None:
        got, problem = _hash_share(root, sorted(expected))
        bad = sorted(n for n in expected if got.get(n) != expected[n])
        if problem is None and bad:
            problem = (
                f"{bad[0]}: SHA-256 differs from {MANIFEST} (corrupted or modified; "
                f"{len(bad)} file(s) differ)"
            )
    if problem is not None:
        raise CheckpointIntegrityError(f"refusing to resume from {root}: {problem}")


# ---- loading without arbitrary unpickling -------------------------------------------------------

_DCP = "torch.distributed.checkpoint"
# What ``pickle.dump(Metadata)`` refers to, checked against checkpoints of dense and MoE models
# with AdamW and AdaFactor state, one process and FSDP2 (tests/test_train_hardening.py).
_METADATA_GLOBALS: set[tuple[str, str]] = {
    *(
        (f"{_DCP}.metadata", n)
        for n in (
            "Metadata",
            "MetadataIndex",
            "ChunkStorageMetadata",
            "TensorStorageMetadata",
            "BytesStorageMetadata",
            "TensorProperties",
            "StorageMeta",
            "_MEM_FORMAT_ENCODING",
        )
    ),
    (f"{_DCP}.filesystem", "_StorageInfo"),
    ("torch", "Size"),
    ("torch.serialization", "_get_layout"),  # a layout by name: a dict look-up
    ("pathlib", "PosixPath"),
    ("pathlib", "PurePosixPath"),  # StorageMeta.checkpoint_id
    ("pathlib", "WindowsPath"),
    ("pathlib", "PureWindowsPath"),
    ("collections", "OrderedDict"),
    *(("builtins", n) for n in ("dict", "list", "tuple", "set", "frozenset", "complex")),
    # dtypes, layouts and memory formats are plain attributes of torch
    *(
        ("torch", n)
        for n in dir(torch)
        if isinstance(getattr(torch, n, None), torch.dtype | torch.layout | torch.memory_format)
    ),
}


class _MetadataUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` whose globals are limited to :data:`_METADATA_GLOBALS`: no other
    class or function can be named, so none can be called (Python's documented way to restrict
    unpickling; ``persistent_load`` stays the default, which refuses)."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _METADATA_GLOBALS:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in DCP metadata")
        return super().find_class(module, name)


def load_metadata(path: Path) -> Metadata:
    """``dcp/.metadata`` read through :class:`_MetadataUnpickler`, its storage paths checked."""
    try:
        with open(path, "rb") as f:
            metadata = _MetadataUnpickler(f).load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as e:
        raise CheckpointIntegrityError(f"refusing to read {path}: {e}") from None
    if not isinstance(metadata, Metadata):
        raise CheckpointIntegrityError(
            f"refusing to read {path}: it holds a {type(metadata).__name__}, not DCP Metadata"
        )
    for info in (metadata.storage_data or {}).values():
        rel = PurePosixPath(str(getattr(info, "relative_path", "")))
        if len(rel.parts) != 1 or rel.name in ("", ".", ".."):
            raise CheckpointIntegrityError(
                f"refusing to read {path}: storage file {str(rel)!r} "
                "is not a file of the checkpoint folder"
            )
    return metadata


class SafeReader(FileSystemReader):
    """DCP's file-system reader, with ``.metadata`` read by :func:`load_metadata`."""

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        rank = kwargs.get("rank")
        name = ".metadata" if rank is None else f"__{rank}.metadata"
        metadata = load_metadata(Path(self.path) / name)
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


class SafeLoadPlanner(DefaultLoadPlanner):
    """DCP's default planner, with non-tensor items read by ``torch.load(weights_only=True)``.

    The parent stores what it unpickles from the stream it is given; it is given the safely
    loaded value saved again, so its own full unpickling sees only what ``weights_only`` let
    through (these items are a few optimiser hyper-parameters)."""

    def load_bytes(self, read_item: Any, value: io.BytesIO) -> None:
        try:
            obj = torch.load(value, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            fqn = read_item.dest_index.fqn
            raise CheckpointIntegrityError(f"refusing to read checkpoint item {fqn}: {e}") from None
        clean = io.BytesIO()
        torch.save(obj, clean)
        clean.seek(0)
        super().load_bytes(read_item, clean)
