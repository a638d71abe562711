"""Ranking metrics against an independent, plain-Python computation, in one process and under DDP."""

from __future__ import annotations

import random
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from cir_lightning.retrieval.index import pad_lists, search
from cir_lightning.retrieval.metrics import (
    HitRateAtK,
    MAPAtK,
    MRRAtK,
    PositiveRecallAtK,
    SubsetRecallAtK,
    rank_within,
)
from cir_lightning.retrieval.search_config import SearchConfig


def reference(ranked: list[list[int]], positives: list[list[int]], k: int) -> tuple[float, float]:
    """Hit rate and MRR at k, straight from the definitions in docs/protocols.md."""
    hits, rr = 0.0, 0.0
    for ranking, pos in zip(ranked, positives, strict=True):
        ranking = [g for g in ranking if g >= 0][:k]
        hits += any(g in pos for g in ranking)
        first = next((r for r, g in enumerate(ranking, start=1) if g in pos), None)
        rr += 1.0 / first if first else 0.0
    return hits / len(ranked), rr / len(ranked)


def reference_positive_recall(ranked, positives, k):
    return sum(len(set([g for g in r if g >= 0][:k]) & set(p)) / len(p)
               for r, p in zip(ranked, positives, strict=True)) / len(ranked)


def reference_map(ranked, positives, k):
    """CIRCO: AP@K = sum_{k<=K} P@k * rel_k / min(|GT|, K)."""
    total = 0.0
    for ranking, pos in zip(ranked, positives, strict=True):
        ranking = [g for g in ranking if g >= 0][:k]
        hits, ap = 0, 0.0
        for i, g in enumerate(ranking, start=1):
            if g in pos:
                hits += 1
                ap += hits / i
        total += ap / min(len(pos), k)
    return total / len(ranked)


def _random_case(seed: int, queries: int = 40, gallery: int = 30, width: int = 25):
    rng = random.Random(seed)
    ranked, positives = [], []
    for _ in range(queries):
        n = rng.randint(0, width)  # short lists are padded with -1
        ranking = rng.sample(range(gallery), n) + [-1] * (width - n)
        ranked.append(ranking)
        positives.append(rng.sample(range(gallery), rng.randint(1, 4)))
    return ranked, positives


@pytest.mark.parametrize("seed", range(5))
def test_hit_rate_and_mrr_match_reference_on_random_rankings(seed):
    ranked, positives = _random_case(seed)
    ks = [1, 5, 10, 25, 100]  # 100 > list length and > gallery
    hit, mrr = HitRateAtK(ks), MRRAtK(ks)
    # two updates: states must add up like one
    for part in (slice(0, 17), slice(17, None)):
        r, p = torch.tensor(ranked[part]), pad_lists(positives[part])
        hit.update(r, p)
        mrr.update(r, p)
    got_hit, got_mrr = hit.compute(), mrr.compute()
    for k in ks:
        want_hit, want_mrr = reference(ranked, positives, k)
        assert got_hit[k].item() == pytest.approx(want_hit, abs=1e-6)
        assert got_mrr[k].item() == pytest.approx(want_mrr, abs=1e-6)


@pytest.mark.parametrize("seed", range(4))
def test_positive_recall_and_map_match_reference_on_random_rankings(seed):
    ranked, positives = _random_case(seed + 10)
    ks = [1, 5, 10, 25, 50]
    rec, ap = PositiveRecallAtK(ks), MAPAtK(ks)
    r, p = torch.tensor(ranked), pad_lists(positives)
    rec.update(r, p)
    ap.update(r, p)
    for k in ks:
        assert rec.compute()[k].item() == pytest.approx(reference_positive_recall(ranked, positives, k), abs=1e-6)
        assert ap.compute()[k].item() == pytest.approx(reference_map(ranked, positives, k), abs=1e-6)
    single = [[q[0]] for q in positives]  # with one positive, BGE-VL recall == hit rate
    hit, rec1 = HitRateAtK(ks), PositiveRecallAtK(ks)
    hit.update(r, pad_lists(single))
    rec1.update(r, pad_lists(single))
    assert all(hit.compute()[k] == rec1.compute()[k] for k in ks)


