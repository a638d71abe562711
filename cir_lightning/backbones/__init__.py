"""Backbones: models that embed composed queries, gallery images and texts.

``build_backbone`` builds any supported checkpoint by name or folder (``list_backbones``: the families and
their classes; ``register_backbone`` adds your own); ``Prompts`` picks a prompt preset (``list_presets``);
``make_tiny_*`` write tiny offline checkpoints for tests and demos. A backbone of your own subclasses
``Backbone``, with a ``SampleBatches`` collator.
"""

from cir_lightning.backbones.base import Backbone
from cir_lightning.backbones.batches import SampleBatches
from cir_lightning.backbones.dual_encoder import DualEncoderBackbone, DualEncoderCollator
from cir_lightning.backbones.factory import build_backbone, detect_family, list_backbones, register_backbone
from cir_lightning.backbones.hf_mllm import HFMultimodalBackbone
from cir_lightning.backbones.lora import LoRA
from cir_lightning.backbones.prompts import PRESETS, Prompts, PromptTemplates, list_presets
from cir_lightning.backbones.tiny import make_tiny_dual_encoder, make_tiny_model
from cir_lightning.backbones.xgenmm import XGenMMBackbone, make_tiny_xgenmm

__all__ = [
    "PRESETS",
    "Backbone",
    "DualEncoderBackbone",
    "DualEncoderCollator",
    "HFMultimodalBackbone",
    "LoRA",
    "PromptTemplates",
    "Prompts",
    "SampleBatches",
    "XGenMMBackbone",
    "build_backbone",
    "detect_family",
    "list_backbones",
    "list_presets",
    "make_tiny_dual_encoder",
    "make_tiny_model",
    "make_tiny_xgenmm",
    "register_backbone",
]
