"""Nearest-neighbour search over a gallery by inner product (cosine on L2-normalised embeddings).

``search`` returns, for each query, the top-``k`` gallery row indices in descending similarity after
removing that query's excluded rows; ``-1`` fills rows with fewer than ``k`` results. Exclusion is done
by searching ``k + max(|excluded|)`` and filtering, which equals masking the excluded rows out of the
full ranking. ``SearchConfig`` chooses how:

- ``backend="faiss"`` with ``factory="Flat"`` (default): exact ``IndexFlatIP``. Equal scores are put in
  gallery order and the rare rows where a tie crosses the cut-off are recomputed exactly, so the result
  equals the torch backend's (lower gallery index first).
- ``backend="faiss"`` with any other ``index_factory`` string ("IVF1024,Flat", "HNSW32",
  "IVF256,PQ16", ...): approximate, inner-product metric, trained on the gallery when the type needs it.
- ``backend="torch"``: blocked matmul + top-k with exact tie-breaking; memory is one block of at most
  ``chunk_size`` queries (and at most 2^26 scores), never queries x gallery.

With ``device="cuda"`` the faiss index is moved to this process's current GPU only (never cloned to
every GPU from every rank); that needs a faiss build with GPU support (the ``gpu`` extra).
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from cir_lightning.checks import positive_int
from cir_lightning.errors import CIRConfigError

_MIN_PER_CENTROID = 39  # faiss warns below 39 training points per IVF centroid
_GPU_MAX_K = 2048
_PROBE_DIM = 5040  # divisible by 1-10, 12, 14, 16, 18, 20, ...: the dimension index types are checked with first


@dataclass
class SearchConfig:
    """How a gallery is searched.

    Args:
        backend: ``"faiss"`` or ``"torch"`` (exact, CPU or the embeddings' device).
        factory: faiss ``index_factory`` string; the metric is always inner product. ``"Flat"`` is exact.
        nprobe: IVF lists visited per query (faiss default 1).
        ef_search: HNSW search depth (faiss default 16).
        device: ``"cpu"``, or ``"cuda"`` for a faiss GPU index on the current device.
        float16: store the GPU index in float16 (less memory; near-ties may reorder).
        chunk_size: queries per block of the torch backend.
        sharded: under DDP, never gather the gallery: each rank searches the rows it embedded and the
            ranks merge their top-k lists (for galleries too large to copy to every process; equal to
            the unsharded result with an exact index; see ``cir_lightning.retrieval.sharded``).
    """

    backend: Literal["faiss", "torch"] = "faiss"
    factory: str = "Flat"
    nprobe: int | None = None
    ef_search: int | None = None
    device: Literal["cpu", "cuda"] = "cpu"
    float16: bool = False
    chunk_size: int = 1024
    sharded: bool = False

    def __post_init__(self) -> None:
        # Checked when set, before any gallery is embedded: a bad value would otherwise surface as a faiss
        # assertion after all the work (nprobe 0), or not at all.
        if self.backend not in ("faiss", "torch"):
            raise CIRConfigError(f"`search.backend` must be 'faiss' or 'torch', got {self.backend!r}")
        if self.device not in ("cpu", "cuda"):
            raise CIRConfigError(f"`search.device` must be 'cpu' or 'cuda', got {self.device!r}")
        positive_int("search.nprobe", self.nprobe, optional=True)
        positive_int("search.ef_search", self.ef_search, optional=True)
        positive_int("search.chunk_size", self.chunk_size)
        if not isinstance(self.factory, str) or not self.factory.strip():
            raise CIRConfigError(f"`search.factory` must be a faiss index_factory string, got {self.factory!r}")
        if self.backend == "faiss" and (self.factory.strip() != "Flat" or self.nprobe or self.ef_search):
            self.check()

    def check(self, dim: int = _PROBE_DIM) -> None:
        """Build this index type (empty) for ``dim``-dimensional vectors and set its parameters, so that an
        unknown factory string, a parameter the index lacks or a dimension it cannot take is an error
        before anything is embedded. Called when the config is made, and with the real dimension once
        the model is known.

        Example:
            >>> SearchConfig(factory="IVF2,Flat", nprobe=2).check(dim=8)
            >>> SearchConfig(factory="Foo12")
            Traceback (most recent call last):
            ...
            cir_lightning.errors.CIRConfigError: `search.factory` 'Foo12': faiss cannot build it: could not parse index string Foo12
            >>> SearchConfig(factory="HNSW32", nprobe=4)
            Traceback (most recent call last):
            ...
            cir_lightning.errors.CIRConfigError: `search.nprobe`: index `HNSW32` has no parameter `nprobe`
        """
        if self.backend != "faiss":
            return
        import faiss

        try:
            index = faiss.index_factory(int(dim), self.factory, faiss.METRIC_INNER_PRODUCT)
        except RuntimeError as err:
            raise CIRConfigError(f"`search.factory` {self.factory!r}: faiss cannot build it"
                                 f"{f' for dimension {dim}' if dim != _PROBE_DIM else ''}: {faiss_message(err)}") \
                from None
        space = faiss.ParameterSpace()
        for option, name, value in (("nprobe", "nprobe", self.nprobe), ("ef_search", "efSearch", self.ef_search)):
            if value is None:
                continue
            try:
                space.set_index_parameter(index, name, value)
            except RuntimeError:
                raise CIRConfigError(f"`search.{option}`: index `{self.factory}` has no parameter `{name}`") from None

    @property
    def exact(self) -> bool:
        return self.backend == "torch" or (self.factory.strip() == "Flat" and not self.float16)


def faiss_message(err: Exception) -> str:
    """The useful part of a faiss error: its last line without the C++ function and source location.

    Example:
        >>> faiss_message(RuntimeError("Error in void f() at /project/faiss/x.cpp:12: could not parse Foo"))
        'could not parse Foo'
    """
    text = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
    return re.sub(r"^Error in .*? at \S+:\d+: ", "", text).strip()


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


def _drop_excluded(ids: Tensor, scores: Tensor, excluded: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Remove ``excluded`` ids (and -1) from each row of ``ids``, keep their order, cut to ``k``, pad with -1;
    each id's score travels along (-inf where there is no result).

    Example:
        >>> ids, scores = _drop_excluded(torch.tensor([[4, 1, 2, 0]]), torch.tensor([[.9, .8, .7, .6]]),
        ...                              torch.tensor([[1, -1]]), 2)
        >>> ids.tolist(), [round(x, 1) for x in scores[0].tolist()]
        ([[4, 2]], [0.9, 0.7])
    """
    drop = ids < 0
    if excluded.numel():
        # (row, id) pairs encoded as one integer: membership by sorting, O(rows x width) memory
        span = int(max(ids.max(), excluded.max())) + 2
        rows = torch.arange(len(ids)).unsqueeze(1) * span
        valid = excluded >= 0
        drop |= torch.isin(rows + ids + 1, (rows + excluded + 1)[valid])
    order = drop.to(torch.int8).argsort(dim=1, stable=True)  # kept entries first, in their order
    dropped = drop.gather(1, order)
    kept = ids.gather(1, order).masked_fill(dropped, -1)
    kept_scores = scores.gather(1, order).masked_fill(dropped, float("-inf"))
    if kept.shape[1] < k:
        pad = (kept.shape[0], k - kept.shape[1])
        kept = torch.cat([kept, kept.new_full(pad, -1)], dim=1)
        kept_scores = torch.cat([kept_scores, kept_scores.new_full(pad, float("-inf"))], dim=1)
    return kept[:, :k], kept_scores[:, :k]


_BLOCK_ELEMENTS = 2**26  # scores held at once by the torch backend: 256 MB of float32, whatever the sizes


def _sorted_by_score_then_index(ids: Tensor, scores: Tensor) -> tuple[Tensor, Tensor]:
    """Order each row by score descending, equal scores by the lower gallery index."""
    by_index = ids.argsort(dim=1, stable=True)
    ids, scores = ids.gather(1, by_index), scores.gather(1, by_index)
    order = scores.argsort(dim=1, descending=True, stable=True)
    return ids.gather(1, order), scores.gather(1, order)


def _torch_topk(q: np.ndarray, g: np.ndarray, k: int, chunk_size: int) -> tuple[Tensor, Tensor]:
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
        >>> g = torch.nn.functional.normalize(torch.randn(200, 8), dim=-1)
        >>> index = build_index(g, SearchConfig(factory="IVF4,Flat", nprobe=4))
        >>> index.ntotal, index.is_trained
        (200, True)
    """
    import faiss

    config = config or SearchConfig()
    g = _as_float32(gallery, "gallery")
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


def _faiss_topk(q: np.ndarray, g: np.ndarray, k: int, config: SearchConfig) -> tuple[Tensor, Tensor]:
    if config.device == "cuda" and k > _GPU_MAX_K:
        raise CIRConfigError(f"faiss GPU indexes return at most {_GPU_MAX_K} results per query, {k} asked")
    index = build_index(g, config)
    extra = 1 if (config.exact and k < len(g)) else 0  # one more hit shows whether a tie crosses the cut
    scores, ids = (torch.from_numpy(np.ascontiguousarray(a)) for a in index.search(q, k + extra))
    ids = ids.long()
    # faiss orders equal scores arbitrarily: sort by (score desc, gallery index asc), like the torch path
    order = torch.from_numpy(np.lexsort((ids.numpy(), -scores.numpy()), axis=1))
    ids, scores = ids.gather(1, order), scores.gather(1, order)
    # missing results (-1, score -FLT_MAX) sort last and are removed by _drop_excluded
    if extra:
        crossing = (scores[:, k - 1] == scores[:, k]).nonzero().flatten()
        if len(crossing):  # rare: redo exactly, so the tied items kept are the lowest-index ones
            ids[crossing, :k], scores[crossing, :k] = _torch_topk(q[crossing.numpy()], g, k, config.chunk_size)
    return ids[:, :k], scores[:, :k]


def search(queries: Tensor | np.ndarray, gallery: Tensor | np.ndarray, k: int,
           excluded: Sequence[Sequence[int]] | None = None, config: SearchConfig | None = None) -> Tensor:
    """Top-``k`` gallery rows per query by inner product, excluded rows removed: (queries, k), -1 padded.

    Args:
        queries: (Q, D) query embeddings.
        gallery: (G, D) gallery embeddings.
        k: results per query; may exceed the gallery size (the rest is -1).
        excluded: per query, gallery rows to leave out of its ranking.
        config: the backend and index (default: exact faiss ``Flat`` on the CPU).

    Example:
        >>> g = torch.eye(3)
        >>> q = torch.tensor([[0.9, 0.5, 0.1], [0.0, 0.2, 1.0]])
        >>> search(q, g, k=2, excluded=[[0], []], config=SearchConfig(backend="torch")).tolist()
        [[1, 2], [2, 1]]
        >>> search(q, g, k=5).tolist()
        [[0, 1, 2, -1, -1], [2, 1, 0, -1, -1]]
    """
    return search_with_scores(queries, gallery, k, excluded, config)[0]


def search_with_scores(queries: Tensor | np.ndarray, gallery: Tensor | np.ndarray, k: int,
                       excluded: Sequence[Sequence[int]] | None = None,
                       config: SearchConfig | None = None) -> tuple[Tensor, Tensor]:
    """``search`` that also returns the scores of the results (float32, ``-inf`` where the id is -1).

    Example:
        >>> ids, scores = search_with_scores(torch.eye(2), torch.eye(2), k=3, excluded=[[1], []])
        >>> ids.tolist(), scores.tolist()
        ([[0, -1, -1], [1, 0, -1]], [[1.0, -inf, -inf], [1.0, 0.0, -inf]])
    """
    config = config or SearchConfig()
    positive_int("k", k)
    q, g = _as_float32(queries, "queries"), _as_float32(gallery, "gallery")
    if len(g) and q.shape[1] != g.shape[1]:
        raise ValueError(f"query dim {q.shape[1]} != gallery dim {g.shape[1]}")
    if excluded is not None and len(excluded) != len(q):
        raise ValueError(f"`excluded` has {len(excluded)} rows for {len(q)} queries")
    excl = pad_lists(excluded) if excluded is not None else torch.empty(len(q), 0, dtype=torch.long)
    depth = min(k + excl.shape[1], len(g))
    if len(q) == 0 or depth == 0:
        return torch.full((len(q), k), -1, dtype=torch.long), torch.full((len(q), k), float("-inf"))
    if config.backend == "torch":
        ids, scores = _torch_topk(q, g, depth, config.chunk_size)
    else:
        ids, scores = _faiss_topk(q, g, depth, config)
    return _drop_excluded(ids, scores.float(), excl, k)
