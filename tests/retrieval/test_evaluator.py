"""RetrievalEvaluator: per-subset metric families, subsets without ground truth, provided (cached)
embeddings, and evaluation under 3-process DDP (sharded search; every metric family with fewer queries than
processes) against one process searching the whole gallery."""

from __future__ import annotations

import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch.utils.data import DistributedSampler

from cir_lightning.distributed import same_on_every_rank
from cir_lightning.errors import CIRConfigError
from cir_lightning.retrieval import EvalSubset, RetrievalEvaluator, SearchConfig
from cir_lightning.retrieval.sharded import merge_topk


def _case(seed: int = 0, queries: int = 17, gallery: int = 23, dim: int = 8):
    g = torch.Generator().manual_seed(seed)
    gal = F.normalize(torch.randn(gallery, dim, generator=g), dim=-1)
    gal[5] = gal[2]  # exact duplicates: ties that must go to the lower gallery row
    gal[19] = gal[2]
    qry = F.normalize(torch.randn(queries, dim, generator=g), dim=-1)
    qry[3] = gal[2]
    refs = torch.randint(0, gallery, (queries,), generator=g).tolist()
    targets = [(r * 7 + 3) % gallery for r in refs]
    return qry, gal, refs, targets


def _full_ranking(qry, gal, excluded):
    """Reference: every gallery row by descending score, ties to the lower row, excluded rows removed."""
    scores = qry @ gal.T
    out = []
    for i in range(len(qry)):
        order = sorted(range(len(gal)), key=lambda j: (-scores[i, j].item(), j))
        out.append([j for j in order if j not in excluded[i]])
    return out


def test_cirr_style_subset_recall_is_the_full_ranking_restricted_to_candidates():
    qry, gal, refs, targets = _case()
    candidates = [sorted({targets[i], (refs[i] + 1) % 23, (refs[i] + 4) % 23, (refs[i] + 9) % 23} - {refs[i]})
                  for i in range(len(qry))]
    sub = EvalSubset("cirr", [[t] for t in targets], [[r] for r in refs], len(gal),
                     metrics={"recall": [1, 5], "recall_subset": [1, 2]}, candidates=candidates)
    ev = RetrievalEvaluator(ks=[3])
    ev.add(0, "gallery", gal, torch.arange(len(gal)))
    ev.add(0, "query", qry, torch.arange(len(qry)))
    got = ev.compute([sub], keep_rankings=True)
    full = _full_ranking(qry, gal, [[r] for r in refs])
    restricted = [[j for j in full[i] if j in candidates[i]] for i in range(len(qry))]
    expected = {f"cirr/Recall@{k}": sum(targets[i] in full[i][:k] for i in range(len(qry))) / len(qry)
                for k in (1, 5)}
    expected.update({f"cirr/Recall_subset@{k}": sum(targets[i] in restricted[i][:k] for i in range(len(qry)))
                     / len(qry) for k in (1, 2)})
    assert got == pytest.approx(expected, abs=1e-9)
    assert ev.rankings["cirr"].shape == (len(qry), 5)
    assert ev.rankings["cirr"].tolist() == [row[:5] for row in full]
    assert [[j for j in row if j >= 0] for row in ev.subset_rankings["cirr"].tolist()] == restricted


def test_cut_offs_given_explicitly_are_added_to_a_protocol_never_dropped():
    """A dataset with its own protocol (FashionIQ: Recall / MRR at its K; CIRR: Recall and the subset's) kept
    only its own K: a K the user asked for (FiRE's `eval.ks: [1, 2, 3]`) was silently missing."""
    from torch.utils.data import DataLoader

    from cir_lightning.retrieval import subsets_from_loaders

    class Queries(list):
        name, positives, excluded, candidates = "dress", [[1], [1]], [[], []], [[0, 1], [1, 2]]
        metrics = {"recall": [10, 50], "recall_subset": [1, 2]}

    loaders = [DataLoader(Queries(["q0", "q1"])), DataLoader(["g0", "g1", "g2"])]
    for given, recall in ((None, [10, 50]), ([2, 10], [2, 10, 50])):
        ev = RetrievalEvaluator(ks=given)
        [sub] = subsets_from_loaders(loaders, ev.added_ks)
        assert sub.metrics == {"recall": recall, "recall_subset": [1, 2]}  # the subset's K are bounded by candidates
    ev = RetrievalEvaluator(ks=[2])
    ev.add(0, "gallery", torch.eye(3), torch.arange(3))
    ev.add(0, "query", torch.tensor([[0.0, 0.9, 0.5], [0.2, 0.0, 1.0]]), torch.arange(2))
    got = ev.compute(subsets_from_loaders(loaders, ev.added_ks))
    assert got == {"dress/Recall@2": 0.5, "dress/Recall@10": 1.0, "dress/Recall@50": 1.0,
                   "dress/Recall_subset@1": 0.5, "dress/Recall_subset@2": 1.0}


