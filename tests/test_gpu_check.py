"""scripts/gpu_check.sh runs once on a GPU lent for minutes, unattended: every step is run here first.

``SMOKE=1`` runs the same steps (the same scripts and options, tiny model, CPU); bench_search's GPU path is
run in-process with CUDA's calls pointed at the CPU, so its code (warm-up, timing, the CPU comparison)
runs before a GPU sees it.
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def test_every_step_of_the_gpu_check_runs_and_leaves_its_results(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "SMOKE": "1", "OUT": str(out), "PYTHON": sys.executable}
    done = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh")], env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "failed steps: 0" in done.stdout
    files = sorted(p.name for p in out.iterdir())
    assert files == ["embed.jsonl", "embed.log", "machine.log", "search.log", "train.jsonl", "train.log",
                     "train4.log", "train_trace.json.gz"]  # at most 8 files come back from the device
    train = [json.loads(line) for line in (out / "train.jsonl").read_text().splitlines()]
    assert [r["settings"]["batch_size"] for r in train] == [2, 1]
    assert all(r["results"]["flops_per_step"] > 0 for r in train)
    assert "language model" in (out / "train.log").read_text()  # the profile's breakdown by part
    embed = json.loads((out / "embed.jsonl").read_text())
    assert embed["settings"]["mode"] == "embed"
    assert embed["results"]["images_per_s"] > 0
    assert json.loads(gzip.decompress((out / "train_trace.json.gz").read_bytes()))["traceEvents"]


def test_the_gpu_search_benchmark_runs_its_gpu_path(monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(ROOT / "scripts"))
    import bench_search

    monkeypatch.setattr(torch.Tensor, "cuda", lambda self, *a, **k: self)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: None)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "CPU standing in for a GPU")
    monkeypatch.setattr(bench_search, "_faiss_has_gpu", lambda: False)
    monkeypatch.setattr(sys, "argv", ["bench_search.py", "--queries", "30", "--gallery", "2000", "--repeats", "1",
                                      "--device", "cuda"])
    bench_search.main()
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["method"] for r in rows] == ["dense", "search_torch", "search_faiss"]
    assert rows[1]["same_as_cpu"] == pytest.approx(1.0)  # the torch backend's ranking equals the exact CPU one
    assert all(r["gpu"] == "CPU standing in for a GPU" for r in rows)
