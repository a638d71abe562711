"""Nearest-neighbour search over a gallery by inner product (cosine on L2-normalised embeddings).

``search`` returns, for each query, the top-``k`` gallery row indices in descending similarity after
removing that query's excluded rows; ``-1`` fills rows with fewer than ``k`` results. Exclusion is done
by searching ``k + max(|excluded|)`` and filtering, which equals masking the excluded rows out of the
full ranking. ``SearchConfig`` chooses how:

- ``backend="faiss"`` with ``factory="Flat"`` (default): exact ``IndexFlatIP``. Equal scores are put in
  gallery order and the rare rows where a tie crosses the cut-off are recomputed exactly, so the result
  equals the torch backend's (lower gallery index first). Identical gallery rows tie exactly even where
  the matrix product rounds their scores apart (``ties``).
- ``backend="faiss"`` with any other ``index_factory`` string ("IVF1024,Flat", "HNSW32",
  "IVF256,PQ16", ...): approximate, inner-product metric, trained on the gallery when the type needs it.
- ``backend="torch"``: blocked matmul + top-k with exact tie-breaking; memory is one block of at most
  ``chunk_size`` queries (and at most 2^26 scores), never queries x gallery. It runs where the gallery
  tensor is (a gallery on a GPU is searched there, not copied back), or on the current GPU with
  ``device="cuda"``.

With ``device="cuda"`` the faiss index is moved to this process's current GPU only (never cloned to
every GPU from every rank); that needs a faiss build with GPU support (the ``gpu`` extra).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from cir_lightning.checks import positive_int
from cir_lightning.errors import CIRConfigError
from cir_lightning.retrieval.backends import (
    as_float32,
    as_float32_tensor,
    faiss_topk,
    query_block,
    torch_device,
    torch_topk,
)
from cir_lightning.retrieval.search_config import SearchConfig
from cir_lightning.retrieval.ties import IdenticalRows, identical_rows, tie_identical

__all__ = ["drop_excluded", "pad_lists", "query_share", "search", "search_with_scores"]


_COMPARE_EXCLUDED = 16  # up to this many excluded rows per query, membership by direct comparison
_MAX_PADDED_BYTES = 2**34  # a (queries, k) result wider than the gallery: at most 16 GiB of ids and scores


def _check_width(k: int, num_queries: int, num_gallery: int) -> None:
    """The (queries, ``k``) result is ``k`` wide even past the gallery (-1 padded): a ``k`` whose ids and scores
    (12 bytes each) would take more than 16 GiB there is refused (torch's allocation error named no option).

    Example:
        >>> _check_width(10**12, 2, 3)
        Traceback (most recent call last):
        ...
        cir_lightning.errors.CIRConfigError: `k` 1000000000000 is more than the 3 gallery rows: its -1 padded results for 2 queries would take 22351 GiB; ask for at most 3
    """
    size = num_queries * k * 12
    if k > num_gallery and size > _MAX_PADDED_BYTES:
        raise CIRConfigError(f"`k` {k} is more than the {num_gallery} gallery rows: its -1 padded results for "
                             f"{num_queries} queries would take {size // 2**30} GiB; ask for at most {num_gallery}")


def pad_lists(lists: Sequence[Sequence[int]], width: int | None = None) -> Tensor:
    """Pack lists of ints into a (len(lists), width) long tensor padded with -1.

    Example:
        >>> pad_lists([[3], [], [1, 2]]).tolist()
        [[3, -1], [-1, -1], [1, 2]]
    """
    width = max((len(x) for x in lists), default=0) if width is None else width
    out = torch.full((len(lists), width), -1, dtype=torch.long)
    for i, x in enumerate(lists):
        if len(x):
            out[i, : len(x)] = torch.as_tensor(list(x), dtype=torch.long)
    return out


def drop_excluded(ids: Tensor, scores: Tensor, excluded: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Remove ``excluded`` ids (and -1) from each row of ``ids``, keep their order, cut to ``k``, pad with -1;
    each id's score travels along (-inf where there is no result).

    Example:
        >>> ids, scores = drop_excluded(torch.tensor([[4, 1, 2, 0]]), torch.tensor([[.9, .8, .7, .6]]),
        ...                              torch.tensor([[1, -1]]), 2)
        >>> ids.tolist(), [round(x, 1) for x in scores[0].tolist()]
        ([[4, 2]], [0.9, 0.7])
    """
    drop = ids < 0
    if 0 < excluded.shape[1] <= _COMPARE_EXCLUDED:  # a few per query (CIRR, JSONL: one): compare directly
        for column in excluded.T:  # O(results x excluded); -1 padding matches nothing (ids < 0 are dropped)
            drop |= ids == column.unsqueeze(1)
    elif excluded.numel():
        # (row, id) pairs encoded as one integer: membership by sorting, O(rows x width) memory
        span = int(max(ids.max(), excluded.max())) + 2
        rows = torch.arange(len(ids)).unsqueeze(1) * span
        valid = excluded >= 0
        drop |= torch.isin(rows + ids + 1, (rows + excluded + 1)[valid])
    kept, kept_scores = ids, scores
    moved = drop.any(dim=1).nonzero().flatten()
    if len(moved):  # only rows that lose results are compacted
        order = drop[moved].to(torch.int8).argsort(dim=1, stable=True)  # kept entries first, in their order
        dropped = drop[moved].gather(1, order)
        kept, kept_scores = ids.clone(), scores.clone()
        kept[moved] = ids[moved].gather(1, order).masked_fill(dropped, -1)
        kept_scores[moved] = scores[moved].gather(1, order).masked_fill(dropped, float("-inf"))
    if kept.shape[1] < k:
        pad = (kept.shape[0], k - kept.shape[1])
        kept = torch.cat([kept, kept.new_full(pad, -1)], dim=1)
        kept_scores = torch.cat([kept_scores, kept_scores.new_full(pad, float("-inf"))], dim=1)
    return kept[:, :k], kept_scores[:, :k]


def search(queries: Tensor | np.ndarray, gallery: Tensor | np.ndarray, k: int,
           excluded: Sequence[Sequence[int]] | None = None, config: SearchConfig | None = None) -> Tensor:
    """Top-``k`` gallery rows per query by inner product, excluded rows removed: (queries, k), -1 padded.

    Args:
        queries: (Q, D) query embeddings.
        gallery: (G, D) gallery embeddings.
        k: results per query; may exceed the gallery size (the rest is -1), by at most 16 GiB of results
            (``CIRConfigError`` past that, naming ``k`` and the gallery size).
        excluded: per query, gallery rows to leave out of its ranking.
        config: the backend and index (default: exact faiss ``Flat`` on the CPU).

    Example:
        >>> from cir_lightning.retrieval import SearchConfig, search
        >>> import torch
        >>> g = torch.eye(3)
        >>> q = torch.tensor([[0.9, 0.5, 0.1], [0.0, 0.2, 1.0]])
        >>> search(q, g, k=2, excluded=[[0], []], config=SearchConfig(backend="torch")).tolist()
        [[1, 2], [2, 1]]
        >>> search(q, g, k=5).tolist()
        [[0, 1, 2, -1, -1], [2, 1, 0, -1, -1]]
    """
    return search_with_scores(queries, gallery, k, excluded, config)[0]


def search_with_scores(queries: Tensor | np.ndarray, gallery: Tensor | np.ndarray, k: int,
                       excluded: Sequence[Sequence[int]] | None = None, config: SearchConfig | None = None,
                       identical: IdenticalRows | None | str = "find") -> tuple[Tensor, Tensor]:
    """``search`` that also returns the scores of the results (float32, ``-inf`` where the id is -1).
    ``identical``: the gallery's identical rows (``ties.identical_rows``), found here by default (``"find"``);
    a caller searching one gallery many times passes them, or None where they do not matter.

    Example:
        >>> ids, scores = search_with_scores(torch.eye(2), torch.eye(2), k=3, excluded=[[1], []])
        >>> ids.tolist(), scores.tolist()
        ([[0, -1, -1], [1, 0, -1]], [[1.0, -inf, -inf], [1.0, 0.0, -inf]])
    """
    positive_int("k", k)
    asked, config = config, (config or SearchConfig()).resolved(len(gallery))
    if config.backend == "torch":  # on the embeddings' device (or `device: cuda`), never copied to the CPU
        device = torch_device(queries, gallery, config)
        q, g = as_float32_tensor(queries, "queries", device), as_float32_tensor(gallery, "gallery", device)
    else:
        q, g = as_float32(queries, "queries"), as_float32(gallery, "gallery")
    if asked is not None and asked.factory.strip() == "auto" and not config.exact:
        warnings.warn(f"`search.factory: auto` chose the approximate index {config.factory} (nprobe {config.nprobe}) "
                      f"for {len(g)} gallery rows: rankings and metrics are approximate; `factory: Flat` is exact",
                      stacklevel=2)
    if len(g) and q.shape[1] != g.shape[1]:
        raise ValueError(f"query dim {q.shape[1]} != gallery dim {g.shape[1]}")
    if excluded is not None and len(excluded) != len(q):
        raise ValueError(f"`excluded` has {len(excluded)} rows for {len(q)} queries")
    _check_width(k, len(q), len(g))
    excl = pad_lists(excluded) if excluded is not None else torch.empty(len(q), 0, dtype=torch.long)
    depth = min(k + excl.shape[1], len(g))
    if len(q) == 0 or depth == 0:
        return torch.full((len(q), k), -1, dtype=torch.long), torch.full((len(q), k), float("-inf"))
    if config.backend == "torch":
        ids, scores = torch_topk(q, g, depth, config.chunk_size)
    else:
        ids, scores = faiss_topk(q, g, depth, config)
    if config.exact:  # identical rows: equal scores, the lower gallery index first
        ids, scores = tie_identical(ids, scores.float(), identical_rows(g) if identical == "find" else identical,
                                    limit=depth)  # k + excluded: enough for k results once excluded rows go
    return drop_excluded(ids, scores.float(), excl, k)


def query_share(num_queries: int, num_gallery: int, config: SearchConfig, rank: int, world_size: int) -> Tensor:
    """The queries process ``rank`` of ``world_size`` searches: whole blocks of the search (``query_block``),
    blocks ``rank``, ``rank + world_size``, ... (none when there are fewer blocks than processes). Every query's
    scores then come from the same matrix products in any number of processes.

    Example:
        >>> from cir_lightning.retrieval.index import query_share
        >>> config = SearchConfig(backend="torch", chunk_size=2)
        >>> [query_share(5, 10, config, rank, 2).tolist() for rank in (0, 1)]
        [[0, 1, 4], [2, 3]]
    """
    rows = torch.arange(num_queries)
    return rows[rows // query_block(config, num_gallery) % world_size == rank]