def test_map_and_positive_recall_families_with_several_positives():
    qry, gal, _, _ = _case(seed=1)
    positives = [[i % 23, (i * 5) % 23, (i * 11 + 1) % 23][: 1 + i % 3] for i in range(len(qry))]
    sub = EvalSubset("", positives, [[] for _ in qry], len(gal), metrics={"map": [5, 10], "positive_recall": [10]})
    ev = RetrievalEvaluator()
    ev.add(0, "gallery", gal, torch.arange(len(gal)))
    ev.add(0, "query", qry, torch.arange(len(qry)))
    got = ev.compute([sub])
    full = _full_ranking(qry, gal, [[] for _ in qry])

    def ap(row, pos, k):
        hits, total = 0, 0.0
        for rank, j in enumerate(row[:k], start=1):
            if j in pos:
                hits += 1
                total += hits / rank
        return total / min(len(set(pos)), k)

    n = len(qry)
    assert got["mAP@5"] == pytest.approx(sum(ap(full[i], positives[i], 5) for i in range(n)) / n, abs=1e-9)
    assert got["mAP@10"] == pytest.approx(sum(ap(full[i], positives[i], 10) for i in range(n)) / n, abs=1e-9)
    recall = sum(len(set(full[i][:10]) & set(positives[i])) / len(set(positives[i])) for i in range(n)) / n
    assert got["PositiveRecall@10"] == pytest.approx(recall, abs=1e-9)
    assert set(got) == {"mAP@5", "mAP@10", "PositiveRecall@10"}


def test_a_cut_off_far_past_the_gallery_scores_the_whole_ranking():
    """`eval_ks: [1e12]` failed to allocate a trillion -1s of padding per query; past int64, mAP's OverflowError."""
    qry, gal, _, targets = _case(seed=2)
    positives = [[t] for t in targets]
    huge, past_int64 = 10**12, 10**23
    sub = EvalSubset("", positives, [[] for _ in qry], len(gal),
                     metrics={"recall": [5, huge], "map": [5, past_int64], "mrr": [huge]})
    ev = RetrievalEvaluator()
    ev.add(0, "gallery", gal, torch.arange(len(gal)))
    ev.add(0, "query", qry, torch.arange(len(qry)))
    got = ev.compute([sub], keep_rankings=True)
    full = _full_ranking(qry, gal, [[] for _ in qry])
    n = len(qry)
    assert got[f"Recall@{huge}"] == 1.0  # every target is in the gallery
    assert got[f"mAP@{past_int64}"] == pytest.approx(sum(1 / (full[i].index(targets[i]) + 1) for i in range(n)) / n,
                                                      abs=1e-9)
    assert got[f"MRR@{huge}"] == pytest.approx(got[f"mAP@{past_int64}"], abs=1e-9)  # one positive each
    assert ev.rankings[""].tolist() == full  # the whole gallery, no padding


def test_subset_without_ground_truth_gives_rankings_only():
    qry, gal, refs, _ = _case()
    sub = EvalSubset("test1", None, [[r] for r in refs], len(gal), depth=12)
    ev = RetrievalEvaluator(ks=[1, 5])
    ev.add(0, "gallery", gal, torch.arange(len(gal)))
    ev.add(0, "query", qry, torch.arange(len(qry)))
    assert ev.compute([sub]) == {}
    assert ev.rankings["test1"].tolist() == [row[:12] for row in _full_ranking(qry, gal, [[r] for r in refs])]


def test_bad_subset_protocols_are_clear_errors():
    with pytest.raises(CIRConfigError, match="unknown metric families \\['ndcg'\\]"):
        EvalSubset("x", [[0]], [[]], 1, metrics={"ndcg": [1]})
    with pytest.raises(CIRConfigError, match="needs per-query `candidates`"):
        EvalSubset("x", [[0]], [[]], 1, metrics={"recall_subset": [1]})


def test_provided_gallery_equals_embedded_gallery():
    qry, gal, refs, targets = _case()
    sub = EvalSubset("", [[t] for t in targets], [[r] for r in refs], len(gal))
    embedded, provided = RetrievalEvaluator(), RetrievalEvaluator()
    embedded.add(0, "gallery", gal[10:], torch.arange(10, 23))
    embedded.add(0, "gallery", gal[:10], torch.arange(10))
    provided.provide(0, "gallery", gal)
    for ev in (embedded, provided):
        ev.add(0, "query", qry, torch.arange(len(qry)))
    assert provided.compute([sub], keep_rankings=True) == embedded.compute([sub], keep_rankings=True)
    assert torch.equal(provided.rankings[""], embedded.rankings[""])


def test_merge_keeps_the_best_and_breaks_ties_by_lower_index():
    ids = torch.tensor([[9, 4, -1, 3, 8, 1]])
    scores = torch.tensor([[0.9, 0.5, float("-inf"), 0.9, 0.5, 0.1]])
    assert merge_topk(ids, scores, 4).tolist() == [[3, 9, 4, 8]]
    assert merge_topk(ids, scores, 7).tolist() == [[3, 9, 4, 8, 1, -1, -1]]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _shards(x, rank, world):
    """DistributedSampler's shard of ``x``'s rows (as Lightning makes it): strided, padded by repeating rows."""
    return torch.tensor(list(DistributedSampler(range(len(x)), num_replicas=world, rank=rank, shuffle=False)))


