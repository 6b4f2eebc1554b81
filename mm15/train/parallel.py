"""PyTorch's own distributed stack, applied to an :class:`~mm15.model.mm15.MM15` from outside
(SPEC §6; STYLE: the model stays single-device, parallelism wraps it, as torchtitan does).

- :func:`init_distributed`: torchrun's environment → process group (gloo on CPU, NCCL on CUDA);
  a plain ``python`` run stays a single process with no process group.
- :func:`apply_activation_checkpointing`: non-reentrant recomputation of block forwards, through
  torch's composable ``checkpoint`` (forward hooks): parameter names do not change, so
  checkpoints load the same with or without it.  Apply it *before* FSDP2.
- :func:`apply_fsdp2`: ``fully_shard`` on every ViT block, the connector, every decoder block,
  then the root (patch/position/token embeddings, norms, output head).
- :func:`apply_ddp`, :func:`skip_grad_sync` (gradient accumulation), :func:`autocast_context`.

Every rank must run the same modules each step under FSDP2 (a module's all-gather and
reduce-scatter are collectives): a text-only micro-batch on one rank while another encodes
tiles hangs.  DDP is built with ``find_unused_parameters=True`` for the same reason.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Literal

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed._composable import checkpoint as composable_checkpoint
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.nn.parallel import DistributedDataParallel

from mm15.model.mm15 import MM15

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@dataclass(kw_only=True)
class ParallelConfig:
    """How a run is spread over processes.  One process without torchrun ignores ``strategy``."""

    strategy: Literal["none", "ddp", "fsdp2"] = "fsdp2"
    activation_checkpointing: Literal["none", "decoder", "all"] = "none"
    param_dtype: Literal["float32", "bfloat16"] = "float32"  # FSDP2: dtype of gathered params
    reduce_dtype: Literal["float32", "bfloat16"] = "float32"  # FSDP2: gradient reduce-scatter
    autocast: Literal["bfloat16", "none"] = "bfloat16"  # forward autocast, on CUDA only

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        """For :func:`autocast_context` (the training step enters it around forward)."""
        return None if self.autocast == "none" else _DTYPES[self.autocast]


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: Literal["gloo", "nccl", "none"]  # "none": one process, no process group

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed() -> DistInfo:
    """Join the process group torchrun describes (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
    MASTER_PORT); without those variables, a single process on cuda:0 or the CPU."""
    cuda = torch.cuda.is_available()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    launched = "RANK" in os.environ and "WORLD_SIZE" in os.environ
    if launched and not dist.is_initialized():
        dist.init_process_group(
            backend="nccl" if cuda else "gloo", device_id=device if cuda else None
        )
    if not dist.is_initialized():
        return DistInfo(rank=0, world_size=1, local_rank=0, device=device, backend="none")
    backend = dist.get_backend()
    if backend not in ("gloo", "nccl"):
        raise RuntimeError(
            f"mm15 runs on gloo (CPU) or nccl (CUDA); the process group uses {backend}"
        )
    return DistInfo(rank=dist.get_rank(), world_size=dist.get_world_size(),
                    local_rank=local_rank, device=device, backend=backend)  # fmt: skip


def checkpointed_modules(model: MM15, policy: Literal["none", "decoder", "all"]) -> list[nn.Module]:
    """The modules whose forwards ``policy`` recomputes in backward."""
    if policy == "none":
        return []
    decoder = list(model.lm.layers)
    if policy == "decoder":
        return decoder
    if policy == "all":
        return [*model.vision.blocks, model.connector, *decoder]
    raise ValueError(f"activation checkpointing policy must be none/decoder/all, got {policy!r}")


def apply_activation_checkpointing(model: MM15, policy: Literal["none", "decoder", "all"]) -> MM15:
    """Recompute the chosen blocks' forwards in backward (non-reentrant), in place.

    "decoder": every decoder block; "all": also every ViT block and the connector (the encoder
    sees 672-px tiles, 2304 tokens each, up to 10 tiles per image: its activations dominate
    high-resolution SFT).  Must come before :func:`apply_fsdp2`.
    """
    for module in checkpointed_modules(model, policy):
        if isinstance(module, FSDPModule):
            raise RuntimeError("apply activation checkpointing before fully_shard (apply_fsdp2)")
        composable_checkpoint(module)
    return model


def apply_fsdp2(
    model: MM15,
    *,
    mesh: DeviceMesh | None = None,
    param_dtype: torch.dtype | None = None,
    reduce_dtype: torch.dtype | None = torch.float32,
    reshard_after_forward: bool = True,
) -> MM15:
    """Shard ``model`` in place with FSDP2: one unit per ViT block, the connector, one per decoder
    block, and the root holding everything else.  Parameters become ``Shard(0)`` DTensors over
    ``mesh`` (default: every rank, 1-D, on the parameters' device type)."""
    if mesh is None:
        if not dist.is_initialized():
            raise RuntimeError("apply_fsdp2 needs a process group: run under torchrun")
        device_type = next(model.parameters()).device.type
        if device_type == "meta":
            device_type = "cuda" if torch.cuda.is_available() else "cpu"
        mesh = init_device_mesh(device_type, (dist.get_world_size(),))
    policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=reduce_dtype)
    kw = dict(mesh=mesh, mp_policy=policy, reshard_after_forward=reshard_after_forward)
    for block in model.vision.blocks:
        fully_shard(block, **kw)
    fully_shard(model.connector, **kw)
    for block in model.lm.layers:
        fully_shard(block, **kw)
    fully_shard(model, **kw)
    return model


