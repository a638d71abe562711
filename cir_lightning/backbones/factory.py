"""``build_backbone``: any supported checkpoint, from a hub name or a folder, as a cir_lightning backbone.

The family is read from the checkpoint's ``config.json`` (``model_type``, through ``MODEL_TYPE_TO_FAMILY``)
unless given; ``BACKBONES`` says, per family, which class builds it and which of ``build_backbone``'s
options it refuses (data, not an if/elif chain, as open_clip's model registry). Configs for the CLI name
the classes directly (``class_path: cir_lightning.backbones.XGenMMBackbone``, or a class of your own:
``class_path: mypackage.MyBackbone``); this factory is the one-line entry for Python users, ``list_backbones``
shows what it knows, and ``register_backbone`` adds a family of your own.
"""

from __future__ import annotations

import importlib
import inspect
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from cir_lightning.backbones.base import Backbone, Dtype, load_error
from cir_lightning.backbones.identity import check_readable
from cir_lightning.backbones.lora import LoRA
from cir_lightning.backbones.prompts import Prompts
from cir_lightning.errors import CIRConfigError, CIRModelError
from cir_lightning.paths import path_option

BackboneFamily = Literal["auto", "hf_mllm", "xgenmm", "dual_encoder"] | str  # or a family registered since


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
        found: Any = importlib.import_module(self.module)
        for part in self.class_name.split("."):
            found = getattr(found, part, None)
        if not (isinstance(found, type) and issubclass(found, Backbone)):
            raise CIRConfigError(f"`{self.module}.{self.class_name}` is not a Backbone subclass that can be imported "
                                 "by that name (register a class defined at a module's top level)")
        return found


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


SHARED_OPTIONS: dict[str, Any] = {"prompts": None, "lora": None, "dtype": "float32", "revision": None,
                                  "trust_remote_code": False}
"""The options ``build_backbone`` gives every family's class, with their defaults: a class whose constructor does
not take one may only be given its default (it is then not passed)."""


def register_backbone(family: str, backbone: type[Backbone], model_types: Sequence[str] = (),
                      refuses: dict[str, str] | None = None) -> None:
    """Make ``build_backbone(..., family=family)`` build ``backbone``, a ``Backbone`` subclass of your own (configs
    need no registration: they name it by ``class_path``).

    Args:
        family: the name ``build_backbone``'s ``family`` and ``list_backbones`` use.
        backbone: the class, defined at a module's top level; its constructor takes the checkpoint's name or
            folder first, then any of ``SHARED_OPTIONS`` it supports and options of its own.
        model_types: ``config.json`` ``model_type``s that ``family="auto"`` builds with it.
        refuses: shared option -> why this family refuses it (as ``BackboneEntry.refuses``).

    Example:
        >>> from cir_lightning.backbones import DualEncoderBackbone, list_backbones
        >>> from cir_lightning.backbones.factory import BACKBONES, register_backbone
        >>> register_backbone("clip_again", DualEncoderBackbone)
        >>> list_backbones()["clip_again"]
        'DualEncoderBackbone'
        >>> del BACKBONES["clip_again"]  # (this example leaves the registry as it was)
        >>> register_backbone("xgenmm", DualEncoderBackbone)
        Traceback (most recent call last):
        ...
        cir_lightning.errors.CIRConfigError: backbone family 'xgenmm' is XGenMMBackbone's already; choose another name
    """
    entry = BackboneEntry(backbone.__module__, backbone.__qualname__, dict(refuses or {}))
    if entry.load() is not backbone:  # importable by its name, as every family is built
        raise CIRConfigError(f"`{entry.module}.{entry.class_name}` is not the class given; register a class "
                             "defined at a module's top level")
    taken = BACKBONES.get(family)
    if family == "auto" or (taken is not None and taken != entry):
        owner = "the detection from config.json" if taken is None else f"{taken.class_name}'s"
        raise CIRConfigError(f"backbone family {family!r} is {owner} already; choose another name")
    clashes = [t for t in model_types if MODEL_TYPE_TO_FAMILY.get(t, family) != family]
    if clashes:
        raise CIRConfigError(f"model types {clashes} are built by other families already "
                             f"({', '.join(MODEL_TYPE_TO_FAMILY[t] for t in clashes)})")
    BACKBONES[family] = entry
    MODEL_TYPE_TO_FAMILY.update(dict.fromkeys(model_types, family))


def _options_for(backbone: type[Backbone], shared: dict[str, Any], options: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments of ``backbone``'s constructor: the shared options it takes (the others must keep
    their defaults) and ``options``, every one of which it must take."""
    parameters = inspect.signature(backbone).parameters
    if any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
        return {**shared, **options}
    unknown = [name for name in options if name not in parameters]
    unknown += [name for name, value in shared.items() if name not in parameters and value != SHARED_OPTIONS[name]]
    if unknown:
        raise CIRConfigError(f"{backbone.__name__} takes no {', '.join(f'`{n}`' for n in unknown)}; it takes "
                             f"{', '.join(f'`{n}`' for n in list(parameters)[1:]) or 'nothing but the checkpoint'}")
    return {**{k: v for k, v in shared.items() if k in parameters}, **options}


def list_backbones() -> dict[str, str]:
    """The backbone families ``build_backbone`` knows, with the class that builds each.

    Example:
        >>> from cir_lightning.backbones import list_backbones
        >>> list_backbones()
        {'hf_mllm': 'HFMultimodalBackbone', 'xgenmm': 'XGenMMBackbone', 'dual_encoder': 'DualEncoderBackbone'}
    """
    return {family: entry.class_name for family, entry in BACKBONES.items()}


def _model_type(name_or_path: str, revision: str | None) -> str:
    path = Path(path_option("name_or_path", name_or_path))  # "" is no folder (Path("") is the current one)
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
            (native xGen-MM), ``"dual_encoder"`` (CLIP, SigLIP), or one added by ``register_backbone``.
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
    backbone = entry.load()
    return backbone(name_or_path, **_options_for(backbone, shared, options))
