"""``TINY_MODELS``, the tiny multimodal-LLM families by name, and ``make_tiny_model``, which writes one.

=============  ==================================  =========================================
family         model class                         real checkpoints of the family
=============  ==================================  =========================================
llava_next     LlavaNextForConditionalGeneration   royokong/e5-v, BAAI/BGE-VL-MLLM-S1
llava          LlavaForConditionalGeneration       llava-hf/llava-1.5-7b-hf
idefics3       Idefics3ForConditionalGeneration    HuggingFaceTB/SmolVLM-256M-Instruct
qwen2_vl       Qwen2VLForConditionalGeneration     Qwen/Qwen2-VL-2B-Instruct, GME, LamRA
qwen2_5_vl     Qwen2_5_VLForConditionalGeneration  Qwen/Qwen2.5-VL-3B-Instruct
paligemma      PaliGemmaForConditionalGeneration   google/paligemma-3b-pt-224
=============  ==================================  =========================================

Qwen2-VL's processor also holds a video processor that needs torchvision; the tiny folders are written
without one and ``processors.load_processor`` builds an image-only Qwen2-VL processor when torchvision is
missing.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from cir_lightning.backbones.tiny import mllm
from cir_lightning.backbones.tiny.folders import check_out_dir, seeded, write_checkpoint
from cir_lightning.backbones.tiny.mllm import TinyModelSpec
from cir_lightning.errors import CIRConfigError

TinyFamily = Literal["llava_next", "llava", "idefics3", "qwen2_vl", "qwen2_5_vl", "paligemma"]

TINY_MODELS: dict[str, Callable[[TinyModelSpec], tuple[Any, Any]]] = {
    "llava_next": mllm.build_llava_next,
    "llava": mllm.build_llava,
    "idefics3": mllm.build_idefics3,
    "qwen2_vl": mllm.build_qwen2_vl,
    "qwen2_5_vl": mllm.build_qwen2_5_vl,
    "paligemma": mllm.build_paligemma,
}
"""Tiny model family -> builder of its ``(model, processor)`` (see ``make_tiny_model``)."""


def make_tiny_model(out_dir: str | Path, seed: int = 0, spec: TinyModelSpec | None = None,
                    overwrite: bool = False, family: TinyFamily = "llava_next") -> Path:
    """Build a tiny checkpoint folder at ``out_dir`` (LLaVA-NeXT-style by default) and return its path.

    It is an ordinary Hugging Face checkpoint folder (config, safetensors weights, tokenizer, image
    processor, processor) that loads back through the same ``from_pretrained`` path as a real checkpoint
    such as ``royokong/e5-v``. Nothing is downloaded.

    Args:
        out_dir: folder to write; it must not exist or be empty unless ``overwrite`` is true.
        seed: seed of the random weights.
        spec: model sizes (``TinyModelSpec()`` by default).
        overwrite: replace the files of an existing checkpoint folder.
        family: model family, a key of ``TINY_MODELS``: ``llava_next`` (the default), ``llava``,
            ``idefics3``, ``qwen2_vl``, ``qwen2_5_vl`` or ``paligemma``.

    Example:
        >>> from cir_lightning.backbones.tiny import make_tiny_model
        >>> import tempfile
        >>> from transformers import AutoModelForImageTextToText, AutoProcessor
        >>> path = make_tiny_model(tempfile.mkdtemp() + "/tiny")
        >>> type(AutoModelForImageTextToText.from_pretrained(path)).__name__
        'LlavaNextForConditionalGeneration'
        >>> AutoProcessor.from_pretrained(path).tokenizer.padding_side
        'left'
        >>> path = make_tiny_model(tempfile.mkdtemp() + "/tiny", family="llava")
        >>> type(AutoModelForImageTextToText.from_pretrained(path)).__name__
        'LlavaForConditionalGeneration'
    """
    spec = spec or TinyModelSpec()
    out = Path(out_dir)
    check_out_dir(out, overwrite, "`overwrite=True` (`--overwrite` on the command line)")
    if spec.image_size % spec.patch_size:
        raise CIRConfigError(f"`image_size` {spec.image_size} is not a multiple of `patch_size` {spec.patch_size}")
    if family not in TINY_MODELS:
        raise CIRConfigError(f"unknown tiny model `family` {family!r}; known: {', '.join(TINY_MODELS)}")
    if isinstance(seed, bool) or not isinstance(seed, int) or not -2**63 <= seed < 2**64:  # torch's ValueError
        raise CIRConfigError(f"`seed` must be an integer from -2**63 to 2**64 - 1 (a torch seed), got {seed!r}")
    with seeded(seed):
        model, processor = TINY_MODELS[family](spec)
    return write_checkpoint(out, model.eval(), processor, overwrite)
