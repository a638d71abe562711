"""Reading saved LoRA adapters: their settings (``adapter_config.json``) and their weights.

``lora.init_adapter`` names a peft adapter folder (``save_pretrained``'s: ours, FiRE stage 1's, or FiRE's
release) or a cir_lightning checkpoint. ``adapter_settings`` reads the rank, alpha, dropout and target
names a folder was saved with, so that ``LoRA`` can take them when the user leaves them unset;
``load_adapter_weights`` copies the weights in, strictly. An adapter saved from the language model alone
(FiRE's release wraps xGen-MM's ``vlm.lang_model`` with peft) names its weights from there: they are
found under the language model's path in the whole model.

An adapter is only right on the base weights it was trained on. Ours record them (``BASE_FILE`` beside
``adapter_config.json``, the ``fingerprint`` in a checkpoint: name and ``base_digest``), and loading one onto
other weights warns (``base_mismatch``); a folder without the record (peft's, FiRE's release) is not compared.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn

from cir_lightning.errors import CIRConfigError, CIRDataError, CIRModelError, weight_mismatch

__all__ = ["AdapterTargets", "adapter_settings", "base_mismatch", "load_adapter_weights"]

BASE_FILE = "cir_lightning_base.json"  # beside a saved adapter: {"model": name, "base_digest": digest}
WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin")  # peft's names, in the order peft reads them

_PEFT_ROOT = "base_model.model."  # how peft names the wrapped model's weights in a saved adapter
_OUR_REGEX = re.compile(r"\(\?:([\w|]+)\)\$$")  # the names at the end of our own target regexes


class AdapterTargets(list):
    """Target names read from an adapter's ``adapter_config.json`` rather than given by the user.

    A name among them that matches no layer is left out with one warning instead of being an error: FiRE's
    release lists Llama's ``q_proj, k_proj, v_proj, gate_proj, up_proj`` beside ``o_proj, down_proj``, and
    in Phi-3 (fused ``qkv_proj``, ``gate_up_proj``) only the last two exist, so its adapters hold only them.

    Args:
        names: the target names.
        source: the adapter folder they were read from (named in the warning).

    Example:
        >>> from cir_lightning.backbones.adapters import AdapterTargets
        >>> targets = AdapterTargets(["o_proj", "q_proj"], source="fire_stage2")
        >>> list(targets), targets.source
        (['o_proj', 'q_proj'], 'fire_stage2')
    """

    def __init__(self, names: list[str], source: str) -> None:
        super().__init__(names)
        self.source = source


def adapter_settings(path: str | Path | None) -> dict[str, Any]:
    """The LoRA settings a peft adapter folder was saved with: ``r``, ``alpha``, ``dropout`` and
    ``target_modules`` (an ``AdapterTargets``; our own regexes are read back into names), those it has.

    Anything that is not such a folder (a checkpoint file, a path that does not exist) gives ``{}``: the
    weights' loading then says what is wrong with it.

    Example:
        >>> import json, tempfile
        >>> from cir_lightning.backbones.adapters import adapter_settings
        >>> folder = Path(tempfile.mkdtemp())
        >>> _ = (folder / "adapter_config.json").write_text(json.dumps(
        ...     {"r": 8, "lora_alpha": 16, "lora_dropout": 0.05, "target_modules": ["o_proj", "q_proj"]}))
        >>> settings = adapter_settings(folder)
        >>> settings["r"], settings["alpha"], settings["dropout"], list(settings["target_modules"])
        (8, 16, 0.05, ['o_proj', 'q_proj'])
        >>> adapter_settings(folder / "nothing")
        {}
    """
    if path is None or not (Path(path) / "adapter_config.json").is_file():
        return {}
    from cir_lightning.reading import read_json

    saved = read_json(Path(path) / "adapter_config.json", what="peft adapter config")
    if not isinstance(saved, dict):
        raise CIRConfigError(f"`lora.init_adapter` {path}: adapter_config.json is not a JSON object")
    settings = {ours: saved[theirs] for ours, theirs in (("r", "r"), ("alpha", "lora_alpha"),
                                                         ("dropout", "lora_dropout")) if saved.get(theirs) is not None}
    targets = saved.get("target_modules")
    if isinstance(targets, str) and _OUR_REGEX.search(targets):
        targets = _OUR_REGEX.search(targets).group(1).split("|")
    if isinstance(targets, list) and targets and all(isinstance(t, str) for t in targets):
        settings["target_modules"] = AdapterTargets(targets, str(path))
    settings |= {name: saved[name] for name in ("rank_pattern", "alpha_pattern") if saved.get(name)}  # checked by LoRA
    return settings


def base_mismatch(then: tuple[str | None, str | None], now: tuple[str | None, str | None], what: str) -> str | None:
    """The warning for an adapter trained on base ``then`` loaded onto ``now`` (each ``(name, base_digest)``),
    None when they agree: the digests when both have one (a moved folder is fine, a replaced one is not),
    else the names (records written before digests). ``what`` names the adapter's file.

    Example:
        >>> from cir_lightning.backbones.adapters import base_mismatch
        >>> base_mismatch(("/old/M", "a" * 64), ("/new/M", "a" * 64), "the checkpoint") is None
        True
        >>> base_mismatch(("/old/M", None), ("/new/M", "b" * 64), "the checkpoint")
        'the checkpoint was trained on base model `/old/M`, it is loaded onto `/new/M`'
    """
    (then_name, then_digest), (now_name, now_digest) = then, now
    if then_digest and now_digest:
        if then_digest == now_digest:
            return None
        short = [d[:16] if len(d) == 64 else d for d in (then_digest, now_digest)]  # full "name:..." fallbacks
        return (f"{what} was trained on other base weights: `{then_name}` (base digest {short[0]}) then, "
                f"`{now_name}` ({short[1]}) now; its adapter was not trained for these weights, so results may be "
                "wrong: load the base model it was trained on")
    if then_name and now_name and then_name != now_name:
        return f"{what} was trained on base model `{then_name}`, it is loaded onto `{now_name}`"
    return None


def write_base_record(folder: Path, base: tuple[str | None, str | None]) -> None:
    """``BASE_FILE`` in a saved adapter ``folder``: the base weights ``(name, base_digest)`` it was trained on."""
    (folder / BASE_FILE).write_text(json.dumps({"model": base[0], "base_digest": base[1]}, indent=1) + "\n")


def _read_base_record(folder: Path) -> tuple[str | None, str | None] | None:
    from cir_lightning.reading import read_json

    if not (folder / BASE_FILE).is_file():
        return None
    record = read_json(folder / BASE_FILE, what="adapter's base record")
    if not isinstance(record, dict):  # damaged: the base it records cannot be compared, never silently
        raise CIRDataError("is not a JSON object (it records the base weights the adapter was trained on); "
                           "export the adapter again, or remove the file to load it unchecked", folder / BASE_FILE)
    return record.get("model"), record.get("base_digest")


def load_adapter_weights(model: nn.Module, path: str | Path,
                         base: tuple[str | None, str | None] | None = None) -> None:
    """Copy the adapter weights saved at ``path`` into the peft ``model`` (strict).

    ``path`` is a peft adapter folder or a cir_lightning Lightning checkpoint (a ``.ckpt`` file, or the
    folder DeepSpeed writes; loaded with ``weights_only=True``). Every adapter weight of ``model`` must
    be in the file with its shape, and nothing else: a different rank, target list or
    ``modules_to_save`` is an error naming the weights. ``base``, the ``(name, base_digest)`` of the weights
    under ``model``, is compared with the base the adapter records, if it records one (a warning).
    """
    path = Path(path)
    if not path.exists():
        raise CIRConfigError(f"`init_adapter` {path} does not exist")
    deepspeed_states = path / "checkpoint" / "mp_rank_00_model_states.pt"  # DeepSpeedStrategy's checkpoint folder
    if path.is_file() or deepspeed_states.is_file():
        then = _load_checkpoint_weights(model, path, deepspeed_states if deepspeed_states.is_file() else path)
    else:
        then = _read_base_record(path)
        _load_folder_weights(model, path)
    problem = base_mismatch(then, base, f"`lora.init_adapter` {path}") if then and base else None
    if problem:
        rank_zero_warn(problem)


def _load_folder_weights(model: nn.Module, path: Path) -> None:
    from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict

    config, weights = _adapter_file(path)
    _check_settings(path, config, model)
    expected = get_peft_model_state_dict(model)
    weights, prefix = _placed(weights, set(expected))
    _check_same(path, {k: tuple(v.shape) for k, v in expected.items()},
                {k: tuple(v.shape) for k, v in weights.items()},
                f" (the file's names are read with `{prefix}` after `{_PEFT_ROOT}`: saved from that part)" if prefix else "")
    set_peft_model_state_dict(model, weights)


def _placed(weights: dict[str, Tensor], expected: set[str]) -> tuple[dict[str, Tensor], str]:
    """``weights`` renamed into ``expected`` when they were saved from one sub-module of the model (every
    name ``base_model.model.<rest>`` is ``base_model.model.<prefix><rest>`` here, one prefix for all): the
    prefix that places the most of them, so that the strict check then names only the weights that differ (a
    missing, extra or misshapen one), not every name; unchanged when no prefix places more than none does.
    Returns the weights and the prefix ("" when unchanged)."""
    if not weights or set(weights) <= expected or not all(k.startswith(_PEFT_ROOT) for k in weights):
        return weights, ""
    prefixes = {e[len(_PEFT_ROOT):-len(k) + len(_PEFT_ROOT)] for k in weights for e in expected
                if e.startswith(_PEFT_ROOT) and e.endswith("." + k[len(_PEFT_ROOT):])}
    best, placed = (weights, ""), len(set(weights) & expected)
    for prefix in sorted(prefixes):
        renamed = {_PEFT_ROOT + prefix + k[len(_PEFT_ROOT):]: v for k, v in weights.items()}
        if len(set(renamed) & expected) > placed:
            best, placed = (renamed, prefix), len(set(renamed) & expected)
    return best


def _adapter_file(folder: Path) -> tuple[dict[str, Any], dict[str, Tensor]]:
    from cir_lightning.reading import read_json

    config_file = folder / "adapter_config.json"
    if not config_file.is_file():
        raise CIRConfigError(f"`init_adapter` {folder} is neither a peft adapter folder (no adapter_config.json) "
                             "nor a cir_lightning checkpoint")
    return read_json(config_file, what="peft adapter config"), _adapter_weights(folder)


def _adapter_weights(folder: Path) -> dict[str, Tensor]:
    """The weights of a peft adapter folder, read here rather than by peft, which looks a folder without its
    weights file up on the hub and lets a damaged file raise safetensors' own error."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from cir_lightning.torch_files import load_torch_file

    file = next((folder / name for name in WEIGHT_FILES if (folder / name).is_file()), None)
    if file is None:
        raise CIRConfigError(f"`init_adapter` {folder} holds adapter_config.json but no {' or '.join(WEIGHT_FILES)}: "
                             "the adapter was not saved completely; save or export it again")
    if file.suffix == ".bin":
        weights = load_torch_file(file, what="`lora.init_adapter`")  # weights_only; damaged: one line
    else:
        try:
            weights = load_file(str(file), device="cpu")
        except (SafetensorError, OSError) as err:
            raise CIRModelError(f"`lora.init_adapter` `{file}` cannot be read ({str(err).strip()}): it is truncated "
                                "or damaged; save or export the adapter again") from None
    if not isinstance(weights, dict) or not all(isinstance(v, Tensor) for v in weights.values()):
        raise CIRModelError(f"`lora.init_adapter` `{file}` holds no adapter weights (not a mapping of tensors)")
    return weights


