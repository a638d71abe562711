"""Ranking metrics over FAISS-style results, as torchmetrics ``Metric``s with sum states.

Inputs are the ranked lists themselves, not scores: ``ranked`` (queries, L) holds gallery ids in
descending similarity with excluded ids already removed and ``-1`` where there is no result;
``positives`` (queries, P) holds each query's relevant gallery ids padded with ``-1``, or is a list of each
query's ids (padded here; ``ranked`` may be a list of lists too). Each class sums
per-query values and counts queries, so ``compute`` under DDP equals one process seeing every query,
as long as each query is updated on exactly one rank. The sums are kept as fixed-point integers
(resolution 2^-40 per query): integer addition is exact, so the result is bit-identical however the
queries are split over ranks or batches. (torchmetrics' own Retrieval* classes are not
used: they treat scores <= 0 as "not retrieved" and merge repeated query indexes.)

- ``HitRateAtK``: "Recall@K" as CIRR and FashionIQ define it: 1 if any positive is in the first K.
- ``PositiveRecallAtK``: "Recall@K" as the BGE-VL script computes it: |positives in the first K| /
  |positives|; equal to the hit rate when a query has one positive.
- ``SubsetRecallAtK``: CIRR's Recall_subset@K: the hit rate on each query's ranking restricted to its
  candidate set (``rank_within`` makes that ranking from the full similarities).
- ``MRRAtK``: 1 / rank of the first positive if that rank is <= K, else 0.
- ``MAPAtK``: CIRCO's mAP@K: AP@K = sum_{k<=K} P@k * rel_k / min(|positives|, K).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torchmetrics import Metric

from cir_lightning.retrieval.index import pad_lists

IdLists = Tensor | Sequence[Sequence[int]]
"""Gallery ids per query: a (queries, n) tensor padded with -1, or a list of each query's ids."""


def _tensors(ranked: IdLists, positives: IdLists) -> tuple[Tensor, Tensor]:
    ranked = ranked if isinstance(ranked, Tensor) else pad_lists(ranked)
    return ranked, (positives if isinstance(positives, Tensor) else pad_lists(positives)).to(ranked.device)


def relevance(ranked: IdLists, positives: IdLists) -> Tensor:
    """(queries, L) booleans: is ``ranked[q, r]`` one of the positives of ``q``? ``-1`` never is.

    Example:
        >>> relevance(torch.tensor([[3, 1, -1]]), torch.tensor([[1, -1]])).tolist()
        [[False, True, False]]
        >>> relevance(torch.tensor([[3, 1], [2, 0]]), [[1], [0, 2]]).tolist()  # each query's positives, as lists
        [[False, True], [True, True]]
    """
    ranked, positives = _tensors(ranked, positives)
    if ranked.ndim != 2 or positives.ndim != 2 or ranked.shape[0] != positives.shape[0]:
        raise ValueError(f"`ranked` {tuple(ranked.shape)} and `positives` {tuple(positives.shape)} must be "
                         "2-d with one row per query")
    hit = (ranked.unsqueeze(-1) == positives.unsqueeze(1)).any(-1)
    return hit & (ranked >= 0)


def hit_rate_at_k(ranked: IdLists, positives: IdLists, ks: Sequence[int]) -> Tensor:
    """Per-query hit (0/1) at each K: (queries, len(ks)), float64. K beyond the list uses the whole list.

    Example:
        >>> hit_rate_at_k(torch.tensor([[5, 2, 7], [1, 0, -1]]), torch.tensor([[2], [4]]), [1, 2, 10]).tolist()
        [[0.0, 1.0, 1.0], [0.0, 0.0, 0.0]]
    """
    rel = relevance(ranked, positives)
    return torch.stack([rel[:, :k].any(1) for k in ks], dim=1).double()


def positive_recall_at_k(ranked: IdLists, positives: IdLists, ks: Sequence[int]) -> Tensor:
    """Per-query fraction of its positives found in the first K: (queries, len(ks)), float64.

    Example:
        >>> positive_recall_at_k(torch.tensor([[5, 2, 7]]), torch.tensor([[2, 7, 9, -1]]), [1, 2, 3]).tolist()
        [[0.0, 0.3333333333333333, 0.6666666666666666]]
    """
    ranked, positives = _tensors(ranked, positives)
    rel = relevance(ranked, positives).double()
    n_pos = (positives >= 0).sum(1).clamp(min=1).double()
    return torch.stack([rel[:, :k].sum(1) / n_pos for k in ks], dim=1)


