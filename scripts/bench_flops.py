"""FLOPs and time of a FiRE step, for ``bench_train.py``: counted, analytic (xGen-MM), peaks, profile summary.

- ``FlopMeter``: ``torch.utils.flop_counter.FlopCounterMode`` over one step (plus formulas for the CPU SDPA kernel,
  which it does not count), split by phase and by part (vision encoder, vision tokenizer, language model);
- ``analytic_flops``: the same count from the configuration and the token counts alone (also for ``--device meta``);
- ``PEAK_TFLOPS`` / ``peak_tflops``: dense tensor-core peaks, for MFU = achieved FLOP/s / peak FLOP/s;
- ``profile_summary``: where a profiled step's time goes, by phase and part, and the top operators.

Conventions, the same on both sides so that the two counts can be compared:

- matrix products only: ``2 x m x n x k`` per matmul (and ``2 x outputs x inputs-per-output`` per convolution);
  biases, norms, softmax, activations, the rotary angles (a broadcast multiply) and the optimizer are not counted;
- attention over the padded sequence, every query against every key: ``QK^T`` and ``AV`` over T x T even where a
  mask (causal or padding) makes half of it or more useless. This is what ``FlopCounterMode`` counts for the fused
  SDPA kernels, and it is also the cost a dense kernel pays on padded rows;
- the backward of a fused SDPA counts 5 matmuls (2.5 x its forward: the kernel recomputes the scores), as
  ``torch.utils.flop_counter``'s formula does; an explicit attention (the perceiver's ``q @ k^T``) would count 2 x;
- frozen weights get no weight gradient; a product whose input needs no gradient gets no input gradient (layer 0's
  ``qkv_proj``: its input, the embeddings and spliced image tokens, is frozen; not so with gradient checkpointing,
  see ``language_model_flops``).

``analytic_flops`` counts xGen-MM (``cir_lightning.backbones.xgenmm.modeling``): SigLIP per crop (patch
convolution, q/k/v/out, MLP, attention over its patches; not the pooling head, which ``SiglipTower`` keeps
but does not run), the perceiver resampler per crop group (latents attend to [patches ;
latents]), the Phi-3 decoder over each padded batch (fused qkv, o_proj, gate_up, down, attention; no ``lm_head``:
the backbone pools hidden states) and LoRA's A and B on the adapted projections.
In a training step the vision encoder and the resampler are frozen and see no gradient (the encoder runs under
``no_grad``, the resampler's input carries none), so they count forward only; the decoder counts forward, backward
to its activations (about 2 x forward) and LoRA's weight gradients; the loss counts its similarity matrix.
"""
from __future__ import annotations

import argparse
import bisect
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from itertools import accumulate
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from cir_lightning.backbones import XGenMMBackbone
from cir_lightning.backbones.base import Backbone

# ---------------------------------------------------------------------------- peak throughput
# DENSE tensor-core peaks (TFLOPS, no 2:4 sparsity) from NVIDIA's datasheets, by device-name pattern, first match.
# Not Lightning's ``lightning.fabric.utilities.throughput.get_available_flops``: in lightning 2.6.6 its "h200 sxm1"
# entry has bfloat16 = 2.0e15, the datasheet's figure WITH sparsity (its "h100 sxm" entry is the dense 989.4e12),
# and ``torch.cuda.get_device_name`` of an H200 SXM is "NVIDIA H200", which matches neither of its keys
# ("h200 sxm1", "h200 nvl1"), so it warns "FLOPs not found" and returns None.
PEAK_TFLOPS: list[tuple[str, str, dict[str, float]]] = [
    ("H200 NVL", r"\bH200\b.*\bNVL\b", {"bf16": 835, "fp16": 835, "tf32": 418, "fp32": 60}),
    ("H200 SXM", r"\bH200\b", {"bf16": 989.4, "fp16": 989.4, "tf32": 494.7, "fp32": 66.9}),
    ("H100 NVL", r"\bH100\b.*\bNVL\b", {"bf16": 835, "fp16": 835, "tf32": 418, "fp32": 60}),
    ("H100 PCIe", r"\bH100\b.*\bPCIE\b", {"bf16": 756, "fp16": 756, "tf32": 378, "fp32": 51.2}),
    ("H100 SXM", r"\bH100\b.*\b(HBM3|SXM\d*)\b", {"bf16": 989.4, "fp16": 989.4, "tf32": 494.7, "fp32": 66.9}),
    ("A100", r"\bA100\b", {"bf16": 312, "fp16": 312, "tf32": 156, "fp32": 19.5}),
    ("L40S", r"\bL40S\b", {"bf16": 362.05, "fp16": 362.05, "tf32": 183, "fp32": 91.6}),
    ("L4", r"\bL4\b", {"bf16": 121, "fp16": 121, "tf32": 60, "fp32": 30.3}),
    ("A10G", r"\bA10G\b", {"bf16": 70, "fp16": 70, "tf32": 35, "fp32": 31.2}),
]


