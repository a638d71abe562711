"""LoRA through peft, on the language model only.

Targets are projection names inside the language model (the decoder returned by ``get_decoder()``);
they are turned into a regular expression anchored at the decoder's module path, so a name such as
``q_proj`` never also adapts the vision tower. Every requested name must exist in the decoder: a name
that matches nothing (Phi-3 has ``qkv_proj``, not ``q_proj``) is an error, never a silent no-op.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from torch import nn

from cir_lightning.errors import CIRConfigError

# Default LoRA targets per language-model type (the ``model_type`` of the text config), as data.
DEFAULT_TARGETS: dict[str, list[str]] = {
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "mistral": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "qwen2": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "phi3": ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"],
    "qwen2_vl_text": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "qwen2_5_vl_text": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "gemma": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
}


@dataclass
class LoRA:
    """LoRA settings (FiRE: r=64, alpha=128, dropout 0.1 on every projection of the LLM).

    Args:
        r: rank.
        alpha: scaling numerator (``alpha / r`` scales the update).
        dropout: dropout on the LoRA input.
        target_modules: projection names inside the language model; ``None`` takes the default of its
            model type (see ``DEFAULT_TARGETS``).
        modules_to_save: modules (paths or names, as peft takes them) trained fully beside LoRA, e.g.
            ``["multi_modal_projector"]``.
    """

    r: int = 64
    alpha: int = 128
    dropout: float = 0.1
    target_modules: list[str] | None = None
    modules_to_save: list[str] | None = field(default=None)


def decoder_path(model: nn.Module) -> str:
    """Module path of ``model``'s language-model decoder, e.g. ``model.language_model``."""
    get = getattr(model, "get_decoder", None)
    decoder = get() if callable(get) else None
    for name, module in model.named_modules():
        if module is decoder and name:
            return name
    raise CIRConfigError(f"cannot find the language model inside {type(model).__name__}: it has no "
                         "`get_decoder()`; LoRA needs to know which module is the language model")


def lora_target_regex(model: nn.Module, text_model_type: str, targets: list[str] | None) -> str:
    """The peft ``target_modules`` regex for ``targets`` inside the decoder, after checking each exists.

    Example:
        >>> from torch import nn
        >>> class M(nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.lm = nn.ModuleDict({"qkv_proj": nn.Linear(2, 2)})
        ...         self.vision = nn.ModuleDict({"q_proj": nn.Linear(2, 2)})
        ...     def get_decoder(self):
        ...         return self.lm
        >>> lora_target_regex(M(), "phi3", ["qkv_proj"])
        '^lm\\\\.(?:.*\\\\.)?(?:qkv_proj)$'
        >>> lora_target_regex(M(), "phi3", ["q_proj"])
        Traceback (most recent call last):
        ...
        cir_lightning.errors.CIRConfigError: LoRA target(s) ['q_proj'] match no linear layer of the language model `lm` (phi3); its linear layers are named: qkv_proj
    """
    if targets is None:
        if text_model_type not in DEFAULT_TARGETS:
            raise CIRConfigError(f"no default LoRA targets for language model type {text_model_type!r}; set "
                                 f"`lora.target_modules` (known defaults: {', '.join(DEFAULT_TARGETS)})")
        targets = DEFAULT_TARGETS[text_model_type]
    prefix = decoder_path(model)
    leaf_names = {name.rsplit(".", 1)[-1] for name, mod in model.named_modules()
                  if name.startswith(prefix + ".") and isinstance(mod, nn.Linear)}
    missing = [t for t in targets if t not in leaf_names]
    if missing:
        raise CIRConfigError(
            f"LoRA target(s) {missing} match no linear layer of the language model `{prefix}` "
            f"({text_model_type}); its linear layers are named: {', '.join(sorted(leaf_names))}")
    names = "|".join(re.escape(t) for t in targets)
    return rf"^{re.escape(prefix)}\.(?:.*\.)?(?:{names})$"
