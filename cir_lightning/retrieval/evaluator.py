"""Collects query and gallery embeddings over an evaluation epoch, then searches and scores once.

``RetrievalEvaluator`` knows nothing about models or data formats: it receives embeddings with their
dataset indices (``add``), and at the end the ground truth of each subset (``compute``). Under DDP it
gathers every rank's embeddings, splits the queries between ranks for the search, and lets the
sum-state metrics add the ranks' shares up, so every rank returns the numbers one process would.
"""

from __future__ import annotations

import warnings
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from cir_lightning.errors import CIRConfigError
from cir_lightning.retrieval.gather import collective_device, gather_embeddings, world
from cir_lightning.retrieval.index import SearchConfig, pad_lists, search
from cir_lightning.retrieval.metrics import HitRateAtK, MRRAtK


@dataclass(frozen=True)
class EvalSubset:
    """Ground truth of one evaluated subset.

    Args:
        name: prefix of its metric names ("" for none, e.g. "dress" gives ``dress/Recall@10``).
        positives: per query, its relevant gallery rows.
        excluded: per query, gallery rows removed from its ranking.
        num_gallery: gallery size.
        query_ids: ids of the queries, in row order (for results files).
        gallery_ids: ids of the gallery items, in row order (for results files).
    """

    name: str
    positives: Sequence[Sequence[int]]
    excluded: Sequence[Sequence[int]]
    num_gallery: int
    query_ids: Sequence[str] | None = None
    gallery_ids: Sequence[str] | None = None

    def ranked_ids(self, ranked: Tensor) -> dict[str, list[str]]:
        """Query id -> its ranked gallery ids, from rows of gallery indices (-1 dropped)."""
        if self.query_ids is None or self.gallery_ids is None:
            raise ValueError(f"subset {self.name!r} has no query / gallery ids to name its rankings")
        return {q: [self.gallery_ids[j] for j in row if j >= 0]
                for q, row in zip(self.query_ids, ranked.tolist(), strict=True)}


