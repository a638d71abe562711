"""The evaluator's metrics against their definitions (docs/protocols.md), on cases where a shortcut goes wrong:
the reference among CIRR's candidates, positives listed twice, queries that can never hit, embeddings that are
not finite; and a brute-force reference on random cases with exact ties, fed in unequal, shuffled, repeated parts."""

from __future__ import annotations

import random

import pytest
import torch

from cir_lightning.errors import CIRConfigError, CIRDataError
from cir_lightning.retrieval import EvalSubset, RetrievalEvaluator, SearchConfig
from cir_lightning.retrieval.protocol import chance_level

BACKENDS = [SearchConfig(backend="torch"), SearchConfig(backend="faiss")]


def _evaluate(queries, gallery, sub, search, parts=None):
    ev = RetrievalEvaluator(search=search)
    for kind, x in (("gallery", gallery), ("query", queries)):
        for rows in parts(len(x)) if parts else [list(range(len(x)))]:
            ev.add(0, kind, x[rows], torch.tensor(rows, dtype=torch.long))
    return ev.compute([sub], keep_rankings=True), ev


@pytest.mark.parametrize("search", BACKENDS)
def test_recall_subset_never_ranks_the_excluded_reference_even_if_it_is_a_candidate(search):
    # scores 2, 1, 0, 3: the ranking without the reference (row 0) is 3, 1, 2; within the img_set {0, 1, 2}
    # less the reference: 1, 2, so the target (1) is first
    gallery = torch.tensor([[1.0, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0]])
    sub = EvalSubset("cirr", positives=[[1]], excluded=[[0]], num_gallery=4,
                     metrics={"recall": [1, 2], "recall_subset": [1, 2]}, candidates=[[0, 1, 2]])
    got, ev = _evaluate(torch.tensor([[2.0, 1, 0]]), gallery, sub, search)
    assert got == {"cirr/Recall@1": 0.0, "cirr/Recall@2": 1.0, "cirr/Recall_subset@1": 1.0,
                   "cirr/Recall_subset@2": 1.0}
    assert [j for j in ev.subset_rankings["cirr"][0].tolist() if j >= 0] == [1, 2]


def test_recall_subset_chance_level_counts_only_candidates_in_the_ranking():
    # img_set {0, 1, 2} less the excluded reference 0: two candidates, one positive -> 1/2 at K = 1
    sub = EvalSubset("", positives=[[1]], excluded=[[0]], num_gallery=4, metrics={"recall_subset": [1, 2]},
                     candidates=[[0, 1, 2]])
    assert chance_level(sub, {"recall_subset": [1, 2]}) == {"Recall_subset@1": 0.5, "Recall_subset@2": 1.0}


@pytest.mark.parametrize("search", BACKENDS)
def test_a_positive_listed_twice_counts_once(search):
    # ranking 0, 1, 2; positives {0, 2}: PositiveRecall@1 = 1/2, AP@3 = (1/1 + 2/3) / min(2, 3)
    sub = EvalSubset("", positives=[[2, 0, 2]], excluded=[[]], num_gallery=3,
                     metrics={"positive_recall": [1, 3], "map": [1, 3]})
    got, _ = _evaluate(torch.tensor([[3.0, 2, 1]]), torch.eye(3), sub, search)
    assert got == pytest.approx({"PositiveRecall@1": 0.5, "PositiveRecall@3": 1.0, "mAP@1": 1.0, "mAP@3": 5 / 6},
                                abs=1e-12)


@pytest.mark.parametrize(("positives", "excluded"), [
    ([[1], []], [[], []]),  # no positive
    ([[1], [7]], [[], []]),  # outside the gallery
    ([[1], [2, 0]], [[], [0, 2]]),  # every positive excluded
])
def test_a_query_that_can_never_hit_is_an_error_naming_it(positives, excluded):
    with pytest.raises(CIRDataError, match=r"1 of 2 queries have no positive that can be retrieved.*'q1'"):
        EvalSubset("", positives, excluded, num_gallery=3, query_ids=["q0", "q1"])
    EvalSubset("", None, excluded, num_gallery=3)  # no ground truth (a test split): nothing to check


@pytest.mark.parametrize("search", BACKENDS)
@pytest.mark.parametrize(("kind", "value"), [("query", float("nan")), ("gallery", float("inf")),
                                             ("gallery", float("-inf")), ("gallery", float("nan"))])
def test_embeddings_that_are_not_finite_are_an_error_not_a_number(search, kind, value):
    queries, gallery = torch.randn(3, 4), torch.randn(5, 4)
    (queries if kind == "query" else gallery)[1, 2] = value
    sub = EvalSubset("toy", positives=[[0], [1], [2]], excluded=[[], [], []], num_gallery=5,
                     query_ids=["q0", "q1", "q2"], gallery_ids=["g0", "g1", "g2", "g3", "g4"])
    with pytest.raises(CIRDataError, match=rf"1 of the {'queries' if kind == 'query' else 'gallery rows'} of "
                                           rf"subset 'toy' are not finite \(NaN or inf\): rows 1 \(ids {kind[0]}1\)"):
        _evaluate(queries, gallery, sub, search)


