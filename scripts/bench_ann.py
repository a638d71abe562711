"""Approximate search presets against exact search: speed-up and how many of the exact top-k they return.

Random L2-normalised embeddings as in ``scripts/bench_search.py`` are a hard case for approximate indexes
(no clusters); real embeddings are easier. For each faiss ``index_factory`` preset (and its search parameter),
``cir_lightning.retrieval.search`` runs once with the preset and once exact (``Flat``), in the same process;
the line printed gives both times (index building and training included), their ratio, and the overlap:
the mean over queries of |approximate top-k ∩ exact top-k| / k.

    python scripts/bench_ann.py --queries 1000 --gallery 200000 --k 100
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from bench_search import random_embeddings  # scripts/ is on the path when a script is run from it

from cir_lightning.retrieval import SearchConfig, search

PRESETS = [
    ("IVF1024,Flat", {"nprobe": 16}),
    ("IVF1024,Flat", {"nprobe": 64}),
    ("HNSW32", {"ef_search": 128}),
    ("HNSW32", {"ef_search": 512}),
    ("IVF1024,PQ64", {"nprobe": 64}),
]


def _overlap(approx: torch.Tensor, exact: torch.Tensor) -> float:
    hits = [len(set(a.tolist()) & set(e.tolist()) - {-1}) / exact.shape[1] for a, e in zip(approx, exact, strict=True)]
    return sum(hits) / len(hits)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--gallery", type=int, default=200_000)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--k", type=int, default=100)
    args = parser.parse_args()
    queries, gallery, _ = random_embeddings(args)  # the same embeddings as scripts/bench_search.py
    start = time.perf_counter()
    exact = search(queries, gallery, args.k)
    exact_s = time.perf_counter() - start
    for factory, params in PRESETS:
        start = time.perf_counter()
        approx = search(queries, gallery, args.k, config=SearchConfig(factory=factory, **params))
        seconds = time.perf_counter() - start
        print(json.dumps({"factory": factory, **params, "queries": args.queries, "gallery": args.gallery,
                          "dim": args.dim, "k": args.k, "seconds": round(seconds, 2),
                          "exact_seconds": round(exact_s, 2), "speedup": round(exact_s / seconds, 2),
                          "overlap_at_k": round(_overlap(approx, exact), 3)}), flush=True)


if __name__ == "__main__":
    main()