class RetrievalEvaluator:
    """Accumulate embeddings, then compute Recall@K (hit rate) and MRR@K per subset.

    Args:
        ks: the cut-offs K.
        search: how the gallery is searched (default: exact faiss ``Flat``).

    Example:
        >>> ev = RetrievalEvaluator(ks=[1, 2], search=SearchConfig(backend="torch"))
        >>> ev.add(0, "gallery", torch.eye(3), torch.arange(3))
        >>> ev.add(0, "query", torch.tensor([[0.1, 0.9, 0.0], [1.0, 0.0, 0.2]]), torch.tensor([0, 1]))
        >>> sub = EvalSubset("", positives=[[1], [2]], excluded=[[], [0]], num_gallery=3)
        >>> {k: round(v, 2) for k, v in ev.compute([sub]).items()}
        {'Recall@1': 1.0, 'Recall@2': 1.0, 'MRR@1': 1.0, 'MRR@2': 1.0}
    """

    def __init__(self, ks: Sequence[int] = (1, 5, 10, 50), search: SearchConfig | None = None) -> None:
        self.ks = [int(k) for k in ks]
        self.search = search or SearchConfig()
        self.reset()

    def reset(self) -> None:
        self._parts: dict[tuple[int, str], list[tuple[Tensor, Tensor]]] = defaultdict(list)
        self.rankings: dict[str, Tensor] = {}

    def add(self, subset: int, kind: str, embeddings: Tensor, indices: Tensor) -> None:
        """Store a batch of ``kind`` ("query" or "gallery") embeddings of subset ``subset`` (on CPU)."""
        if kind not in ("query", "gallery"):
            raise ValueError(f"`kind` must be 'query' or 'gallery', got {kind!r}")
        self._parts[(subset, kind)].append((embeddings.detach().float().cpu(), indices.detach().cpu()))

    def _collect(self, subset: int, kind: str, expected: int) -> Tensor | None:
        parts = self._parts.get((subset, kind), [])
        emb = torch.cat([p[0] for p in parts]) if parts else torch.empty(0, 0)
        idx = torch.cat([p[1] for p in parts]) if parts else torch.empty(0, dtype=torch.long)
        emb, idx = gather_embeddings(emb, idx)
        if len(idx) != expected or not torch.equal(idx, torch.arange(expected)):
            return None
        return emb

    def compute(self, subsets: Sequence[EvalSubset], keep_rankings: bool = False) -> dict[str, float]:
        """Search and score every subset; a collective call under DDP (every rank must make it).

        With ``keep_rankings``, ``self.rankings[name]`` holds afterwards, on every rank, the (queries,
        max K) gallery rows ranked for each query of subset ``name`` (-1 padded), in query order.
        """
        rank, world_size = world()
        results: dict[str, float] = {}
        for s, sub in enumerate(subsets):
            queries = self._collect(s, "query", len(sub.positives))
            gallery = self._collect(s, "gallery", sub.num_gallery)
            if queries is None or gallery is None:
                if rank == 0:
                    warnings.warn(f"evaluation of subset {sub.name or s!r} saw only part of its queries or "
                                  "gallery (limit_*_batches or fast_dev_run?): retrieval metrics are not "
                                  "computed for it", stacklevel=2)
                continue
            mine = torch.arange(rank, len(queries), world_size)  # this rank's share of the search
            ranked = search(queries[mine], gallery, max(self.ks),
                            [sub.excluded[i] for i in mine.tolist()], self.search)
            positives = pad_lists([sub.positives[i] for i in mine.tolist()],
                                  max(len(p) for p in sub.positives))
            prefix = f"{sub.name}/" if sub.name else ""
            device = collective_device()  # metric states are summed over ranks: NCCL needs them on the GPU
            for label, metric in (("Recall", HitRateAtK(self.ks)), ("MRR", MRRAtK(self.ks))):
                metric = metric.to(device)
                metric.update(ranked.to(device), positives.to(device))
                for k, v in metric.compute().items():
                    results[f"{prefix}{label}@{k}"] = float(v)
            if keep_rankings:
                self.rankings[sub.name] = gather_embeddings(ranked, mine)[0]
        return results


def loader_role(dataloader_idx: int) -> tuple[int, str]:
    """Which subset a loader belongs to and what it holds: loaders come in (queries, gallery) pairs.

    Example:
        >>> loader_role(0), loader_role(3)
        ((0, 'query'), (1, 'gallery'))
    """
    subset, kind = divmod(dataloader_idx, 2)
    return subset, "query" if kind == 0 else "gallery"


def subsets_from_loaders(loaders: Any) -> list[EvalSubset]:
    """The ``EvalSubset`` of each (queries, gallery) pair of evaluation loaders.

    Loaders come in pairs, queries first; the query dataset has ``positives`` (gallery rows per query)
    and may have ``excluded``, ``name`` and ``ids``; the gallery dataset may have ``ids``.
    """
    loaders = list(loaders) if isinstance(loaders, list | tuple) else [loaders]
    if len(loaders) % 2:
        raise CIRConfigError(f"evaluation needs (queries, gallery) pairs of dataloaders, got {len(loaders)}")
    subsets = []
    for q_loader, g_loader in zip(loaders[0::2], loaders[1::2], strict=True):
        queries, gallery = q_loader.dataset, g_loader.dataset
        if not hasattr(queries, "positives"):
            raise CIRConfigError("evaluation loaders must come in (queries, gallery) pairs whose query dataset "
                                 f"has `positives` (gallery rows per query); got {type(queries).__name__}")
        subsets.append(EvalSubset(getattr(queries, "name", ""), queries.positives,
                                  getattr(queries, "excluded", None) or [()] * len(queries), len(gallery),
                                  getattr(queries, "ids", None), getattr(gallery, "ids", None)))
    return subsets
