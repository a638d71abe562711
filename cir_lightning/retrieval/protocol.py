"""What an evaluated subset measures, and what a random ranking would score on it.

``subset_protocol`` is the record a results file keeps per subset: the metric families and the cut-offs
K it really used (a benchmark's own, e.g. FashionIQ's Recall@{1, ..., 100}, or the evaluator's default
``eval_ks``), and the chance level of each metric that has a closed form.

The chance level is the expected value of a metric under a uniformly random ranking of the items a query
is ranked over: its gallery minus its excluded rows (``M`` items, ``P`` of them positives). For a cut-off
``K <= M``:

- hit rate (``Recall@K``): ``1 - C(M - P, K) / C(M, K)``, the probability that the first K hold at least
  one positive (``C`` = binomial coefficient); 1 for ``K >= M`` when ``P > 0``;
- positive recall (``PositiveRecall@K``): ``K / M``, each positive lying in the first K with that
  probability;
- CIRR's ``Recall_subset@K``: the hit rate above over the query's candidates less its excluded rows
  (``M`` = their number, ``P`` = the positives among them).

The subset's chance level is the mean over its queries. MRR and mAP have no entry here.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from cir_lightning.retrieval.metrics import METRIC_FAMILIES

if TYPE_CHECKING:
    from cir_lightning.retrieval.evaluator import EvalSubset

__all__ = ["ADDABLE_FAMILIES", "DEFAULT_KS", "chance_level", "metric_names", "random_hit_rate", "subset_cutoffs",
           "subset_families", "subset_protocol", "with_added_ks"]

_CHANCE = ("recall", "positive_recall", "recall_subset")
"""The families with a chance level here (a closed form)."""


DEFAULT_KS = (1, 5, 10, 50)
"""The cut-offs of Recall@K and MRR@K for subsets without a protocol of their own, unless given."""
ADDABLE_FAMILIES = ("recall", "positive_recall", "mrr", "map")
"""The protocol families that cut-offs given explicitly are added to (not ``recall_subset``, whose K are bounded
by each query's few candidates)."""


def with_added_ks(metrics: Mapping[str, Sequence[int]] | None, added_ks: Sequence[int]) -> dict[str, list[int]] | None:
    """A protocol's metric families with ``added_ks`` (cut-offs the user asked for) added to each of the
    ``ADDABLE_FAMILIES``: the protocol's own K always stay, and a K asked for is never silently dropped.

    Example:
        >>> from cir_lightning.retrieval.protocol import with_added_ks
        >>> with_added_ks({"recall": [1, 5, 10, 50], "recall_subset": [1, 2, 3]}, [2, 20])
        {'recall': [1, 2, 5, 10, 20, 50], 'recall_subset': [1, 2, 3]}
        >>> with_added_ks(None, [2]) is None  # no protocol: the K asked for are the subset's K anyway
        True
    """
    if metrics is None:
        return None
    return {family: sorted({*map(int, ks), *map(int, added_ks)}) if family in ADDABLE_FAMILIES else [int(k) for k in ks]
            for family, ks in metrics.items()}


def random_hit_rate(num_items: int, num_positives: int, k: int) -> float:
    """Probability that the first ``k`` of a uniformly random order of ``num_items`` items hold at least one
    of its ``num_positives`` positives: ``1 - C(M - P, k) / C(M, k)``.

    Example:
        >>> from cir_lightning.retrieval.protocol import random_hit_rate
        >>> random_hit_rate(575, 1, 1) == 1 / 575, random_hit_rate(575, 1, 10) == 10 / 575
        (True, True)
        >>> random_hit_rate(10, 2, 3) == 1 - 56 / 120  # 1 - C(8, 3) / C(10, 3)
        True
        >>> random_hit_rate(5, 1, 9), random_hit_rate(5, 0, 3)
        (1.0, 0.0)
    """
    if num_positives <= 0 or num_items <= 0:
        return 0.0
    k = min(k, num_items)
    total = math.comb(num_items, k)  # exact integers, one correctly rounded division
    return (total - math.comb(max(num_items - num_positives, 0), k)) / total


def _mean_hit_rates(cases: Iterable[tuple[int, int]], ks: Sequence[int]) -> dict[int, float]:
    counts = Counter(cases)  # queries share (M, P) pairs: each pair is computed once
    total = sum(counts.values())
    return {k: sum(n * random_hit_rate(m, p, k) for (m, p), n in counts.items()) / total for k in ks}


def subset_families(subset: EvalSubset, default_ks: Sequence[int]) -> dict[str, list[int]]:
    """The metric families and cut-offs a subset is scored with: its own ``metrics``, else ``recall`` and
    ``mrr`` at ``default_ks`` (as ``RetrievalEvaluator.compute`` does); none without ground truth.

    Example:
        >>> from cir_lightning.retrieval import EvalSubset
        >>> from cir_lightning.retrieval.protocol import subset_families
        >>> subset_families(EvalSubset("", [[0]], [[]], 2), [1, 5])
        {'recall': [1, 5], 'mrr': [1, 5]}
        >>> subset_families(EvalSubset("dress", [[0]], [[]], 2, metrics={"recall": [10, 50]}), [1, 5])
        {'recall': [10, 50]}
    """
    return subset_cutoffs(subset, default_ks) if subset.positives is not None else {}


def subset_cutoffs(subset: EvalSubset, default_ks: Sequence[int]) -> dict[str, list[int]]:
    """``subset_families`` whether or not the subset has ground truth: what its rankings must reach."""
    families = subset.metrics if subset.metrics is not None else {"recall": default_ks, "mrr": default_ks}
    return {family: [int(k) for k in ks] for family, ks in families.items()}


def metric_names(subsets: Iterable[EvalSubset], default_ks: Sequence[int]) -> list[str]:
    """The names ``RetrievalEvaluator.compute`` gives the metrics of ``subsets`` (without a stage prefix).

    Example:
        >>> from cir_lightning.retrieval import EvalSubset
        >>> metric_names([EvalSubset("dress", [[0]], [[]], 2)], [1, 10])
        ['dress/Recall@1', 'dress/Recall@10', 'dress/MRR@1', 'dress/MRR@10']
    """
    return [f"{sub.name + '/' if sub.name else ''}{METRIC_FAMILIES[family][0]}@{k}" for sub in subsets
            for family, ks in subset_families(sub, default_ks).items() for k in ks]


def chance_level(subset: EvalSubset, families: Mapping[str, Sequence[int]]) -> dict[str, float]:
    """The expected metrics of a uniformly random ranking, for the families with a closed form (see the
    module's docstring), named like the evaluator's metrics (``"Recall@10"``, without subset prefix).

    Example:
        >>> from cir_lightning.retrieval import EvalSubset
        >>> from cir_lightning.retrieval.protocol import chance_level
        >>> sub = EvalSubset("", positives=[[1], [2]], excluded=[[0], [0]], num_gallery=5)  # M = 4, P = 1
        >>> chance_level(sub, {"recall": [1, 2], "mrr": [1]})
        {'Recall@1': 0.25, 'Recall@2': 0.5}
    """
    if subset.positives is None or subset.num_queries == 0:
        return {}
    out: dict[str, float] = {}
    pairs = [(set(pos), set(exc)) for pos, exc in zip(subset.positives, subset.excluded, strict=True)]
    for family, ks in families.items():
        if family not in _CHANCE:
            continue
        if family == "recall_subset":
            if subset.candidates is None:
                continue
            # the candidates in the query's ranked list: excluded rows (the reference) are never ranked
            cases = [(len(set(c) - exc), len(pos & (set(c) - exc)))
                     for (pos, exc), c in zip(pairs, subset.candidates, strict=True)]
            values = _mean_hit_rates(cases, ks)
        else:
            cases = [(subset.num_gallery - len(exc), len(pos - exc)) for pos, exc in pairs]
            if family == "recall":
                values = _mean_hit_rates(cases, ks)
            else:  # positive recall: each positive is in the first K with probability min(K, M) / M
                values = {k: sum(min(k, m) / m for m, p in cases if p and m) / len(cases) for k in ks}
        out.update({f"{METRIC_FAMILIES[family][0]}@{k}": v for k, v in values.items()})
    return out


def subset_protocol(subset: EvalSubset, default_ks: Sequence[int]) -> dict[str, Any]:
    """A results file's record of a subset: the families and cut-offs it was scored with (``metrics``; none
    without ground truth) and the chance level of those metrics (``chance``, fractions).

    Example:
        >>> from cir_lightning.retrieval import EvalSubset
        >>> from cir_lightning.retrieval.protocol import subset_protocol
        >>> subset_protocol(EvalSubset("", [[1]], [[0]], 3), [1])
        {'metrics': {'recall': [1], 'mrr': [1]}, 'chance': {'Recall@1': 0.5}}
        >>> subset_protocol(EvalSubset("", None, [[0]], 3), [1, 5])  # ranked only (a test split)
        {'metrics': {}, 'chance': {}}
    """
    families = subset_families(subset, default_ks)
    return {"metrics": families, "chance": chance_level(subset, families)}
