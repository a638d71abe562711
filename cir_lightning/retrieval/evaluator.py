"""Collects query and gallery embeddings over an evaluation epoch, then searches and scores once.

``RetrievalEvaluator`` knows nothing about models or data formats: it receives embeddings with their
dataset indices (``add``), and at the end the ground truth of each subset (``compute``). Under DDP it
gathers every rank's embeddings, splits the queries between ranks for the search, and lets the
sum-state metrics add the ranks' shares up, so every rank returns the numbers one process would.
"""

from __future__ import annotations

import warnings
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from cir_lightning.checks import cutoffs
from cir_lightning.errors import CIRConfigError, CIRDataError
from cir_lightning.retrieval import ground_truth as truth
from cir_lightning.retrieval.gather import collective_device, dedupe_by_index, gather_embeddings, world
from cir_lightning.retrieval.index import query_share, search_with_scores
from cir_lightning.retrieval.metrics import METRIC_FAMILIES, rank_within
from cir_lightning.retrieval.protocol import DEFAULT_KS, subset_cutoffs
from cir_lightning.retrieval.search_config import SearchConfig
from cir_lightning.retrieval.sharded import own_rows, sharded_search


@dataclass(frozen=True)
class EvalSubset:
    """Ground truth and protocol of one evaluated subset.

    Args:
        name: prefix of its metric names ("" for none, e.g. "dress" gives ``dress/Recall@10``).
        positives: per query, its relevant gallery rows; ``None`` when the split has no public ground
            truth (then only rankings are made, e.g. for a server submission).
        excluded: per query, gallery rows removed from its ranking.
        num_gallery: gallery size.
        query_ids: ids of the queries, in row order (for results files).
        gallery_ids: ids of the gallery items, in row order (for results files).
        metrics: metric family -> its cut-offs K, from ``METRIC_FAMILIES`` (default: ``recall`` and ``mrr`` at
            the evaluator's K).
        candidates: per query, the gallery rows its ``recall_subset`` ranking is restricted to (CIRR).
        depth: rank at least this many items per query (for prediction files), beyond the metrics' K.

    Example:
        >>> from cir_lightning.retrieval import EvalSubset
        >>> import torch
        >>> sub = EvalSubset("dress", positives=[[1], [0, 2]], excluded=[[0], []], num_gallery=3,
        ...                  query_ids=["q0", "q1"], gallery_ids=["a", "b", "c"])
        >>> sub.num_queries, sub.ranked_ids(torch.tensor([[1, 2], [2, -1]]))
        (2, {'q0': ['b', 'c'], 'q1': ['c']})
        >>> EvalSubset("", positives=[[0]], excluded=[[]], num_gallery=1, metrics={"ndcg": [10]})
        Traceback (most recent call last):
        ...
        cir_lightning.errors.CIRConfigError: subset '': unknown metric families ['ndcg']; known: [...]
    """

    name: str
    positives: Sequence[Sequence[int]] | None
    excluded: Sequence[Sequence[int]]
    num_gallery: int
    query_ids: Sequence[str] | None = None
    gallery_ids: Sequence[str] | None = None
    metrics: Mapping[str, Sequence[int]] | None = None
    candidates: Sequence[Sequence[int]] | None = None
    depth: int = 0

    def __post_init__(self) -> None:
        unknown = sorted(set(self.metrics or ()) - set(METRIC_FAMILIES))
        if unknown:
            raise CIRConfigError(f"subset {self.name!r}: unknown metric families {unknown}; known: {sorted(METRIC_FAMILIES)}")
        if "recall_subset" in (self.metrics or ()) and self.candidates is None:
            raise CIRConfigError(f"subset {self.name!r}: `recall_subset` needs per-query `candidates`")
        if self.positives is not None and len(self.positives) != len(self.excluded):
            raise CIRDataError(f"subset {self.name!r}: {len(self.positives)} positives rows for "
                             f"{len(self.excluded)} queries")
        truth.check_positives(self.name, self.positives, self.excluded, self.num_gallery, self.query_ids,
                              every_positive=bool({"positive_recall", "map"} & set(self.metrics or ())))

    @property
    def num_queries(self) -> int:
        return len(self.excluded)

    def ranked_ids(self, ranked: Tensor) -> dict[str, list[str]]:
        """Query id -> its ranked gallery ids, from rows of gallery indices (-1 dropped)."""
        if self.query_ids is None or self.gallery_ids is None:
            raise ValueError(f"subset {self.name!r} has no query / gallery ids to name its rankings")
        return {q: [self.gallery_ids[j] for j in row if j >= 0]
                for q, row in zip(self.query_ids, ranked.tolist(), strict=True)}


