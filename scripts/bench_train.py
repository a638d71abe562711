"""Training benchmark: throughput and peak memory of FiRE stage-2 training steps, offline.

One training step is what ``CIRModule.training_step`` does plus the optimizer: embed the composed queries
(reference image + modification text) and the target images with the backbone, ``FireLoss`` (InfoNCE +
Recall@1 / Recall@5 surrogates, in-batch negatives), backward, and an AdamW step on the LoRA parameters.
Mixed precision is applied the way Lightning's precision plugins do it: ``*-mixed`` runs the forward and
the loss under ``torch.autocast`` (``16-mixed`` with a ``GradScaler``), ``bf16-true`` converts the whole
module to bfloat16 and runs the forward with bfloat16 as the default dtype. ``--mode embed`` measures gallery
embedding instead: the target images' forward alone (``backbone(batch["target"])``), in eval mode under
``torch.inference_mode()`` and the precision's forward context, no loss, no backward.

Measured, after ``--warmup-steps`` untimed steps, over ``--steps`` timed steps:

- throughput: samples (triplets) per second (embed: images per second) and steps per second, plus the median
  step time;
- FLOPs: one more untimed step between the warm-up and the timed steps runs under ``FlopCounterMode``
  (``bench_flops.FlopMeter``): FLOPs per step, by part and phase, and, for xGen-MM, the analytic count from the
  configuration and the token counts beside it (``bench_flops.analytic_flops``, the same conventions: matmuls
  only, full T x T attention); achieved TFLOP/s = FLOPs per step x timed steps / their seconds, and MFU =
  achieved / the device's dense peak for the precision's format (bf16, fp16, tf32 or fp32; ``PEAK_TFLOPS``,
  ``--peak-tflops`` overrides; none on a CPU). MFU's FLOPs are the counted ones, which include a
  ``--gradient-checkpointing`` recomputation; ``mfu_analytic`` counts the model's FLOPs alone;
- peak memory over all steps, warm-up included (the model's weights included too):
  on CUDA ``torch.cuda.max_memory_allocated()`` and ``max_memory_reserved()``; on CPU the process's
  peak resident set (``ru_maxrss``) and its increase over the resident set just before the first step;
- the decoder's sequence length (padded, image tokens included) of a query batch and a target batch;
- on CUDA, the host's waits for the GPU inside one step: the calls that synchronise (``.item()``, ``.cpu()``,
  ``nonzero``, ...; ``torch.cuda.set_sync_debug_mode`` warns at each) with the source line of each
  (``host_syncs``; ``None`` on a CPU, which has no queue to wait for);
- with ``--profile``, ``--profile-steps`` more steps under ``torch.profiler``: the time of each phase (h2d copy,
  query / target forward, loss, backward, optimizer step) and part's forward (device time on CUDA, wall time on
  a CPU) with its share of the step, and the top 15 operators; ``--trace PATH`` writes a chrome trace.

The batch is built once, before timing, by the backbone's own collator (``collator.triplets``) from
synthetic samples shaped like the training datasets' (``index``, ``reference_image``, ``modification``,
``target_image``, ``target_key``); the time it took is reported as ``collate_ms`` but is not part of a step.
Every step moves that batch to the device again, as Lightning does with each loader batch.

Backbones (nothing is downloaded, every model is built from a config with RANDOM weights):

- ``tiny-llava``: the tiny LLaVA-NeXT of ``cir_lightning.backbones.tiny`` through ``HFMultimodalBackbone``;
- ``tiny-xgenmm``: the tiny xGen-MM of ``cir_lightning.backbones.xgenmm.tiny`` through ``XGenMMBackbone``;
- ``xgenmm-full``: FiRE's real-size xGen-MM (SigLIP so400m-384 + perceiver resampler + Phi-3-mini, 4.36 B
  parameters) through ``XGenMMBackbone``, meant for a GPU. The folder given to the backbone holds a
  real-size ``config.json`` and the tiny builder's tokenizer (a byte-level BPE whose ``<image>`` id is the
  config's ``initial_tokenizer_len``, the layout the backbone checks), no weights: the weights are created
  in memory, on the target device and in the chosen dtype, by swapping the backbone's checkpoint loader
  (``xgenmm.backbone.load_xgenmm``) for one that fills the same parameter tree with random values. Text
  prompts therefore tokenize into somewhat different counts than with Phi-3's tokenizer; the image tokens
  (128 per anyres crop group), which dominate the sequence, are exact. ``--device meta`` only builds it
  and prints the parameter counts and the analytic FLOPs of a step of each mode (works on any machine).

Run each configuration in a fresh process (the CPU peak resident set is per process), e.g.

    python scripts/bench_train.py --backbone tiny-xgenmm --device cpu --batch-size 4 --steps 20
    python scripts/bench_train.py --backbone tiny-llava --device cpu --batch-size 16 --gradient-checkpointing
    python scripts/bench_train.py --backbone xgenmm-full --device meta      # parameter counts, FLOPs
    python scripts/bench_train.py --backbone xgenmm-full --device cuda --precision bf16-mixed \\
        --batch-size 4 --steps 20 --warmup-steps 3 --json results.jsonl
    python scripts/bench_train.py --backbone xgenmm-full --mode embed --batch-size 16 --json results.jsonl
    python scripts/bench_train.py --backbone xgenmm-full --batch-size 4 --profile --profile-steps 3 \\
        --trace train.trace.json --json results.jsonl                    # where the time goes
    python scripts/bench_train.py --backbone tiny-xgenmm --device cpu --peak-tflops 1.5   # MFU on a CPU
    for bs in 4 8 16; do python scripts/bench_train.py --backbone xgenmm-full --batch-size $bs \\
        --gradient-checkpointing --json sweep.jsonl; done

It prints a header and one table row per run, the FLOPs (counted against analytic, part by part) and MFU,
and the profile tables; ``--json PATH`` also writes the settings, the results (with every timed step's
milliseconds, the FLOP counts, ``achieved_tflops``, ``peak_tflops``, ``mfu``, ``profile``) and the machine
(CPU model and cores or GPU name, torch / transformers / peft versions, the load average); a ``.jsonl`` path is
appended to, so a sweep collects one line per run.
On a CPU that other processes share, pass ``--threads 1``: on a loaded 2-core VM two OpenMP threads made
tiny-xgenmm's batch-4 step 5 to 10 times slower than one thread (300-500 ms instead of 35-70 ms).

Measured on one H100 80GB (2026-11, torch 2.11 + CUDA 13.0, transformers 5.17, peft 0.21), xgenmm-full
with bfloat16 base weights, LoRA r=64, 380 x 380 images (decoder tokens: 421 per query, 395 per target),
10 timed steps after 3 warm-up steps; peak = ``max_memory_allocated``:

    batch  precision   checkpointing  samples/s  median step  peak
        4  bf16-mixed  no                   8.9       453 ms  25.7 GiB
        4  bf16-mixed  yes                  5.5       654 ms  10.4 GiB
        4  bf16-true   no                  10.4       385 ms  24.9 GiB
        8  bf16-mixed  no                  11.7       652 ms  41.9 GiB
       16  bf16-mixed  no                  12.9      1221 ms  74.1 GiB
       16  bf16-mixed  yes                  9.6      1633 ms  13.6 GiB
        4  bf16-mixed  no, 768 x 768 images (677 / 651 tokens): 7.4 samples/s, 538 ms, 35.9 GiB

Measured on a 2-core AMD EPYC VM shared with other work (2026-11-23, torch 2.13 CPU, ``--threads 1``,
float32, LoRA r=8, 64 x 64 images; best of two runs, which differed by up to 2x; peak = resident set):

    backbone     batch  checkpointing  samples/s  median step  peak
    tiny-llava       4  no                  90.0        43 ms  414 MiB
    tiny-llava      16  no                 117.8       135 ms  443 MiB
    tiny-llava      64  no                 125.9       495 ms  572 MiB
    tiny-llava      64  yes                 99.2       671 ms  540 MiB
    tiny-xgenmm      4  no                 115.0        34 ms  407 MiB
    tiny-xgenmm     16  no                 237.6        65 ms  430 MiB
    tiny-xgenmm     64  no                 276.6       224 ms  514 MiB
    tiny-xgenmm     64  yes                130.9       488 ms  505 MiB
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import statistics
import sys
import tempfile
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any
from unittest import mock

import torch
from bench_flops import (  # scripts/, on sys.path when this file is run
    FlopMeter,
    Span,
    analytic_for,
    around_parts,
    flop_lines,
    flop_results,
    human,
    model_parts,
    profile_lines,
    profile_summary,
    record_range,
    spliced_length,
)
from PIL import Image

from cir_lightning.backbones import HFMultimodalBackbone, LoRA, XGenMMBackbone
from cir_lightning.backbones.base import Backbone
from cir_lightning.data.synthetic import COLOURS, SCENES, draw_scene, scene_id
from cir_lightning.losses import FireLoss, distributed_loss

BACKBONES = ("tiny-llava", "tiny-xgenmm", "xgenmm-full")
PRECISIONS = ("32", "bf16-mixed", "16-mixed", "bf16-true")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
MIB = 2**20


# ---------------------------------------------------------------------------- command line
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", choices=BACKBONES, default="tiny-xgenmm")
    parser.add_argument("--mode", choices=["train", "embed"], default="train",
                        help="train: training steps (samples/s); embed: gallery embedding, the target images' "
                             "forward alone in eval mode under inference_mode (images/s)")
    parser.add_argument("--model-dir", default=None,
                        help="folder of the tiny checkpoint (built there if missing, reused if present) or, "
                             "for xgenmm-full, of its config + tokenizer; default: a temporary folder")
    parser.add_argument("--batch-size", type=int, default=4, help="triplets per step (FiRE: 4 per device)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps")
    parser.add_argument("--warmup-steps", type=int, default=3, help="untimed steps before the timed ones")
    parser.add_argument("--device", choices=["cpu", "cuda", "meta"], default=None,
                        help="default: cuda when available, else cpu; meta (xgenmm-full only): build the "
                             "model without memory and print its parameter counts, no steps")
    parser.add_argument("--precision", choices=PRECISIONS, default=None,
                        help="Lightning's precision names; default: bf16-mixed on cuda, 32 on cpu")
    parser.add_argument("--dtype", choices=list(DTYPES), default=None,
                        help="dtype of the frozen base weights (the backbone's `dtype`); default: bfloat16 "
                             "for xgenmm-full (FiRE's config), float32 for the tiny ones; bf16-true forces "
                             "bfloat16")
    parser.add_argument("--gradient-checkpointing", action="store_true",
                        help="recompute the language model's activations in backward")
    parser.add_argument("--lora-r", type=int, default=None,
                        help="LoRA rank; default 64 (FiRE) for xgenmm-full, 8 for the tiny ones")
    parser.add_argument("--lora-alpha", type=int, default=None, help="default: 2 x rank (FiRE: 128 for r=64)")
    parser.add_argument("--lora-dropout", type=float, default=0.1)
    parser.add_argument("--lr", type=float, default=1e-4, help="AdamW learning rate (weight decay 0.01)")
    parser.add_argument("--image-size", default=None,
                        help="synthetic image size, N or WxH pixels; xGen-MM's anyres tiling (and so its "
                             "number of image tokens) depends on it; default: 380 for xgenmm-full (FiRE's "
                             "short-edge cap), 64 for the tiny ones")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's choice); on a CPU shared with other "
                             "processes 1 is often fastest")
    parser.add_argument("--matmul-precision", choices=["highest", "high", "medium"], default="highest",
                        help="torch.set_float32_matmul_precision (high: TF32 on NVIDIA GPUs)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="the device's peak TFLOPS for MFU; default: the dense tensor-core peak of a known "
                             "NVIDIA GPU for the precision's format (bench_flops.PEAK_TFLOPS), none on a CPU")
    parser.add_argument("--profile", action="store_true",
                        help="after the timed steps, profile --profile-steps more and print where the time goes")
    parser.add_argument("--profile-steps", type=int, default=3)
    parser.add_argument("--trace", default=None, help="with --profile: write a chrome trace here")
    parser.add_argument("--json", default=None,
                        help="write settings, results and machine here (a .jsonl path is appended to)")
    args = parser.parse_args(argv)
    return resolve_defaults(args, parser)


def resolve_defaults(args: argparse.Namespace, parser: argparse.ArgumentParser) -> argparse.Namespace:
    """Fill the defaults that depend on the backbone and the device, and check the combinations."""
    full = args.backbone == "xgenmm-full"
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    if args.device == "meta" and not full:
        parser.error("--device meta is for --backbone xgenmm-full only")
    if args.precision is None:
        args.precision = "bf16-mixed" if args.device == "cuda" else "32"
    if args.dtype is None:
        args.dtype = "bfloat16" if full else "float32"
    if args.precision == "bf16-true":
        args.dtype = "bfloat16"
    args.lora_r = args.lora_r if args.lora_r is not None else (64 if full else 8)
    args.lora_alpha = args.lora_alpha if args.lora_alpha is not None else 2 * args.lora_r
    args.image_size = parse_size(args.image_size or ("380" if full else "64"))
    if min(args.batch_size, args.steps, args.lora_r, args.profile_steps) < 1 or args.warmup_steps < 0:
        parser.error("--batch-size, --steps, --lora-r and --profile-steps must be >= 1, --warmup-steps >= 0")
    if args.trace and not args.profile:
        parser.error("--trace needs --profile")
    return args


def parse_size(text: str) -> tuple[int, int]:
    """``"380"`` -> (380, 380); ``"507x380"`` -> (507, 380) (width, height)."""
    w, _, h = text.lower().partition("x")
    return int(w), int(h or w)


# ---------------------------------------------------------------------------- the model
def build_backbone(args: argparse.Namespace, folder: Path) -> Backbone:
    """The backbone with LoRA, built from ``folder`` (tiny ones: created there if missing)."""
    lora = LoRA(r=args.lora_r, alpha=args.lora_alpha, dropout=args.lora_dropout)
    common = {"lora": lora, "dtype": args.dtype, "gradient_checkpointing": args.gradient_checkpointing}
    if args.backbone == "tiny-llava":
        return HFMultimodalBackbone(str(folder), make_tiny_if_missing=True, **common)
    if args.backbone == "tiny-xgenmm":
        return XGenMMBackbone(str(folder), make_tiny_if_missing=True, **common)
    write_full_size_folder(folder)
    with random_xgenmm_weights(torch.device(args.device), args.seed):
        return XGenMMBackbone(str(folder), **common)


def write_full_size_folder(folder: Path) -> Path:
    """A real-size xGen-MM ``config.json`` and the tiny builder's tokenizer in ``folder``; no weights.

    The config is the published one's layout (Phi-3-mini, SigLIP so400m-384 and the 6-layer resampler by
    default, vocabulary 32064); only ``initial_tokenizer_len`` is the tiny tokenizer's, so that ``<image>``
    is the first decoupled id, as the backbone requires.
    """
    from cir_lightning.backbones.xgenmm.tiny import make_tiny_xgenmm

    config = folder / "config.json"
    if config.exists():
        if json.loads(config.read_text()).get("cir_lightning_bench") is None:
            raise SystemExit(f"`{folder}` holds a config.json not written by this benchmark; "
                             "give another --model-dir")
        return folder
    make_tiny_xgenmm(folder)
    tiny = json.loads(config.read_text())
    (folder / "model.safetensors").unlink()  # tiny weights: not this config's, never read
    config.write_text(json.dumps({
        "architectures": ["XGenMMModelForConditionalGeneration"], "model_type": "xgenmm",
        "cir_lightning_bench": "real-size config, tiny tokenizer, no weights: scripts/bench_train.py fills "
                               "the parameters with random values in memory",
        "text_config": {"model_type": "phi3", "vocab_size": 32064, "sliding_window": 2047,
                        "initial_tokenizer_len": tiny["text_config"]["initial_tokenizer_len"]},
        "vision_encoder_config": {"model_type": "xgenmm_vision_encoder", "image_aspect_ratio": "anyres",
                                  "anyres_patch_sampling": True},
        "vision_tokenizer_config": {"model_type": "xgenmm_vision_tokenizer"},
    }, indent=2))
    return folder


def random_tensor(name: str, shape: torch.Size, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Random weights of a plausible scale: N(0, 0.02) matrices, unit norm scales, zero biases."""
    if len(shape) == 1:
        fill = 0.0 if name.endswith("bias") else 1.0
        return torch.full(shape, fill, dtype=dtype, device=device)
    return torch.empty(shape, dtype=dtype, device=device).normal_(0.0, 0.02)


