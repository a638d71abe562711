"""The few collectives cir_lightning needs, in one place: who am I, where collectives run, and gathering
rows when ranks hold different numbers of them (with or without gradient).

Used by the losses (cross-rank negatives, the global caption-token mean) and by retrieval (gathering
embeddings, merging sharded top-k lists). Everything works without a process group: one process is a
world of one, and gathering returns the local rows.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["all_gather_rows", "all_gather_with_grad", "collective_device", "gather_sizes", "same_on_every_rank", "world"]


def _initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def world(group: Any = None) -> tuple[int, int]:
    """``(rank, world_size)`` of ``group`` (default: the default process group), ``(0, 1)`` without one.

    Example:
        >>> from cir_lightning.distributed import world
        >>> world()
        (0, 1)
    """
    if _initialized():
        return dist.get_rank(group), dist.get_world_size(group)
    return 0, 1


def collective_device() -> torch.device:
    """Where tensors must be for collectives of the default group: the current GPU under NCCL, else CPU.

    Example:
        >>> from cir_lightning.distributed import collective_device
        >>> collective_device()
        device(type='cpu')
    """
    if _initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def gather_sizes(n: int, device: torch.device | None = None, group: Any = None) -> list[int]:
    """Every rank's ``n``, in rank order (``[n]`` in one process).

    Example:
        >>> from cir_lightning.distributed import gather_sizes
        >>> gather_sizes(3)
        [3]
    """
    if world(group)[1] == 1:
        return [n]
    size = torch.tensor([n], dtype=torch.long, device=device or collective_device())
    sizes = [torch.zeros_like(size) for _ in range(dist.get_world_size(group))]
    dist.all_gather(sizes, size, group=group)
    return [int(s) for s in sizes]


def same_on_every_rank(values: list[int], group: Any = None) -> bool:
    """Whether every rank holds the same ``values`` (a collective; each rank must pass as many).

    Example:
        >>> from cir_lightning.distributed import same_on_every_rank
        >>> same_on_every_rank([1, 0])
        True
    """
    if world(group)[1] == 1 or not values:
        return True
    low = torch.tensor(values, dtype=torch.long, device=collective_device())
    high = low.clone()
    dist.all_reduce(low, op=dist.ReduceOp.MIN, group=group)
    dist.all_reduce(high, op=dist.ReduceOp.MAX, group=group)
    return torch.equal(low, high)


def all_gather_rows(tensor: Tensor, sizes: list[int] | None = None, group: Any = None) -> list[Tensor]:
    """Every rank's rows of ``tensor`` (ranks may hold different numbers of rows), one tensor per rank in
    rank order, on ``tensor``'s device. ``sizes`` (from ``gather_sizes``) saves one collective when known.

    Example:
        >>> from cir_lightning.distributed import all_gather_rows
        >>> [t.tolist() for t in all_gather_rows(torch.arange(3))]
        [[0, 1, 2]]
    """
    if world(group)[1] == 1:
        return [tensor]
    sizes = sizes if sizes is not None else gather_sizes(tensor.shape[0], tensor.device, group)
    padded = tensor.new_zeros((max(sizes), *tensor.shape[1:]))
    padded[: tensor.shape[0]] = tensor
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded.contiguous(), group=group)
    return [part[:n] for part, n in zip(parts, sizes, strict=True)]


class _GatherWithGrad(torch.autograd.Function):
    """All-gather rows; backward sums every rank's gradient and returns this rank's rows of it."""

    @staticmethod
    def forward(ctx: Any, tensor: Tensor, sizes: list[int], group: Any) -> Tensor:
        ctx.sizes, ctx.group = sizes, group
        return torch.cat(all_gather_rows(tensor.detach().contiguous(), sizes, group))

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)
        rank = dist.get_rank(ctx.group)
        start = sum(ctx.sizes[:rank])
        return grad[start: start + ctx.sizes[rank]], None, None


def all_gather_with_grad(tensor: Tensor, group: Any = None) -> Tensor:
    """Every rank's rows of ``tensor``, concatenated in rank order, differentiable w.r.t. the local rows.

    Ranks may hold different numbers of rows. In one process (or without ``torch.distributed``) this
    returns ``tensor`` itself.

    Example:
        >>> from cir_lightning.distributed import all_gather_with_grad
        >>> x = torch.ones(2, 3, requires_grad=True)
        >>> all_gather_with_grad(x) is x
        True
    """
    if world(group)[1] == 1:
        return tensor
    sizes = gather_sizes(tensor.shape[0], tensor.device, group)
    return _GatherWithGrad.apply(tensor, sizes, group)


def release_process_group() -> None:
    """Free the trainer (and with it DDP's reducer), then destroy the process group, before the interpreter
    exits (``cli.main`` after a run, ``indexing`` after a build): left to interpreter shutdown, gloo's worker
    threads were destroyed while still joinable in one of several multi-node runs (``terminate called without
    an active exception``, SIGABRT), and the other node's launcher then waited for the failed one."""
    import gc

    gc.collect()
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
