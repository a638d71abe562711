"""scripts/bench_train.py (with scripts/bench_flops.py): modes, FLOP counts, MFU and the profile, on tiny-xGen-MM.

The script is imported in-process from its path, with ``scripts/`` on ``sys.path`` as when it is run; the tiny
checkpoint is built once per module and every run is 1 warm-up + 1 timed step of 2 samples on 1 thread.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import math
import re
import sys
from pathlib import Path

import pytest
import torch

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


@pytest.fixture(scope="module")
def bench():
    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(SCRIPTS))  # bench_train imports bench_flops from its own folder
        spec = importlib.util.spec_from_file_location("bench_train", SCRIPTS / "bench_train.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        yield module
    sys.modules.pop("bench_flops", None)
    torch.set_num_threads(threads)  # the runs' --threads 1 must not leak into other tests


@pytest.fixture(scope="module")
def flops(bench):
    return sys.modules["bench_flops"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from cir_lightning.backbones.xgenmm.tiny import make_tiny_xgenmm

    return make_tiny_xgenmm(tmp_path_factory.mktemp("bench") / "tiny-xgenmm")


def run(bench, model_dir: Path, out: Path, *extra: str) -> dict:
    bench.main(["--backbone", "tiny-xgenmm", "--device", "cpu", "--model-dir", str(model_dir), "--batch-size", "2",
                "--steps", "1", "--warmup-steps", "1", "--image-size", "64x64", "--threads", "1",
                "--json", str(out), *extra])
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def train(bench, model_dir, tmp_path_factory):
    """The json record, the printed output and the folder of a profiled training run."""
    tmp, out = tmp_path_factory.mktemp("train"), io.StringIO()
    with contextlib.redirect_stdout(out):
        record = run(bench, model_dir, tmp / "train.json", "--profile", "--profile-steps", "1",
                     "--trace", str(tmp / "trace.json"))
    return record, out.getvalue(), tmp


def printed_profile(text: str) -> dict[str, tuple[float, float]]:
    """Component -> (ms, share) from the printed profile table."""
    table = text[text.index("profile:"):].split("top ")[0]
    rows = re.findall(r"^ +(\S.*?) +(\d+\.\d+) +(\d+\.\d)%$", table, flags=re.MULTILINE)
    return {name: (float(ms), float(share) / 100) for name, ms, share in rows}


@pytest.fixture(scope="module")
def embed(bench, model_dir, tmp_path_factory):
    return run(bench, model_dir, tmp_path_factory.mktemp("embed") / "embed.json", "--mode", "embed",
               "--peak-tflops", "1.0")


def test_train_and_embed_modes(train, embed):
    t, e = train[0]["results"], embed["results"]
    assert t["mode"] == "train"
    assert t["samples_per_s"] > 0
    assert "images_per_s" not in t
    assert e["mode"] == "embed"
    assert e["images_per_s"] > 0
    assert "samples_per_s" not in e
    assert e["query_tokens"] is None
    assert e["target_tokens"] == t["target_tokens"]
    assert e["first_loss"] is None
    assert math.isfinite(t["first_loss"])
    # embedding = the target forward alone: no queries, no loss, no backward
    assert 0 < e["flops_per_step"] < t["flops_per_step"] / 2
    assert e["flops_measured"]["target forward"] == e["flops_per_step"]
    assert "backward" not in e["flops_measured"]
    assert t["flops_measured"]["backward"] > 0


def test_counted_and_analytic_flops_agree(train, embed):
    """FlopCounterMode (with the CPU SDPA formulas) and the analytic count follow the same conventions (matmuls
    and convolutions only, full T x T attention, SDPA backward = 5 matmuls) and the same shapes, so they should
    agree to rounding; 1% leaves room for a counted op the analytic side leaves out (the rotary angles run as a
    broadcast multiply today; a torch version that turned them into a matmul would add ~1e-4 here)."""
    for record in (train[0], embed):
        r = record["results"]
        measured, analytic = r["flops_measured"], r["analytic_flops"]
        assert r["flops_ratio"] == pytest.approx(1, abs=0.01)
        assert measured["total"] == pytest.approx(analytic["total"], rel=0.01)
        for part, key in (("vision encoder", "vision_encoder"), ("vision tokenizer", "vision_tokenizer"),
                          ("language model", "language_model")):
            assert measured[part] == pytest.approx(analytic[key], rel=0.01), part
    r = train[0]["results"]
    assert r["flops_measured"]["backward"] == pytest.approx(r["analytic_flops"]["backward"], rel=0.01)
    # the decoder dominates even the tiny model; its forward is the same shapes in both modes: the target's
    assert r["analytic_flops"]["language_model"] > r["analytic_flops"]["vision_encoder"]


def test_analytic_uses_the_recorded_lengths(bench, flops, train, model_dir):
    """The decoder lengths that ``--device meta`` computes from token ids equal those the run recorded."""
    from cir_lightning.backbones import LoRA, XGenMMBackbone

    backbone = XGenMMBackbone(str(model_dir), lora=LoRA(r=8, alpha=16))
    batch = backbone.collator.triplets(bench.make_samples(2, (64, 64), 0))
    tokens = backbone.base_model.xgenmm_config.num_vis_tokens
    r = train[0]["results"]
    assert flops.spliced_length(batch["query"], backbone.image_token_id, tokens) == r["query_tokens"]
    assert flops.spliced_length(batch["target"], backbone.image_token_id, tokens) == r["target_tokens"]
    assert flops.lora_targets(backbone) == ["down_proj", "gate_up_proj", "o_proj", "qkv_proj"]


def test_mfu(train, embed):
    e, t = embed["results"], train[0]["results"]
    assert e["peak_tflops"] == 1.0
    assert e["mfu"] == pytest.approx(e["achieved_tflops"] / 1.0)
    assert e["achieved_tflops"] == pytest.approx(e["flops_per_step"] / (e["step_ms"][0] / 1e3) / 1e12, rel=0.01)
    assert t["peak_tflops"] is None
    assert t["mfu"] is None
    assert t["achieved_tflops"] > 0


def test_peak_table(flops):
    assert flops.peak_tflops("NVIDIA H200", "bf16") == 989.4
    assert flops.peak_tflops("NVIDIA H100 80GB HBM3", "bf16") == 989.4
    assert flops.peak_tflops("NVIDIA H100 PCIe", "bf16") == 756
    assert flops.peak_tflops("NVIDIA H200 NVL", "tf32") == 418
    assert flops.peak_tflops("NVIDIA L40S", "bf16") == 362.05
    assert flops.peak_tflops("NVIDIA L4", "bf16") == 121
    assert flops.peak_tflops("NVIDIA A100-SXM4-80GB", "fp32") == 19.5
    assert flops.peak_tflops("NVIDIA GeForce RTX 4090", "bf16") is None
    assert flops.compute_dtype("bf16-true", "highest") == "bf16"
    assert flops.compute_dtype("16-mixed", "high") == "fp16"
    assert flops.compute_dtype("32", "high") == "tf32"
    assert flops.compute_dtype("32", "highest") == "fp32"


def test_gradient_checkpointing_flops(bench, model_dir, tmp_path):
    """Recomputation shows in the measured backward; the analytic count adds it as an upper bound."""
    r = run(bench, model_dir, tmp_path / "gc.json", "--gradient-checkpointing")["results"]
    assert r["analytic_flops"]["recompute"] > 0
    assert r["flops_ratio"] == pytest.approx(1, abs=0.02)


def test_profile(train):
    record, text, tmp = train
    printed = printed_profile(text)
    for name in ("query forward", "target forward", "loss", "backward", "optimizer step", "vision encoder",
                 "vision tokenizer", "language model"):
        assert printed[name][0] > 0, name
    phases = ("h2d copy", "query forward", "target forward", "loss", "backward", "optimizer step")
    assert 0.5 < sum(printed[name][1] for name in phases) <= 1.05
    forward = printed["query forward"][0] + printed["target forward"][0]
    assert sum(printed[name][0] for name in ("vision encoder", "vision tokenizer", "language model")) < forward
    profile = record["results"]["profile"]
    assert {row["component"] for row in profile["components"]} == set(printed)
    assert len(profile["top_ops"]) == 15
    assert "aten::mm" in [op["op"] for op in profile["top_ops"]]
    assert len(json.loads((tmp / "trace.json").read_text())["traceEvents"]) > 0


def test_host_syncs_are_counted_by_source_line(bench, train):
    """On CUDA, ``host_syncs`` turns the sync debug mode's warnings into counts per line; on a CPU there is
    no queue to wait for, and the record says so (``None``)."""
    assert train[0]["results"]["host_syncs"] is None
    assert "host waits" not in train[1]

    def warning(text: str, filename: str, lineno: int):
        return bench.warnings.WarningMessage(UserWarning(text), UserWarning, filename, lineno)

    sync = "called a synchronizing CUDA operation"
    caught = [warning(sync, "/x/xgenmm/layout.py", 120), warning(sync, "/y/transformers/masking_utils.py", 249),
              warning(sync, "/x/xgenmm/layout.py", 120), warning("something else", "/x/a.py", 1)]
    assert bench.sync_sites(caught) == {"total": 3, "sites": {"xgenmm/layout.py:120": 2,
                                                              "transformers/masking_utils.py:249": 1}}
    assert bench.host_syncs(lambda: None, torch.device("cpu")) is None
