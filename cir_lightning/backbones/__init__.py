"""Backbones: models that embed composed queries, gallery images and texts."""

from cir_lightning.backbones.base import Backbone
from cir_lightning.backbones.dual_encoder import DualEncoderBackbone, DualEncoderCollator
from cir_lightning.backbones.factory import build_backbone, detect_family
from cir_lightning.backbones.hf_mllm import HFMultimodalBackbone
from cir_lightning.backbones.lora import LoRA
from cir_lightning.backbones.prompts import PRESETS, Prompts, PromptTemplates
from cir_lightning.backbones.tiny import make_tiny_model
from cir_lightning.backbones.tiny_clip import make_tiny_dual_encoder
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
    "XGenMMBackbone",
    "build_backbone",
    "detect_family",
    "make_tiny_dual_encoder",
    "make_tiny_model",
    "make_tiny_xgenmm",
]
