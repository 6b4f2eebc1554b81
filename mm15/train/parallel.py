"""PyTorch's own distributed stack, applied to an :class:`~mm15.model.mm15.MM15` from outside
(MM1.5 §4; the model stays single-device and parallelism wraps it, as torchtitan does).

- :func:`init_distributed`: torchrun's environment → process group (gloo on CPU, NCCL on CUDA);
  a plain ``python`` run stays a single process with no process group.
- :func:`apply_attention`: the decoder's attention kernel for packed rows (SDPA with a dense
  document mask, or flex attention with a block mask: same maths, no T×T mask).
- :func:`apply_checkpointing`: non-reentrant recomputation of block forwards per block type
  (decoder / vision / connector), full or selective, through torch's composable ``checkpoint``
  (forward hooks): parameter names do not change, so checkpoints load the same with or without
  it.  :func:`apply_activation_checkpointing` is the "none|decoder|all" shorthand.
- :func:`apply_compile`: ``torch.compile`` of every block of the chosen types, in place
  (``Module.compile``: names unchanged), one graph per block type, reused by every layer.
- :func:`apply_fsdp2`: ``fully_shard`` on every ViT block, the connector, every decoder block,
  then the root (patch/position/token embeddings, norms, output head), with a
  ``MixedPrecisionPolicy`` and optional explicit all-gather prefetching.
- :func:`apply_ddp`, :func:`skip_grad_sync` (gradient accumulation), :func:`autocast_context`.

Order (torchtitan's): checkpointing, then compile, then FSDP2.  Every rank must run the same
modules each step under FSDP2 (a module's all-gather and reduce-scatter are collectives): a
text-only micro-batch on one rank while another encodes tiles hangs.  DDP is built with
``find_unused_parameters=True`` for the same reason.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed._composable import checkpoint as composable_checkpoint
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.nn.parallel import DistributedDataParallel
from torch.utils.checkpoint import CheckpointPolicy, create_selective_checkpoint_contexts

from mm15.model.attention import AttentionKernel
from mm15.model.mm15 import MM15

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}

BlockType = Literal["decoder", "vision", "connector"]
BLOCK_TYPES: tuple[BlockType, ...] = get_args(BlockType)
# "full": recompute the whole block in backward; "selective": save the outputs of matmuls,
# convolutions and attention kernels, recompute only the cheap ops between them (norms,
# activations, RoPE): their intermediates' memory is freed for little recompute time.
CheckpointMode = Literal["none", "full", "selective"]
CompileMode = Literal["none", "default", "max-autotune-no-cudagraphs"]


@dataclass(kw_only=True)
class BlockPolicy:
    """What the training wrapper does to every block of one type (decoder block, ViT block, the
    connector).  CUDA graphs ("reduce-overhead") are left out: they do not compose with FSDP2."""

    checkpoint: CheckpointMode = "none"
    compile: CompileMode = "none"


@dataclass(kw_only=True)
class ParallelConfig:
    """How a run executes: processes, precision, recomputation, compilation.  One process
    without torchrun ignores ``strategy`` and the FSDP2 settings."""

    strategy: Literal["none", "ddp", "fsdp2"] = "fsdp2"
    # Packed-document attention (mm15.model.attention): "sdpa" dense mask, runs everywhere; "flex" block
    # mask, the fast path on CUDA (torch 2.13 has no flex backward on CPU).
    attention: AttentionKernel = "sdpa"
    # Shorthand for full recomputation: "decoder" = every decoder block, "all" = also every ViT
    # block and the connector.  A block type's own ``checkpoint`` setting, when not "none",
    # takes precedence for that type.
    activation_checkpointing: Literal["none", "decoder", "all"] = "none"
    decoder: BlockPolicy = field(default_factory=BlockPolicy)
    vision: BlockPolicy = field(default_factory=BlockPolicy)
    connector: BlockPolicy = field(default_factory=BlockPolicy)
    # FSDP2 MixedPrecisionPolicy: dtype of the gathered parameters the forward computes with,
    # and of the gradient reduce-scatter (bf16 params + fp32 reduce is torchtitan's default).
    param_dtype: Literal["float32", "bfloat16"] = "float32"
    reduce_dtype: Literal["float32", "bfloat16"] = "float32"
    # FSDP2 explicit prefetch: in forward each unit (ViT block, connector, decoder block) issues
    # the all-gathers of the next ``forward_prefetch`` units, in backward of the previous
    # ``backward_prefetch``; 0 = FSDP2's implicit one-ahead overlap.
    forward_prefetch: int = 0
    backward_prefetch: int = 0
    autocast: Literal["bfloat16", "none"] = "bfloat16"  # forward autocast, on CUDA only
    # Peak FLOP/s of one device in TFLOP/s for the logged MFU; None = the known bf16 dense peak
    # of the GPU (mm15.train.flops.PEAK_BF16_FLOPS), no MFU on CPU.
    peak_tflops: float | None = None

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        """For :func:`autocast_context` (the training step enters it around forward)."""
        return None if self.autocast == "none" else _DTYPES[self.autocast]

    def policy(self, block: BlockType) -> BlockPolicy:
        return getattr(self, block)


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
    return DistInfo(
        rank=dist.get_rank(),
        world_size=dist.get_world_size(),
        local_rank=local_rank,
        device=device,
        backend=backend,
    )


def block_modules(model: MM15, block: BlockType) -> list[nn.Module]:
    """The modules of one block type, in forward order (ViT blocks past the feature layer,
    which the model never runs, are left out)."""
    if block == "decoder":
        return list(model.lm.layers)
    if block == "vision":
        return list(model.vision.blocks[: model.vision.feature_index])
    if block == "connector":
        return [model.connector]
    raise ValueError(f"block type must be one of {BLOCK_TYPES}, got {block!r}")


_SHORTHAND: dict[str, tuple[BlockType, ...]] = {
    "none": (),
    "decoder": ("decoder",),
    "all": BLOCK_TYPES,
}


def checkpoint_modes(cfg: ParallelConfig) -> dict[BlockType, CheckpointMode]:
    """Each block type's recomputation: its own setting, else "full" if the shorthand names it."""
    if cfg.activation_checkpointing not in _SHORTHAND:
        raise ValueError(
            f"activation checkpointing policy must be none/decoder/all, "
            f"got {cfg.activation_checkpointing!r}"
        )
    named = _SHORTHAND[cfg.activation_checkpointing]
    own = {b: cfg.policy(b).checkpoint for b in BLOCK_TYPES}
    return {b: own[b] if own[b] != "none" else ("full" if b in named else "none") for b in own}