def _sharded_worker(rank, world, port, qry, gal, subsets, search, whole, out):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        ev = RetrievalEvaluator(ks=[1, 5, 10], search=search)
        for s, (queries, gallery) in enumerate(((qry, gal), (qry[:4], gal[:3]))):
            for kind, x in (("query", queries), ("gallery", gallery)):
                mine = _shards(x, rank, world)
                ev.add(s, kind, x[mine], mine)
        out[rank] = (ev.compute(subsets, keep_rankings=True), {k: v.tolist() for k, v in ev.rankings.items()})
        # unsharded, every family; blocks of 4 queries (5 for 19 queries); fewer queries than ranks (1, 2)
        ev = RetrievalEvaluator(ks=[1, 5, 10], search=SearchConfig(backend=search.backend, chunk_size=4))
        for s, queries in enumerate((qry, qry[:1], qry[:2])):
            for kind, x in (("query", queries), ("gallery", gal)):
                mine = _shards(x, rank, world)
                ev.add(s, kind, x[mine], mine)
        out[f"whole{rank}"] = (ev.compute(whole, keep_rankings=True),
                               *({k: v.tolist() for k, v in kept.items()}
                                 for kept in (ev.rankings, ev.scores, ev.subset_rankings)))
        out[f"same{rank}"] = same_on_every_rank([1, 0]), same_on_every_rank([int(rank == 0)])
        from cir_lightning.retrieval.sharded import _identical_across

        mine = torch.arange(rank, len(gal), world)  # each rank's own rows: the identical ones found across ranks
        out[f"identical{rank}"] = _identical_across(gal[mine], mine).members
    finally:
        dist.destroy_process_group()


@pytest.mark.ddp
@pytest.mark.parametrize("backend", ["faiss", "torch"])
def test_evaluation_under_ddp_sharded_or_not_equals_one_process_over_the_whole_gallery(backend):
    qry, gal, refs, targets = _case(queries=19, gallery=23)
    # the target is never excluded: a query that could never hit is an error (ground_truth.check_positives)
    excluded = [[e for e in (r, (r + 2) % 23) if e != t] for r, t in zip(refs, targets, strict=True)]
    subsets = [EvalSubset("big", [[t] for t in targets], excluded, len(gal)),
               EvalSubset("small", [[2], [0], [1], [2]], [[], [1], [], [1]], 3)]  # k > gallery size
    single = RetrievalEvaluator(ks=[1, 5, 10], search=SearchConfig(backend=backend))
    single.add(0, "gallery", gal, torch.arange(23))
    single.add(0, "query", qry, torch.arange(19))
    single.add(1, "gallery", gal[:3], torch.arange(3))
    single.add(1, "query", qry[:4], torch.arange(4))
    expected = single.compute(subsets, keep_rankings=True)
    candidates = [sorted({t, (r + 1) % 23, (r + 4) % 23} - {r}) for r, t in zip(refs, targets, strict=True)]
    whole = [EvalSubset("cirr", [[t] for t in targets], excluded, 23, metrics={"recall": [1, 5], "mrr": [10],
                        "recall_subset": [1, 2]}, candidates=candidates),
             EvalSubset("circo", [[2, 5, 7]], [[0]], 23, metrics={"map": [1, 5], "recall": [1]}),  # 1 query
             EvalSubset("test1", None, [[0], [1]], 23, depth=12)]  # no ground truth, 2 queries: ranked only
    one = RetrievalEvaluator(ks=[1, 5, 10], search=SearchConfig(backend=backend, chunk_size=4))
    for s, queries in enumerate((qry, qry[:1], qry[:2])):
        one.add(s, "gallery", gal, torch.arange(23))
        one.add(s, "query", queries, torch.arange(len(queries)))
    want_whole = (one.compute(whole, keep_rankings=True),
                  *({k: v.tolist() for k, v in kept.items()} for kept in (one.rankings, one.scores, one.subset_rankings)))
    assert set(want_whole[1]) == {"cirr", "circo", "test1"}
    manager = mp.Manager()
    out = manager.dict()
    search = SearchConfig(backend=backend, sharded=True)
    mp.spawn(_sharded_worker, args=(3, _free_port(), qry, gal, subsets, search, whole, out), nprocs=3, join=True)
    for rank in range(3):
        metrics, rankings = out[rank]
        assert metrics == expected
        assert rankings == {k: v.tolist() for k, v in single.rankings.items()}
        assert out[f"whole{rank}"] == want_whole  # metrics, rankings, scores, rankings within candidates
        assert out[f"identical{rank}"] == [[2, 5, 19]]
        assert out[f"same{rank}"] == (True, False)  # what every process found in an embedding cache, compared  # rows 2 and 5 on rank 2, row 19 on rank 1