@contextmanager
def random_xgenmm_weights(device: torch.device, seed: int) -> Iterator[None]:
    """While active, ``XGenMMBackbone`` gets a randomly initialised model instead of loading weights.

    The replacement builds the same ``XGenMMModel`` as ``load_xgenmm`` (parameters on the meta device,
    buffers for real), then assigns random parameters created directly on ``device`` in the requested
    dtype, so a 4.4 B-parameter model costs no disk, no checkpoint read and no float32 copy. (A
    ``random_weights`` option of ``XGenMMBackbone`` / ``load_xgenmm`` would make this patch unnecessary.)
    """
    import cir_lightning.backbones.xgenmm.backbone as xgenmm_backbone
    from cir_lightning.backbones.xgenmm.loading import _parameters_on_meta, read_config
    from cir_lightning.backbones.xgenmm.modeling import XGenMMModel

    def load_random(folder: str | Path, dtype: torch.dtype = torch.float32) -> XGenMMModel:
        with _parameters_on_meta():
            model = XGenMMModel(read_config(folder))
        torch.manual_seed(seed)
        state = {k: random_tensor(k, v.shape, dtype, device) for k, v in model.state_dict().items()}
        model.load_state_dict(state, strict=True, assign=True)
        return model.to(device).eval()  # moves the buffers (rotary frequencies, position ids) too

    with mock.patch.object(xgenmm_backbone, "load_xgenmm", load_random):
        yield


