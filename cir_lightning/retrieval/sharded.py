"""Search over a gallery split between DDP ranks: each rank searches its own rows, the top-k lists merge.

For galleries too large to copy to every process (millions of images), no rank ever holds the whole
gallery. Each rank keeps the rows it embedded (``own_rows`` picks one owner per row, so the sampler's
padding duplicates are searched once), searches every query against them, and the ranks exchange only
their ``(queries, k)`` best ids and scores. The merge orders candidates by score, then by the lower
gallery index, the order the single-process exact search uses, so with an exact index the merged
ranking equals searching the whole gallery. With an approximate index each shard is approximated on
its own: results are close to, not equal to, one index over the whole gallery.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import Tensor

from cir_lightning.distributed import all_gather_rows, collective_device, world
from cir_lightning.retrieval.index import drop_excluded, pad_lists, search_with_scores
from cir_lightning.retrieval.search_config import SearchConfig
from cir_lightning.retrieval.ties import IdenticalRows, identical_rows, prefix_hashes, tie_identical


def _all_gather_list(x: Tensor) -> list[Tensor]:
    """Every rank's ``x`` (1-d, any length), in rank order; on CPU."""
    if world()[1] == 1:
        return [x.cpu()]
    return [part.cpu() for part in all_gather_rows(x.to(collective_device()))]


def own_rows(indices: Tensor, num_items: int) -> tuple[Tensor, bool]:
    """Which of this rank's (sorted, unique) ``indices`` it owns, and whether all ranks cover 0..N-1.

    A row embedded by several ranks (padding duplicates) belongs to the lowest of them. A collective.

    Example:
        >>> mask, complete = own_rows(torch.tensor([0, 2, 3]), 4)
        >>> mask.tolist(), complete
        ([True, True, True], False)
    """
    everyone = _all_gather_list(indices)
    rank = world()[0]
    earlier = torch.cat([torch.empty(0, dtype=torch.long)] + [t.long() for t in everyone[:rank]])
    mask = ~torch.isin(indices.cpu(), earlier)
    covered = torch.unique(torch.cat([t.long() for t in everyone]))
    return mask, torch.equal(covered, torch.arange(num_items))


def _local_exclusions(excluded: Sequence[Sequence[int]], shard_index: Tensor) -> list[list[int]]:
    """Global gallery rows to leave out -> the rows of this shard (absent ones dropped)."""
    table = pad_lists(excluded)
    if table.numel() == 0 or len(shard_index) == 0:
        return [[] for _ in excluded]
    pos = torch.searchsorted(shard_index, table.clamp(min=0)).clamp(max=len(shard_index) - 1)
    here = (shard_index[pos] == table) & (table >= 0)
    return [pos[i][here[i]].tolist() for i in range(len(table))]


def merge_topk(ids: Tensor, scores: Tensor, k: int) -> Tensor:
    """Best ``k`` of candidate lists: by score descending, ties to the lower gallery index, -1 last.

    Example:
        >>> merge_topk(torch.tensor([[7, 2, -1]]), torch.tensor([[0.5, 0.5, float("-inf")]]), 2).tolist()
        [[2, 7]]
    """
    by_index = ids.masked_fill(ids < 0, torch.iinfo(ids.dtype).max).argsort(dim=1, stable=True)
    ids, scores = ids.gather(1, by_index), scores.gather(1, by_index)
    order = scores.argsort(dim=1, descending=True, stable=True)
    merged = ids.gather(1, order)[:, :k]
    if merged.shape[1] < k:
        merged = torch.cat([merged, merged.new_full((len(merged), k - merged.shape[1]), -1)], dim=1)
    return merged


def _identical_across(shard: Tensor, shard_index: Tensor) -> IdenticalRows | None:
    """The identical gallery rows of all ranks' shards (a collective): every rank's row hashes, then the rows
    whose hash another row shares, gathered and compared whole."""
    hashes = prefix_hashes(shard) if len(shard) else torch.empty(0, dtype=torch.long)
    parts = _all_gather_list(hashes)
    every = torch.cat(parts)
    _, inverse, counts = torch.unique(every, return_inverse=True, return_counts=True)
    shared = counts[inverse] > 1  # over every rank's rows, in rank order: the rows gathered below
    if not shared.any():  # the same answer on every rank: no rank gathers rows
        return None
    start = sum(len(part) for part in parts[: world()[0]])
    mine = shared[start:start + len(hashes)].nonzero().flatten()
    rows, index = shard[mine.to(shard.device)].float(), shard_index[mine.to(shard_index.device)]
    if world()[1] > 1:
        device = collective_device()
        rows = torch.cat([r.cpu() for r in all_gather_rows(rows.to(device))])
        index = torch.cat(_all_gather_list(index))
    return identical_rows(rows.cpu(), hashes=every[shared], indices=index.cpu()) if len(rows) else None


def sharded_search(queries: Tensor, shard: Tensor, shard_index: Tensor, k: int,
                   excluded: Sequence[Sequence[int]], config: SearchConfig | None = None) -> Tensor:
    """Top-``k`` global gallery rows for every query, each rank holding only ``shard`` (a collective).

    Args:
        queries: (Q, D) all queries, the same on every rank.
        shard: (S, D) this rank's gallery rows (owned by it alone).
        shard_index: (S,) their global gallery rows, ascending.
        k: results per query.
        excluded: per query, global gallery rows to leave out.
        config: the index used on each shard.

    Returns (Q, k) global gallery rows, -1 padded, the same on every rank.
    """
    identical = _identical_across(shard, shard_index) if (config or SearchConfig()).exact else None
    local_ids, local_scores = search_with_scores(queries, shard, k, _local_exclusions(excluded, shard_index),
                                                 config, identical=None)  # ties: below, across the shards
    global_ids = torch.where(local_ids >= 0, shard_index[local_ids.clamp(min=0)] if len(shard_index)
                             else local_ids, -1)
    if world()[1] > 1:
        device = collective_device()
        parts_ids = [torch.empty_like(global_ids, device=device) for _ in range(world()[1])]
        parts_scores = [torch.empty_like(local_scores, device=device) for _ in range(world()[1])]
        dist.all_gather(parts_ids, global_ids.to(device))
        dist.all_gather(parts_scores, local_scores.to(device))
        global_ids = torch.cat([p.cpu() for p in parts_ids], dim=1)
        local_scores = torch.cat([p.cpu() for p in parts_scores], dim=1)
    if identical is not None:  # identical rows tie, wherever they are; a row a query excludes stays out
        table = pad_lists(excluded)
        global_ids, local_scores = tie_identical(global_ids, local_scores, identical, k + table.shape[1])
        global_ids, local_scores = drop_excluded(global_ids, local_scores, table, global_ids.shape[1])
    return merge_topk(global_ids, local_scores, k)