def apply_ddp(model: nn.Module, *, device: torch.device | None = None) -> DistributedDataParallel:
    """Replicate ``model`` with DDP (gradients all-reduced, averaged).  Unused-parameter search
    is on: text-only micro-batches leave the encoder and connector without gradients."""
    if not dist.is_initialized():
        raise RuntimeError("apply_ddp needs a process group: run under torchrun")
    device = device or next(model.parameters()).device
    device_ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids, find_unused_parameters=True)


def parallelize(model: MM15, cfg: ParallelConfig, info: DistInfo) -> nn.Module:
    """Activation checkpointing, then ``cfg.strategy``; one process without a group gets only
    the former (the same maths, so one recipe runs on a laptop and a cluster)."""
    apply_activation_checkpointing(model, cfg.activation_checkpointing)
    if info.backend == "none" or cfg.strategy == "none":
        return model
    if cfg.strategy == "ddp":
        return apply_ddp(model, device=info.device)
    if cfg.strategy == "fsdp2":
        param_dtype = None if cfg.param_dtype == "float32" else _DTYPES[cfg.param_dtype]
        return apply_fsdp2(model, param_dtype=param_dtype, reduce_dtype=_DTYPES[cfg.reduce_dtype])
    raise ValueError(f"ParallelConfig.strategy must be none/ddp/fsdp2, got {cfg.strategy!r}")


@contextmanager
def skip_grad_sync(model: nn.Module) -> Iterator[None]:
    """Within this block, backward accumulates gradients locally without communicating (all
    micro-batches of a gradient-accumulation step but the last)."""
    if isinstance(model, DistributedDataParallel):
        with model.no_sync():
            yield
    elif isinstance(model, FSDPModule):
        model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)
    else:
        yield


def autocast_context(
    device: torch.device | str, dtype: torch.dtype | None = torch.bfloat16, *, cpu: bool = False
) -> AbstractContextManager[object]:
    """bf16 autocast on CUDA; nothing on CPU unless ``cpu=True`` (CPU bf16 is slow, and CPU runs
    are for tests that compare numbers in fp32); nothing when ``dtype`` is None."""
    device = torch.device(device)
    if dtype is None or (device.type == "cpu" and not cpu):
        return nullcontext()
    return torch.autocast(device.type, dtype=dtype)