def average_precision_at_k(ranked: IdLists, positives: IdLists, ks: Sequence[int]) -> Tensor:
    """Per-query AP@K (CIRCO): sum_{k<=K} P@k * rel_k / min(|positives|, K): (queries, len(ks)), float64.

    Example:
        >>> # relevant at ranks 1 and 3 of 2 positives: AP@3 = (1/1 + 2/3) / 2
        >>> average_precision_at_k(torch.tensor([[4, 8, 6]]), torch.tensor([[4, 6]]), [1, 3]).tolist()
        [[1.0, 0.8333333333333333]]
    """
    ranked, positives = _tensors(ranked, positives)
    rel = relevance(ranked, positives).double()
    ranks = torch.arange(1, rel.shape[1] + 1, device=rel.device, dtype=torch.float64)
    precision_hits = rel.cumsum(1) / ranks * rel  # P@k at the relevant positions, 0 elsewhere
    n_pos = (positives >= 0).sum(1).double()
    # float(k): a K past int64 (`eval_ks: [1e23]`) was an OverflowError
    return torch.stack([precision_hits[:, :k].sum(1) / n_pos.clamp(max=float(k)).clamp(min=1) for k in ks], dim=1)


def rank_within(queries: Tensor, gallery: Tensor, candidates: Tensor) -> Tensor:
    """Each query's candidates (gallery rows, -1 padded) sorted by similarity, ties to the lower row.

    This is the restricted ranking of CIRR's Recall_subset: the order of the candidates in the full
    ranking, computed without searching the whole gallery.

    Example:
        >>> g = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.7, 0.7]])
        >>> rank_within(torch.tensor([[0.0, 1.0]]), g, torch.tensor([[0, 2, -1]])).tolist()
        [[2, 0, -1]]
    """
    valid = candidates >= 0
    vectors = gallery[candidates.clamp(min=0)]  # (Q, C, D)
    scores = torch.einsum("qd,qcd->qc", queries.float(), vectors.float())
    scores = scores.masked_fill(~valid, float("-inf"))
    # stable sort on rows pre-sorted by candidate id gives ties to the lower gallery row
    by_id = candidates.masked_fill(~valid, torch.iinfo(candidates.dtype).max).argsort(dim=1, stable=True)
    scores, cands = scores.gather(1, by_id), candidates.gather(1, by_id)
    order = scores.argsort(dim=1, descending=True, stable=True)
    return cands.gather(1, order).masked_fill(~valid.gather(1, by_id).gather(1, order), -1)


def reciprocal_rank_at_k(ranked: IdLists, positives: IdLists, ks: Sequence[int]) -> Tensor:
    """Per-query reciprocal rank of the first positive, 0 beyond K: (queries, len(ks)), float64.

    Example:
        >>> reciprocal_rank_at_k(torch.tensor([[5, 2, 7, 2]]), torch.tensor([[7, 2]]), [1, 2, 4]).tolist()
        [[0.0, 0.5, 0.5]]
    """
    rel = relevance(ranked, positives)
    ranks = torch.arange(1, rel.shape[1] + 1, device=rel.device, dtype=torch.float64)
    rr = torch.where(rel, 1.0 / ranks, torch.zeros_like(ranks))
    rr = torch.cat([rr, rr.new_zeros(rr.shape[0], 1)], dim=1)  # so an empty list gives 0, not an error
    return torch.stack([rr[:, :k].amax(1) for k in ks], dim=1)


_SCALE = 2**40  # fixed-point scale of the sum states: 2^23 (8M) queries fit in int64


