"""Search: FAISS and torch backends against brute force, exclusion equal to masking, -1 padding."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cir_lightning.retrieval.index import search


def brute_force(q, g, k, excluded):
    scores = q @ g.T
    out = []
    for i in range(len(q)):
        order = sorted(range(len(g)), key=lambda j: (-scores[i, j].item(), j))
        order = [j for j in order if j not in set(excluded[i])][:k]
        out.append(order + [-1] * (k - len(order)))
    return out


@pytest.mark.parametrize("backend", ["faiss", "torch"])
def test_search_with_exclusion_equals_masking_the_full_ranking(backend):
    g = torch.Generator().manual_seed(1)
    q = F.normalize(torch.randn(25, 8, generator=g), dim=-1)
    gal = F.normalize(torch.randn(40, 8, generator=g), dim=-1)
    excluded = [list(torch.randint(0, 40, (i % 4,), generator=g).tolist()) for i in range(25)]
    got = search(q, gal, k=10, excluded=excluded, backend=backend, chunk_size=7)
    assert got.tolist() == brute_force(q, gal, 10, excluded)


@pytest.mark.parametrize("backend", ["faiss", "torch"])
def test_k_larger_than_gallery_pads_with_minus_one(backend):
    q, gal = torch.eye(2, 3), torch.eye(3)
    got = search(q, gal, k=6, excluded=[[0], []], backend=backend)
    assert got.shape == (2, 6)
    assert got[0, :2].tolist() == [1, 2]
    assert (got[0, 2:] == -1).all()
    assert sorted(got[1, :3].tolist()) == [0, 1, 2]
    assert (got[1, 3:] == -1).all()


def test_input_checks():
    with pytest.raises(ValueError, match="dim"):
        search(torch.zeros(2, 3), torch.zeros(4, 5), k=1)
    with pytest.raises(ValueError, match="rows for"):
        search(torch.zeros(2, 3), torch.zeros(4, 3), k=1, excluded=[[0]])
    with pytest.raises(ValueError, match="2-d"):
        search(torch.zeros(3), torch.zeros(4, 3), k=1)


def test_bfloat16_and_grad_inputs_are_accepted():
    q = torch.randn(3, 4, requires_grad=True)
    gal = torch.randn(5, 4).bfloat16()
    assert search(q, gal, k=2, backend="faiss").shape == (3, 2)


def test_faiss_and_torch_agree_under_heavy_ties():
    g = torch.Generator().manual_seed(2)
    q = torch.randint(0, 2, (30, 3), generator=g).float()
    gal = torch.randint(0, 2, (50, 3), generator=g).float()
    excluded = [[i % 50] for i in range(30)]
    faiss_ids = search(q, gal, k=7, excluded=excluded, backend="faiss")
    torch_ids = search(q, gal, k=7, excluded=excluded, backend="torch")
    assert faiss_ids.tolist() == torch_ids.tolist() == brute_force(q, gal, 7, excluded)
