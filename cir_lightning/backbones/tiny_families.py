"""Old home of the tiny multimodal-LLM builders, kept so that existing imports work.

The builders live in ``backbones.tiny.mllm``, their registry in ``backbones.tiny.registry``
(``TINY_MODELS``, which now also holds ``llava_next``) and the processor loading in
``backbones.processors``. ``Family`` and ``BUILDERS`` are the old names of ``TinyFamily`` and ``TINY_MODELS``.
"""

from cir_lightning.backbones.processors import image_only_qwen_processor, load_processor
from cir_lightning.backbones.tiny.mllm import (
    IDEFICS3_TOKENS,
    QWEN_TOKENS,
    build_idefics3,
    build_llava,
    build_llava_next,
    build_paligemma,
    build_qwen2_5_vl,
    build_qwen2_vl,
)
from cir_lightning.backbones.tiny.registry import TINY_MODELS, TinyFamily

Family = TinyFamily
BUILDERS = TINY_MODELS

__all__ = ["BUILDERS", "IDEFICS3_TOKENS", "QWEN_TOKENS", "TINY_MODELS", "Family", "TinyFamily", "build_idefics3",
           "build_llava", "build_llava_next", "build_paligemma", "build_qwen2_5_vl", "build_qwen2_vl",
           "image_only_qwen_processor", "load_processor"]
