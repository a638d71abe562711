"""``build_backbone``: any supported checkpoint, from a hub name or a folder, as a cir_lightning backbone.

The family is read from the checkpoint's ``config.json`` (``model_type``) unless given; ``FAMILIES`` maps
model types to backbone classes (data, not an if/elif chain). Configs for the CLI name the classes
directly (``class_path: cir_lightning.backbones.XGenMMBackbone``); this factory is the one-line entry
for Python users.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

from cir_lightning.backbones.base import Backbone
from cir_lightning.backbones.lora import LoRA
from cir_lightning.backbones.prompts import Prompts
from cir_lightning.errors import CIRConfigError, CIRModelError

Family = Literal["auto", "hf_mllm", "xgenmm", "dual_encoder"]

FAMILIES: dict[str, str] = {
    "xgenmm": "xgenmm",
    "clip": "dual_encoder",
    "siglip": "dual_encoder",
}
"""``model_type`` -> family; every other type goes to ``hf_mllm`` (``AutoModelForImageTextToText``)."""


def _model_type(name_or_path: str, revision: str | None) -> str:
    path = Path(name_or_path)
    if path.is_dir():
        from cir_lightning.backbones.identity import check_readable

        check_readable(path)  # a missing, unreadable or dangling config.json is named in one line
        config = path / "config.json"
    else:
        from huggingface_hub import hf_hub_download

        try:  # only the small config file, to choose the family
            config = Path(hf_hub_download(name_or_path, "config.json", revision=revision))
        except Exception as err:
            offline = " (offline mode is on: HF_HUB_OFFLINE=1)" if os.environ.get("HF_HUB_OFFLINE") else ""
            raise CIRModelError(f"`{name_or_path}` is not a local folder and its config cannot be fetched from the "
                                f"hub{offline}: {type(err).__name__}: {err}") from None
    try:
        return str(json.loads(config.read_text())["model_type"])
    except (json.JSONDecodeError, KeyError) as err:
        raise CIRModelError(f"`{config}` has no readable `model_type` ({err})") from None


def detect_family(name_or_path: str, revision: str | None = None) -> str:
    """The backbone family of a checkpoint, from its ``model_type``.

    Example:
        >>> import tempfile
        >>> from cir_lightning.backbones.tiny import make_tiny_model
        >>> detect_family(str(make_tiny_model(tempfile.mkdtemp() + "/tiny")))
        'hf_mllm'
    """
    return FAMILIES.get(_model_type(name_or_path, revision), "hf_mllm")


def build_backbone(name_or_path: str, family: Family = "auto", prompts: Prompts | None = None,
                   lora: LoRA | None = None, dtype: Literal["float32", "bfloat16", "float16"] = "float32",
                   revision: str | None = None, trust_remote_code: bool = False, **options: Any) -> Backbone:
    """A backbone for ``name_or_path`` (hub name or folder), of the family its config names.

    Args:
        name_or_path: hub name or local checkpoint folder.
        family: ``"auto"`` (from ``config.json``), or ``"hf_mllm"`` (LLaVA-NeXT, LLaVA, ... through
            ``AutoModelForImageTextToText``), ``"xgenmm"`` (native xGen-MM), ``"dual_encoder"`` (CLIP, SigLIP).
        prompts: prompt preset and overrides (multimodal LLMs).
        lora: LoRA settings; ``None`` freezes the model (zero-shot).
        dtype: weight dtype.
        revision: hub revision.
        trust_remote_code: allow a checkpoint's own code (``hf_mllm`` only; never needed for xGen-MM).
        **options: further arguments of the family's class (e.g. ``pooling``, ``fusion``, ``lora_towers``).

    Example:
        >>> import tempfile
        >>> from cir_lightning.backbones.tiny import make_tiny_model
        >>> folder = str(make_tiny_model(tempfile.mkdtemp() + "/tiny"))
        >>> type(build_backbone(folder, prompts=Prompts("e5v"))).__name__
        'HFMultimodalBackbone'
        >>> build_backbone(folder, family="vit")
        Traceback (most recent call last):
        ...
        cir_lightning.errors.CIRConfigError: unknown backbone family 'vit'; known: auto, hf_mllm, xgenmm, dual_encoder
    """
    known = ("auto", "hf_mllm", "xgenmm", "dual_encoder")
    if family not in known:
        raise CIRConfigError(f"unknown backbone family {family!r}; known: {', '.join(known)}")
    if family == "auto":
        family = detect_family(name_or_path, revision)  # type: ignore[assignment]
    if family == "xgenmm":
        from cir_lightning.backbones.xgenmm import XGenMMBackbone

        if trust_remote_code:
            raise CIRConfigError("xGen-MM runs natively: `trust_remote_code` is not used for it")
        return XGenMMBackbone(name_or_path, prompts=prompts, lora=lora, dtype=dtype, revision=revision, **options)
    if family == "dual_encoder":
        from cir_lightning.backbones.dual_encoder import DualEncoderBackbone

        if prompts is not None:
            raise CIRConfigError("dual encoders take `query_template`, not `prompts`")
        return DualEncoderBackbone(name_or_path, lora=lora, dtype=dtype, revision=revision,
                                   trust_remote_code=trust_remote_code, **options)
    from cir_lightning.backbones.hf_mllm import HFMultimodalBackbone

    return HFMultimodalBackbone(name_or_path, prompts=prompts, lora=lora, dtype=dtype, revision=revision,
                                trust_remote_code=trust_remote_code, **options)