class RetrievalEvaluator:
    """Accumulate embeddings, then search each subset's gallery and compute its metrics.

    Args:
        ks: the cut-offs K of Recall@K (hit rate) and MRR@K for subsets without a protocol of their own
            (default ``DEFAULT_KS``); given explicitly, also added to the protocols' families (``with_added_ks``).
        search: how the gallery is searched (default: exact faiss ``Flat``; ``sharded`` under DDP).

    Example:
        >>> from cir_lightning.retrieval import EvalSubset, RetrievalEvaluator, SearchConfig
        >>> import torch
        >>> ev = RetrievalEvaluator(ks=[1, 2], search=SearchConfig(backend="torch"))
        >>> ev.add(0, "gallery", torch.eye(3), torch.arange(3))
        >>> ev.add(0, "query", torch.tensor([[0.1, 0.9, 0.0], [1.0, 0.0, 0.2]]), torch.tensor([0, 1]))
        >>> sub = EvalSubset("", positives=[[1], [2]], excluded=[[], [0]], num_gallery=3)
        >>> {k: round(v, 2) for k, v in ev.compute([sub]).items()}
        {'Recall@1': 1.0, 'Recall@2': 1.0, 'MRR@1': 1.0, 'MRR@2': 1.0}
    """

    def __init__(self, ks: Sequence[int] | None = None, search: SearchConfig | None = None) -> None:
        self.ks = cutoffs("ks", list(ks)) if ks is not None else list(DEFAULT_KS)
        self.added_ks = list(self.ks) if ks is not None else []
        self.search = search or SearchConfig()
        self.reset()

    def reset(self) -> None:
        self._parts: dict[tuple[int, str], list[tuple[Tensor, Tensor]]] = defaultdict(list)
        self._provided: dict[tuple[int, str], tuple[Tensor, Tensor]] = {}
        self.rankings: dict[str, Tensor] = {}
        self.subset_rankings: dict[str, Tensor] = {}
        self.scores: dict[str, Tensor] = {}
        self.galleries: dict[int, Tensor] = {}

    def add(self, subset: int, kind: str, embeddings: Tensor, indices: Tensor) -> None:
        """Store a batch of ``kind`` ("query" or "gallery") embeddings of subset ``subset`` (on CPU)."""
        if kind not in ("query", "gallery"):
            raise ValueError(f"`kind` must be 'query' or 'gallery', got {kind!r}")
        self._parts[(subset, kind)].append((embeddings.detach().float().cpu(), indices.detach().cpu()))

    def provide(self, subset: int, kind: str, embeddings: Tensor, indices: Tensor | None = None) -> None:
        """Give this rank embeddings it already has (e.g. from a cache): they are not gathered.

        Without ``indices`` they are the whole set in row order. With ``search.sharded``, each rank may
        provide its own part with ``indices``; otherwise every rank must provide the whole set.
        """
        if kind not in ("query", "gallery"):
            raise ValueError(f"`kind` must be 'query' or 'gallery', got {kind!r}")
        indices = torch.arange(len(embeddings)) if indices is None else indices.detach().cpu()
        self._provided[(subset, kind)] = (embeddings.detach().float().cpu(), indices)

    def _local(self, subset: int, kind: str) -> tuple[Tensor, Tensor]:
        parts = self._parts.get((subset, kind), [])
        if (subset, kind) in self._provided:
            parts = [*parts, self._provided[(subset, kind)]]
        if not parts:
            return torch.empty(0, 0), torch.empty(0, dtype=torch.long)
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])

    def _collect(self, subset: int, kind: str, expected: int) -> Tensor | None:
        """The whole set of ``kind`` embeddings in row order on every rank, or None if incomplete."""
        if (subset, kind) in self._provided and not self._parts.get((subset, kind)):
            emb, idx = self._provided[(subset, kind)]  # every rank has it already
        else:
            emb, idx = gather_embeddings(*self._local(subset, kind))
        if len(idx) != expected or not torch.equal(idx, torch.arange(expected)):
            return None
        return emb

    def _shard(self, subset: int, sub: EvalSubset) -> tuple[Tensor, Tensor] | None:
        """This rank's own gallery rows and their indices (sharded search), or None if incomplete."""
        emb, idx = dedupe_by_index(*self._local(subset, "gallery"))
        mine, complete = own_rows(idx, sub.num_gallery)
        truth.check_shard(emb[mine], idx[mine], f"gallery rows of subset {sub.name or subset!r}",  # a collective
                          sub.gallery_ids)
        return (emb[mine], idx[mine]) if complete else None

    def _depth(self, sub: EvalSubset, families: Mapping[str, Sequence[int]]) -> int:
        ks = [max(ks) for family, ks in families.items() if family != "recall_subset"]  # beyond the gallery: only
        return min(max([*ks, sub.depth, 1]), max(sub.num_gallery, 1))  # -1s (`eval_ks: [1e12]` failed to allocate)

    def compute(self, subsets: Sequence[EvalSubset], keep_rankings: bool = False) -> dict[str, float]:
        """Search and score every subset; a collective call under DDP (every rank must make it).

        With ``keep_rankings``, ``self.rankings[name]`` holds afterwards, on every rank, the (queries,
        depth) gallery rows ranked for each query of subset ``name`` (-1 padded), in query order, and
        ``self.subset_rankings[name]`` the ranking within its candidates, if it has any, and (unless the search is
        sharded) ``self.scores[name]`` the search's scores of the ranked rows (-inf at -1). Subsets without ground
        truth are always ranked. Unless sharded, ``self.galleries[i]`` holds the gathered gallery embeddings of ``i``.
        """
        check_names(subsets)
        rank, world_size = world()
        sharded = self.search.sharded and world_size > 1
        results: dict[str, float] = {}
        for s, sub in enumerate(subsets):
            queries = self._collect(s, "query", sub.num_queries)
            if sharded:
                shard = self._shard(s, sub)
                gallery = shard[0] if shard is not None else None
            else:
                gallery = self._collect(s, "gallery", sub.num_gallery)
            if queries is None or gallery is None:
                if rank == 0:
                    warnings.warn(f"evaluation of subset {sub.name or s!r} saw only part of its queries or "
                                  "gallery (limit_*_batches or fast_dev_run?): retrieval metrics are not "
                                  "computed for it", stacklevel=2)
                continue
            truth.check_embeddings(sub.name or s, queries, None if sharded else gallery,  # a shard: in _shard
                                   sub.query_ids, sub.gallery_ids)
            families = subset_cutoffs(sub, self.ks)
            mine = query_share(len(queries), sub.num_gallery, self.search, rank, world_size)  # maybe none
            excluded, depth = [sub.excluded[i] for i in mine.tolist()], self._depth(sub, families)
            if sharded:
                if sub.candidates is not None:
                    raise CIRConfigError(f"subset {sub.name!r}: rankings within candidates (recall_subset) "
                                         "need the whole gallery on every rank: turn `search.sharded` off")
                ranked, scores = sharded_search(queries, shard[0], shard[1], depth, sub.excluded, self.search)[mine], None
            else:
                self.galleries[s] = gallery
                ranked, scores = search_with_scores(queries[mine], gallery, depth, excluded, self.search)
            restricted = None if sub.candidates is None else rank_within(
                queries[mine], gallery, truth.candidate_table(sub.candidates, sub.excluded, mine.tolist()))
            if sub.positives is not None:
                results.update(self._score(sub, families, mine, ranked, restricted))
            if keep_rankings or sub.positives is None:
                self.rankings[sub.name] = gather_embeddings(ranked, mine)[0]
                if scores is not None:
                    self.scores[sub.name] = gather_embeddings(scores, mine)[0]
                if restricted is not None:
                    self.subset_rankings[sub.name] = gather_embeddings(restricted, mine)[0]
        return results

    def _score(self, sub: EvalSubset, families: Mapping[str, Sequence[int]], mine: Tensor, ranked: Tensor,
               restricted: Tensor | None) -> dict[str, float]:
        positives = truth.positive_table(sub.positives, mine.tolist())
        prefix = f"{sub.name}/" if sub.name else ""
        device = collective_device()  # metric states are summed over ranks: NCCL needs them on the GPU
        results = {}
        for family, ks in families.items():
            label, metric_class = METRIC_FAMILIES[family]
            metric = metric_class(ks).to(device)
            metric.update((restricted if family == "recall_subset" else ranked).to(device), positives.to(device))
            for k, v in metric.compute().items():
                results[f"{prefix}{label}@{k}"] = float(v)
        return results


def check_names(subsets: Sequence[EvalSubset]) -> None:
    """Subsets report their metrics and rankings under their names: two of one name would keep only one's.

    Example:
        >>> from cir_lightning.retrieval.evaluator import EvalSubset, check_names
        >>> check_names([EvalSubset("a", [[0]], [[]], 1), EvalSubset("a", [[0]], [[]], 1)])
        Traceback (most recent call last):
        ...
        cir_lightning.errors.CIRConfigError: evaluation subsets 0 and 1 are both named 'a': their metrics and \
rankings are reported under the name, so one would replace the other; give each query dataset its own `name`
    """
    twice = [name for name, n in Counter(sub.name for sub in subsets).items() if n > 1]
    if twice:
        first, second = [i for i, sub in enumerate(subsets) if sub.name == twice[0]][:2]
        raise CIRConfigError(f"evaluation subsets {first} and {second} are both named {twice[0]!r}: their metrics and "
                             "rankings are reported under the name, so one would replace the other; give each query "
                             "dataset its own `name`")
