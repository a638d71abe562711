"""The two search backends behind ``cir_lightning.retrieval.index.search``: exact blocked torch top-k, and
faiss indexes (exact ``Flat`` with ties put in gallery order, or any approximate ``index_factory`` type).

Both return, per query, the top-k gallery rows and their scores, equal scores ordered by the lower
gallery index; exclusion and padding are done by the caller.
"""

from __future__ import annotations

import re
import warnings

import numpy as np
import torch
from torch import Tensor

from cir_lightning.errors import CIRConfigError
from cir_lightning.retrieval.search_config import SearchConfig, faiss_message

_MIN_PER_CENTROID = 39  # faiss warns below 39 training points per IVF centroid
_GPU_MAX_K = 2048

__all__ = ["build_index", "faiss_topk", "torch_topk"]


def _as_float32(x: Tensor | np.ndarray, name: str) -> np.ndarray:
    arr = x.detach().float().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x, dtype=np.float32)
    if arr.ndim != 2:
        raise ValueError(f"`{name}` must be 2-d (items, dim), got shape {arr.shape}")
    return np.ascontiguousarray(arr, dtype=np.float32)


_BLOCK_ELEMENTS = 2**26  # scores held at once by the torch backend: 256 MB of float32, whatever the sizes


def _sorted_by_score_then_index(ids: Tensor, scores: Tensor) -> tuple[Tensor, Tensor]:
    """Order each row, already sorted by score descending, so that equal scores come by the lower gallery
    index. Only the rows that hold a tie are re-sorted (with random float scores: almost none).

    Example:
        >>> from cir_lightning.retrieval.backends import _sorted_by_score_then_index
        >>> ids, scores = _sorted_by_score_then_index(torch.tensor([[5, 3, 9], [2, 1, 0]]),
        ...                                           torch.tensor([[.9, .9, .1], [.8, .7, .6]]))
        >>> ids.tolist()
        [[3, 5, 9], [2, 1, 0]]
    """
    tied = (scores[:, 1:] == scores[:, :-1]).any(dim=1).nonzero().flatten()
    if len(tied) == 0:
        return ids, scores
    ids, scores = ids.clone(), scores.clone()
    sub_ids, sub_scores = ids[tied], scores[tied]
    by_index = sub_ids.argsort(dim=1, stable=True)
    sub_ids, sub_scores = sub_ids.gather(1, by_index), sub_scores.gather(1, by_index)
    order = sub_scores.argsort(dim=1, descending=True, stable=True)
    ids[tied], scores[tied] = sub_ids.gather(1, order), sub_scores.gather(1, order)
    return ids, scores


