"""LoRA through peft, on the language model only (or, for dual encoders, inside the chosen towers).

Targets are projection names inside the language model (the decoder returned by ``get_decoder()``);
they are turned into a regular expression anchored at the decoder's module path, so a name such as
``q_proj`` never also adapts the vision tower. Every requested name must exist in the decoder: a name
that matches nothing (Phi-3 has ``qkv_proj``, not ``q_proj``) is an error, never a silent no-op. Names
read from a saved adapter (``init_adapter`` with ``target_modules`` unset) are what that adapter holds:
those that match nothing are left out, saying so once (FiRE's release, ``adapters.AdapterTargets``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from lightning.pytorch.utilities import rank_zero_warn
from torch import nn

from cir_lightning.backbones.adapters import AdapterTargets, adapter_settings, load_adapter_weights
from cir_lightning.backbones.lora_patterns import check_pattern_targets, check_patterns
from cir_lightning.checks import number_in, positive_int, positive_number
from cir_lightning.errors import CIRConfigError
from cir_lightning.paths import path_option

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

    ``r``, ``alpha``, ``dropout``, ``target_modules`` and the patterns left unset (``None``) are taken from the
    ``adapter_config.json`` of an ``init_adapter`` folder, else from the defaults below.

    Args:
        r: rank (default 64).
        alpha: scaling numerator (``alpha / r`` scales the update; default 128): a number > 0, fractional ones too
            (``1.5``), as peft takes it.
        dropout: dropout on the LoRA input (default 0.1).
        target_modules: projection names inside the language model; ``None`` takes the adapter's names,
            else the default of its model type (see ``DEFAULT_TARGETS``).
        rank_pattern: per-module ranks in place of ``r``, as peft's: a module name or a regular expression over
            the end of an adapted module's path -> its rank (``{"q_proj": 16}``). Each must name a module LoRA
            adapts (checked when the model is built).
        alpha_pattern: per-module alphas in place of ``alpha``, keyed as ``rank_pattern``: numbers > 0, fractional
            ones too (``{"q_proj": 1.5}``), as peft takes them.
        modules_to_save: modules (paths or names, as peft takes them) trained fully beside LoRA, e.g.
            ``["multi_modal_projector"]``.
        train_parts: parts of the model trained FULLY beside LoRA (all else stays frozen), found by
            their module names: ``"vision"`` (the vision tower) and ``"projector"`` (the vision-to-LLM
            projector; xGen-MM's perceiver resampler, also called ``"resampler"``). They are saved with
            the adapter (peft ``modules_to_save``). FiRE trains neither.
        init_adapter: start from these adapter weights instead of peft's initialisation (LoRA B = 0): a
            peft adapter folder (what ``fit`` exports to ``<log_dir>/adapter``, e.g. FiRE stage 1's) or a
            cir_lightning ``.ckpt``. Its settings must match these (rank, alpha, targets, saved modules).
            A peft folder's own settings fill those left unset; its target names that match no layer
            (FiRE's release) are left out with one warning.

    Example:
        >>> from cir_lightning.backbones import LoRA
        >>> lora = LoRA(r=8, alpha=16, target_modules=["q_proj", "v_proj"])
        >>> lora.alpha / lora.r, lora.dropout, lora.target_modules
        (2.0, 0.1, ['q_proj', 'v_proj'])
        >>> LoRA().r, LoRA().alpha
        (64, 128)
        >>> LoRA(dropout=1.0)
        Traceback (most recent call last):
        ...
        cir_lightning.errors.CIRConfigError: `lora.dropout` must be a number in [0, 1), got 1.0
    """

    r: int | None = None
    alpha: int | float | None = None  # int first: an integer stays one in a saved config (`alpha: 128`, not 128.0)
    dropout: float | None = None
    target_modules: list[str] | None = None
    modules_to_save: list[str] | None = field(default=None)
    train_parts: list[Literal["vision", "projector", "resampler"]] | None = None
    init_adapter: str | None = None
    rank_pattern: dict[str, int] | None = None
    alpha_pattern: dict[str, float] | None = None

    def __post_init__(self) -> None:
        """Fill the unset settings (from ``init_adapter``'s own, else the defaults) and check the numbers,
        naming the option.

        Example:
            >>> LoRA(r=0)
            Traceback (most recent call last):
            ...
            cir_lightning.errors.CIRConfigError: `lora.r` must be an integer >= 1, got 0
        """
        path_option("lora.init_adapter", self.init_adapter, optional=True)  # "" would start from no adapter, silently
        saved = adapter_settings(self.init_adapter)
        defaults = {"r": 64, "alpha": 128, "dropout": 0.1, "target_modules": None, "rank_pattern": None,
                    "alpha_pattern": None}
        for name, default in defaults.items():
            if getattr(self, name) is None:
                setattr(self, name, saved.get(name, default))
        positive_int("lora.r", self.r)
        positive_number("lora.alpha", self.alpha)
        number_in("lora.dropout", self.dropout, 0, 1, high_open=True)
        check_patterns(self.rank_pattern, self.alpha_pattern)


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
        >>> from cir_lightning.backbones.lora import lora_target_regex
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
    targets = _check_targets(model, prefix, targets, f"the language model `{prefix}` ({text_model_type})")
    names = "|".join(re.escape(t) for t in targets)
    return rf"^{re.escape(prefix)}\.(?:.*\.)?(?:{names})$"


