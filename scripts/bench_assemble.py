"""The last step of ``cir-lightning index``: assembling the index folder from the shards, and its memory.

``build_image_index`` writes each process's embeddings in shards as they come; when all images are
embedded, the first process copies the shards' rows into the index folder's ``embeddings.npy`` and builds
the faiss index over them (``indexing._assemble``). This script makes the shards of ``--rows`` random rows
(``--dim``, float32) once in ``--work``, then, in a fresh process per run, assembles them and prints the
process's resident memory just before and its peak during the assembly, next to the embeddings' own size.

    python scripts/bench_assemble.py --rows 1000000 --dim 256 --repeats 2
    python scripts/bench_assemble.py --rows 1000000 --dim 256 --factory IVF1024,Flat

One JSON line per run: ``embeddings_mib`` (rows x dim x 4 bytes), ``rss_before_mib``, ``peak_mib``,
``peak_increase_mib`` (the peak over the memory before) and ``seconds``.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

MIB = 2**20
SHARD = 1024 * 16


class _Backbone:
    """What the assembly reads of a backbone: the embedding size and whether it has a LoRA adapter."""

    lora = None

    def __init__(self, dim: int) -> None:
        self.embedding_dim = dim


def make_shards(work: Path, rows: int, dim: int) -> Path:
    from cir_lightning.image_index import partial_folder
    from cir_lightning.index_shards import SHARD_SPLIT
    from cir_lightning.retrieval.cache import save_embeddings

    partial = partial_folder(work / "index")
    marker = work / f".made-{rows}x{dim}"
    if marker.exists():
        return partial
    shutil.rmtree(work, ignore_errors=True)
    (partial / "shards").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for start in range(0, rows, SHARD):
        block = rng.standard_normal((min(SHARD, rows - start), dim), dtype=np.float32)
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        save_embeddings(partial / "shards" / f"s-r000-{start // SHARD:05d}", block,
                        [f"{i:08d}.jpg" for i in range(start, start + len(block))], kind="gallery",
                        model=identity(), dataset=str(work / "images"), split=SHARD_SPLIT)
    marker.touch()
    return partial


def identity() -> dict[str, str]:
    return {"fingerprint": "bench", "weights": "random"}


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no /proc/self/status")


def assemble_once(work: Path, rows: int, dim: int, factory: str) -> dict[str, float]:
    """In this (fresh) process: assemble a copy of the shards; memory before and at the peak."""
    from cir_lightning.indexing import _assemble
    from cir_lightning.retrieval import SearchConfig

    source = make_shards(work, rows, dim)
    run = work / "run"
    shutil.rmtree(run, ignore_errors=True)
    partial = run / "index.partial"
    shutil.copytree(source, partial)
    before = rss_mib()
    start = time.perf_counter()
    _assemble(work / "images", run / "index", partial, [f"{i:08d}.jpg" for i in range(rows)], _Backbone(dim),
              identity(), {"root": str(work / "images")}, False, SearchConfig(factory=factory), "float32")
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    shutil.rmtree(run)
    return {"rows": rows, "dim": dim, "factory": factory, "embeddings_mib": rows * dim * 4 / MIB,
            "rss_before_mib": round(before, 1), "peak_mib": round(peak, 1),
            "peak_increase_mib": round(peak - before, 1), "seconds": round(seconds, 2)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--factory", default="Flat")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--work", default="/tmp/bench_assemble")
    parser.add_argument("--once", action="store_true", help=argparse.SUPPRESS)  # one run, in this process
    args = parser.parse_args(argv)
    work = Path(args.work)
    if args.once:
        print(json.dumps(assemble_once(work, args.rows, args.dim, args.factory)), flush=True)
        return
    make_shards(work, args.rows, args.dim)
    for _ in range(args.repeats):
        subprocess.run([sys.executable, __file__, "--once", "--rows", str(args.rows), "--dim", str(args.dim),
                        "--factory", args.factory, "--work", str(work)], check=True)


if __name__ == "__main__":
    main()