def parameter_counts(backbone: Backbone) -> dict[str, int]:
    """Total, trainable (LoRA) and frozen (base model) parameters; for xGen-MM also the count of the
    published checkpoint's layout for this config (``published_weight_shapes``), which the frozen count
    must equal."""
    total = sum(p.numel() for p in backbone.parameters())
    trainable = sum(p.numel() for p in backbone.parameters() if p.requires_grad)
    counts = {"parameters": total, "trainable_parameters": trainable, "base_parameters": total - trainable}
    config = getattr(backbone.base_model, "xgenmm_config", None)
    if config is not None:
        from cir_lightning.backbones.xgenmm.loading import published_weight_shapes

        counts["published_layout_parameters"] = sum(
            torch.Size(shape).numel() for shape in published_weight_shapes(config).values())
    return counts


# ---------------------------------------------------------------------------- the data
def synthetic_image(scene: tuple[str, str, str, str], size: tuple[int, int]) -> Image.Image:
    w, h = size
    image = draw_scene(scene, max(w, h))
    return image if w == h else image.resize((w, h))


def make_samples(batch_size: int, size: tuple[int, int], seed: int) -> list[dict[str, Any]]:
    """Training samples as the datasets yield them: a reference scene, "make it <colour>", the target."""
    rng = random.Random(seed)
    samples = []
    for index in range(batch_size):
        reference = rng.choice(SCENES)
        colour = rng.choice([c for c in COLOURS if c != reference[1]])
        target = (reference[0], colour, reference[2], reference[3])
        samples.append({"index": index, "reference_image": synthetic_image(reference, size),
                        "modification": f"make it {colour}", "target_image": synthetic_image(target, size),
                        "target_key": scene_id(target)})
    return samples