def torch_topk(q: np.ndarray, g: np.ndarray, k: int, chunk_size: int) -> tuple[Tensor, Tensor]:
    """Exact top-k by matmul over blocks of queries; memory is one block's scores, never queries x gallery.

    ``topk`` keeps the best k + 1 per query; rows where a tie crosses the cut-off (rare) are redone
    with a stable full sort, so the kept items are always the lowest-index ones.
    """
    gallery = torch.from_numpy(g)
    rows = max(1, min(chunk_size, _BLOCK_ELEMENTS // max(1, len(g))))
    ids, scores = [], []
    for start in range(0, len(q), rows):
        with torch.autocast("cpu", enabled=False):  # exact float32 scores, also inside a caller's autocast
            block = torch.from_numpy(q[start:start + rows]) @ gallery.T
        depth = min(k + 1, block.shape[1])
        top = block.topk(depth, dim=1)
        block_ids, block_scores = _sorted_by_score_then_index(top.indices, top.values)
        if depth > k:
            crossing = (block_scores[:, k - 1] == block_scores[:, k]).nonzero().flatten()
            if len(crossing):
                full = block[crossing].sort(dim=1, descending=True, stable=True)
                block_ids[crossing, :k], block_scores[crossing, :k] = full.indices[:, :k], full.values[:, :k]
        ids.append(block_ids[:, :k])
        scores.append(block_scores[:, :k])
    return torch.cat(ids), torch.cat(scores)


def _fit_factory(factory: str, n: int) -> str:
    """Shrink an IVF list count that ``n`` training vectors cannot support, with a warning."""
    match = re.search(r"IVF(\d+)", factory)
    if match is None:
        return factory
    nlist = int(match.group(1))
    if n >= nlist * _MIN_PER_CENTROID:
        return factory
    smaller = max(1, n // _MIN_PER_CENTROID)
    warnings.warn(f"index `{factory}`: {n} gallery vectors are too few to train {nlist} IVF lists "
                  f"(faiss wants >= {_MIN_PER_CENTROID} per list); using IVF{smaller}", stacklevel=3)
    return factory[: match.start(1)] + str(smaller) + factory[match.end(1):]


def build_index(gallery: Tensor | np.ndarray, config: SearchConfig | None = None):
    """A trained faiss index over ``gallery`` with the inner-product metric, per ``config``.

    Example:
        >>> from cir_lightning.retrieval import SearchConfig, build_index
        >>> import torch
        >>> g = torch.nn.functional.normalize(torch.randn(200, 8), dim=-1)
        >>> index = build_index(g, SearchConfig(factory="IVF4,Flat", nprobe=4))
        >>> index.ntotal, index.is_trained
        (200, True)
    """
    import faiss

    g = _as_float32(gallery, "gallery")
    config = (config or SearchConfig()).resolved(len(g))
    factory = _fit_factory(config.factory, len(g))
    try:
        index = faiss.index_factory(g.shape[1], factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as err:
        raise CIRConfigError(f"faiss cannot build index `{factory}` for dim {g.shape[1]}: "
                             f"{faiss_message(err)}") from None
    if config.device == "cuda":
        index = _to_gpu(index, config)
    if not index.is_trained:
        try:
            index.train(g)
        except RuntimeError as err:
            raise CIRConfigError(f"faiss cannot train index `{factory}` on {len(g)} gallery vectors: "
                                 f"{faiss_message(err)}; use a smaller index") from None
    index.add(g)
    params = [(name, value) for name, value in (("nprobe", config.nprobe), ("efSearch", config.ef_search))
              if value is not None]
    if params:
        space = faiss.GpuParameterSpace() if config.device == "cuda" else faiss.ParameterSpace()
        for name, value in params:
            try:
                space.set_index_parameter(index, name, value)
            except RuntimeError:
                raise CIRConfigError(f"index `{factory}` has no parameter `{name}`") from None
    return index


def _to_gpu(index, config: SearchConfig):
    import faiss

    if not hasattr(faiss, "StandardGpuResources") or not torch.cuda.is_available():
        raise CIRConfigError("`device: cuda` needs CUDA and a faiss build with GPU support: install the "
                             "`gpu` extra (pip install 'cir-lightning[gpu]') and uninstall faiss-cpu")
    options = faiss.GpuClonerOptions()
    options.useFloat16 = config.float16
    resources = faiss.StandardGpuResources()
    try:
        gpu_index = faiss.index_cpu_to_gpu(resources, torch.cuda.current_device(), index, options)
    except RuntimeError as err:  # e.g. HNSW has no GPU implementation
        raise CIRConfigError(f"faiss cannot put index `{config.factory}` on the GPU: "
                             f"{faiss_message(err)}; use `device: cpu` or another index") from None
    gpu_index.referenced_resources = resources  # keep them alive as long as the index
    return gpu_index


def faiss_topk(q: np.ndarray, g: np.ndarray, k: int, config: SearchConfig) -> tuple[Tensor, Tensor]:
    if config.device == "cuda" and k > _GPU_MAX_K:
        raise CIRConfigError(f"faiss GPU indexes return at most {_GPU_MAX_K} results per query, {k} asked")
    extra = 1 if (config.exact and k < len(g)) else 0  # one more hit shows whether a tie crosses the cut
    if config.exact and config.device == "cpu":
        import faiss

        # brute force on the caller's arrays (BLAS blocks + per-query heaps): no copy of the gallery
        found = faiss.knn(q, g, k + extra, metric=faiss.METRIC_INNER_PRODUCT)
    else:
        found = build_index(g, config).search(q, k + extra)
    scores, ids = (torch.from_numpy(np.ascontiguousarray(a)) for a in found)
    # faiss orders equal scores arbitrarily: sort by (score desc, gallery index asc), like the torch path
    ids, scores = _sorted_by_score_then_index(ids.long(), scores)
    # missing results (-1, score -FLT_MAX) sort last and are removed by _drop_excluded
    if extra:
        crossing = (scores[:, k - 1] == scores[:, k]).nonzero().flatten()
        if len(crossing):  # rare: redo exactly, so the tied items kept are the lowest-index ones
            ids[crossing, :k], scores[crossing, :k] = torch_topk(q[crossing.numpy()], g, k, config.chunk_size)
    return ids[:, :k], scores[:, :k]
