"""Tiny, random-initialised checkpoints for tests, demos and debugging, built offline in seconds.

- ``make_tiny_model``: a multimodal LLM of one of the ``TINY_MODELS`` families (LLaVA-NeXT by default:
  a tiny CLIP vision tower, a projector and a tiny Llama), for ``HFMultimodalBackbone``;
- ``make_tiny_dual_encoder``: a CLIP or SigLIP dual encoder, for ``DualEncoderBackbone``;
- ``cir_lightning.backbones.xgenmm.make_tiny_xgenmm``: an xGen-MM, for ``XGenMMBackbone``.

Each writes an ordinary checkpoint folder (atomically, see ``save_atomically``) that loads back through
the same ``from_pretrained`` path as a real checkpoint; its tokenizer is trained here (``tiny.tokenizer``).
"""

from cir_lightning.backbones.tiny.clip import make_tiny_dual_encoder
from cir_lightning.backbones.tiny.folders import save_atomically, write_checkpoint
from cir_lightning.backbones.tiny.mllm import TinyModelSpec
from cir_lightning.backbones.tiny.registry import TINY_MODELS, TinyFamily, make_tiny_model
from cir_lightning.backbones.tiny.tokenizer import tiny_clip_tokenizer

__all__ = ["TINY_MODELS", "TinyFamily", "TinyModelSpec", "make_tiny_dual_encoder", "make_tiny_model",
           "save_atomically", "tiny_clip_tokenizer", "write_checkpoint"]