def to_device(inputs: dict[str, Any], device: torch.device,
              float_dtype: torch.dtype | None) -> dict[str, Any]:
    """Move tensors (recursively); with ``float_dtype`` also cast the floating ones (as Lightning's
    ``bf16-true`` does with every batch)."""
    out = {}
    for key, value in inputs.items():
        if isinstance(value, dict):
            out[key] = to_device(value, device, float_dtype)
        elif isinstance(value, torch.Tensor):
            cast = float_dtype if float_dtype is not None and value.is_floating_point() else None
            out[key] = value.to(device=device, dtype=cast)
        else:
            out[key] = value
    return out


# ---------------------------------------------------------------------------- one training step
@contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def forward_context(precision: str, device_type: str) -> AbstractContextManager:
    """What Lightning's precision plugin wraps ``training_step`` in."""
    if precision == "bf16-mixed":
        return torch.autocast(device_type, dtype=torch.bfloat16)
    if precision == "16-mixed":
        return torch.autocast(device_type, dtype=torch.float16)
    if precision == "bf16-true":
        return default_dtype(torch.bfloat16)
    return nullcontext()


def no_span(name: str) -> AbstractContextManager:
    return nullcontext()


def training_step(backbone: Backbone, loss_fn: FireLoss, batch: dict[str, Any],
                  optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None, precision: str,
                  device_type: str, span: Span = no_span) -> torch.Tensor:
    """Forward (queries and targets), FiRE loss, backward, AdamW step; returns the (detached) loss.
    Each phase runs inside ``span(its name)`` (profiler ranges, FLOP counts; nothing by default)."""
    optimizer.zero_grad(set_to_none=True)
    with forward_context(precision, device_type):
        with span("query forward"):
            query = backbone(batch["query"])
        with span("target forward"):
            target = backbone(batch["target"])
        with span("loss"):
            keys = batch["target_id"].to(query.device)  # the samples carry target keys: the collator's ids
            loss = distributed_loss(loss_fn, query, target, keys, cross_rank=False)["loss"]
    with span("backward"):  # its own range: on a GPU the autograd engine runs it on another thread
        (loss if scaler is None else scaler.scale(loss)).backward()
    with span("optimizer step"):
        if scaler is None:
            optimizer.step()
        else:  # 16-mixed, as Lightning: scaled backward, unscale, step (skipped on inf), update
            scaler.unscale_(optimizer)
            scaler.step(optimizer)
            scaler.update()
    return loss.detach()


