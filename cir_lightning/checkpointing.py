"""Trainable-only checkpoints and adapter export, under DDP, FSDP and DeepSpeed ZeRO-2.

A cir_lightning checkpoint holds the trainable weights (LoRA and anything trained fully) plus a
``cir_lightning`` entry: the backbone's fingerprint and the sorted list of trainable weight names.
How each strategy gets there:

- one device / DDP: Lightning hands ``on_save_checkpoint`` the whole state dict; it is filtered to the
  trainable weights. On load, the frozen weights are filled in from the model so loading stays strict.
- FSDP (``state_dict_type: full``): the same filter, on the state dict FSDP gathered to rank 0. Names
  are compared without FSDP's ``_fsdp_wrapped_module.`` segments (with an ``auto_wrap_policy`` the
  module's own parameter names contain them; the state dict's do not). Lightning loads the weights
  inside the strategy, before ``on_load_checkpoint`` and without a ``state_dict`` left for it, so
  loading is made non-strict there and the hook checks the stored list of names instead.
- DeepSpeed: Lightning hands the state dict to the hook but then lets the DeepSpeed engine write the
  weights itself; ``DeepSpeedStrategy(exclude_frozen_parameters=True)`` keeps the frozen base out of
  the files (warned about when off). Loading is as for FSDP.

The adapter exported at the end of ``fit`` is peft's ``save_pretrained`` format; under FSDP the
parameters are sharded, so the full trainable weights are gathered first (a collective on all ranks).
"""

from __future__ import annotations

import inspect
import io
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from cir_lightning.backbones.adapters import base_mismatch, lora_differences, lora_settings, write_base_record
from cir_lightning.data.base import cir_datamodule
from cir_lightning.errors import CIRConfigError, CIRModelError, weight_mismatch
from cir_lightning.files import write_atomic, write_folder
from cir_lightning.free_names import reserve_folder
from cir_lightning.retrieval.cache import identity_differences
from cir_lightning.torch_files import load_torch_file

_WRAPPERS = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.")


def clean_name(name: str) -> str:
    """``name`` without the segments FSDP and activation-checkpoint wrappers insert.

    Example:
        >>> clean_name("backbone._fsdp_wrapped_module.model.layers.0._fsdp_wrapped_module.lora_A.weight")
        'backbone.model.layers.0.lora_A.weight'
    """
    for wrapper in _WRAPPERS:
        name = name.replace(wrapper, "")
    return name


def trainable_keys(module: pl.LightningModule) -> set[str]:
    """State-dict names of ``module``'s trainable parameters (wrapper segments removed)."""
    return {clean_name(name) for name, p in module.named_parameters() if p.requires_grad}


def strategy_loads_weights(trainer: pl.Trainer) -> bool:
    """Whether the strategy loads checkpoint weights itself, before ``on_load_checkpoint``."""
    return isinstance(trainer.strategy, FSDPStrategy | DeepSpeedStrategy)


def prepare_strategy(module: pl.LightningModule, *, cached: bool) -> None:
    """Settings the strategies need for trainable-only checkpoints, and the safe checkpoint reader and
    writer (called in ``setup``, before Lightning loads any ``--ckpt_path``); ``cached``: the module evaluates
    with an ``embedding_cache``."""
    install_checkpoint_io(module.trainer)
    strategy = module.trainer.strategy
    if isinstance(strategy, FSDPStrategy) and getattr(strategy, "_state_dict_type", "full") != "full":
        raise CIRConfigError("FSDP with `state_dict_type: sharded` is not supported: cir_lightning checkpoints hold "
                             "only the trainable weights, which needs `--trainer.strategy.state_dict_type full`")
    if isinstance(strategy, DeepSpeedStrategy) and isinstance(getattr(strategy, "config", None), dict):
        # DeepSpeed's micro batch (used for its throughput logs): without it Lightning reads train_dataloader(),
        # also in validate / test; from the command line jsonargparse makes `logging_batch_size_per_gpu` a str
        value = strategy.config.get("train_micro_batch_size_per_gpu")
        if not isinstance(value, int):
            batch = str(value).isdigit() and int(value)
            data = cir_datamodule(module.trainer)
            strategy.config["train_micro_batch_size_per_gpu"] = batch or (data.batch_size if data is not None else 1)
    if isinstance(strategy, DeepSpeedStrategy) and not getattr(strategy, "exclude_frozen_parameters", False):
        rank_zero_warn("DeepSpeed writes checkpoints itself, with the frozen base model unless "
                       "`--trainer.strategy.exclude_frozen_parameters true`: set it to keep only the trainable weights")
    if isinstance(strategy, FSDPStrategy) and cached:
        raise CIRConfigError("`embedding_cache` identifies a model by its trainable weights, which FSDP shards: "
                             "evaluate with `--trainer.strategy ddp` (or auto) to use a cache")
    if strategy_loads_weights(module.trainer):
        module.strict_loading = False  # the frozen weights are not in the file; the hook checks the names