def peak_tflops(device_name: str, compute: str) -> float | None:
    """Dense peak TFLOPS of ``device_name`` (``torch.cuda.get_device_name``) for ``compute`` (bf16, fp16, tf32,
    fp32); None for a device not in ``PEAK_TFLOPS``. "NVIDIA H100 80GB HBM3" is the SXM board."""
    for _, pattern, peaks in PEAK_TFLOPS:
        if re.search(pattern, device_name.upper()):
            return peaks.get(compute)
    return None


def compute_dtype(precision: str, matmul_precision: str) -> str:
    """The tensor-core format the matmuls run in under Lightning's ``precision``."""
    if precision.startswith("bf16"):
        return "bf16"
    if precision == "16-mixed":
        return "fp16"
    return "tf32" if matmul_precision in ("high", "medium") else "fp32"


# ---------------------------------------------------------------------------- counting one step
def _sdpa_cpu(q: Any, k: Any, v: Any, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
    b, h, sq, d = q
    return 2 * b * h * sq * k[2] * d + 2 * b * h * sq * k[2] * v[3]


def _sdpa_cpu_backward(grad: Any, q: Any, k: Any, v: Any, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
    b, h, sq, d = q  # torch's 5 matmuls: scores recomputed (d), dP and dV (v's d), dQ and dK (d)
    return 2 * b * h * sq * k[2] * (3 * d + 2 * v[3])


# torch's FlopCounterMode has formulas for the CUDA SDPA kernels (flash, efficient, cudnn) but not for the CPU one,
# which it would count as 0: the same formulas for it, so that CPU and GPU runs count the same attention
CPU_SDPA = {getattr(torch.ops.aten, name): f for name, f in (
    ("_scaled_dot_product_flash_attention_for_cpu", _sdpa_cpu),
    ("_scaled_dot_product_flash_attention_for_cpu_backward", _sdpa_cpu_backward),
) if hasattr(torch.ops.aten, name)}

Span = Callable[[str], AbstractContextManager]


@contextmanager
def around_parts(parts: Mapping[str, nn.Module], span: Span) -> Iterator[None]:
    """While active, every forward of each part runs inside ``span(part name)`` (forward pre/post hooks)."""
    opened: list[AbstractContextManager] = []

    def enter(name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: Any) -> None:
            opened.append(span(name))
            opened[-1].__enter__()
        return hook

    def leave(module: nn.Module, args: Any, output: Any) -> None:
        opened.pop().__exit__(None, None, None)

    handles = [h for name, module in parts.items()
               for h in (module.register_forward_pre_hook(enter(name)), module.register_forward_hook(leave))]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


class FlopMeter:
    """``FlopCounterMode`` over one step, plus the FLOPs inside each ``span`` (phases of the step) and each part's
    forward, read as differences of its running total.

    The parts come from forward hooks, not from ``get_flop_counts()``' module names: its module tracker attributes
    backward ops unreliably (in a tiny-xGen-MM training step it put ~1e7 FLOPs under ``FireLoss``, whose own
    forward + backward is ~1.5e3: backward ops of the backbone ran while it still counted the loss as active).
    """

    def __init__(self, parts: Mapping[str, nn.Module]) -> None:
        self.parts = parts
        self.counter = FlopCounterMode(display=False, custom_mapping=CPU_SDPA)
        self.counts: dict[str, int] = defaultdict(int)

    @property
    def total(self) -> int:
        return self.counter.get_total_flops()

    @contextmanager
    def span(self, name: str) -> Iterator[None]:
        start = self.total
        try:
            yield
        finally:
            self.counts[name] += self.total - start

    @contextmanager
    def measure(self) -> Iterator[FlopMeter]:
        with self.counter, around_parts(self.parts, self.span):
            yield self


# ---------------------------------------------------------------------------- analytic count (xGen-MM)
@dataclass(frozen=True)
class Forward:
    """One backbone forward: batch rows, padded decoder length (image tokens spliced in), crops and their size."""

    rows: int
    tokens: int
    crops: int
    crop_size: int


def mm(m: int, k: int, n: int) -> int:
    """FLOPs of an (m, k) @ (k, n) product."""
    return 2 * m * k * n


def vision_encoder_flops(config: Any, crops: int, crop_size: int) -> int:
    """SigLIP over ``crops`` crops: patch convolution and layers (the attention-pooling head is not run)."""
    s = config.siglip
    d, ff, p, channels = s["hidden_size"], s["intermediate_size"], s["patch_size"], s.get("num_channels", 3)
    n = (crop_size // p) ** 2
    layer = 4 * mm(n, d, d) + mm(n, d, ff) + mm(n, ff, d) + 2 * mm(n, d, n)  # q k v out, MLP, QK^T and AV
    return crops * (mm(n, channels * p * p, d) + s["num_hidden_layers"] * layer)


def vision_tokenizer_flops(config: Any, crops: int, crop_size: int) -> int:
    """The perceiver resampler over ``crops`` groups of patch tokens (``layout.splice_layout``: one per crop)."""
    d, lm_dim = config.siglip["hidden_size"], config.phi3_config().hidden_size
    m, lat = (crop_size // config.siglip["patch_size"]) ** 2, config.num_vis_tokens
    inner, ff = config.perceiver_heads * config.perceiver_dim_head, d * config.perceiver_ff_mult
    layer = (mm(lat, d, inner) + mm(m + lat, d, 2 * inner) + 2 * mm(lat, inner, m + lat) + mm(lat, inner, d)
             + mm(lat, d, ff) + mm(lat, ff, d))
    return crops * (config.perceiver_depth * layer + mm(lat, d, lm_dim))


def language_model_flops(config: Any, rows: int, tokens: int, lora_r: int, lora_targets: Iterable[str],
                         train: bool, input_grads: bool = False, sdpa_backward: float = 2.5) -> dict[str, int]:
    """Phi-3 decoder over (rows, tokens): ``forward``, ``layers`` (forward of the layers alone, what gradient
    checkpointing recomputes) and, when ``train``, ``backward``; ``input_grads``: the embeddings require grad
    (transformers' ``enable_input_require_grads``, which its gradient checkpointing turns on), so layer 0 also
    computes the input gradients that nothing reads."""
    t = config.phi3_config()
    d, ff, heads = t.hidden_size, t.intermediate_size, t.num_attention_heads
    kv = t.num_key_value_heads or heads
    hd = getattr(t, "head_dim", None) or d // heads
    n, targets = rows * tokens, set(lora_targets)
    linears = [("qkv_proj", d, (heads + 2 * kv) * hd), ("o_proj", heads * hd, d), ("gate_up_proj", d, 2 * ff),
               ("down_proj", ff, d)]
    attention = 2 * rows * heads * mm(tokens, hd, tokens)  # QK^T and AV, every head, full T x T
    forward = backward = 0
    for layer in range(t.num_hidden_layers):
        forward += attention
        backward += round(sdpa_backward * attention)
        for name, fan_in, fan_out in linears:
            input_grad = input_grads or not (layer == 0 and name == "qkv_proj")  # layer 0's input: frozen
            forward += mm(n, fan_in, fan_out)
            backward += mm(n, fan_out, fan_in) if input_grad else 0
            if name in targets:  # y += B(A(dropout(x))) * scale
                forward += mm(n, fan_in, lora_r) + mm(n, lora_r, fan_out)
                backward += mm(n, lora_r, fan_out) + mm(n, fan_out, lora_r) + mm(n, fan_in, lora_r)  # dB, dh, dA
                backward += mm(n, lora_r, fan_in) if input_grad else 0
    out = {"forward": forward, "layers": forward}  # the rotary angles (inv_freq x positions) run as a multiply
    if train:
        out["backward"] = backward
    return out


def analytic_flops(config: Any, forwards: list[Forward], *, train: bool, lora_r: int = 0,
                   lora_targets: Iterable[str] = (), loss_dim: int | None = None,
                   gradient_checkpointing: bool = False) -> dict[str, int]:
    """FLOPs of one step of an xGen-MM backbone (``XGenMMConfig`` ``config``), by part.

    Args:
        forwards: the backbone's forwards in the step (training: query then target; embedding: target).
        train: a training step (backward through the decoder and the loss) or forward only.
        lora_r, lora_targets: LoRA's rank and the adapted projections (names inside a Phi-3 layer).
        loss_dim: embedding size, for the loss's (queries x targets) similarity (training only).
        gradient_checkpointing: add the decoder layers' recomputation in backward (``recompute``; torch's
            non-reentrant checkpoint may stop a layer's recomputation early: an upper bound) and layer 0's input
            gradients (see ``language_model_flops``).

    Returns:
        ``vision_encoder``, ``vision_tokenizer``, ``language_model``, ``loss`` (forwards), ``backward``,
        ``recompute``, ``forward`` (their sum), ``model`` (forward + backward: the model FLOPs) and ``total``
        (model + recompute: what a counter sees).
    """
    out = dict.fromkeys(("vision_encoder", "vision_tokenizer", "language_model", "loss", "backward", "recompute"), 0)
    for f in forwards:
        out["vision_encoder"] += vision_encoder_flops(config, f.crops, f.crop_size)
        out["vision_tokenizer"] += vision_tokenizer_flops(config, f.crops, f.crop_size)
        lm = language_model_flops(config, f.rows, f.tokens, lora_r, lora_targets, train, gradient_checkpointing)
        out["language_model"] += lm["forward"]
        out["backward"] += lm.get("backward", 0)
        out["recompute"] += lm["layers"] if train and gradient_checkpointing else 0
    if train and len(forwards) == 2 and loss_dim:
        out["loss"] = mm(forwards[0].rows, loss_dim, forwards[1].rows)  # query @ target.T
        out["backward"] += 2 * out["loss"]  # gradients of both operands
    out["forward"] = sum(out[k] for k in ("vision_encoder", "vision_tokenizer", "language_model", "loss"))
    out["model"] = out["forward"] + out["backward"]
    out["total"] = out["model"] + out["recompute"]
    return out


def spliced_length(inputs: Mapping[str, torch.Tensor], image_token_id: int, tokens_per_crop: int) -> int:
    """The padded decoder length of a collated batch once every ``<image>`` became its crops' tokens (what
    ``XGenMMModel.splice`` builds; images in reading order), computed from the token ids alone."""
    crops, k, longest = [int(n) for n in inputs["image_num_crops"]], 0, 0
    for ids, mask in zip(inputs["input_ids"], inputs["attention_mask"].bool(), strict=True):
        real = ids[mask]
        images = int((real == image_token_id).sum())
        longest = max(longest, len(real) - images + sum(crops[k:k + images]) * tokens_per_crop)
        k += images
    return longest


def human(flops: float | None) -> str:
    """``1.23e12`` -> ``"1.23 T"``."""
    if flops is None:
        return "-"
    for scale, unit in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(flops) >= scale:
            return f"{flops / scale:.3g} {unit}"
    return f"{flops:.3g} "


def comparison_lines(measured: Mapping[str, int], analytic: Mapping[str, int] | None) -> list[str]:
    """Measured (``FlopMeter.counts`` + ``total``) against analytic FLOPs, part by part."""
    recompute = analytic.get("recompute", 0) if analytic else 0
    rows = [("vision encoder (fwd)", "vision encoder", "vision_encoder"),
            ("vision tokenizer (fwd)", "vision tokenizer", "vision_tokenizer"),
            ("language model (fwd)", "language model", "language_model"), ("loss (fwd)", "loss", "loss"),
            ("backward" + (" + recompute" if recompute else ""), "backward", "backward"), ("total", "total", "total")]
    lines = [f"  {'FLOPs per step':<26} {'measured':>10} {'analytic':>10} {'ratio':>7}"]
    for label, mkey, akey in rows:
        m, a = measured.get(mkey), analytic.get(akey) if analytic else None
        a = a + recompute if a is not None and akey == "backward" else a
        if m is None and not a:
            continue
        ratio = f"{m / a:.4f}" if m is not None and a else "-"
        cells = ["-" if x is None else human(x) + "FLOP" for x in (m, a)]
        lines.append(f"  {label:<26} {cells[0]:>10} {cells[1]:>10} {ratio:>7}")
    return lines


# ---------------------------------------------------------------------------- a step of bench_train.py
def model_parts(backbone: Backbone) -> dict[str, torch.nn.Module]:
    """The vision encoder, the vision tokenizer (xGen-MM's resampler, LLaVA's projector), the language model."""
    model, parts = backbone.base_model, {}
    for label, names in (("vision encoder", ("vision_encoder", "vision_tower", "vision_model")),
                         ("vision tokenizer", ("vision_tokenizer", "multi_modal_projector"))):
        found = [m for n, m in model.named_modules() if n.rsplit(".", 1)[-1] in names]  # the outermost first
        if found:
            parts[label] = found[0]
    parts["language model"] = model.get_decoder()
    return parts


def lora_targets(backbone: Backbone) -> list[str]:
    """The projection names that LoRA adapts, by matching the peft config's ``target_modules`` (a regex or
    names) against the model's module names, as peft does."""
    target = backbone.model.peft_config["default"].target_modules
    found = {name.rsplit(".", 1)[-1] for name, _ in backbone.base_model.named_modules()
             if (re.fullmatch(target, name) if isinstance(target, str) else name.rsplit(".", 1)[-1] in target)}
    return sorted(found)


def step_forwards(args: argparse.Namespace, batch: dict[str, Any], lengths: list[int]) -> list[Forward]:
    """The backbone forwards of a step: rows, padded decoder length, crops and crop size of each."""
    sides = ["query", "target"] if args.mode == "train" else ["target"]
    return [Forward(rows=int(batch[s]["input_ids"].shape[0]), tokens=n, crops=int(batch[s]["image_num_crops"].sum()),
                    crop_size=int(batch[s]["pixel_values"].shape[-1])) for s, n in zip(sides, lengths, strict=True)]


def analytic_for(args: argparse.Namespace, backbone: Backbone, batch: dict[str, Any],
                 lengths: list[int]) -> dict[str, int] | None:
    """``bench_flops.analytic_flops`` of a step for an xGen-MM backbone; None for the others."""
    if not isinstance(backbone, XGenMMBackbone):
        return None
    forwards = step_forwards(args, batch, lengths)
    return analytic_flops(backbone.base_model.xgenmm_config, forwards, train=args.mode == "train",
                          lora_r=args.lora_r, lora_targets=lora_targets(backbone), loss_dim=backbone.embedding_dim,
                          gradient_checkpointing=args.gradient_checkpointing)


def flop_results(args: argparse.Namespace, backbone: Backbone, batch: dict[str, Any], lengths: list[int],
                 measured: dict[str, int], step_seconds: list[float]) -> dict[str, Any]:
    """FLOPs per step (measured, analytic), achieved TFLOP/s over the timed steps, the peak and MFU."""
    analytic = analytic_for(args, backbone, batch, lengths)
    seconds, compute = sum(step_seconds), compute_dtype(args.precision, args.matmul_precision)
    achieved = measured["total"] * len(step_seconds) / seconds / 1e12
    peak = args.peak_tflops
    if peak is None and args.device == "cuda":
        peak = peak_tflops(torch.cuda.get_device_name(torch.device(args.device)), compute)
    model_tflops = analytic["model"] * len(step_seconds) / seconds / 1e12 if analytic else None
    return {"flops_per_step": measured["total"], "flops_measured": measured, "analytic_flops": analytic,
            "flops_ratio": measured["total"] / analytic["total"] if analytic else None,
            "compute_dtype": compute, "achieved_tflops": achieved, "peak_tflops": peak,
            "mfu": achieved / peak if peak else None,
            "mfu_analytic": model_tflops / peak if peak and model_tflops is not None else None}


def flop_lines(result: dict[str, Any]) -> list[str]:
    """Measured against analytic FLOPs, and the achieved rate against the peak."""
    lines = comparison_lines(result["flops_measured"], result["analytic_flops"])
    peak, mfu = result["peak_tflops"], result["mfu"]
    rate = f"achieved {result['achieved_tflops']:.4g} TFLOP/s ({result['compute_dtype']})"
    if peak is None:
        return [*lines, rate + "; MFU: no peak known for this device (give --peak-tflops)"]
    also = f", {result['mfu_analytic']:.2%} from the analytic model FLOPs" if result["mfu_analytic"] else ""
    return [*lines, f"{rate} of a {peak:g} TFLOP/s peak: MFU {mfu:.2%}{also}"]


# ---------------------------------------------------------------------------- where the time goes
RANGE = "bench: "  # prefix of bench_train's profiler ranges
PHASES = ("h2d copy", "query forward", "target forward", "loss", "backward", "optimizer step")


def record_range(name: str) -> AbstractContextManager:
    return torch.profiler.record_function(RANGE + name)


def profile_summary(prof: Any, parts: list[str], walls: list[float], cuda: bool) -> dict[str, Any]:
    """The time of each phase and part (``record_range`` ranges) of the profiled steps, and the top 15 ops.

    A component's time is, on CUDA, the device time of the kernels launched while its range was open, from any
    thread (backward's kernels are launched by the autograd engine's thread, outside the main thread's ranges);
    on a CPU, the wall time of its range. Shares are of the profiled steps' wall time (``walls``)."""
    from torch.autograd import DeviceType

    events = [e for e in prof.events() if e.device_type == DeviceType.CPU]
    ranges: dict[str, list[tuple[float, float]]] = {}
    for e in events:
        if e.name.startswith(RANGE):
            ranges.setdefault(e.name[len(RANGE):], []).append((e.time_range.start, e.time_range.end))
    launches = sorted((e.time_range.start, sum(k.duration for k in e.kernels)) for e in events if e.kernels)
    starts, cumulative = [t for t, _ in launches], list(accumulate((d for _, d in launches), initial=0))

    def busy_us(start: float, end: float) -> float:
        if not cuda:
            return end - start
        return cumulative[bisect.bisect_left(starts, end)] - cumulative[bisect.bisect_left(starts, start)]

    step_us = 1e6 * sum(walls)
    rows = [{"component": name, "kind": kind, "ms": sum(busy_us(*r) for r in ranges[name]) / 1e3}
            for kind, names in (("phase", PHASES), ("part", parts)) for name in names if name in ranges]
    if cuda:
        rows.append({"component": "all kernels", "kind": "device", "ms": sum(busy_us(*r) for r in ranges["step"]) / 1e3})
    for row in rows:
        row["share"] = 1e3 * row["ms"] / step_us
    key = "self_device_time_total" if cuda else "self_cpu_time_total"
    ops = [a for a in prof.key_averages() if a.device_type == DeviceType.CPU and not a.key.startswith(RANGE)
           and not getattr(a, "is_user_annotation", False)]
    top = sorted(ops, key=lambda a: getattr(a, key), reverse=True)[:15]
    return {"steps": len(walls), "basis": "device time" if cuda else "CPU time",
            "step_ms": [round(1000 * t, 2) for t in walls], "components": rows,
            "top_ops": [{"op": a.key, "calls": a.count, "self_ms": getattr(a, key) / 1e3,
                         "share": getattr(a, key) / step_us} for a in top]}


def profile_lines(profile: dict[str, Any]) -> list[str]:
    steps, step_ms = profile["steps"], sum(profile["step_ms"])
    lines = [f"profile: {steps} steps, {step_ms / steps:.1f} ms per step (wall); {profile['basis']} per component, "
             f"summed over the steps (parts: forward, query + target)",
             f"  {'component':<22} {'ms':>10} {'share':>7}"]
    for row in profile["components"]:
        name = ("  " if row["kind"] == "part" else "") + row["component"]
        lines.append(f"  {name:<22} {row['ms']:>10.2f} {row['share']:>7.1%}")
    lines.append(f"top {len(profile['top_ops'])} operators by self {profile['basis']}:")
    lines.append(f"  {'operator':<60} {'calls':>6} {'self ms':>10} {'share':>7}")
    lines += [f"  {op['op'][:60]:<60} {op['calls']:>6} {op['self_ms']:>10.2f} {op['share']:>7.1%}"
              for op in profile["top_ops"]]
    return lines