def embed_step(backbone: Backbone, batch: dict[str, Any], precision: str, device_type: str,
               span: Span = no_span) -> torch.Tensor:
    """Gallery embedding: the target images' forward alone, as prediction runs it (no graph, no loss)."""
    with torch.inference_mode(), forward_context(precision, device_type), span("target forward"):
        return backbone(batch["target"])


class SequenceLengths:
    """Records the decoder's padded input length (image tokens included) of each forward while attached."""

    def __init__(self, backbone: Backbone) -> None:
        self.lengths: list[int] = []
        decoder = backbone.base_model.get_decoder()
        self.handle = decoder.register_forward_pre_hook(self._record, with_kwargs=True)

    def _record(self, module: torch.nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        embeds = kwargs.get("inputs_embeds")
        ids = kwargs.get("input_ids", args[0] if args else None)
        tokens = embeds if embeds is not None else ids
        if tokens is not None:
            self.lengths.append(int(tokens.shape[1]))

    def detach(self) -> list[int]:
        self.handle.remove()
        return self.lengths


# ---------------------------------------------------------------------------- measuring
def current_rss_mib() -> float:
    """Resident set size now (Linux: /proc; elsewhere: the peak so far)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return peak_rss_mib()


def peak_rss_mib() -> float:
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / MIB


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_steps(args: argparse.Namespace, backbone: Backbone, batch: dict[str, Any]) -> dict[str, Any]:
    """Warm-up steps, one untimed step under ``FlopMeter``, the timed steps (throughput, memory, sequence
    lengths), then with ``--profile`` the profiled steps."""
    device = torch.device(args.device)
    float_dtype = torch.bfloat16 if args.precision == "bf16-true" else None
    train = args.mode == "train"
    if train:
        params = [p for p in backbone.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)
        scaler = torch.amp.GradScaler(device.type) if args.precision == "16-mixed" else None
        loss_fn = FireLoss()
    else:
        backbone.eval()  # as prediction runs it: no dropout (LoRA's)
    memory: dict[str, float] = {}
    synchronize(device)
    if device.type == "cuda":
        memory["cuda_allocated_before_steps_mib"] = torch.cuda.memory_allocated(device) / MIB
        torch.cuda.reset_peak_memory_stats(device)
    else:
        memory["rss_before_steps_mib"] = current_rss_mib()
        memory["peak_rss_before_steps_mib"] = peak_rss_mib()

    recorder = SequenceLengths(backbone)
    lengths: list[int] = []

    def step(span: Span = no_span) -> torch.Tensor:
        with span("h2d copy"):
            on_device = to_device(batch, device, float_dtype)
        if train:
            out = training_step(backbone, loss_fn, on_device, optimizer, scaler, args.precision, device.type, span)
        else:
            out = embed_step(backbone, on_device, args.precision, device.type, span)
        synchronize(device)
        if not lengths:
            lengths.extend(recorder.detach())  # the first step's
        return out

    step_seconds, losses = [], []
    for index in range(args.warmup_steps + args.steps):
        if index == args.warmup_steps:  # one more step, untimed: the FLOPs of a step
            meter = FlopMeter(model_parts(backbone))
            with meter.measure():
                step(meter.span)
        start = time.perf_counter()
        out = step()
        if index >= args.warmup_steps:
            step_seconds.append(time.perf_counter() - start)
        if train:
            losses.append(float(out))  # after the timing: the host read would synchronise inside it

    if device.type == "cuda":
        memory["cuda_peak_allocated_mib"] = torch.cuda.max_memory_allocated(device) / MIB
        memory["cuda_peak_reserved_mib"] = torch.cuda.max_memory_reserved(device) / MIB
    else:
        memory["peak_rss_mib"] = peak_rss_mib()
        memory["peak_rss_increase_mib"] = memory["peak_rss_mib"] - memory["rss_before_steps_mib"]
        # False: the process peaked while building the model, so the increase is an upper bound
        memory["peak_rss_reached_in_steps"] = memory["peak_rss_mib"] > memory["peak_rss_before_steps_mib"]
    total = sum(step_seconds)
    result = {
        "mode": args.mode,
        "samples_per_s" if train else "images_per_s": args.batch_size * len(step_seconds) / total,
        "steps_per_s": len(step_seconds) / total,
        "step_ms_median": 1000 * statistics.median(step_seconds),
        "step_ms_min": 1000 * min(step_seconds),
        "step_ms_max": 1000 * max(step_seconds),
        "step_ms": [round(1000 * t, 2) for t in step_seconds],
        "query_tokens": lengths[0] if train else None,
        "target_tokens": lengths[1] if train else lengths[0],
        "first_loss": losses[0] if losses else None, "last_loss": losses[-1] if losses else None,
        **memory,
        **flop_results(args, backbone, batch, lengths, {**meter.counts, "total": meter.total}, step_seconds),
    }
    result["host_syncs"] = host_syncs(step, device)
    if args.profile:
        result["profile"] = profile_steps(args, step, device, model_parts(backbone))
    return result


def sync_sites(caught: list[warnings.WarningMessage]) -> dict[str, Any]:
    """The synchronisation warnings among ``caught``: how many, and the source lines that issued them (most
    first, ``file:line`` with the file's last two path parts)."""
    sites = Counter(f"{'/'.join(Path(w.filename).parts[-2:])}:{w.lineno}" for w in caught
                    if str(w.message).startswith("called a synchronizing CUDA operation"))
    return {"total": sum(sites.values()), "sites": dict(sites.most_common())}


def host_syncs(step: Callable[[], Any], device: torch.device) -> dict[str, Any] | None:
    """One more step with CUDA's sync debug mode on: where the host waited for the GPU (``sync_sites``).
    The step's own closing ``torch.cuda.synchronize`` is among the sites if the debug mode counts it (it does
    not see every kind of wait: copies from pageable memory are not flagged). A failure here is reported, not
    raised, so that the measurements above are kept."""
    if device.type != "cuda":
        return None
    before = torch.cuda.get_sync_debug_mode()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            step()
        except Exception as error:  # noqa: BLE001 - a diagnostic: keep the run's results
            return {"error": f"{type(error).__name__}: {error}"}
        finally:
            torch.cuda.set_sync_debug_mode(before)
    return sync_sites(caught)


# ---------------------------------------------------------------------------- FLOPs without a device
def meta_estimate(args: argparse.Namespace, backbone: Backbone) -> dict[str, Any]:
    """``--device meta``: the analytic FLOPs of a step of each mode for this batch, from the token counts
    (``spliced_length``), since nothing runs."""
    batch = backbone.collator.triplets(make_samples(args.batch_size, args.image_size, args.seed))
    tokens = backbone.base_model.xgenmm_config.num_vis_tokens
    lengths = [spliced_length(batch[s], backbone.image_token_id, tokens) for s in ("query", "target")]
    out = {"query_tokens": lengths[0], "target_tokens": lengths[1]}
    for mode in ("train", "embed"):
        mode_args = argparse.Namespace(**{**vars(args), "mode": mode})
        found = lengths if mode == "train" else lengths[1:]
        out[f"analytic_flops_{mode}"] = analytic_for(mode_args, backbone, batch, found)
    return out


# ---------------------------------------------------------------------------- profiling
def profile_steps(args: argparse.Namespace, step: Callable[[Span], Any], device: torch.device,
                  parts: dict[str, torch.nn.Module]) -> dict[str, Any]:
    """Run ``--profile-steps`` steps under ``torch.profiler`` with a range around each phase and each part's
    forward; the time of each (``bench_flops.profile_summary``) and the top operators."""
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    walls = []
    activities = [ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if cuda else [])]
    with profile(activities=activities) as prof, around_parts(parts, record_range):
        for _ in range(args.profile_steps):
            start = time.perf_counter()
            with record_range("step"):
                step(record_range)
            walls.append(time.perf_counter() - start)
    if args.trace:
        prof.export_chrome_trace(args.trace)
    return profile_summary(prof, list(parts), walls, cuda)


# ---------------------------------------------------------------------------- reporting
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device: torch.device) -> dict[str, Any]:
    import peft
    import transformers

    info: dict[str, Any] = {
        "cpu": cpu_model(), "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
        "platform": platform.platform(), "torch": torch.__version__, "transformers": transformers.__version__,
        "peft": peft.__version__,
        # a load above the usable cores means other processes share the CPU: expect noisy CPU timings
        "load_average_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=props.name, gpu_memory_mib=props.total_memory // MIB,
                    gpu_capability=f"{props.major}.{props.minor}", cuda=torch.version.cuda)
    return info