def checkpointed_modules(model: MM15, policy: Literal["none", "decoder", "all"]) -> list[nn.Module]:
    """The modules whose forwards the shorthand ``policy`` recomputes in backward."""
    if policy not in _SHORTHAND:
        raise ValueError(
            f"activation checkpointing policy must be none/decoder/all, got {policy!r}"
        )
    return [m for b in _SHORTHAND[policy] for m in block_modules(model, b)]


# Ops whose outputs selective checkpointing keeps: the matmul-class work (torchtitan's op-level
# SAC keeps mm and the attention kernels for the same reason: they dominate recompute time).
_SAVE_OPS = {
    torch.ops.aten.mm.default,
    torch.ops.aten.addmm.default,
    torch.ops.aten.bmm.default,
    torch.ops.aten.convolution.default,
    torch.ops.aten._scaled_dot_product_flash_attention.default,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu.default,
    torch.ops.aten._scaled_dot_product_efficient_attention.default,
    torch.ops.aten._scaled_dot_product_cudnn_attention.default,
    torch.ops.aten._scaled_dot_product_attention_math.default,
}
if hasattr(torch.ops.aten, "_grouped_mm"):
    _SAVE_OPS.add(torch.ops.aten._grouped_mm.default)


def _save_matmuls(ctx, op, *args, **kwargs) -> CheckpointPolicy:
    return CheckpointPolicy.MUST_SAVE if op in _SAVE_OPS else CheckpointPolicy.PREFER_RECOMPUTE


def apply_checkpointing(model: MM15, modes: Mapping[BlockType, CheckpointMode]) -> MM15:
    """Recompute the forwards of the chosen block types in backward (non-reentrant), in place.

    The encoder sees 672-px tiles, 2305 tokens each, up to 10 tiles per image: its activations
    dominate high-resolution SFT, so "vision" is worth as much as "decoder" there.  Must come
    before :func:`apply_compile` and :func:`apply_fsdp2`.
    """
    wrap = _blocks_to_wrap(model, modes, CheckpointMode, "checkpoint", "activation checkpointing")
    for module, mode in wrap:
        if mode == "full":
            composable_checkpoint(module)
        else:
            contexts = functools.partial(create_selective_checkpoint_contexts, _save_matmuls)
            composable_checkpoint(module, context_fn=contexts)
    return model


def _blocks_to_wrap(
    model: MM15, modes: Mapping[BlockType, str], allowed: Any, kind: str, what: str
) -> Iterator[tuple[nn.Module, str]]:
    """``(module, mode)`` for every block whose mode is not "none", after checking each mode is
    one of ``allowed`` (a Literal) and that no block is sharded yet (``what`` must come first)."""
    for block, mode in modes.items():
        if mode not in get_args(allowed):
            raise ValueError(
                f"{block} {kind} mode must be one of {get_args(allowed)}, got {mode!r}"
            )
        if mode == "none":
            continue
        for module in block_modules(model, block):
            if isinstance(module, FSDPModule):
                raise RuntimeError(f"apply {what} before fully_shard (apply_fsdp2)")
            yield module, mode


