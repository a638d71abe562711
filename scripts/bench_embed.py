"""Embedding many images: ``cir-lightning index`` (DataLoader, collate in the workers, forward, shards written)
against the model's forward alone on the same images, and the process's peak memory.

A random LLaVA-NeXT-style model (``--text-hidden`` / ``--text-layers`` set how heavy its forward is) and
``--images`` small JPEGs are made once in ``--work``. Then, interleaved over ``--repeats``:

- forward alone: the backbone on batches collated beforehand, in this process, with every core's thread
  (the fastest the model runs here: nothing else to feed), before and after the pipeline's runs (the
  fastest of all counts: the ratio is never flattered by a slow moment of the machine);
- ``cir-lightning index`` over all the images, and over the first ``--warm`` of them: the difference of the
  two wall times is the pipeline's time for the rest, start-up and the final index assembly taken out;
  the index process's resident memory is sampled every 0.2 s. Flat memory: the largest sample is the
  same in 15-35%, 45-65% and 75-90% of the run (a single sample can fall inside or between two forwards,
  whose activations come and go); the peak adds the final assembly, which holds the whole index.

    python scripts/bench_embed.py --images 100000 --workers 1 --repeats 2

It prints one JSON line per run and a summary line: images/s of both, their ratio (the pipeline's share of
the forward's speed), the workers' own cost (decode and collate, milliseconds per image on one thread:
on a CPU it competes with the forward for the same cores) and the peak memories.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from cir_lightning.backbones import HFMultimodalBackbone, Prompts
from cir_lightning.backbones.tiny import TinyModelSpec, make_tiny_model


def make_images(folder: Path, count: int, size: tuple[int, int] = (64, 48)) -> None:
    """``count`` small smooth JPEGs in folders of 1000 (kept: made once per count)."""
    marker = folder / f".made-{count}"
    if marker.exists():
        return
    shutil.rmtree(folder, ignore_errors=True)
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:size[1], 0:size[0]]
    for i in range(count):
        sub = folder / f"{i // 1000:04d}"
        sub.mkdir(parents=True, exist_ok=True)
        fx, fy, phase = rng.uniform(0.05, 0.3, 3), rng.uniform(0.05, 0.3, 3), rng.uniform(0, 6.3, 3)
        pixels = 127 + 120 * np.sin(fx * x[..., None] + fy * y[..., None] + phase)
        Image.fromarray(pixels.astype(np.uint8), "RGB").save(sub / f"{i:06d}.jpg", quality=90)
    marker.touch()


def write_config(work: Path, model: Path, batch_size: int, workers: int) -> Path:
    config = work / "index.yaml"
    config.write_text(f"""trainer:
  accelerator: cpu
  devices: 1
model:
  backbone:
    class_path: cir_lightning.backbones.HFMultimodalBackbone
    init_args:
      model_name_or_path: {model}
      prompts:
        preset: short
data:
  class_path: cir_lightning.data.SyntheticCIRDataModule
  init_args:
    root: {work / 'unused'}
    eval_batch_size: {batch_size}
    num_workers: {workers}
""")
    return config


def forward_alone(model: Path, images: Path, count: int, batch_size: int, threads: int) -> float:
    """Images per second of the backbone's forward on batches collated beforehand."""
    torch.set_num_threads(threads)
    backbone = HFMultimodalBackbone(str(model), prompts=Prompts("short")).eval()
    paths = sorted(images.rglob("*.jpg"))[:count]
    batches = [backbone.collator.gallery_inputs([Image.open(p).convert("RGB") for p in paths[i:i + batch_size]])
               for i in range(0, len(paths), batch_size)]
    with torch.no_grad():
        backbone(batches[0])  # warm-up
        start = time.perf_counter()
        for batch in batches:
            backbone(batch)
        seconds = time.perf_counter() - start
    return len(paths) / seconds


def data_alone(model: Path, images: Path, count: int, batch_size: int) -> float:
    """Milliseconds per image of what a DataLoader worker does (decode, collate), on one thread."""
    torch.set_num_threads(1)
    backbone = HFMultimodalBackbone(str(model), prompts=Prompts("short"))
    paths = sorted(images.rglob("*.jpg"))[:count]
    start = time.perf_counter()
    for i in range(0, len(paths), batch_size):
        backbone.collator.gallery_inputs([Image.open(p).convert("RGB") for p in paths[i:i + batch_size]])
    return 1e3 * (time.perf_counter() - start) / len(paths)


