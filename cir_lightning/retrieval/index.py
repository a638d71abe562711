"""Nearest-neighbour search over a gallery by inner product (cosine on L2-normalised embeddings).

``search`` returns, for each query, the top-``k`` gallery row indices in descending similarity after
removing that query's excluded rows; ``-1`` fills rows with fewer than ``k`` results. Exclusion is done
by searching ``k + max(|excluded|)`` and filtering, which equals masking the excluded rows out of the
full ranking. Two backends:

- ``"faiss"``: an exact ``IndexFlatIP`` (faiss-cpu; float32, contiguous); equal scores are re-ordered
  by gallery index, and the rare rows where a tie crosses the cut-off are recomputed exactly, so the
  result equals the torch backend's;
- ``"torch"``: chunked matmul + stable sort, exact, ties broken by the lower gallery index; memory is
  bounded by ``chunk_size`` x gallery, never queries x gallery.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from torch import Tensor

SearchBackend = Literal["faiss", "torch"]


def _as_float32(x: Tensor | np.ndarray, name: str) -> np.ndarray:
    arr = x.detach().float().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x, dtype=np.float32)
    if arr.ndim != 2:
        raise ValueError(f"`{name}` must be 2-d (items, dim), got shape {arr.shape}")
    return np.ascontiguousarray(arr, dtype=np.float32)


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


def drop_excluded(ids: Tensor, excluded: Tensor, k: int) -> Tensor:
    """Remove ``excluded`` ids (and -1) from each row of ``ids``, keep order, cut to ``k``, pad with -1.

    Example:
        >>> drop_excluded(torch.tensor([[4, 1, 2, 0]]), torch.tensor([[1, -1]]), 2).tolist()
        [[4, 2]]
    """
    drop = ids < 0
    if excluded.numel():
        drop |= (ids.unsqueeze(-1) == excluded.unsqueeze(1)).any(-1)
    order = drop.to(torch.int8).argsort(dim=1, stable=True)  # kept entries first, in their order
    kept = ids.gather(1, order).masked_fill(drop.gather(1, order), -1)
    if kept.shape[1] < k:
        kept = torch.cat([kept, kept.new_full((kept.shape[0], k - kept.shape[1]), -1)], dim=1)
    return kept[:, :k]


def _torch_topk(q: np.ndarray, g: np.ndarray, k: int, chunk_size: int) -> Tensor:
    gallery = torch.from_numpy(g)
    out = []
    for start in range(0, len(q), chunk_size):
        scores = torch.from_numpy(q[start:start + chunk_size]) @ gallery.T
        out.append(scores.sort(dim=1, descending=True, stable=True).indices[:, :k])
    return torch.cat(out)


def _faiss_topk(q: np.ndarray, g: np.ndarray, k: int) -> Tensor:
    import faiss

    index = faiss.IndexFlatIP(g.shape[1])
    index.add(g)
    extra = 1 if k < len(g) else 0  # one more hit shows whether a tie crosses the cut-off
    scores, ids = (torch.from_numpy(a) for a in index.search(q, k + extra))
    ids = ids.long()
    # FAISS orders equal scores arbitrarily: sort by (score desc, gallery index asc), like the torch path
    order = torch.from_numpy(np.lexsort((ids.numpy(), -scores.numpy()), axis=1))
    ids, scores = ids.gather(1, order), scores.gather(1, order)
    if extra:
        crossing = (scores[:, k - 1] == scores[:, k]).nonzero().flatten()
        if len(crossing):  # rare: redo exactly, so the tied items kept are the lowest-index ones
            ids[crossing, :k] = _torch_topk(q[crossing.numpy()], g, k, chunk_size=1024)
    return ids[:, :k]


def search(queries: Tensor | np.ndarray, gallery: Tensor | np.ndarray, k: int,
           excluded: Sequence[Sequence[int]] | None = None, backend: SearchBackend = "faiss",
           chunk_size: int = 1024) -> Tensor:
    """Top-``k`` gallery rows per query by inner product, excluded rows removed: (queries, k), -1 padded.

    Args:
        queries: (Q, D) query embeddings.
        gallery: (G, D) gallery embeddings.
        k: results per query; may exceed the gallery size (the rest is -1).
        excluded: per query, gallery rows to leave out of its ranking.
        backend: ``"faiss"`` or ``"torch"`` (both exact).
        chunk_size: queries per matmul block of the torch backend.

    Example:
        >>> g = torch.eye(3)
        >>> q = torch.tensor([[0.9, 0.5, 0.1], [0.0, 0.2, 1.0]])
        >>> search(q, g, k=2, excluded=[[0], []], backend="torch").tolist()
        [[1, 2], [2, 1]]
        >>> search(q, g, k=5, backend="faiss").tolist()
        [[0, 1, 2, -1, -1], [2, 1, 0, -1, -1]]
    """
    q, g = _as_float32(queries, "queries"), _as_float32(gallery, "gallery")
    if q.shape[1] != g.shape[1]:
        raise ValueError(f"query dim {q.shape[1]} != gallery dim {g.shape[1]}")
    if excluded is not None and len(excluded) != len(q):
        raise ValueError(f"`excluded` has {len(excluded)} rows for {len(q)} queries")
    excl = pad_lists(excluded) if excluded is not None else torch.empty(len(q), 0, dtype=torch.long)
    depth = min(k + excl.shape[1], len(g))
    if len(q) == 0 or depth == 0:
        return torch.full((len(q), k), -1, dtype=torch.long)
    ids = _faiss_topk(q, g, depth) if backend == "faiss" else _torch_topk(q, g, depth, chunk_size)
    return drop_excluded(ids, excl, k)
