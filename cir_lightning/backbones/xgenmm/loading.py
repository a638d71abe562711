"""Strict loading of xGen-MM checkpoint folders (``config.json`` + safetensors), without remote code.

Weight-name mapping: the identity. ``XGenMMModel``'s module tree reproduces the published names
(``vlm.vision_encoder.*`` = transformers-5 ``SiglipVisionModel``, ``vlm.vision_tokenizer.*`` =
``PerceiverResampler``, ``vlm.lang_model.model.*`` = ``Phi3Model`` with a decoupled embedding,
``vlm.lang_model.lm_head.*`` = decoupled head with bias), so every tensor of the checkpoint is loaded
under its own name. A strict load fails with a ``CIRModelError`` naming the first missing, unexpected or
wrongly shaped weights. Non-persistent buffers (rotary ``inv_freq``, SigLIP ``position_ids``) are not in
checkpoints and are computed at construction.

``published_weight_shapes`` writes down the published 718-tensor layout from the spec's tables,
independently of the module tree, and ``check_index`` compares a ``model.safetensors.index.json``
(or any name list) with it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from cir_lightning.backbones.xgenmm.modeling import XGenMMConfig, XGenMMModel
from cir_lightning.errors import CIRModelError
from cir_lightning.messages import first_few


def published_weight_shapes(config: XGenMMConfig) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor of a published xGen-MM (interleave r-v1.5) checkpoint.

    Example:
        >>> shapes = published_weight_shapes(XGenMMConfig())
        >>> len(shapes), sum(torch.Size(s).numel() for s in shapes.values())
        (718, 4359257219)
        >>> shapes["vlm.lang_model.lm_head.additional_fc.weight"]
        (3, 3072)
    """
    from transformers import Phi3Config

    s = config.siglip
    d, ff, patch = s["hidden_size"], s["intermediate_size"], s["patch_size"]
    n_pos = (s["image_size"] // patch) ** 2
    t = Phi3Config(**config.text)
    hd, heads = t.hidden_size, t.num_attention_heads
    kv = t.num_key_value_heads or heads
    qkv = hd + 2 * kv * (hd // heads)
    out: dict[str, tuple[int, ...]] = {}
    v = "vlm.vision_encoder."
    out.update({v + "embeddings.patch_embedding.weight": (d, s.get("num_channels", 3), patch, patch),
                v + "embeddings.patch_embedding.bias": (d,), v + "embeddings.position_embedding.weight": (n_pos, d),
                v + "post_layernorm.weight": (d,), v + "post_layernorm.bias": (d,)})
    for i in range(s["num_hidden_layers"]):
        p = f"{v}encoder.layers.{i}."
        for proj in ("q", "k", "v", "out"):
            out[f"{p}self_attn.{proj}_proj.weight"], out[f"{p}self_attn.{proj}_proj.bias"] = (d, d), (d,)
        for norm in ("layer_norm1", "layer_norm2"):
            out[f"{p}{norm}.weight"], out[f"{p}{norm}.bias"] = (d,), (d,)
        out.update({f"{p}mlp.fc1.weight": (ff, d), f"{p}mlp.fc1.bias": (ff,),
                    f"{p}mlp.fc2.weight": (d, ff), f"{p}mlp.fc2.bias": (d,)})
    h = v + "head."
    out.update({h + "probe": (1, 1, d), h + "attention.in_proj_weight": (3 * d, d), h + "attention.in_proj_bias": (3 * d,),
                h + "attention.out_proj.weight": (d, d), h + "attention.out_proj.bias": (d,),
                h + "layernorm.weight": (d,), h + "layernorm.bias": (d,), h + "mlp.fc1.weight": (ff, d),
                h + "mlp.fc1.bias": (ff,), h + "mlp.fc2.weight": (d, ff), h + "mlp.fc2.bias": (d,)})
    r = "vlm.vision_tokenizer."
    inner, ffp = config.perceiver_heads * config.perceiver_dim_head, d * config.perceiver_ff_mult
    out.update({r + "latents": (config.num_vis_tokens, d), r + "norm.weight": (d,), r + "norm.bias": (d,),
                r + "projection.weight": (hd, d), r + "projection.bias": (hd,)})
    for i in range(config.perceiver_depth):
        p = f"{r}layers.{i}."
        for norm in ("norm_media", "norm_latents"):
            out[f"{p}0.{norm}.weight"], out[f"{p}0.{norm}.bias"] = (d,), (d,)
        out.update({f"{p}0.to_q.weight": (inner, d), f"{p}0.to_kv.weight": (2 * inner, d),
                    f"{p}0.to_out.weight": (d, inner), f"{p}1.0.weight": (d,), f"{p}1.0.bias": (d,),
                    f"{p}1.1.weight": (ffp, d), f"{p}1.3.weight": (d, ffp)})
    m, extra = "vlm.lang_model.", config.num_additional_tokens
    out.update({m + "model.embed_tokens.weight": (t.vocab_size, hd),
                m + "model.embed_tokens.additional_embedding.weight": (extra, hd), m + "model.norm.weight": (hd,),
                m + "lm_head.weight": (t.vocab_size, hd), m + "lm_head.bias": (t.vocab_size,),
                m + "lm_head.additional_fc.weight": (extra, hd), m + "lm_head.additional_fc.bias": (extra,)})
    for i in range(t.num_hidden_layers):
        p = f"{m}model.layers.{i}."
        out.update({p + "self_attn.qkv_proj.weight": (qkv, hd), p + "self_attn.o_proj.weight": (hd, hd),
                    p + "mlp.gate_up_proj.weight": (2 * t.intermediate_size, hd),
                    p + "mlp.down_proj.weight": (hd, t.intermediate_size),
                    p + "input_layernorm.weight": (hd,), p + "post_attention_layernorm.weight": (hd,)})
    return out


def _problems(expected: dict[str, tuple[int, ...]], found: dict[str, tuple[int, ...]]) -> list[str]:
    missing = [k for k in expected if k not in found]
    extra = [k for k in found if k not in expected]
    shapes = [f"{k}: checkpoint {list(found[k])}, model {list(expected[k])}"
              for k in expected if k in found and tuple(found[k]) != tuple(expected[k])]
    out = []
    for label, items in (("missing", missing), ("unexpected", extra), ("wrong shape", shapes)):
        if items:
            out.append(f"{len(items)} {label}: {first_few(items, ', ', ' (+{n} more)')}")
    return out


def check_index(index: str | Path | dict[str, Any] | Iterable[str], config: XGenMMConfig | None = None,
                shapes: dict[str, tuple[int, ...]] | None = None) -> None:
    """Check that a published ``model.safetensors.index.json`` names exactly the module tree's weights.

    Args:
        index: path of the index file, its parsed dictionary, or an iterable of weight names.
        config: the model configuration (default: the published one).
        shapes: also compare shapes (name -> shape), when known.

    Example:
        >>> names = list(published_weight_shapes(XGenMMConfig()))
        >>> check_index({"weight_map": {n: "model-00001-of-00002.safetensors" for n in names}})
        >>> check_index(names[1:])
        Traceback (most recent call last):
        ...
        cir_lightning.errors.CIRModelError: the checkpoint does not match the xGen-MM module tree: 1 missing: vlm.vision_encoder.embeddings.patch_embedding.weight
    """
    if isinstance(index, (str, Path)):
        index = json.loads(Path(index).read_text())
    names = list(index["weight_map"]) if isinstance(index, dict) else list(index)
    with torch.device("meta"):
        model = XGenMMModel(config or XGenMMConfig())
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    found = shapes if shapes is not None else {n: expected.get(n, ()) for n in names}
    problems = _problems(expected, {n: tuple(found[n]) for n in names})
    if problems:
        raise CIRModelError("the checkpoint does not match the xGen-MM module tree: " + "; ".join(problems))


def _weight_files(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if index.exists():
        return [folder / f for f in sorted(set(json.loads(index.read_text())["weight_map"].values()))]
    single = folder / "model.safetensors"
    if single.exists():
        return [single]
    raise CIRModelError(f"`{folder}` has neither model.safetensors nor model.safetensors.index.json; "
                        "download the checkpoint's safetensors files into it")


def _read(files: list[Path], dtype: torch.dtype) -> Iterator[tuple[str, Tensor]]:
    from safetensors import safe_open

    for file in files:
        if not file.exists():
            raise CIRModelError(f"weight shard `{file}` named in the index is missing")
        with safe_open(str(file), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 - safe_open has no __iter__
                tensor = f.get_tensor(key)
                yield key, tensor.to(dtype) if tensor.is_floating_point() else tensor


@contextmanager
def _parameters_on_meta() -> Iterator[None]:
    """Create parameters on the meta device (no memory, no init) but buffers for real."""
    register = nn.Module.register_parameter

    def on_meta(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        register(module, name, param)
        if param is not None:
            module._parameters[name] = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)

    nn.Module.register_parameter = on_meta  # type: ignore[method-assign]
    try:
        yield
    finally:
        nn.Module.register_parameter = register  # type: ignore[method-assign]


def read_config(folder: str | Path) -> XGenMMConfig:
    """Parse ``folder/config.json``; sliding window off, as in the original transformers-4.44 runtime."""
    path = Path(folder) / "config.json"
    if not path.exists():
        raise CIRModelError(f"`{folder}` has no config.json; is it an xGen-MM checkpoint folder?")
    raw = json.loads(path.read_text())
    if raw.get("model_type") != "xgenmm":
        raise CIRModelError(f"`{path}` has model_type {raw.get('model_type')!r}, not 'xgenmm'")
    config = XGenMMConfig.from_dict(raw)
    config.text["sliding_window"] = None  # 4.44 + sdpa ignored the 2047 window (spec section 6.1)
    return config


def load_xgenmm(folder: str | Path, dtype: torch.dtype = torch.float32) -> XGenMMModel:
    """Build ``XGenMMModel`` from a checkpoint folder and load every weight strictly.

    Args:
        folder: folder with config.json and model.safetensors (or an index with shards).
        dtype: dtype of the floating-point weights.

    Example:
        >>> import tempfile
        >>> from cir_lightning.backbones.xgenmm.tiny import make_tiny_xgenmm
        >>> model = load_xgenmm(make_tiny_xgenmm(tempfile.mkdtemp() + "/x"))
        >>> type(model).__name__, model.training
        ('XGenMMModel', False)
    """
    folder = Path(folder)
    config = read_config(folder)
    with _parameters_on_meta():
        model = XGenMMModel(config)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    state = dict(_read(_weight_files(folder), dtype))
    problems = _problems(expected, {k: tuple(v.shape) for k, v in state.items()})
    if problems:
        raise CIRModelError(f"cannot load `{folder}` strictly: " + "; ".join(problems))
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval()
