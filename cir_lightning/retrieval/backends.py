"""The two search backends behind ``cir_lightning.retrieval.index.search``: exact blocked torch top-k, and
faiss indexes (exact ``Flat`` with ties put in gallery order, or any approximate ``index_factory`` type).

Both return, per query, the top-k gallery rows and their scores, equal scores ordered by the lower
gallery index; exclusion and padding are done by the caller.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch import Tensor

from cir_lightning.errors import CIRConfigError
from cir_lightning.retrieval.search_config import SearchConfig, faiss_message, fit_factory

_GPU_MAX_K = 2048

__all__ = ["as_float32", "build_index", "build_index_from", "faiss_topk", "query_block", "torch_topk"]


def as_float32(x: Tensor | np.ndarray, name: str) -> np.ndarray:
    arr = x.detach().float().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x, dtype=np.float32)
    if arr.ndim != 2:
        raise ValueError(f"`{name}` must be 2-d (items, dim), got shape {arr.shape}")
    return np.ascontiguousarray(arr, dtype=np.float32)


_BLOCK_ELEMENTS = 2**26  # scores held at once by the torch backend: 256 MB of float32, whatever the sizes


def query_block(config: SearchConfig, num_gallery: int) -> int:
    """How many queries a search of ``num_gallery`` rows computes together, in blocks from the first query.

    A matrix product's entry rounds differently with the number of rows it is computed among (BLAS picks other
    kernels: a few ulp), which can reorder near-ties; an evaluation under DDP hands each rank whole blocks, so
    every query's scores come from the same products as in one process.

    Example:
        >>> from cir_lightning.retrieval.backends import query_block
        >>> query_block(SearchConfig(), 10**6), query_block(SearchConfig(backend="torch"), 10**6)
        (1024, 67)
    """
    return _torch_rows(config.chunk_size, num_gallery) if config.backend == "torch" else config.chunk_size


def _torch_rows(chunk_size: int, num_gallery: int) -> int:
    return max(1, min(chunk_size, _BLOCK_ELEMENTS // max(1, num_gallery)))


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


def torch_device(queries: Tensor | np.ndarray, gallery: Tensor | np.ndarray, config: SearchConfig) -> torch.device:
    """Where the torch backend computes: the current GPU with ``device: cuda``, else the gallery's device (a
    gallery already on a GPU is searched there), else the CPU.

    Example:
        >>> from cir_lightning.retrieval.backends import torch_device
        >>> torch_device(torch.ones(1, 2), torch.ones(3, 2), SearchConfig(backend="torch"))
        device(type='cpu')
    """
    if config.device == "cuda":
        if not torch.cuda.is_available():
            raise CIRConfigError("`search.device: cuda` needs a GPU, and torch sees none here; use `device: cpu`")
        return torch.device("cuda", torch.cuda.current_device())
    if isinstance(gallery, Tensor) and gallery.device.type not in ("cpu", "meta"):
        return gallery.device
    return torch.device("cpu")


def as_float32_tensor(x: Tensor | np.ndarray, name: str, device: torch.device) -> Tensor:
    """``x`` as a contiguous 2-d float32 tensor on ``device`` (no copy when it already is one)."""
    if isinstance(x, Tensor):
        if x.ndim != 2:
            raise ValueError(f"`{name}` must be 2-d (items, dim), got shape {tuple(x.shape)}")
        return x.detach().to(device=device, dtype=torch.float32).contiguous()
    return torch.from_numpy(as_float32(x, name)).to(device)


def torch_topk(q: Tensor, g: Tensor, k: int, chunk_size: int) -> tuple[Tensor, Tensor]:
    """Exact top-k by matmul over blocks of queries, on the tensors' device; memory is one block's scores,
    never queries x gallery. Returns CPU tensors.

    ``topk`` keeps the best k + 1 per query; rows where a tie crosses the cut-off (rare) are redone
    with a stable full sort, so the kept items are always the lowest-index ones. On a GPU the scores are
    float32 products (TensorFloat-32 is switched off for the search, whatever the process set).
    """
    rows = _torch_rows(chunk_size, len(g))
    ids, scores = [], []
    with _full_float32(g.device):
        for start in range(0, len(q), rows):
            with torch.autocast(g.device.type, enabled=False):  # exact float32 scores, also inside autocast
                block = q[start:start + rows] @ g.T
            depth = min(k + 1, block.shape[1])
            top = block.topk(depth, dim=1)
            block_ids, block_scores = _sorted_by_score_then_index(top.indices, top.values)
            if depth > k:
                crossing = (block_scores[:, k - 1] == block_scores[:, k]).nonzero().flatten()
                if len(crossing):
                    full = block[crossing].sort(dim=1, descending=True, stable=True)
                    block_ids[crossing, :k], block_scores[crossing, :k] = full.indices[:, :k], full.values[:, :k]
            ids.append(block_ids[:, :k].cpu())
            scores.append(block_scores[:, :k].cpu())
    return torch.cat(ids), torch.cat(scores)


@contextmanager
def _full_float32(device: torch.device) -> Iterator[None]:
    if device.type != "cuda":
        yield
        return
    matmul = torch.backends.cuda.matmul  # torch >= 2.9's `fp32_precision` (reading `allow_tf32` can raise then)
    name, exact = ("fp32_precision", "ieee") if hasattr(matmul, "fp32_precision") else ("allow_tf32", False)
    before = getattr(matmul, name)
    setattr(matmul, name, exact)
    try:
        yield
    finally:
        setattr(matmul, name, before)


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
    g = as_float32(gallery, "gallery")
    return build_index_from(lambda start, stop: g[start:stop], g.shape, config, chunk_rows=max(1, len(g)))


TRAIN_ROWS = 2**18
"""At most this many rows (or 256 per IVF list, faiss's own cap, when more) train an index: evenly spaced."""


def build_index_from(read: Callable[[int, int], np.ndarray], shape: tuple[int, int],
                     config: SearchConfig | None = None, chunk_rows: int = 2**16):
    """``build_index`` over rows fetched block by block by ``read(start, stop)``: the index is trained on an
    evenly spaced sample (``TRAIN_ROWS``) and filled ``chunk_rows`` at a time, so that besides the index
    itself only one block is held (e.g. rows read from a file larger than memory with ``RowFile.read``).

    Example:
        >>> from cir_lightning.retrieval.backends import build_index_from
        >>> g = np.eye(4, dtype=np.float32)
        >>> build_index_from(lambda a, b: g[a:b], g.shape, chunk_rows=3).search(g[2:3], 1)[1].tolist()
        [[2]]
    """
    import faiss

    rows, dim = shape
    config = (config or SearchConfig()).resolved(rows)
    factory = fit_factory(config.factory, rows)
    try:
        index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as err:
        raise CIRConfigError(f"faiss cannot build index `{factory}` for dim {dim}: {faiss_message(err)}") from None
    if config.device == "cuda":
        index = _to_gpu(index, config)
    if not index.is_trained:
        sample = _training_sample(read, rows, factory, chunk_rows)
        try:
            index.train(sample)
        except RuntimeError as err:
            raise CIRConfigError(f"faiss cannot train index `{factory}` on {len(sample)} gallery vectors: "
                                 f"{faiss_message(err)}; use a smaller index") from None
        del sample
    _reserve(index, rows)
    for start in range(0, rows, chunk_rows):
        index.add(as_float32(read(start, min(rows, start + chunk_rows)), "gallery"))
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


def _reserve(index, rows: int) -> None:
    """Make room for ``rows`` vectors in a flat index at once (``IndexFlat``'s storage would otherwise double
    as chunks are added, holding the old and the new copy at once): grow it to full size, then back to
    empty, which keeps the capacity."""
    codes = getattr(index, "codes", None)
    if codes is not None and index.ntotal == 0 and hasattr(codes, "resize"):
        codes.resize(rows * index.code_size)
        codes.resize(0)


def _training_sample(read: Callable[[int, int], np.ndarray], rows: int, factory: str, chunk_rows: int) -> np.ndarray:
    """All rows when they are few; else every ``step``-th row, at most ``max(TRAIN_ROWS, 256 x IVF lists)``."""
    match = re.search(r"IVF(\d+)", factory)
    wanted = max(TRAIN_ROWS, 256 * int(match.group(1)) if match else 0)
    if rows <= wanted:
        return as_float32(read(0, rows), "gallery")
    step = -(-rows // wanted)
    block = max(step, chunk_rows // step * step)  # a multiple of step: each block starts on a sampled row
    return np.concatenate([as_float32(read(start, min(rows, start + block))[::step], "gallery")
                           for start in range(0, rows, block)])


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
    """Top-k by faiss, ``config.chunk_size`` queries per search (one index built for all)."""
    if config.device == "cuda" and k > _GPU_MAX_K:
        raise CIRConfigError(f"faiss GPU indexes return at most {_GPU_MAX_K} results per query, {k} asked")
    # brute force on the caller's arrays (BLAS blocks + per-query heaps): no copy of the gallery
    index = None if config.exact and config.device == "cpu" else build_index(g, config)
    found = [_faiss_block(q[start:start + config.chunk_size], g, k, index, config)
             for start in range(0, len(q), config.chunk_size)]
    return torch.cat([ids for ids, _ in found]), torch.cat([scores for _, scores in found])


def _faiss_block(q: np.ndarray, g: np.ndarray, k: int, index: Any, config: SearchConfig) -> tuple[Tensor, Tensor]:
    extra = 1 if (config.exact and k < len(g)) else 0  # one more hit shows whether a tie crosses the cut
    if index is None:
        import faiss

        found = faiss.knn(q, g, k + extra, metric=faiss.METRIC_INNER_PRODUCT)
    else:
        found = index.search(q, k + extra)
    scores, ids = (torch.from_numpy(np.ascontiguousarray(a)) for a in found)
    # faiss orders equal scores arbitrarily: sort by (score desc, gallery index asc), like the torch path
    ids, scores = _sorted_by_score_then_index(ids.long(), scores)
    # missing results (-1, score -FLT_MAX) sort last and are removed by index.drop_excluded
    if extra:
        crossing = (scores[:, k - 1] == scores[:, k]).nonzero().flatten()
        if len(crossing):  # rare: redo exactly, so the tied items kept are the lowest-index ones
            ids[crossing, :k], scores[crossing, :k] = torch_topk(torch.from_numpy(q[crossing.numpy()]),
                                                                 torch.from_numpy(g), k, config.chunk_size)
    return ids[:, :k], scores[:, :k]