def apply_activation_checkpointing(model: MM15, policy: Literal["none", "decoder", "all"]) -> MM15:
    """Full recomputation by the shorthand: "decoder" (every decoder block) or "all" (also every
    ViT block and the connector).  Must come before :func:`apply_fsdp2`."""
    if policy not in _SHORTHAND:
        raise ValueError(
            f"activation checkpointing policy must be none/decoder/all, got {policy!r}"
        )
    return apply_checkpointing(model, {b: "full" for b in _SHORTHAND[policy]})


def apply_attention(model: MM15, kernel: AttentionKernel) -> MM15:
    """Make the decoder apply its packed-document rule with ``kernel`` (in place)."""
    if kernel not in get_args(AttentionKernel):
        raise ValueError(f"attention must be one of {get_args(AttentionKernel)}, got {kernel!r}")
    model.lm.attention = kernel
    return model


def apply_compile(
    model: MM15, modes: Mapping[BlockType, CompileMode], *, backend: str = "inductor"
) -> MM15:
    """``torch.compile`` every block of the chosen types in place (``Module.compile``: state-dict
    names unchanged).  Blocks of one type share one code object, so one graph serves every layer;
    tile counts vary per step, so the ViT and connector graphs become shape-dynamic in the tile
    dimension after the first change.  Not ``fullgraph``: an MoE block's data-dependent routing
    may break its graph (see docs/performance.md); dense blocks compile without breaks."""
    for module, mode in _blocks_to_wrap(model, modes, CompileMode, "compile", "torch.compile"):
        module.compile(backend=backend, mode=None if mode == "default" else mode)
    return model


def apply_fsdp2(
    model: MM15,
    *,
    mesh: DeviceMesh | None = None,
    param_dtype: torch.dtype | None = None,
    reduce_dtype: torch.dtype | None = torch.float32,
    reshard_after_forward: bool = True,
    forward_prefetch: int = 0,
    backward_prefetch: int = 0,
) -> MM15:
    """Shard ``model`` in place with FSDP2: one unit per ViT block, the connector, one per decoder
    block, and the root holding everything else.  Parameters become ``Shard(0)`` DTensors over
    ``mesh`` (default: every rank, 1-D, on the parameters' device type); the forward computes
    with them gathered in ``param_dtype`` (None: their own) and gradients are reduce-scattered in
    ``reduce_dtype``.  ``*_prefetch`` > 0 sets explicit all-gather prefetching (see
    :class:`ParallelConfig`)."""
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
    set_prefetch(model, forward=forward_prefetch, backward=backward_prefetch)
    return model


def set_prefetch(model: MM15, *, forward: int, backward: int) -> list[nn.Module]:
    """Explicit FSDP2 prefetching along the forward order of the units that run (used ViT
    blocks, connector, decoder blocks); the root starts each chain.  Returns that order."""
    units: list[nn.Module] = [
        m for b in ("vision", "connector", "decoder") for m in block_modules(model, b)
    ]
    for name, n in (("forward_prefetch", forward), ("backward_prefetch", backward)):
        if n < 0:
            raise ValueError(f"ParallelConfig.{name} must be >= 0, got {n}")
    if forward:
        model.set_modules_to_forward_prefetch(units[:forward])
        for i, unit in enumerate(units[:-1]):
            unit.set_modules_to_forward_prefetch(units[i + 1 : i + 1 + forward])
    if backward:
        model.set_modules_to_backward_prefetch(units[::-1][:backward])
        for i, unit in enumerate(units[1:], start=1):
            unit.set_modules_to_backward_prefetch(units[max(0, i - backward) : i][::-1])
    return units


def apply_ddp(model: nn.Module, *, device: torch.device | None = None) -> DistributedDataParallel:
    """Replicate ``model`` with DDP (gradients all-reduced, averaged).  Unused-parameter search
    is on: text-only micro-batches leave the encoder and connector without gradients."""
    if not dist.is_initialized():
        raise RuntimeError("apply_ddp needs a process group: run under torchrun")
    device = device or next(model.parameters()).device
    device_ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids, find_unused_parameters=True)


def parallelize(
    model: MM15, cfg: ParallelConfig, info: DistInfo, *, compile_backend: str = "inductor"
) -> nn.Module:
    """Attention kernel, activation checkpointing, compilation, then ``cfg.strategy``; one
    process without a group gets all but the last (the same maths, so one recipe runs on a
    laptop and a cluster)."""
    apply_attention(model, cfg.attention)
    apply_checkpointing(model, checkpoint_modes(cfg))
    apply_compile(model, {b: cfg.policy(b).compile for b in BLOCK_TYPES}, backend=compile_backend)
    if info.backend == "none" or cfg.strategy == "none":
        return model
    if cfg.strategy == "ddp":
        return apply_ddp(model, device=info.device)
    if cfg.strategy == "fsdp2":
        param_dtype = None if cfg.param_dtype == "float32" else _DTYPES[cfg.param_dtype]
        return apply_fsdp2(
            model,
            param_dtype=param_dtype,
            reduce_dtype=_DTYPES[cfg.reduce_dtype],
            forward_prefetch=cfg.forward_prefetch,
            backward_prefetch=cfg.backward_prefetch,
        )
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