COLUMNS = [("backbone", "{}"), ("device", "{}"), ("precision", "{}"), ("bs", "{}"), ("gc", "{}"),
           ("lora_r", "{}"), ("image", "{}"), ("tokens q/t", "{}"), ("samples/s", "{:.2f}"),
           ("steps/s", "{:.2f}"), ("step ms", "{:.1f}"), ("peak MiB", "{:.0f}"), ("peak+ MiB", "{:.0f}"),
           ("mode", "{}"), ("FLOP/step", "{}"), ("TFLOP/s", "{:.3g}"), ("MFU", "{}")]


def table_row(args: argparse.Namespace, result: dict[str, Any]) -> tuple[str, str]:
    """A header and a row. ``step ms``: median of the timed steps; ``peak MiB``: CUDA's peak allocated or
    the process's peak RSS; ``peak+ MiB``: CUDA's peak reserved or the RSS increase over the RSS before
    the first step; ``FLOP/step``: FlopCounterMode's count of one step; ``MFU``: achieved / peak TFLOP/s
    (``-`` without a known peak). In embed mode ``images/s`` replaces ``samples/s``."""
    cuda, train = args.device == "cuda", args.mode == "train"
    columns = [("images/s", fmt) if name == "samples/s" and not train else (name, fmt) for name, fmt in COLUMNS]
    tokens = result["query_tokens"] if train else "-"
    values = [args.backbone, args.device, args.precision, args.batch_size,
              "yes" if args.gradient_checkpointing else "no", args.lora_r,
              "x".join(map(str, args.image_size)), f"{tokens}/{result['target_tokens']}",
              result["samples_per_s" if train else "images_per_s"], result["steps_per_s"], result["step_ms_median"],
              result["cuda_peak_allocated_mib" if cuda else "peak_rss_mib"],
              result["cuda_peak_reserved_mib" if cuda else "peak_rss_increase_mib"],
              args.mode, human(result["flops_per_step"]), result["achieved_tflops"],
              "-" if result["mfu"] is None else f"{result['mfu']:.1%}"]
    cells = [fmt.format(v) for (_, fmt), v in zip(columns, values, strict=True)]
    widths = [max(len(name), len(cell)) for (name, _), cell in zip(columns, cells, strict=True)]
    header = " | ".join(name.rjust(w) for (name, _), w in zip(columns, widths, strict=True))
    return header, " | ".join(cell.rjust(w) for cell, w in zip(cells, widths, strict=True))


