"""Gathering per-rank embeddings into the full, ordered set, dropping the sampler's padding duplicates.

Under DDP each rank embeds a shard of a dataset; ``DistributedSampler`` pads the shards to equal length
by repeating samples. Each embedding travels with its dataset index, so after gathering the duplicates
are dropped and the rows put in dataset order: the result is the same as one process embedding all.
"""

from __future__ import annotations

import torch
from torch import Tensor

from cir_lightning.distributed import all_gather_rows, collective_device, world

__all__ = ["collective_device", "dedupe_by_index", "gather_embeddings", "world"]  # the first and last: re-exported


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


def gather_embeddings(embeddings: Tensor, indices: Tensor) -> tuple[Tensor, Tensor]:
    """All ranks' ``(embeddings, indices)`` concatenated, de-duplicated and sorted by index (on CPU).

    Shards may have different lengths. With no process group this only de-duplicates and sorts.
    """
    if world()[1] > 1:
        device = collective_device()
        embeddings = torch.cat(all_gather_rows(embeddings.to(device)))
        indices = torch.cat(all_gather_rows(indices.to(device)))
    return dedupe_by_index(embeddings.cpu(), indices.cpu())