Towers = Literal["text", "vision", "both"]
TOWER_PATHS = {"text": "text_model.encoder", "vision": "vision_model.encoder"}
"""Where each tower's transformer layers live inside CLIPModel / SiglipModel."""


def tower_target_regex(model: nn.Module, towers: Towers, targets: Sequence[str]) -> str:
    """The peft ``target_modules`` regex for ``targets`` inside the chosen towers' encoder layers of a
    dual encoder.

    Every target must name a linear layer in every chosen tower; otherwise a ``CIRConfigError`` lists the
    names that exist.

    Example:
        >>> from cir_lightning.backbones.lora import tower_target_regex
        >>> m = nn.Module()
        >>> m.text_model = nn.Module(); m.text_model.encoder = nn.ModuleDict({"q_proj": nn.Linear(2, 2)})
        >>> tower_target_regex(m, "text", ["q_proj"])
        '^(?:text_model\\\\.encoder)\\\\.(?:.*\\\\.)?(?:q_proj)$'
        >>> tower_target_regex(m, "text", ["qkv"])
        Traceback (most recent call last):
        ...
        cir_lightning.errors.CIRConfigError: LoRA target(s) ['qkv'] match no linear layer of the text tower `text_model.encoder`; its linear layers are named: q_proj
    """
    chosen = ["text", "vision"] if towers == "both" else [towers]
    for tower in chosen:
        targets = _check_targets(model, TOWER_PATHS[tower], targets, f"the {tower} tower `{TOWER_PATHS[tower]}`")
    paths = "|".join(re.escape(TOWER_PATHS[t]) for t in chosen)
    names = "|".join(re.escape(t) for t in targets)
    return rf"^(?:{paths})\.(?:.*\.)?(?:{names})$"


def _check_targets(model: nn.Module, prefix: str, targets: Sequence[str], where: str) -> list[str]:
    """The targets that name a linear layer below ``prefix``: all of them, or a ``CIRConfigError`` lists the
    names that exist; of names read from an adapter (``AdapterTargets``), those that exist, saying once
    which were left out."""
    leaf_names = {name.rsplit(".", 1)[-1] for name, mod in model.named_modules()
                  if name.startswith(prefix + ".") and isinstance(mod, nn.Linear)}
    missing = [t for t in targets if t not in leaf_names]
    present = [t for t in targets if t in leaf_names]
    if missing and isinstance(targets, AdapterTargets) and present:
        rank_zero_warn(f"`lora.init_adapter` {targets.source}: the adapter's target names "
                       f"{', '.join(sorted(missing))} match no linear layer of {where}, so that adapter adapted only "
                       f"{' and '.join(sorted(present))}; it is loaded and evaluated as it is, with LoRA on those "
                       "only (FiRE's release lists Llama's projection names, which Phi-3 fuses)", stacklevel=2)
        return AdapterTargets(present, targets.source)
    if missing:
        raise CIRConfigError(f"LoRA target(s) {missing} match no linear layer of {where}; its linear layers are "
                             f"named: {', '.join(sorted(leaf_names))}")
    return list(targets)