def test_subset_recall_equals_filtering_the_full_ranking():
    g = torch.Generator().manual_seed(4)
    queries = torch.randint(0, 3, (30, 4), generator=g).float()  # many ties
    gallery = torch.randint(0, 3, (40, 4), generator=g).float()
    candidates = [torch.randperm(40, generator=g)[:5].tolist() for _ in range(30)]
    full = search(queries, gallery, k=40, config=SearchConfig(backend="torch")).tolist()
    expected = [[j for j in row if j in set(c)] for row, c in zip(full, candidates, strict=True)]
    assert rank_within(queries, gallery, pad_lists(candidates)).tolist() == expected
    targets = [[c[int(torch.randint(0, 5, (1,), generator=g))]] for c in candidates]
    m = SubsetRecallAtK([1, 2, 3])
    m.update(rank_within(queries, gallery, pad_lists(candidates)), pad_lists(targets))
    for k in (1, 2, 3):
        assert m.compute()[k].item() == pytest.approx(reference(expected, targets, k)[0], abs=1e-7)


def test_ties_are_broken_by_lower_gallery_index_before_scoring():
    # scores quantised to few values: many ties; reference sorts by (-score, gallery index)
    g = torch.Generator().manual_seed(0)
    queries = torch.randint(0, 3, (20, 4), generator=g).float()
    gallery = torch.randint(0, 3, (15, 4), generator=g).float()
    positives = [[int(torch.randint(0, 15, (1,), generator=g))] for _ in range(20)]
    ranked = search(queries, gallery, k=10, config=SearchConfig(backend="torch")).tolist()
    scores = (queries @ gallery.T).tolist()
    expected = [sorted(range(15), key=lambda j, s=s: (-s[j], j))[:10] for s in scores]
    assert ranked == expected
    hit = HitRateAtK([1, 10])
    hit.update(torch.tensor(ranked), pad_lists(positives))
    assert hit.compute()[1].item() == pytest.approx(reference(expected, positives, 1)[0])


def test_minus_one_is_never_a_hit_even_if_padding_positives():
    m = HitRateAtK([3])
    m.update(torch.tensor([[-1, -1, -1]]), torch.tensor([[5, -1]]))
    assert m.compute()[3].item() == 0.0


def test_invalid_use_is_reported():
    with pytest.raises(ValueError, match="positive integers"):
        HitRateAtK([0])
    with pytest.raises(RuntimeError, match="before any query"):
        MRRAtK([1]).compute()
    with pytest.raises(ValueError, match="one row per query"):
        HitRateAtK([1]).update(torch.zeros(3, 2, dtype=torch.long), torch.zeros(2, 1, dtype=torch.long))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, ranked, positives, out):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        hit, mrr = HitRateAtK([1, 5, 10]), MRRAtK([1, 5, 10])
        mine = list(range(rank, len(ranked), world))  # uneven shares on purpose
        r, p = torch.tensor([ranked[i] for i in mine]), pad_lists([positives[i] for i in mine], 4)
        hit.update(r, p)
        mrr.update(r, p)
        out[rank] = ({k: v.item() for k, v in hit.compute().items()},
                     {k: v.item() for k, v in mrr.compute().items()})
    finally:
        dist.destroy_process_group()


@pytest.mark.ddp
def test_metrics_under_two_process_ddp_equal_one_process():
    ranked, positives = _random_case(7, queries=41)
    manager = mp.Manager()
    out = manager.dict()
    mp.spawn(_ddp_worker, args=(2, _free_port(), ranked, positives, out), nprocs=2, join=True)
    single_hit, single_mrr = HitRateAtK([1, 5, 10]), MRRAtK([1, 5, 10])
    single_hit.update(torch.tensor(ranked), pad_lists(positives, 4))
    single_mrr.update(torch.tensor(ranked), pad_lists(positives, 4))
    for rank in (0, 1):
        hit, mrr = out[rank]
        for k in (1, 5, 10):
            assert hit[k] == pytest.approx(single_hit.compute()[k].item(), abs=1e-7)
            assert mrr[k] == pytest.approx(single_mrr.compute()[k].item(), abs=1e-7)