def _rss_mib(pid: int) -> float | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    found = re.search(r"VmRSS:\s+(\d+) kB", status)
    return int(found.group(1)) / 1024 if found else None


def window_max(samples: list[float], start: float, end: float) -> float:
    """The largest of the samples from fraction ``start`` to ``end`` of the run (at least one sample)."""
    first = int(start * len(samples))
    return max(samples[first:max(int(end * len(samples)), first + 1)])


def index_run(config: Path, images: Path, out: Path, batch_size: int, workers: int) -> tuple[float, list[float]]:
    """Wall seconds of ``cir-lightning index`` and its resident memory (MiB), sampled every 0.2 s."""
    shutil.rmtree(out, ignore_errors=True)
    command = [sys.executable, "-m", "cir_lightning", "index", str(images), "--config", str(config), "--out",
               str(out), "--batch-size", str(batch_size), "--num-workers", str(workers)]
    start = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                             env={**os.environ, "TQDM_DISABLE": "1"})
    samples = []
    while child.poll() is None:
        rss = _rss_mib(child.pid)
        if rss is not None:
            samples.append(rss)
        time.sleep(0.2)
    seconds = time.perf_counter() - start
    if child.returncode != 0:
        raise SystemExit(child.stderr.read()[-3000:])
    return seconds, samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--warm", type=int, default=2_000, help="images of the short run (start-up, assembly)")
    parser.add_argument("--forward-images", type=int, default=4_000, help="images timed for forward alone")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--text-hidden", type=int, default=256)
    parser.add_argument("--text-layers", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--work", type=Path, default=Path("bench_embed_work"))
    args = parser.parse_args()
    work = args.work.resolve()
    model = work / f"model-{args.text_hidden}x{args.text_layers}"
    if not (model / "config.json").exists():
        make_tiny_model(model, spec=TinyModelSpec(text_hidden=args.text_hidden, text_layers=args.text_layers,
                                                  text_heads=max(4, args.text_hidden // 64)))
    make_images(work / "images", args.images)
    small = work / "images-warm"
    if not small.exists():
        small.mkdir()
        for path in sorted((work / "images").rglob("*.jpg"))[:args.warm]:
            (small / path.parent.name).mkdir(exist_ok=True)
            os.link(path, small / path.parent.name / path.name)
    config = write_config(work, model, args.batch_size, args.workers)
    threads = len(os.sched_getaffinity(0))
    runs: dict[str, list] = {"forward": [], "pipeline": [], "data": [], "rss": []}
    for repeat in range(args.repeats):
        runs["forward"].append(forward_alone(model, work / "images", args.forward_images, args.batch_size, threads))
        runs["data"].append(data_alone(model, work / "images", args.forward_images, args.batch_size))
        full, rss = index_run(config, work / "images", work / "index", args.batch_size, args.workers)
        warm, _ = index_run(config, small, work / "index-warm", args.batch_size, args.workers)
        # once more after the long run: the machine's speed drifts over minutes, and the fastest forward counts
        after = forward_alone(model, work / "images", args.forward_images, args.batch_size, threads)
        runs["forward"].append(after)
        runs["pipeline"].append((args.images - args.warm) / (full - warm))
        # memory while embedding: the largest sample in three windows of the run; the peak includes the assembly
        windows = [round(window_max(rss, a, b)) for a, b in ((0.15, 0.35), (0.45, 0.65), (0.75, 0.9))]
        runs["rss"].append({"rss_max_mib_15_35_45_65_75_90": windows, "peak_mib": round(max(rss))})
        print(json.dumps({"repeat": repeat, "forward_img_s_before_after": [round(f, 1) for f in runs["forward"][-2:]],
                          "data_ms_per_img": round(runs["data"][-1], 3), "full_s": round(full, 1),
                          "warm_s": round(warm, 1), "pipeline_img_s": round(runs["pipeline"][-1], 1),
                          **runs["rss"][-1]}), flush=True)
    forward, pipeline = max(runs["forward"]), max(runs["pipeline"])
    print(json.dumps({"images": args.images, "batch_size": args.batch_size, "workers": args.workers,
                      "torch_threads": threads, "model": f"text {args.text_hidden}x{args.text_layers}",
                      "forward_img_s": round(forward, 1), "data_ms_per_img": round(min(runs["data"]), 3),
                      "pipeline_img_s": round(pipeline, 1), "pipeline_over_forward": round(pipeline / forward, 3),
                      **runs["rss"][-1]}))


if __name__ == "__main__":
    main()