def keep_trainable(module: pl.LightningModule, checkpoint: dict[str, Any], fingerprint: dict[str, Any],
                   peft_model: Any = None) -> None:
    """``on_save_checkpoint``: drop the frozen weights, record what is trainable (and ``peft_model``'s LoRA
    settings: ``Backbone.peft_model``)."""
    keep = trainable_keys(module)
    checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if clean_name(k) in keep}
    checkpoint["cir_lightning"] = {"fingerprint": fingerprint, "trainable": sorted(keep)}
    if peft_model is not None:  # what `--ckpt_path` and `lora.init_adapter` compare: another scale must not load silently
        checkpoint["cir_lightning"]["lora"] = lora_settings(peft_model)


def check_and_complete(module: pl.LightningModule, checkpoint: dict[str, Any], fingerprint: dict[str, Any],
                       peft_model: Any = None) -> None:
    """``on_load_checkpoint``: the checkpoint must hold exactly this model's trainable weights (names,
    shapes) and ``peft_model``'s LoRA settings; the frozen weights are filled in from the model so that
    Lightning's load stays strict."""
    meta = checkpoint.get("cir_lightning")
    if meta is None:
        raise CIRModelError("this checkpoint was not written by cir_lightning's CIRModule (no "
                            "`cir_lightning` entry); it cannot be loaded with `--ckpt_path`")
    state = checkpoint.get("state_dict")
    current = {clean_name(k): tuple(p.shape) for k, p in module.named_parameters() if p.requires_grad}
    # FSDP / DeepSpeed leave only the stored names (the strategy loaded and checked the weights itself)
    saved = dict.fromkeys(meta["trainable"]) if state is None else \
        {clean_name(k): tuple(v.shape) for k, v in state.items()}
    problem = weight_mismatch(current, saved)
    if problem:
        raise CIRModelError("the checkpoint's trainable weights do not match this model (different LoRA settings?): "
                            + problem)
    if peft_model is not None and "lora" in meta:  # same shapes, another alpha: every embedding at another scale
        changed = lora_differences(meta["lora"], peft_model, "checkpoint")
        if changed:
            raise CIRConfigError(f"the checkpoint was trained with other LoRA settings ({'; '.join(changed)}); set the "
                                 "same `model.backbone.init_args.lora` values")
    problem = base_mismatch(*((f.get("model"), f.get("base_digest")) for f in (meta["fingerprint"], fingerprint)),
                            "the checkpoint")
    if problem:
        rank_zero_warn(problem)
    # how the backbone embeds (prompts, pooling, EOS block, text limit): allowed to differ, never silently. Not
    # the dtype: under `*-true` precision Lightning converts the weights after this load, so it differs here
    # even for the same config (caches still tell dtypes apart, when they are looked up)
    then_how, now_how = ({k: v for k, v in f.items() if k not in ("model", "base_digest", "revision", "dtype")}
                         for f in (meta["fingerprint"], fingerprint))
    changed = identity_differences("backbone", then_how, now_how, ("trained with", "now"))
    if changed:
        rank_zero_warn("the checkpoint was trained with another embedding set-up, so results may differ from its "
                       "training's: " + "; ".join(changed))
    if state is not None:
        frozen = {k: v for k, v in module.state_dict().items() if clean_name(k) not in saved}
        checkpoint["state_dict"] = {**frozen, **state}