def _brute_force(queries, gallery, positives, excluded, candidates, ks):
    """Each metric by its definition, from every gallery row sorted by (score desc, row asc), excluded removed."""
    scores = (queries.double() @ gallery.double().T).tolist()  # small integers: exact
    out: dict[str, list[float]] = {}
    for i, row in enumerate(scores):
        ranked = [j for j in sorted(range(len(row)), key=lambda j: (-row[j], j)) if j not in excluded[i]]
        pos = set(positives[i])
        within = [j for j in ranked if j in candidates[i]]
        for k in ks:
            hits = [j in pos for j in ranked[:k]]
            precision_sum = sum(sum(hits[:r + 1]) / (r + 1) for r, h in enumerate(hits) if h)
            first = next((r + 1 for r, h in enumerate(hits) if h), None)
            for name, value in ((f"Recall@{k}", float(any(hits))), (f"PositiveRecall@{k}", sum(hits) / len(pos)),
                                (f"MRR@{k}", 1 / first if first else 0.0),
                                (f"mAP@{k}", precision_sum / min(len(pos), k)),
                                (f"Recall_subset@{k}", float(any(j in pos for j in within[:k])))):
                out.setdefault(name, []).append(value)
    return {name: sum(v) / len(v) for name, v in out.items()}


def _shuffled_parts(rng):
    def parts(n):  # unequal parts in a random order, and a few rows added twice (DistributedSampler's padding)
        rows = rng.sample(range(n), n)
        cuts = sorted(rng.sample(range(1, n), min(3, n - 1))) if n > 1 else []
        return [rows[a:b] for a, b in zip([0, *cuts], [*cuts, n], strict=True)] + [rows[:2]]
    return parts


@pytest.mark.parametrize("seed", range(4))
def test_evaluator_equals_the_definitions_on_random_cases_with_exact_ties(seed):
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    num_q, num_g, ks = rng.randint(1, 15), rng.randint(2, 30), [1, 2, 3, 5, 10, 40]
    # small integers: exact scores, so equal scores are real ties; repeated rows and an all-zero row too
    queries = torch.randint(-1, 3, (num_q, 3), generator=gen).float()
    gallery = torch.randint(-1, 3, (num_g, 3), generator=gen).float()
    gallery[rng.randrange(num_g)] = 0
    gallery[rng.randrange(num_g)] = gallery[rng.randrange(num_g)]
    positives = [rng.sample(range(num_g), rng.randint(1, min(8, num_g))) for _ in range(num_q)]
    excluded = [rng.sample([j for j in range(num_g) if j not in p], min(num_g - len(p), rng.randint(0, 3)))
                for p in positives]
    candidates = [rng.sample(range(num_g), min(num_g, 6)) for _ in range(num_q)]  # may hold excluded rows
    sub = EvalSubset("", positives, excluded, num_g, candidates=candidates,
                     metrics={"recall": ks, "positive_recall": ks, "mrr": ks, "map": ks, "recall_subset": ks})
    expected = _brute_force(queries, gallery, positives, excluded, candidates, ks)
    for search in (*BACKENDS, SearchConfig(backend="torch", chunk_size=2)):
        got, _ = _evaluate(queries, gallery, sub, search, _shuffled_parts(rng))
        assert got == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize(("positives", "excluded"), [([[0, 1]], [[1]]), ([[0, 7]], [[]]), ([[0, -1]], [[]])])
@pytest.mark.parametrize("family", ["positive_recall", "map"])
def test_a_positive_that_can_never_be_ranked_is_an_error_not_a_lower_score(positives, excluded, family):
    # PositiveRecall and mAP divide by the positives: a perfect ranking scored 0.5 here, against a chance level of 1
    with pytest.raises(CIRDataError, match=r"subset 'toy': 1 of 1 queries list a positive that cannot be retrieved "
                                           r".*'q0' \(positives \[0, -?\d\], excluded \[\d?\]\)$"):
        EvalSubset("toy", positives, excluded, num_gallery=3, query_ids=["q0"], metrics={family: [1], "recall": [1]})
    EvalSubset("toy", [[0, 1, 1]], [[2]], num_gallery=3, metrics={family: [1]})  # listed twice: one positive, fine


@pytest.mark.parametrize("search", BACKENDS)
def test_hit_rate_and_mrr_count_any_positive_so_an_unreachable_extra_one_is_accepted(search):
    sub = EvalSubset("toy", [[0, 1]], [[1]], num_gallery=3)  # default families: Recall and MRR
    metrics, _ = _evaluate(torch.eye(3)[:1], torch.eye(3), sub, search)
    assert metrics["toy/Recall@1"] == 1.0


def test_positives_and_queries_of_another_length_are_one_line():
    with pytest.raises(CIRDataError, match=r"subset 'toy': 1 positives rows for 2 queries"):
        EvalSubset("toy", [[0]], [[], []], num_gallery=3)


def test_two_subsets_of_one_name_are_refused_before_one_replaces_the_other():
    from torch.utils.data import DataLoader

    from cir_lightning.retrieval import subsets_from_loaders

    class Queries(list):
        positives = [[0]]

    loaders = [DataLoader(Queries([0])), DataLoader([0, 1]), DataLoader(Queries([0])), DataLoader([0, 1])]
    message = r"evaluation subsets 0 and 1 are both named '': .* give each query dataset its own `name`"
    with pytest.raises(CIRConfigError, match=message):
        subsets_from_loaders(loaders)
    evaluator = RetrievalEvaluator(ks=[1], search=SearchConfig(backend="torch"))
    for s in (0, 1):
        evaluator.add(s, "gallery", torch.eye(2), torch.arange(2))
        evaluator.add(s, "query", torch.tensor([[1.0, 0.0]]), torch.tensor([0]))
    with pytest.raises(CIRConfigError, match=message):  # subsets made by hand: refused by compute too
        evaluator.compute([EvalSubset("", [[0]], [[]], 2), EvalSubset("", [[1]], [[]], 2)])
