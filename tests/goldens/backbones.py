"""Our side of the golden tests (project environment only; ``recipe.py`` beside it also runs in the side ones)."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cir_lightning.backbones import HFMultimodalBackbone, Prompts


def one_model_per_preset(checkpoint: Path, presets: Sequence[str], **options: Any) -> dict[str, HFMultimodalBackbone]:
    """A backbone per preset, as ``HFMultimodalBackbone(path, prompts=Prompts(preset), **options)`` builds it;
    all share the first's loaded model, for presets that differ only in their templates."""
    first = HFMultimodalBackbone(str(checkpoint), prompts=Prompts(presets[0]), **options)
    backbones = {presets[0]: first}
    for preset in presets[1:]:
        other = copy.copy(first)
        other.collator = copy.copy(first.collator)
        other.collator.prompts = Prompts(preset).resolve()
        backbones[preset] = other
    return backbones
