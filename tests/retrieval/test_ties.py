"""Identical gallery rows tie exactly (lower gallery index first) on every search path, even where the float32
matrix product rounds their scores apart (docs/protocols.md: ties go to the lower gallery index)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cir_lightning.retrieval import EvalSubset, RetrievalEvaluator, SearchConfig
from cir_lightning.retrieval.index import search_with_scores
from cir_lightning.retrieval.sharded import sharded_search
from cir_lightning.retrieval.ties import identical_rows, tie_identical

BACKENDS = [SearchConfig(), SearchConfig(backend="torch"), SearchConfig(backend="torch", chunk_size=7)]


def _gallery_with_a_copy(rows: int = 5000, dim: int = 768, queries: int = 256):
    """Row ``rows - 500`` is a copy of row 2; the queries lie close to that image."""
    g = torch.Generator().manual_seed(0)
    gallery = F.normalize(torch.randn(rows, dim, generator=g), dim=-1)
    gallery[rows - 500] = gallery[2]
    near = F.normalize(gallery[2] + 0.05 * torch.randn(queries, dim, generator=g), dim=-1)
    return gallery, near, rows - 500


@pytest.mark.parametrize("config", BACKENDS, ids=["faiss", "torch", "torch-chunked"])
def test_a_copied_gallery_row_ranks_after_the_original(config):
    gallery, queries, copy = _gallery_with_a_copy()
    ids, scores = search_with_scores(queries, gallery, 3, config=config)
    assert (ids[:, 0] == 2).all()  # the original first: equal similarity, lower index (faiss put the copy
    assert (ids[:, 1] == copy).all()  # first for about 1 query in 5 before identical rows were tied)
    assert torch.equal(scores[:, 0], scores[:, 1])
    # the metrics follow: the copy as the target is never at rank 1, always at rank 2
    evaluator = RetrievalEvaluator(search=config)
    evaluator.add(0, "gallery", gallery, torch.arange(len(gallery)))
    evaluator.add(0, "query", queries, torch.arange(len(queries)))
    subset = EvalSubset("", [[copy]] * len(queries), [[]] * len(queries), len(gallery), metrics={"recall": [1, 2]})
    assert evaluator.compute([subset]) == {"Recall@1": 0.0, "Recall@2": 1.0}


@pytest.mark.parametrize("config", BACKENDS, ids=["faiss", "torch", "torch-chunked"])
def test_an_excluded_row_stays_out_and_its_copy_stays_in(config):
    gallery, queries, copy = _gallery_with_a_copy(rows=1200, dim=64, queries=8)
    ids, _ = search_with_scores(queries, gallery, 2, excluded=[[2]] * 8, config=config)
    assert (ids[:, 0] == copy).all()
    assert not (ids == 2).any()
    ids, _ = search_with_scores(queries, gallery, 2, excluded=[[copy]] * 8, config=config)
    assert (ids[:, 0] == 2).all()
    assert not (ids == copy).any()


def test_groups_of_three_and_a_zero_sign():
    gallery = torch.tensor([[1.0, 0.0], [0.5, 0.5], [1.0, -0.0], [0.5, 0.5], [1.0, 0.0], [0.0, 1.0]])
    found = identical_rows(gallery)
    assert found.members == [[0, 2, 4], [1, 3]]  # -0.0 equals 0.0: the same similarity to every query
    assert found.group.tolist() == [0, 1, 0, 1, 0, -1]
    # a group seen anywhere in a ranking takes its best score there, all its members in index order
    ids, scores = tie_identical(torch.tensor([[5, 4, 3, -1]]), torch.tensor([[0.9, 0.8, 0.7, float("-inf")]]), found)
    assert ids.tolist() == [[5, 0, 2, 4, 1, 3]]
    assert scores[0].tolist() == pytest.approx([0.9, 0.8, 0.8, 0.8, 0.7, 0.7])


def test_unique_rows_are_left_alone():
    ids, scores = torch.tensor([[3, 1]]), torch.tensor([[0.5, 0.4]])
    assert identical_rows(torch.eye(4)) is None
    assert tie_identical(ids, scores, None) == (ids, scores)


def test_a_shard_holding_the_whole_gallery_equals_the_plain_search():
    gallery, queries, copy = _gallery_with_a_copy(rows=1200, dim=64, queries=8)
    excluded = [[2]] * 4 + [[]] * 4
    plain, _ = search_with_scores(queries, gallery, 5, excluded)
    assert torch.equal(sharded_search(queries, gallery, torch.arange(len(gallery)), 5, excluded), plain)
    assert plain[4:, :2].tolist() == [[2, copy]] * 4


@pytest.mark.parametrize("config", BACKENDS[:2], ids=["faiss", "torch"])
def test_thousands_of_identical_rows_stay_cheap_and_exact(config):
    """A broken model's blank embeddings: every row alike. The lowest rows come first, excluded ones left out;
    the expansion keeps only what can reach the results (k + excluded per query), not 3,000 rows per query."""
    gallery = torch.zeros(3000, 16)
    gallery[2999, 0] = 1.0
    queries = torch.ones(500, 16)
    ids, scores = search_with_scores(queries, gallery, 4, excluded=[[0, 2]] * 500, config=config)
    assert ids.tolist() == [[2999, 1, 3, 4]] * 500
    assert scores[:, 1:].eq(0).all()
