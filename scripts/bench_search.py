"""Search benchmark: time and peak memory of `cir_lightning.retrieval.search` on random embeddings.

Shows that the search never materialises the (queries x gallery) score matrix: peak memory grows with
the gallery, not with queries x gallery. Run it in a fresh process per configuration, e.g.

    python scripts/bench_search.py --queries 5000 --gallery 200000 --dim 256 --backend faiss
    python scripts/bench_search.py --queries 5000 --gallery 200000 --dim 256 --backend torch
    python scripts/bench_search.py --queries 5000 --gallery 200000 --dim 256 --factory IVF1024,Flat --nprobe 16

It prints one JSON line: sizes, seconds, peak resident memory (MiB) before and after the search, and
the size the full score matrix would have had.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time

import torch

from cir_lightning.retrieval import SearchConfig, search


def _peak_mib() -> float:
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=5000)
    parser.add_argument("--gallery", type=int, default=200_000)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--k", type=int, default=50)
    parser.add_argument("--backend", choices=["faiss", "torch"], default="faiss")
    parser.add_argument("--factory", default="Flat")
    parser.add_argument("--nprobe", type=int, default=None)
    parser.add_argument("--exclude", type=int, default=1, help="excluded gallery rows per query")
    args = parser.parse_args()

    generator = torch.Generator().manual_seed(0)
    gallery = torch.nn.functional.normalize(torch.randn(args.gallery, args.dim, generator=generator), dim=-1)
    queries = torch.nn.functional.normalize(torch.randn(args.queries, args.dim, generator=generator), dim=-1)
    excluded = torch.randint(0, args.gallery, (args.queries, args.exclude), generator=generator).tolist()
    before = _peak_mib()
    start = time.perf_counter()
    ranked = search(queries, gallery, args.k, excluded,
                    SearchConfig(backend=args.backend, factory=args.factory, nprobe=args.nprobe))
    seconds = time.perf_counter() - start
    print(json.dumps({
        "backend": args.backend, "factory": args.factory, "queries": args.queries, "gallery": args.gallery,
        "dim": args.dim, "k": args.k, "seconds": round(seconds, 2), "threads": torch.get_num_threads(),
        "peak_mib_before_search": round(before), "peak_mib_after_search": round(_peak_mib()),
        "gallery_mib": round(gallery.numel() * 4 / 2**20),
        "full_score_matrix_mib": round(args.queries * args.gallery * 4 / 2**20),
        "result_shape": list(ranked.shape),
    }))


if __name__ == "__main__":
    main()
