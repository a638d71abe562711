"""Gathering per-rank embeddings into the full, ordered set, dropping the sampler's padding duplicates.

Under DDP each rank embeds a shard of a dataset; ``DistributedSampler`` pads the shards to equal length
by repeating samples. Each embedding travels with its dataset index, so after gathering the duplicates
are dropped and the rows put in dataset order: the result is the same as one process embedding all.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


def world() -> tuple[int, int]:
    """``(rank, world_size)`` of the default process group, ``(0, 1)`` without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def collective_device() -> torch.device:
    """Where tensors must be for collectives of the default group: the current GPU under NCCL, else CPU."""
    if dist.is_available() and dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def dedupe_by_index(embeddings: Tensor, indices: Tensor) -> tuple[Tensor, Tensor]:
    """Sort rows by ``indices`` and keep the first row of each index.

    Example:
        >>> e, i = dedupe_by_index(torch.tensor([[2.], [0.], [2.], [1.]]), torch.tensor([2, 0, 2, 1]))
        >>> e.squeeze(1).tolist(), i.tolist()
        ([0.0, 1.0, 2.0], [0, 1, 2])
    """
    order = indices.argsort(stable=True)
    idx = indices[order]
    keep = torch.ones_like(idx, dtype=torch.bool)
    keep[1:] = idx[1:] != idx[:-1]
    return embeddings[order][keep], idx[keep]


def _all_gather_padded(x: Tensor, device: torch.device) -> list[Tensor]:
    world_size = dist.get_world_size()
    size = torch.tensor([x.shape[0]], device=device)
    sizes = [torch.zeros_like(size) for _ in range(world_size)]
    dist.all_gather(sizes, size)
    longest = int(max(s.item() for s in sizes))
    padded = torch.zeros((longest, *x.shape[1:]), dtype=x.dtype, device=device)
    padded[: x.shape[0]] = x.to(device)
    out = [torch.empty_like(padded) for _ in range(world_size)]
    dist.all_gather(out, padded)
    return [o[: int(s.item())].cpu() for o, s in zip(out, sizes, strict=True)]


def gather_embeddings(embeddings: Tensor, indices: Tensor) -> tuple[Tensor, Tensor]:
    """All ranks' ``(embeddings, indices)`` concatenated, de-duplicated and sorted by index (on CPU).

    Shards may have different lengths. With no process group this only de-duplicates and sorts.
    """
    if world()[1] > 1:
        device = collective_device()
        embeddings = torch.cat(_all_gather_padded(embeddings, device))
        indices = torch.cat(_all_gather_padded(indices, device))
    return dedupe_by_index(embeddings.cpu(), indices.cpu())