def export_adapter(module: pl.LightningModule, path: Path, reserved: bool = False) -> bool:
    """Write the backbone's adapter to ``path`` (rank zero; every rank must call this; ``reserved``: the empty
    folder ``free_names.reserve_folder`` claimed). Returns whether this process wrote it."""
    trainer, backbone = module.trainer, module.backbone
    gathered = None
    if isinstance(trainer.strategy, FSDPStrategy):  # sharded parameters: gather them (collective)
        keep = trainable_keys(module)
        gathered = {clean_name(k): v for k, v in trainer.strategy.lightning_module_state_dict().items()
                    if clean_name(k) in keep}
    if not trainer.is_global_zero:
        return False
    if gathered is None:
        backbone.save_adapter(path, reserved)
        return True
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file

    peft_model = backbone.model
    prefix = clean_name(next(n for n, m in module.named_modules() if m is peft_model)) + "."
    raw = {n: gathered[prefix + clean_name(n)] for n, p in peft_model.named_parameters() if p.requires_grad}
    adapter = {clean_name(k): v.contiguous() for k, v in get_peft_model_state_dict(peft_model, state_dict=raw).items()}
    def write(folder: Path) -> None:
        save_file(adapter, str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})
        peft_model.peft_config["default"].save_pretrained(str(folder))
        write_base_record(folder, (backbone.model_name_or_path, backbone.base_digest))

    write_folder(path, write, reserved=reserved)
    return True


def export_adapter_after_fit(module: pl.LightningModule) -> Path | None:
    """At the end of ``fit``: the adapter to ``<log_dir>/adapter`` (``adapter-1``, ... if taken, also by a run
    ending at the same moment: never overwritten). Every rank must call it (the log folder is broadcast; FSDP
    gathers the weights)."""
    trainer = module.trainer
    root = Path(trainer.log_dir or trainer.default_root_dir)
    path = reserve_folder(root / "adapter") if trainer.is_global_zero else root  # claimed now, filled at the end
    if export_adapter(module, path, reserved=trainer.is_global_zero):
        rank_zero_info(f"LoRA adapter saved to {path}")
        return path
    return None


class SafeCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint reader and writer, made safe for local files.

    - Saving is atomic: the checkpoint goes to a temporary file beside the target, is fsync'ed, then
      renamed over it, so a kill or a full disk during ``last.ckpt`` leaves the previous ``last.ckpt``
      intact instead of a truncated one that a resumed run would fail on (Lightning writes in place).
    - Loading goes through ``load_torch_file``: a missing, truncated, foreign or unsafe file is one line
      saying which it is, and ``weights_only`` is never relaxed silently.

    Remote paths (``s3://`` ...) keep Lightning's own behaviour.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        if "://" in str(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        import torch

        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        write_atomic(path, buffer.getvalue(), overwrite=True)

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        if "://" in str(path):
            return super().load_checkpoint(path, map_location=map_location, weights_only=weights_only)
        checkpoint = load_torch_file(path, weights_only=weights_only is not False, what="checkpoint",
                                     map_location=map_location if map_location is not None else "cpu")
        if not isinstance(checkpoint, dict) or "pytorch-lightning_version" not in checkpoint:
            raise CIRModelError(f"checkpoint `{path}` is a torch file but not a Lightning checkpoint (no "
                                "`pytorch-lightning_version`): it was not written by cir_lightning's CIRModule; "
                                "give a .ckpt written by `fit` (or, for adapter weights, `lora.init_adapter`)")
        return checkpoint


def install_checkpoint_io(trainer: pl.Trainer) -> None:
    """Use ``SafeCheckpointIO`` where the strategy uses Lightning's plain one (one device, DDP, FSDP);
    DeepSpeed and user-given plugins are left as they are."""
    strategy = trainer.strategy
    if type(getattr(strategy, "checkpoint_io", None)) is TorchCheckpointIO:
        strategy.checkpoint_io = SafeCheckpointIO()


_LAST = re.compile(r"^last(-v?\d+)?\.ckpt$")


def find_last_checkpoint(roots: Sequence[Path], max_depth: int = 6) -> Path | None:
    """The newest ``last.ckpt`` (``last-v1.ckpt``, a DeepSpeed ``last.ckpt/`` folder ...) below ``roots``.

    Example:
        >>> import tempfile, time
        >>> root = Path(tempfile.mkdtemp())
        >>> for v in (0, 1):
        ...     (root / f"logs/version_{v}/checkpoints").mkdir(parents=True)
        ...     _ = (root / f"logs/version_{v}/checkpoints/last.ckpt").write_bytes(b"")
        ...     time.sleep(0.01)
        >>> find_last_checkpoint([root]).relative_to(root).as_posix()
        'logs/version_1/checkpoints/last.ckpt'
    """
    found: list[Path] = []
    for root in roots:
        if not root.is_dir():
            continue
        for dirpath, dirnames, filenames in os.walk(root):
            depth = len(Path(dirpath).relative_to(root).parts)
            found += [Path(dirpath) / n for n in filenames + dirnames if _LAST.match(n)]
            dirnames[:] = [d for d in dirnames if not d.startswith(".") and not _LAST.match(d) and depth < max_depth]
    found = [p for p in found if p.exists()]
    return max(found, key=lambda p: p.stat().st_mtime_ns) if found else None


def overridden_settings(given: dict[str, Any], restored: dict[str, Any], module: type, path: Path,
                        names: Sequence[str], even_default: Sequence[str] = ()) -> None:
    """Refuse a ``fit --ckpt_path`` whose checkpoint replaced training settings the user set: LightningCLI puts
    the checkpoint's hyperparameters over the command line and the config files, so ``--model.warmup 0``
    or ``--model.objective retrieval`` given to resume a run would be dropped without a word. Only ``names``
    (the settings a checkpoint holds) are compared; values left at their defaults take the checkpoint's, as
    Lightning intends for a resumed run, but for ``even_default`` (``objective``: a stage-1 checkpoint given to a
    stage-2 run trained stage 1 on, as `--model.objective retrieval` is the default).

    Example:
        >>> class Module:
        ...     def __init__(self, warmup: float = 0.1, objective: str = "retrieval") -> None: ...
        >>> overridden_settings({"warmup": 0.1}, {"warmup": 0.5}, Module, Path("last.ckpt"), ["warmup"])  # default
        >>> overridden_settings({"warmup": 0.0}, {"warmup": 0.5}, Module, Path("last.ckpt"), ["warmup"])
        Traceback (most recent call last):
        ...
        cir_lightning.errors.CIRConfigError: `--ckpt_path last.ckpt` resumes a run with its own training settings, which differ from those given: `model.warmup` 0.0 given, 0.5 in the checkpoint; ...
        >>> overridden_settings({"objective": "retrieval"}, {"objective": "caption"}, Module, Path("stage1.ckpt"),
        ...                     ["objective"], even_default=["objective"])
        Traceback (most recent call last):
        ...
        cir_lightning.errors.CIRConfigError: `--ckpt_path stage1.ckpt` resumes a run with its own training settings, which differ from those given: `model.objective` 'retrieval' given, 'caption' in the checkpoint; ...
    """
    defaults = {name: p.default for name, p in inspect.signature(module.__init__).parameters.items()}
    changed = [f"`model.{name}` {given[name]!r} given, {restored[name]!r} in the checkpoint" for name in names
               if name in given and name in restored and given[name] != restored[name]
               and (name in even_default or given[name] != defaults[name])]
    if changed:
        raise CIRConfigError(f"`--ckpt_path {path}` resumes a run with its own training settings, which differ from "
                             f"those given: {'; '.join(changed)}; give the checkpoint's values to resume it, or start "
                             "a new run from its weights with `model.backbone.init_args.lora.init_adapter`")
