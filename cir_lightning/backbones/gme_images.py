"""GME's image preparation before its processor (``PromptTemplates.pre_resize``; the ``gme`` preset): its
``fetch_image``, which converts to RGB and resizes to Qwen-VL's ``smart_resize`` of the image's size, both sides
multiples of the patch factor (28). ``MLLMCollator`` calls ``fit_to_factor`` for a preset that sets ``pre_resize``;
the processor (``backbones/processors.py``) then resizes within the preset's ``image_pixels``.
"""

from __future__ import annotations

import math
import warnings
from typing import Any


def qwen_smart_resize(height: int, width: int, factor: int = 28, min_pixels: int = 4 * 28 * 28,
                      max_pixels: int = 16384 * 28 * 28, max_ratio: int = 200) -> tuple[int, int]:
    """Qwen-VL's ``smart_resize`` as ``qwen_vl_utils`` (and GME's ``fetch_image``) computes it: the
    ``(height, width)`` nearest the image's with both sides multiples of ``factor`` and between ``min_pixels``
    and ``max_pixels`` pixels; an aspect ratio over ``max_ratio`` is clamped with a warning, not refused.

    Example:
        >>> from cir_lightning.backbones.gme_images import qwen_smart_resize
        >>> qwen_smart_resize(64, 96), qwen_smart_resize(51, 33), qwen_smart_resize(4000, 3000, max_pixels=1280 * 784)
        ((56, 84), (84, 56), (1148, 840))
    """
    h_bar, w_bar = max(factor, round(height / factor) * factor), max(factor, round(width / factor) * factor)
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar, w_bar = math.floor(height / beta / factor) * factor, math.floor(width / beta / factor) * factor
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar, w_bar = math.ceil(height * beta / factor) * factor, math.ceil(width * beta / factor) * factor
    if max(h_bar, w_bar) / min(h_bar, w_bar) > max_ratio:
        warnings.warn(f"aspect ratio {max(h_bar, w_bar) / min(h_bar, w_bar)} over {max_ratio}: clamped", stacklevel=2)
        h_bar, w_bar = (w_bar * max_ratio, w_bar) if h_bar > w_bar else (h_bar, h_bar * max_ratio)
    return h_bar, w_bar


def fit_to_factor(image: Any, factor: int) -> Any:
    """GME's ``fetch_image`` on a PIL image: converted to RGB (alpha dropped), then resized with PIL's
    default filter to ``qwen_smart_resize`` of its size between 4 and 16384 squares of ``factor`` pixels.

    Example:
        >>> from PIL import Image
        >>> from cir_lightning.backbones.gme_images import fit_to_factor
        >>> image = fit_to_factor(Image.new("RGBA", (96, 64)), 28)
        >>> image.mode, image.size
        ('RGB', (84, 56))
    """
    image = image.convert("RGB")
    height, width = qwen_smart_resize(image.height, image.width, factor, 4 * factor * factor,
                                      16384 * factor * factor)
    return image.resize((width, height))