def _load_checkpoint_weights(model: nn.Module, path: Path, file: Path) -> tuple[str | None, str | None]:
    """The trainable weights of a cir_lightning checkpoint (named ``...backbone.model.<peft name>``);
    returns the base ``(name, base_digest)`` it was trained on."""
    import torch

    from cir_lightning.torch_files import load_torch_file

    raw = load_torch_file(file, what="`lora.init_adapter`")  # missing, truncated, unsafe: one line each
    if not isinstance(raw, dict) or not isinstance(raw.get("module" if "state_dict" not in raw else "state_dict"), dict):
        raise CIRConfigError(f"`init_adapter` {path} is a torch file but not a cir_lightning checkpoint (no "
                             "`state_dict`): give the .ckpt written by `fit`, or the exported adapter folder")
    state = raw["module"] if "module" in raw and "state_dict" not in raw else raw["state_dict"]
    meta = raw.get("cir_lightning") if isinstance(raw.get("cir_lightning"), dict) else {}
    saved, fingerprint = meta.get("lora"), meta.get("fingerprint") if isinstance(meta.get("fingerprint"), dict) else {}
    if saved:
        _check_settings(path, saved, model)
    own = {name: p for name, p in model.named_parameters() if p.requires_grad}
    frozen = {name for name, p in model.named_parameters() if not p.requires_grad}
    frozen |= {name for name, _ in model.named_buffers()}
    # a checkpoint may hold the frozen base too (DeepSpeed without exclude_frozen_parameters): skip it
    weights = {k.split("backbone.model.", 1)[1]: v for k, v in state.items() if "backbone.model." in k}
    weights = {k: v for k, v in weights.items() if k not in frozen}
    _check_same(path, {k: tuple(p.shape) for k, p in own.items()}, {k: tuple(v.shape) for k, v in weights.items()})
    with torch.no_grad():
        for name, p in own.items():
            p.copy_(weights[name])
    return fingerprint.get("model"), fingerprint.get("base_digest")


