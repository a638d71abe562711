"""Approximate search presets against exact search: speed-up and how many of the exact top-k they return.

For each faiss ``index_factory`` preset (and its search parameter) the line printed gives the time to build
the index (training included) and the time to search it, each next to exact search's (``Flat``: brute force
on the caller's arrays, nothing to build), and the overlap: the mean over queries of
|approximate top-k ∩ exact top-k| / k. A one-shot evaluation pays build + search; an index that is kept
(``cir-lightning index`` / ``serve``) pays the build once and the search per query.

Two kinds of embeddings, both L2-normalised and seeded:

- ``--data random`` (as in ``scripts/bench_search.py``): no structure at all, the worst case for any index;
- ``--data clustered``: a mixture of ``--clusters`` directions on the sphere, each point its cluster's
  direction plus isotropic noise of the same norm (cosine about 0.7 to its centre), queries drawn the same
  way; closer to real embeddings, which are far from uniform (still synthetic: no model made them).

    python scripts/bench_ann.py --data clustered --gallery 1000000 --queries 1000 --k 100
"""

from __future__ import annotations

import argparse
import json
import time

import faiss
import numpy as np
import torch
from bench_search import random_embeddings  # scripts/ is on the path when a script is run from it

from cir_lightning.retrieval import SearchConfig, build_index, search

PRESETS = {  # factory -> the search parameters tried on one built index
    "IVF1024,Flat": [{"nprobe": 8}, {"nprobe": 32}, {"nprobe": 64}, {"nprobe": 128}],  # auto: max(8, nlist / 128)
    "HNSW32": [{"ef_search": 128}, {"ef_search": 512}],
    "IVF1024,PQ64": [{"nprobe": 32}, {"nprobe": 64}],
}


def clustered_embeddings(args: argparse.Namespace) -> tuple[torch.Tensor, torch.Tensor]:
    """Queries and gallery drawn from a seeded mixture of ``args.clusters`` directions (see the module)."""
    generator = torch.Generator().manual_seed(0)
    centres = torch.nn.functional.normalize(torch.randn(args.clusters, args.dim, generator=generator), dim=-1)

    def draw(rows: int) -> torch.Tensor:  # in blocks: the peak memory stays the array's own
        out = torch.empty(rows, args.dim)
        for start in range(0, rows, 65536):
            block = out[start:start + 65536]
            which = torch.randint(0, args.clusters, (len(block),), generator=generator)
            noise = torch.nn.functional.normalize(torch.randn(block.shape, generator=generator), dim=-1)
            block.copy_(torch.nn.functional.normalize(centres[which] + noise, dim=-1))
        return out

    return draw(args.queries), draw(args.gallery)


def _overlap(approx: np.ndarray, exact: torch.Tensor) -> float:
    hits = [len(set(a.tolist()) & set(e.tolist()) - {-1}) / exact.shape[1] for a, e in zip(approx, exact, strict=True)]
    return sum(hits) / len(hits)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", choices=["random", "clustered"], default="random")
    parser.add_argument("--clusters", type=int, default=10_000)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--gallery", type=int, default=200_000)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--presets", nargs="*", help="only these factory strings (default: all)")
    args = parser.parse_args()
    if args.data == "random":
        queries, gallery, _ = random_embeddings(args)  # the same embeddings as scripts/bench_search.py
    else:
        queries, gallery = clustered_embeddings(args)
    start = time.perf_counter()
    exact = search(queries, gallery, args.k)
    exact_s = time.perf_counter() - start
    q = np.ascontiguousarray(queries.numpy())
    for factory, settings in PRESETS.items():
        if args.presets and factory not in args.presets:
            continue
        start = time.perf_counter()
        index = build_index(gallery, SearchConfig(factory=factory))
        build_s = time.perf_counter() - start
        for params in settings:
            for name, value in params.items():
                faiss.ParameterSpace().set_index_parameter(index, {"ef_search": "efSearch"}.get(name, name), value)
            start = time.perf_counter()
            _, approx = index.search(q, args.k)
            search_s = time.perf_counter() - start
            print(json.dumps({"data": args.data, "factory": factory, **params, "queries": args.queries,
                              "gallery": args.gallery, "dim": args.dim, "k": args.k, "build_s": round(build_s, 2),
                              "search_s": round(search_s, 3), "exact_s": round(exact_s, 2),
                              "search_speedup": round(exact_s / search_s, 1),
                              "one_shot_speedup": round(exact_s / (build_s + search_s), 2),
                              "overlap_at_k": round(_overlap(approx, exact), 3)}), flush=True)
        del index


if __name__ == "__main__":
    main()
