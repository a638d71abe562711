"""Old home of the tiny CLIP / SigLIP builder, kept so that existing imports work: see ``backbones.tiny``."""

from cir_lightning.backbones.tiny.clip import make_tiny_dual_encoder
from cir_lightning.backbones.tiny.tokenizer import CLIP_BOS as BOS
from cir_lightning.backbones.tiny.tokenizer import CLIP_EOS as EOS
from cir_lightning.backbones.tiny.tokenizer import tiny_clip_tokenizer

__all__ = ["BOS", "EOS", "make_tiny_dual_encoder", "tiny_clip_tokenizer"]
