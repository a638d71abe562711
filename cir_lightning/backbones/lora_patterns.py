"""Per-module LoRA ranks and alphas (``lora.rank_pattern``, ``lora.alpha_pattern``: peft's ``rank_pattern`` /
``alpha_pattern``), checked where a mistake is made rather than when an adapter is loaded.

peft takes each key as a regular expression matched against the end of an adapted module's path
(``(.*\\.)?(KEY)$``) and silently ignores one that matches nothing: a mistyped name left the module at
``lora.r``, and the first sign was an init adapter that did not fit. Here a value that is not a rank (or
alpha), or a key that is not a regular expression, is one line when ``LoRA`` is made (``check_patterns``), and
a key that names none of the modules LoRA adapts is one line when the model is built (``check_pattern_targets``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from torch import nn

from cir_lightning.checks import positive_int, positive_number
from cir_lightning.errors import CIRConfigError
from cir_lightning.messages import first_few

__all__ = ["check_pattern_targets", "check_patterns"]


def _peft_form(option: str, key: object) -> re.Pattern[str]:
    """The regular expression peft matches ``key`` with (``peft.utils.other.get_pattern_key``)."""
    if not isinstance(key, str) or not key.strip():
        raise CIRConfigError(f"`{option}`: a key must name a module (its name or a regular expression over the end "
                             f"of its path), got {key!r}")
    try:
        return re.compile(rf"(.*\.)?({key})$")
    except re.error as err:
        raise CIRConfigError(f"`{option}` pattern {key!r} is not a regular expression ({err})") from None


def check_patterns(rank_pattern: Mapping[str, int] | None, alpha_pattern: Mapping[str, float] | None) -> None:
    """Each key a regular expression, each rank an integer >= 1 and each alpha a number > 0, naming the option
    and the pattern.

    Example:
        >>> from cir_lightning.backbones.lora_patterns import check_patterns
        >>> check_patterns({"q_proj": 16}, {r"layers\\.0\\..*": 32})
        >>> check_patterns({"q_proj": 0}, None)
        Traceback (most recent call last):
        ...
        cir_lightning.errors.CIRConfigError: `lora.rank_pattern['q_proj']` must be an integer >= 1, got 0
        >>> check_patterns(None, {"q_proj(": 8})
        Traceback (most recent call last):
        ...
        cir_lightning.errors.CIRConfigError: `lora.alpha_pattern` pattern 'q_proj(' is not a regular expression ...
    """
    for option, pattern, check in (("lora.rank_pattern", rank_pattern, positive_int),
                                   ("lora.alpha_pattern", alpha_pattern, positive_number)):
        if pattern is not None and not isinstance(pattern, Mapping):
            raise CIRConfigError(f"`{option}` must map module names (or regular expressions) to numbers, got "
                                 f"{type(pattern).__name__}")
        for key, value in (pattern or {}).items():
            _peft_form(option, key)
            check(f"{option}[{key!r}]", value)


def _adapted(name: str, target_modules: str | Sequence[str]) -> bool:
    """Whether peft adapts the module at ``name`` for ``target_modules`` (a regex matched whole, or names)."""
    if isinstance(target_modules, str):
        return re.fullmatch(target_modules, name) is not None
    return any(name == t or name.endswith("." + t) for t in target_modules)


def check_pattern_targets(model: nn.Module, target_modules: str | Sequence[str],
                          rank_pattern: Mapping[str, int] | None, alpha_pattern: Mapping[str, float] | None) -> None:
    """Each pattern names at least one module that LoRA adapts in ``model`` (those ``target_modules`` selects):
    otherwise one line naming the option, the pattern and the adapted modules' names.

    Example:
        >>> from torch import nn
        >>> from cir_lightning.backbones.lora_patterns import check_pattern_targets
        >>> model = nn.Module()
        >>> model.layers = nn.ModuleList([nn.ModuleDict({"q_proj": nn.Linear(2, 2), "v_proj": nn.Linear(2, 2)})])
        >>> check_pattern_targets(model, ["q_proj", "v_proj"], {r"0\\.q_proj": 4}, None)
        >>> check_pattern_targets(model, ["q_proj"], None, {"v_proj": 8})
        Traceback (most recent call last):
        ...
        cir_lightning.errors.CIRConfigError: `lora.alpha_pattern` pattern 'v_proj' matches none of the modules LoRA adapts (layers.0.q_proj); ...
    """
    adapted = [name for name, _ in model.named_modules() if name and _adapted(name, target_modules)]
    for option, pattern in (("lora.rank_pattern", rank_pattern), ("lora.alpha_pattern", alpha_pattern)):
        for key in pattern or {}:
            if not any(_peft_form(option, key).match(name) for name in adapted):
                raise CIRConfigError(f"`{option}` pattern {key!r} matches none of the modules LoRA adapts "
                                     f"({first_few(adapted, ', ', ', ... {n} more')}); it is matched against the "
                                     "end of each one's path, e.g. `q_proj` or `layers\\.0\\.self_attn\\.q_proj` "
                                     "(set `lora.target_modules` to adapt others)")
