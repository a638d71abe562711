"""Exact search benchmark: ``cir_lightning.retrieval.search`` against the dense baseline, side by side.

Random L2-normalised embeddings, one excluded gallery row per query (as in CIRR / JSONL evaluation).
Four ways to get each query's top-k are timed in one process, interleaved (A B C D A B C D ...), and the
minimum of the repeats is reported with its ratio to the dense baseline:

- ``dense``: ``queries @ gallery.T`` then ``topk`` (the score matrix in memory; no exclusion, no ties),
- ``faiss_index``: a raw ``faiss.IndexFlatIP`` built and searched (no exclusion, no ties),
- ``search_faiss``: ``search(..., SearchConfig())`` (exact, exclusion, tie order),
- ``search_torch``: ``search(..., SearchConfig(backend="torch"))``.

With ``--device cuda`` (a GPU machine) the embeddings are put on the GPU and these run instead, against the
dense baseline on the GPU and next to the CPU's exact ``search_faiss``:

- ``dense``: as above, on the GPU;
- ``search_torch``: ``search(..., SearchConfig(backend="torch"))`` on the GPU tensors (it computes there);
- ``search_faiss_gpu``: a faiss GPU ``Flat`` index (only with a faiss build that has GPU support);
- ``search_faiss``: the exact CPU search on copies of the embeddings in the CPU's memory.

It also prints ``same_as_cpu``: the share of queries whose top-k ids the GPU's ``search_torch`` returns
exactly as the CPU's exact search does (float32 products summed in another order may swap near-ties).

Peak memory is measured in a fresh process per method (``--memory METHOD``): resident memory added by the
search on top of the embeddings, next to the gallery's own size.

    python scripts/bench_search.py --queries 2000 --gallery 10000 --repeats 5
    python scripts/bench_search.py --queries 1000 --gallery 1000000 --repeats 3 --memory-too
    python scripts/bench_search.py --queries 1000 --gallery 1000000 --repeats 5 --device cuda

It prints one JSON line per measurement.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch

METHODS = ("dense", "faiss_index", "search_faiss", "search_torch")
GPU_METHODS = ("dense", "search_torch", "search_faiss_gpu", "search_faiss")


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def random_embeddings(args: argparse.Namespace) -> tuple[torch.Tensor, torch.Tensor, list[list[int]]]:
    """Seeded random L2-normalised queries and gallery (``args.queries`` / ``args.gallery`` x ``args.dim``)
    and one excluded gallery row per query; also used by ``scripts/bench_ann.py``."""
    generator = torch.Generator().manual_seed(0)

    def normalised(rows: int) -> torch.Tensor:  # filled in blocks: the peak memory stays the array's own
        out = torch.empty(rows, args.dim)
        for start in range(0, rows, 65536):
            block = out[start:start + 65536]
            block.copy_(torch.nn.functional.normalize(torch.randn(block.shape, generator=generator), dim=-1))
        return out

    gallery, queries = normalised(args.gallery), normalised(args.queries)
    excluded = torch.randint(0, args.gallery, (args.queries, 1), generator=generator).tolist()
    return queries, gallery, excluded


def _run(method: str, queries: torch.Tensor, gallery: torch.Tensor, excluded: list[list[int]], k: int,
         cpu: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor | None:
    """One search; ``cpu``: CPU copies of the embeddings (``--device cuda``, for ``search_faiss``)."""
    from cir_lightning.retrieval import SearchConfig
    from cir_lightning.retrieval.index import search_with_scores

    if method == "dense":
        found = (queries @ gallery.T).topk(k, dim=1).indices
        if found.is_cuda:
            torch.cuda.synchronize()
        return found
    if method == "faiss_index":
        import faiss

        index = faiss.IndexFlatIP(gallery.shape[1])
        index.add(gallery.numpy())
        return torch.from_numpy(index.search(queries.numpy(), k)[1])
    if method == "search_faiss":
        q, g = cpu if cpu is not None else (queries, gallery)
        return search_with_scores(q, g, k, excluded, SearchConfig())[0]
    if method == "search_faiss_gpu":
        return search_with_scores(cpu[0], cpu[1], k, excluded, SearchConfig(device="cuda"))[0]
    return search_with_scores(queries, gallery, k, excluded, SearchConfig(backend="torch"))[0]


def _faiss_has_gpu() -> bool:
    import faiss

    return hasattr(faiss, "StandardGpuResources")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--gallery", type=int, default=10_000)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--memory", choices=METHODS, help="measure the peak memory of one method (and exit)")
    parser.add_argument("--memory-too", action="store_true", help="also measure each method's memory")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    args = parser.parse_args()
    queries, gallery, excluded = random_embeddings(args)
    sizes = {"queries": args.queries, "gallery": args.gallery, "dim": args.dim, "k": args.k,
             "threads": torch.get_num_threads(), "device": args.device}
    if args.device == "cuda":
        return gpu_main(args, queries, gallery, excluded, sizes)
    if args.memory:
        before = max(_rss_mib(), _peak_mib())
        _run(args.memory, queries, gallery, excluded, args.k)
        print(json.dumps({**sizes, "method": args.memory, "extra_mib": round(_peak_mib() - before),
                          "gallery_mib": round(gallery.numel() * 4 / 2**20)}))
        return
    _run("search_faiss", queries[:8], gallery, excluded[:8], args.k)  # warm-up: imports, BLAS threads
    times: dict[str, list[float]] = {m: [] for m in METHODS}
    for _ in range(args.repeats):
        for method in METHODS:
            start = time.perf_counter()
            _run(method, queries, gallery, excluded, args.k)
            times[method].append(time.perf_counter() - start)
    dense = min(times["dense"])
    for method in METHODS:
        best = min(times[method])
        print(json.dumps({**sizes, "method": method, "min_s": round(best, 3),
                          "median_s": round(sorted(times[method])[len(times[method]) // 2], 3),
                          "ratio_to_dense": round(best / dense, 2)}))
    if args.memory_too:
        for method in METHODS:
            subprocess.run([sys.executable, __file__, "--queries", str(args.queries), "--gallery",
                            str(args.gallery), "--dim", str(args.dim), "--k", str(args.k), "--memory", method],
                           check=True)


def gpu_main(args: argparse.Namespace, queries: torch.Tensor, gallery: torch.Tensor, excluded: list[list[int]],
             sizes: dict) -> None:
    cpu = (queries, gallery)
    q, g = queries.cuda(), gallery.cuda()
    sizes["gpu"] = torch.cuda.get_device_name()
    methods = [m for m in GPU_METHODS if m != "search_faiss_gpu" or _faiss_has_gpu()]
    for method in methods:  # warm-up: CUDA context, kernels, cuBLAS workspaces
        _run(method, q[:8], g, excluded[:8], args.k, (cpu[0][:8], cpu[1]))
    times: dict[str, list[float]] = {m: [] for m in methods}
    found: dict[str, torch.Tensor] = {}
    for _ in range(args.repeats):
        for method in methods:
            torch.cuda.synchronize()
            start = time.perf_counter()
            found[method] = _run(method, q, g, excluded, args.k, cpu)
            times[method].append(time.perf_counter() - start)
    dense = min(times["dense"])
    same = (found["search_torch"].cpu() == found["search_faiss"]).all(dim=1).float().mean().item()
    for method in methods:
        best = min(times[method])
        print(json.dumps({**sizes, "method": method, "min_s": round(best, 4),
                          "median_s": round(sorted(times[method])[len(times[method]) // 2], 4),
                          "ratio_to_dense": round(best / dense, 2),
                          **({"same_as_cpu": round(same, 4)} if method == "search_torch" else {})}), flush=True)


if __name__ == "__main__":
    main()
