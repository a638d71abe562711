"""``build_backbone``: any supported checkpoint, from a hub name or a folder, as a cir_lightning backbone.

The family is read from the checkpoint's ``config.json`` (``model_type``, through ``MODEL_TYPE_TO_FAMILY``)
unless given; ``BACKBONES`` says, per family, which class builds it and which of ``build_backbone``'s
options it refuses (data, not an if/elif chain, as open_clip's model registry). Configs for the CLI name
the classes directly (``class_path: cir_lightning.backbones.XGenMMBackbone``); this factory is the
one-line entry for Python users, and ``list_backbones`` shows what it knows.
"""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from cir_lightning.backbones.base import Backbone, Dtype, load_error
from cir_lightning.backbones.identity import check_readable
from cir_lightning.backbones.lora import LoRA
from cir_lightning.backbones.prompts import Prompts
from cir_lightning.errors import CIRConfigError, CIRModelError

BackboneFamily = Literal["auto", "hf_mllm", "xgenmm", "dual_encoder"]


@dataclass(frozen=True)
class BackboneEntry:
    """Where a family's backbone class lives, and the shared options of ``build_backbone`` it refuses.

    Args:
        module: the module that defines the class (imported only when the family is built).
        class_name: the class, also exported as ``cir_lightning.backbones.<class_name>``.
        refuses: option name -> why it is refused; the option may only keep its default (``None`` /
            ``False``), and is then not passed to the class.

    Example:
        >>> from cir_lightning.backbones.factory import BackboneEntry
        >>> entry = BackboneEntry("cir_lightning.backbones.dual_encoder", "DualEncoderBackbone",
        ...                       refuses={"prompts": "dual encoders take `query_template`, not `prompts`"})
        >>> entry.load().__name__
        'DualEncoderBackbone'
    """

    module: str
    class_name: str
    refuses: dict[str, str] = field(default_factory=dict)

    def load(self) -> type[Backbone]:
        """The backbone class (its module is imported now)."""
        return getattr(importlib.import_module(self.module), self.class_name)


BACKBONES: dict[str, BackboneEntry] = {
    "hf_mllm": BackboneEntry("cir_lightning.backbones.hf_mllm", "HFMultimodalBackbone"),
    "xgenmm": BackboneEntry("cir_lightning.backbones.xgenmm.backbone", "XGenMMBackbone", refuses={
        "trust_remote_code": "xGen-MM runs natively: `trust_remote_code` is not used for it"}),
    "dual_encoder": BackboneEntry("cir_lightning.backbones.dual_encoder", "DualEncoderBackbone", refuses={
        "prompts": "dual encoders take `query_template`, not `prompts`"}),
}
"""Backbone family -> its class and the options it refuses."""

MODEL_TYPE_TO_FAMILY: dict[str, str] = {
    "xgenmm": "xgenmm",
    "clip": "dual_encoder",
    "siglip": "dual_encoder",
}
"""``model_type`` -> family; every other type goes to ``hf_mllm`` (``AutoModelForImageTextToText``)."""


def list_backbones() -> dict[str, str]:
    """The backbone families ``build_backbone`` knows, with the class that builds each.

    Example:
        >>> from cir_lightning.backbones import list_backbones
        >>> list_backbones()
        {'hf_mllm': 'HFMultimodalBackbone', 'xgenmm': 'XGenMMBackbone', 'dual_encoder': 'DualEncoderBackbone'}
    """
    return {family: entry.class_name for family, entry in BACKBONES.items()}


def _model_type(name_or_path: str, revision: str | None) -> str:
    path = Path(name_or_path)
    if path.is_dir():
        check_readable(path)  # a missing, unreadable or dangling config.json is named in one line
        config = path / "config.json"
    else:
        from huggingface_hub import hf_hub_download

        try:  # only the small config file, to choose the family
            config = Path(hf_hub_download(name_or_path, "config.json", revision=revision))
        except Exception as err:
            raise load_error(name_or_path, err) from None
    try:
        return str(json.loads(config.read_text())["model_type"])
    except (json.JSONDecodeError, KeyError) as err:
        raise CIRModelError(f"`{config}` has no readable `model_type` ({err})") from None


def detect_family(name_or_path: str, revision: str | None = None) -> str:
    """The backbone family of a checkpoint, from its ``model_type``.

    Example:
        >>> from cir_lightning.backbones import detect_family
        >>> import tempfile
        >>> from cir_lightning.backbones.tiny import make_tiny_model
        >>> detect_family(str(make_tiny_model(tempfile.mkdtemp() + "/tiny")))
        'hf_mllm'
    """
    return MODEL_TYPE_TO_FAMILY.get(_model_type(name_or_path, revision), "hf_mllm")


def build_backbone(name_or_path: str, family: BackboneFamily = "auto", prompts: Prompts | None = None,
                   lora: LoRA | None = None, dtype: Dtype = "float32", revision: str | None = None,
                   trust_remote_code: bool = False, **options: Any) -> Backbone:
    """A backbone for ``name_or_path`` (hub name or folder), of the family its config names.

    Args:
        name_or_path: hub name or local checkpoint folder.
        family: ``"auto"`` (from ``config.json``), or a key of ``BACKBONES`` (see ``list_backbones``):
            ``"hf_mllm"`` (LLaVA-NeXT, LLaVA, ... through ``AutoModelForImageTextToText``), ``"xgenmm"``
            (native xGen-MM), ``"dual_encoder"`` (CLIP, SigLIP).
        prompts: prompt preset and overrides (multimodal LLMs; see ``list_presets``).
        lora: LoRA settings; ``None`` freezes the model (zero-shot).
        dtype: weight dtype.
        revision: hub revision.
        trust_remote_code: allow a checkpoint's own code (``hf_mllm`` and ``dual_encoder``; never needed
            for xGen-MM).
        **options: further arguments of the family's class (e.g. ``pooling``, ``fusion``, ``lora_towers``).

    Example:
        >>> from cir_lightning.backbones import build_backbone
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
    if family != "auto" and family not in BACKBONES:
        raise CIRConfigError(f"unknown backbone family {family!r}; known: {', '.join(['auto', *BACKBONES])}")
    entry = BACKBONES[detect_family(name_or_path, revision) if family == "auto" else family]
    shared: dict[str, Any] = {"prompts": prompts, "lora": lora, "dtype": dtype, "revision": revision,
                              "trust_remote_code": trust_remote_code}
    for option, why in entry.refuses.items():
        if shared.pop(option) not in (None, False):
            raise CIRConfigError(why)
    return entry.load()(name_or_path, **shared, **options)