_PATTERNS = ("rank_pattern", "alpha_pattern")
_UNSET = {"use_rslora": False, "rank_pattern": {}, "alpha_pattern": {}}  # what a record without the setting had


def lora_settings(model: nn.Module) -> dict[str, Any]:
    """What sets a LoRA adapter's scale: rank, alpha and rsLoRA (``alpha / sqrt(r)`` instead of ``alpha / r``), and
    the per-module ranks and alphas where there are some."""
    ours = model.peft_config["default"]
    patterns = {name: dict(getattr(ours, name)) for name in _PATTERNS if getattr(ours, name, None)}
    return {"r": ours.r, "lora_alpha": ours.lora_alpha, "use_rslora": bool(ours.use_rslora), **patterns}


def lora_differences(saved: dict[str, Any], model: nn.Module, where: str) -> list[str]:
    """``model``'s ``lora_settings`` that differ from ``saved`` (those of an adapter or checkpoint, ``where``);
    a setting the record lacks (rsLoRA, in records written before it was; patterns) was the default."""
    now = lora_settings(model)
    keys = [*now, *(k for k in _PATTERNS if k in saved and k not in now)]
    then, here = ({k: d.get(k, _UNSET.get(k)) for k in keys} for d in (saved, now))
    return [f"{k}: {then[k]} in the {where}, {here[k]} here" for k in keys if then[k] != here[k]]


def _check_settings(path: Path, saved: dict[str, Any], model: nn.Module) -> None:
    changed = lora_differences(saved, model, "adapter")
    if changed:
        raise CIRConfigError(f"`init_adapter` {path} was trained with other LoRA settings ({'; '.join(changed)}); "
                             "set the same `lora` values")


def _check_same(path: Path, expected: dict[str, tuple[int, ...]], found: dict[str, tuple[int, ...]],
                placed: str = "") -> None:
    problem = weight_mismatch(expected, found)
    if problem:
        raise CIRConfigError(f"`init_adapter` {path} does not fit this model's adapter (other targets, "
                             f"modules_to_save or base model?): {problem}{placed}")