def write_json(path: str, record: dict[str, Any]) -> None:
    text = json.dumps(record, default=str)
    if path.endswith(".jsonl"):
        with open(path, "a") as f:
            f.write(text + "\n")
    else:
        Path(path).write_text(json.dumps(record, indent=2, default=str) + "\n")


# ---------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_float32_matmul_precision(args.matmul_precision)
    torch.manual_seed(args.seed)
    settings = {k: v for k, v in vars(args).items() if k != "json"}
    with tempfile.TemporaryDirectory(prefix="bench_train-") as tmp:
        folder = Path(args.model_dir) if args.model_dir else Path(tmp) / args.backbone
        start = time.perf_counter()
        backbone = build_backbone(args, folder)
        build_s = time.perf_counter() - start
        counts = parameter_counts(backbone)
        published = counts.get("published_layout_parameters")
        same = "=" if published == counts["base_parameters"] else "!="
        check = "" if published is None else f" ({same} {published:,} of the published layout)"
        print(f"{args.backbone}: {counts['base_parameters']:,} base parameters{check} + "
              f"{counts['trainable_parameters']:,} trainable (LoRA r={args.lora_r}); base weights "
              f"{args.dtype}, built in {build_s:.1f} s", flush=True)
        if args.device == "meta":
            estimate = meta_estimate(args, backbone)
            print(f"analytic FLOPs per step, batch {args.batch_size}, {'x'.join(map(str, args.image_size))} images "
                  f"(decoder tokens {estimate['query_tokens']}/{estimate['target_tokens']}): train "
                  f"{human(estimate['analytic_flops_train']['total'])}FLOP, embed "
                  f"{human(estimate['analytic_flops_embed']['total'])}FLOP")
            record = {"settings": settings, "results": {**counts, "build_s": build_s, **estimate},
                      "machine": machine_info(torch.device("cpu"))}
            if args.json:
                write_json(args.json, record)
            return
        if args.precision == "bf16-true":
            backbone.to(torch.bfloat16)  # Lightning's HalfPrecision converts the whole module (LoRA too)
        backbone.to(args.device)
        start = time.perf_counter()
        batch = backbone.collator.triplets(make_samples(args.batch_size, args.image_size, args.seed))
        collate_ms = 1000 * (time.perf_counter() - start)
        result = {**counts, "build_s": build_s, "collate_ms": collate_ms,
                  **run_steps(args, backbone, batch)}
    header, row = table_row(args, result)
    print(header)
    print(row)
    print("\n".join(flop_lines(result)))
    syncs = result.get("host_syncs")
    if syncs:
        print(f"host waits for the GPU in one step: {syncs.get('total', syncs.get('error'))}")
        print("\n".join(f"  {count:4d}  {site}" for site, count in syncs.get("sites", {}).items()))
    if "profile" in result:
        print("\n".join(profile_lines(result["profile"])))
    sys.stdout.flush()
    if args.json:
        write_json(args.json, {"settings": settings, "results": result,
                               "machine": machine_info(torch.device(args.device))})


if __name__ == "__main__":
    main()