class _MeanAtK(Metric):
    """Mean over queries of a per-query value at several cut-offs; ``compute`` returns ``{k: value}``."""

    is_differentiable = False
    higher_is_better = True
    full_state_update = False
    _fn = staticmethod(hit_rate_at_k)

    def __init__(self, ks: Sequence[int] = (1, 5, 10, 50), **kwargs) -> None:
        super().__init__(**kwargs)
        if not ks or any(int(k) < 1 for k in ks):
            raise ValueError(f"`ks` must be positive integers, got {list(ks)}")
        self.ks = [int(k) for k in ks]
        self.add_state("total", default=torch.zeros(len(self.ks), dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("count", default=torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    def update(self, ranked: IdLists, positives: IdLists) -> None:
        values = self._fn(ranked, positives, self.ks)  # (queries, len(ks)) in [0, 1], float64
        self.total += (values * _SCALE).round().long().sum(0).to(self.total.device)
        self.count += values.shape[0]

    def compute(self) -> dict[int, Tensor]:
        if self.count == 0:
            raise RuntimeError(f"{type(self).__name__}.compute() called before any query was added")
        return {k: self.total[i].double() / _SCALE / self.count for i, k in enumerate(self.ks)}


class HitRateAtK(_MeanAtK):
    """Recall@K as a hit rate (CIRR, FashionIQ): the fraction of queries with a positive in the top K.

    States: ``total`` (per-K sum of hits, fixed-point int64, sum-reduced) and ``count`` (queries,
    sum-reduced).

    Example:
        >>> from cir_lightning.retrieval import HitRateAtK
        >>> import torch
        >>> m = HitRateAtK(ks=[1, 2])
        >>> m.update(torch.tensor([[4, 2], [1, 3]]), torch.tensor([[2], [1]]))
        >>> {k: round(float(v), 2) for k, v in m.compute().items()}
        {1: 0.5, 2: 1.0}
    """

    _fn = staticmethod(hit_rate_at_k)


class PositiveRecallAtK(_MeanAtK):
    """Recall@K as the fraction of each query's positives found in the top K (BGE-VL's script).

    States: ``total`` (per-K sum of per-query fractions, fixed-point int64, sum-reduced) and ``count`` (sum-reduced).

    Example:
        >>> from cir_lightning.retrieval import PositiveRecallAtK
        >>> import torch
        >>> m = PositiveRecallAtK(ks=[1, 2])
        >>> m.update(torch.tensor([[4, 2], [1, 3]]), torch.tensor([[2, 9], [1, -1]]))
        >>> {k: round(float(v), 2) for k, v in m.compute().items()}
        {1: 0.5, 2: 0.75}
    """

    _fn = staticmethod(positive_recall_at_k)


class SubsetRecallAtK(_MeanAtK):
    """CIRR's Recall_subset@K: the hit rate on rankings restricted to each query's candidate set.

    ``update`` takes the restricted rankings (see ``rank_within``) in place of the full ones.
    States as ``HitRateAtK``.

    Example:
        >>> from cir_lightning.retrieval import SubsetRecallAtK
        >>> import torch
        >>> m = SubsetRecallAtK(ks=[1, 2])
        >>> m.update(torch.tensor([[7, 3, 5], [3, 5, 7]]), torch.tensor([[3], [3]]))
        >>> {k: round(float(v), 2) for k, v in m.compute().items()}
        {1: 0.5, 2: 1.0}
    """

    _fn = staticmethod(hit_rate_at_k)


class MAPAtK(_MeanAtK):
    """CIRCO's mAP@K: the mean over queries of AP@K = sum_{k<=K} P@k * rel_k / min(|positives|, K).

    States: ``total`` (per-K sum of AP@K, fixed-point int64, sum-reduced) and ``count`` (sum-reduced).

    Example:
        >>> from cir_lightning.retrieval import MAPAtK
        >>> import torch
        >>> m = MAPAtK(ks=[2])
        >>> m.update(torch.tensor([[4, 8], [1, 3]]), torch.tensor([[8, -1], [1, 3]]))
        >>> {k: round(float(v), 3) for k, v in m.compute().items()}
        {2: 0.75}
    """

    _fn = staticmethod(average_precision_at_k)


class MRRAtK(_MeanAtK):
    """MRR@K: the mean over queries of 1 / rank of the first positive, 0 when it is not in the top K.

    States: ``total`` (per-K sum of reciprocal ranks, fixed-point int64, sum-reduced) and ``count`` (sum-reduced).

    Example:
        >>> from cir_lightning.retrieval import MRRAtK
        >>> import torch
        >>> m = MRRAtK(ks=[1, 2])
        >>> m.update(torch.tensor([[4, 2], [1, 3]]), torch.tensor([[2], [1]]))
        >>> {k: round(float(v), 2) for k, v in m.compute().items()}
        {1: 0.5, 2: 0.75}
    """

    _fn = staticmethod(reciprocal_rank_at_k)


METRIC_FAMILIES: dict[str, tuple[str, type[Metric]]] = {
    "recall": ("Recall", HitRateAtK), "positive_recall": ("PositiveRecall", PositiveRecallAtK), "mrr": ("MRR", MRRAtK),
    "map": ("mAP", MAPAtK), "recall_subset": ("Recall_subset", SubsetRecallAtK)}
"""Metric families a subset can ask for: name in ``EvalSubset.metrics`` -> (logged name, Metric)."""
