"""Chance levels: the closed forms equal the real metrics averaged over EVERY ordering of a small gallery."""

from __future__ import annotations

import itertools
from fractions import Fraction

import pytest
import torch

from cir_lightning.retrieval import EvalSubset
from cir_lightning.retrieval.metrics import hit_rate_at_k, positive_recall_at_k
from cir_lightning.retrieval.protocol import chance_level, random_hit_rate, subset_families, subset_protocol


@pytest.mark.parametrize(("items", "positives", "k"), [(6, 1, 1), (6, 1, 3), (6, 2, 2), (7, 3, 4), (5, 2, 9)])
def test_random_hit_rate_is_the_share_of_orderings_with_a_positive_in_the_first_k(items, positives, k):
    orders = list(itertools.permutations(range(items)))
    hits = sum(any(i < positives for i in order[:k]) for order in orders)  # items 0 .. P-1 are the positives
    assert random_hit_rate(items, positives, k) == float(Fraction(hits, len(orders)))


def test_chance_level_is_the_mean_metric_over_all_rankings_with_exclusions_and_candidates():
    # 6 gallery rows; query 0 excludes row 0 and has one positive, query 1 excludes nothing and has two,
    # query 2's candidates (CIRR's img_set minus reference) are rows 1, 2, 4
    sub = EvalSubset("", positives=[[3], [1, 5], [2]], excluded=[[0], [], [0]], num_gallery=6,
                     candidates=[[1, 2, 3], [1, 4, 5], [1, 2, 4]],
                     metrics={"recall": [1, 2, 4], "positive_recall": [2], "recall_subset": [1, 2], "mrr": [2]})
    ks = [1, 2, 4]
    want = {f"Recall@{k}": [] for k in ks} | {"PositiveRecall@2": []} | {f"Recall_subset@{k}": [] for k in (1, 2)}
    for pos, exc, cand in zip(sub.positives, sub.excluded, sub.candidates, strict=True):
        ranked_rows = [r for r in range(6) if r not in exc]
        orders = torch.tensor(list(itertools.permutations(ranked_rows)))
        positives = torch.tensor([pos] * len(orders))
        for i, k in enumerate(ks):
            want[f"Recall@{k}"].append(hit_rate_at_k(orders, positives, ks)[:, i].mean().item())
        want["PositiveRecall@2"].append(positive_recall_at_k(orders, positives, [2])[:, 0].mean().item())
        within = torch.tensor(list(itertools.permutations(cand)))
        for i, k in enumerate((1, 2)):
            want[f"Recall_subset@{k}"].append(hit_rate_at_k(within, torch.tensor([pos] * len(within)), [1, 2])[:, i]
                                              .mean().item())
    got = chance_level(sub, sub.metrics)
    assert set(got) == set(want)  # MRR has no chance level here
    for name, values in want.items():
        assert got[name] == pytest.approx(sum(values) / len(values), abs=1e-12), name


def test_the_protocol_record_names_the_families_and_cutoffs_used():
    fiq = EvalSubset("shirt", [[0]], [[]], 120, metrics={"recall": [1, 5, 10, 20, 50, 100]})
    assert subset_families(fiq, [1, 5, 10, 50]) == {"recall": [1, 5, 10, 20, 50, 100]}  # not the default Ks
    assert subset_protocol(fiq, [1, 5, 10, 50])["chance"]["Recall@100"] == pytest.approx(100 / 120)
    plain = EvalSubset("", [[0]], [[]], 10)
    assert subset_families(plain, [1, 3]) == {"recall": [1, 3], "mrr": [1, 3]}
    circo = EvalSubset("", [[0, 1]], [[]], 10, metrics={"map": [5, 10]})
    assert subset_protocol(circo, [1]) == {"metrics": {"map": [5, 10]}, "chance": {}}  # no closed form for mAP


def test_cut_offs_that_every_ranking_meets_are_warned_about_once():
    """The default Recall@50 on a gallery of 30 is 100% for any model: said once, with the subset and metric."""
    import warnings
    from types import SimpleNamespace

    from cir_lightning.retrieval import RetrievalEvaluator, SearchConfig
    from cir_lightning.retrieval.loop import EvaluationLoop

    loop = EvaluationLoop(RetrievalEvaluator(ks=[1, 5, 10, 50], search=SearchConfig(backend="torch")))
    trainer = SimpleNamespace(sanity_checking=False)
    module = SimpleNamespace(log_dict=lambda values, **how: None)
    gallery = torch.nn.functional.normalize(torch.randn(30, 8, generator=torch.Generator().manual_seed(0)), dim=1)
    # two queries over 30 images; the second excludes 25 of them, so even Recall@5 holds all its 5 candidates
    loaders = [SimpleNamespace(dataset=SimpleNamespace(positives=[(3,), (27,)], excluded=[(0,), tuple(range(25))])),
               SimpleNamespace(dataset=list(range(30)))]

    def epoch():
        loop.add_batch(trainer, 1, lambda kind: gallery, torch.arange(30))
        loop.add_batch(trainer, 0, lambda kind: gallery[[3, 27]], torch.arange(2))
        metrics = loop.finish(trainer, module, loaders, "val").metrics
        loop.reset()
        return metrics

    with pytest.warns(UserWarning, match=r"^Recall@50: 100% for any ranking, as every query's candidates fit in "
                                         r"the first K; .*a K of the protocol, or of `eval_ks`, reaches the gallery size") as caught:
        assert epoch()["Recall@50"] == 1.0
    # one warning, naming Recall@50 alone: at 5 and 10 the first query (29 candidates) keeps them below 100%
    assert len([w for w in caught if "100% for any ranking" in str(w.message)]) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per loop
        epoch()