# Module names of the parts `train_parts` selects, over the supported families: LLaVA / LLaVA-NeXT /
# PaliGemma (vision_tower, multi_modal_projector), Idefics3 (vision_model, connector), Qwen2-VL
# (visual, visual.merger), xGen-MM (vision_encoder, vision_tokenizer), CLIP / SigLIP (vision_model,
# visual_projection).
PARTS: dict[str, tuple[str, ...]] = {
    "vision": ("vision_tower", "vision_model", "visual", "vision_encoder"),
    "projector": ("multi_modal_projector", "connector", "visual.merger", "vision_tokenizer", "visual_projection"),
}
PARTS["resampler"] = PARTS["projector"]


def part_paths(model: nn.Module, parts: list[str]) -> list[str]:
    """Module paths of ``parts`` (keys of ``PARTS``) inside ``model``: the outermost module of each.

    Example:
        >>> from torch import nn
        >>> model = nn.Module()
        >>> model.model = nn.ModuleDict({"vision_tower": nn.Linear(2, 2), "multi_modal_projector": nn.Linear(2, 2)})
        >>> part_paths(model, ["projector"])
        ['model.multi_modal_projector']
    """
    names = [name for name, _ in model.named_modules() if name]
    paths = []
    for part in parts:
        if part not in PARTS:
            raise CIRConfigError(f"unknown `lora.train_parts` entry {part!r}; known: {', '.join(PARTS)}")
        found = [n for n in names if any(n == c or n.endswith("." + c) for c in PARTS[part])]
        if not found:
            raise CIRConfigError(f"`lora.train_parts: [{part}]`: {type(model).__name__} has no module named "
                                 f"{' / '.join(PARTS[part])}; name it in `lora.modules_to_save` instead")
        paths.append(min(found, key=len))
    paths = list(dict.fromkeys(paths))  # "projector" and "resampler" name the same module
    for a in paths:
        for b in paths:
            if b.startswith(a + "."):
                raise CIRConfigError(f"`lora.train_parts`: {b} lies inside {a}, which is already trained fully; "
                                     "list only the outer part")
    return paths


def add_lora(model: nn.Module, lora: LoRA, target_modules: str | list[str],
             base: tuple[str | None, str | None] | None = None) -> nn.Module:
    """``model`` wrapped by peft with LoRA on ``target_modules`` (a regex or names) and the
    ``train_parts`` trained fully, its weights taken from ``lora.init_adapter`` when set (``base``, the
    model's ``(name, base_digest)``, is compared with the base the adapter was trained on)."""
    from peft import LoraConfig, get_peft_model

    names = [name for name, _ in model.named_modules() if name]
    unmatched = [m for m in lora.modules_to_save or [] if not any(n == m or n.endswith("." + m) for n in names)]
    if unmatched:  # peft would train nothing for it, without a word
        raise CIRConfigError(f"`lora.modules_to_save` {unmatched} match no module of {type(model).__name__} (a path or "
                             "the last part of one, e.g. `multi_modal_projector`)")
    to_save = [*(lora.modules_to_save or []), *part_paths(model, sorted(set(lora.train_parts or [])))]
    check_pattern_targets(model, target_modules, lora.rank_pattern, lora.alpha_pattern)
    model = get_peft_model(model, LoraConfig(
        r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=target_modules,
        modules_to_save=to_save or None, bias="none", rank_pattern=dict(lora.rank_pattern or {}),
        alpha_pattern=dict(lora.alpha_pattern or {})))
    if lora.init_adapter:
        load_adapter_weights(model, lora.init_adapter, base)
    return model
