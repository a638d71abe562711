"""Search: FAISS and torch backends against brute force, exclusion equal to masking, -1 padding."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cir_lightning.errors import CIRConfigError
from cir_lightning.retrieval.backends import build_index
from cir_lightning.retrieval.index import search, search_with_scores
from cir_lightning.retrieval.search_config import SearchConfig


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
    got = search(q, gal, k=10, excluded=excluded, config=SearchConfig(backend=backend, chunk_size=7))
    assert got.tolist() == brute_force(q, gal, 10, excluded)


@pytest.mark.parametrize("backend", ["faiss", "torch"])
def test_k_larger_than_gallery_pads_with_minus_one(backend):
    q, gal = torch.eye(2, 3), torch.eye(3)
    got = search(q, gal, k=6, excluded=[[0], []], config=SearchConfig(backend=backend))
    assert got.shape == (2, 6)
    assert got[0, :2].tolist() == [1, 2]
    assert (got[0, 2:] == -1).all()
    assert sorted(got[1, :3].tolist()) == [0, 1, 2]
    assert (got[1, 3:] == -1).all()


@pytest.mark.parametrize("backend", ["faiss", "torch"])
def test_a_k_whose_padding_cannot_be_held_is_refused_naming_k_and_the_gallery(backend):
    """The result stays k wide (-1 padded): a k of 10^12 was torch's 'can't allocate memory' error."""
    config = SearchConfig(backend=backend)
    for gallery in (torch.eye(3), torch.empty(0, 3)):
        with pytest.raises(CIRConfigError, match=f"`k` 1000000000000 is more than the {len(gallery)} gallery rows"):
            search(torch.eye(2, 3), gallery, k=10**12, config=config)
    ids, scores = search_with_scores(torch.eye(2, 3), torch.eye(3), k=1000, config=config)  # wide, but small
    assert ids.shape == scores.shape == (2, 1000)
    assert (ids[:, 3:] == -1).all()
    assert search(torch.empty(0, 3), torch.eye(3), k=10**12).shape == (0, 10**12)  # no queries: nothing to hold


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
    assert search(q, gal, k=2).shape == (3, 2)


def test_faiss_and_torch_agree_under_heavy_ties():
    g = torch.Generator().manual_seed(2)
    q = torch.randint(0, 2, (30, 3), generator=g).float()
    gal = torch.randint(0, 2, (50, 3), generator=g).float()
    excluded = [[i % 50] for i in range(30)]
    faiss_ids = search(q, gal, k=7, excluded=excluded)
    torch_ids = search(q, gal, k=7, excluded=excluded, config=SearchConfig(backend="torch"))
    assert faiss_ids.tolist() == torch_ids.tolist() == brute_force(q, gal, 7, excluded)


def test_torch_backend_blocks_and_ties_equal_brute_force(monkeypatch):
    import cir_lightning.retrieval.backends as backends

    monkeypatch.setattr(backends, "_BLOCK_ELEMENTS", 120)  # 2 queries per block of a 50-image gallery
    g = torch.Generator().manual_seed(3)
    q = torch.randint(0, 2, (9, 3), generator=g).float()
    gal = torch.randint(0, 2, (50, 3), generator=g).float()  # 8 distinct vectors: ties everywhere
    for k in (1, 7, 49, 50, 60):
        expected = brute_force(q, gal, k, [[] for _ in range(9)])
        got = search(q, gal, k=k, config=SearchConfig(backend="torch", chunk_size=1024))
        assert got.tolist() == expected


def _clustered(n: int, seed: int = 0, dim: int = 16, labels: bool = False):
    g = torch.Generator().manual_seed(seed)
    centres = F.normalize(torch.randn(8, dim, generator=g), dim=-1)
    cluster = torch.randint(0, 8, (n,), generator=g)
    x = F.normalize(centres[cluster] + 0.05 * torch.randn(n, dim, generator=g), dim=-1)
    return (x, cluster) if labels else x


@pytest.mark.parametrize(("factory", "params"), [
    ("IVF8,Flat", {"nprobe": 8}),      # all lists visited: exact
    ("HNSW32", {"ef_search": 256}),     # deep search on a small gallery: exact in practice
    ("IVF4,PQ4", {"nprobe": 4}),
])
def test_approximate_indexes_use_inner_product_and_find_the_neighbours(factory, params):
    gallery, cluster = _clustered(2000, labels=True)
    queries = gallery[:50] + 0.01 * F.normalize(torch.randn(50, 16), dim=-1)
    got = search(queries, gallery, k=10, config=SearchConfig(factory=factory, **params))
    # every hit lies in the query's cluster (a random list would hit 1 in 8)
    assert (cluster[got] == cluster[:50, None]).float().mean() > 0.99
    if "PQ" not in factory:
        exact = search(queries, gallery, k=10)
        overlap = sum(len(set(a) & set(b)) for a, b in zip(got.tolist(), exact.tolist(), strict=True)) / 500
        assert overlap > 0.99
        assert (got[:, 0] == torch.arange(50)).float().mean() > 0.95  # the query's own source comes first


def test_ivf_with_too_few_vectors_shrinks_nlist_with_a_warning():
    gallery = _clustered(200)
    with pytest.warns(UserWarning, match=r"too few to train 256 IVF lists .* using IVF5"):  # faiss cannot train it
        got = search(gallery[:5], gallery, k=3, config=SearchConfig(factory="IVF256,Flat", nprobe=5))
    assert got[:, 0].tolist() == [0, 1, 2, 3, 4]
    # fewer than faiss's advised 39 per list, but trainable: built as given, as faiss (and BGE-VL's script) do
    with pytest.warns(UserWarning, match=r"200 gallery vectors train 64 IVF lists, fewer than .* built as given"):
        index = build_index(gallery, SearchConfig(factory="IVF64,Flat"))
    import faiss

    assert faiss.extract_index_ivf(index).nlist == 64


def test_bad_index_settings_are_clear_errors_when_the_config_is_made():
    # before any embedding: the index type is built empty, its parameters set (faiss asserted on nprobe 0
    # only after the whole gallery had been embedded)
    with pytest.raises(CIRConfigError, match="`search.factory` 'Nonsense12': faiss cannot build it: could not parse"):
        SearchConfig(factory="Nonsense12")
    with pytest.raises(CIRConfigError, match="`search.ef_search`: index `Flat` has no parameter `efSearch`"):
        SearchConfig(factory="Flat", ef_search=10)
    with pytest.raises(CIRConfigError, match="`search.nprobe` must be an integer >= 1, got 0"):
        SearchConfig(factory="IVF2,Flat", nprobe=0)
    with pytest.raises(CIRConfigError, match="`search.chunk_size` must be an integer >= 1, got -3"):
        SearchConfig(backend="torch", chunk_size=-3)
    with pytest.raises(CIRConfigError, match="`k` must be an integer >= 1, got 0"):
        search(torch.eye(2), torch.eye(2), k=0)
    with pytest.raises(CIRConfigError, match="for dimension 30: .*"):  # PQ16 needs a dimension divisible by 16
        SearchConfig(factory="PQ16").check(dim=30)
    gallery = _clustered(100)
    with pytest.raises(CIRConfigError, match="cannot train index `PQ4` on 100 gallery vectors"):
        search(gallery, gallery, k=1, config=SearchConfig(factory="PQ4"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown where there is no GPU")
def test_gpu_index_without_gpu_says_what_to_install():
    with pytest.raises(CIRConfigError, match="faiss build with GPU support"):
        search(torch.eye(3), torch.eye(3), k=1, config=SearchConfig(device="cuda"))


@pytest.mark.parametrize("factory", ["Flat", "IVF2,Flat", "HNSW8"])
def test_every_index_type_ranks_by_inner_product_not_distance(factory):
    import faiss


    gallery = torch.tensor([[1.0, 0.0], [10.0, 0.5]] * 40)  # L2 would rank row 0 first, inner product row 1
    assert build_index(gallery, SearchConfig(factory=factory)).metric_type == faiss.METRIC_INNER_PRODUCT
    got = search(torch.tensor([[1.0, 0.0]]), gallery, k=1, config=SearchConfig(factory=factory, nprobe=2)
                 if "IVF" in factory else SearchConfig(factory=factory))
    assert got.item() % 2 == 1


@pytest.mark.parametrize("backend", ["faiss", "torch"])
def test_long_exclusion_lists_match_brute_force(backend):
    g = torch.Generator().manual_seed(3)
    q = F.normalize(torch.randn(6, 8, generator=g), dim=-1)
    gal = F.normalize(torch.randn(300, 8, generator=g), dim=-1)
    excluded = [torch.randperm(300, generator=g)[: 40 * i].tolist() for i in range(6)]  # 0 to 200 each
    got = search(q, gal, k=20, excluded=excluded, config=SearchConfig(backend=backend))
    assert got.tolist() == brute_force(q, gal, 20, excluded)
