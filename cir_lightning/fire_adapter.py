"""The adapter a FiRE release config's ``model.adapter_path`` names, checked where the config names it.

The release hands ``model.adapter_path`` to peft (``PeftModel.from_pretrained``): a peft adapter folder.
A translated evaluation config may name the ``training.output_dir`` of a translated training run, which
exports its adapter below it (``<output_dir>/logs/version_N/adapter``): ``find_adapter`` finds the newest.
``release_adapter`` refuses, in one line naming the FiRE file, line and key, a path that is a file, a
folder without an adapter, or an adapter whose ``adapter_config.json`` is damaged or whose weights are
missing, unreadable or of another rank than its config says, before any model is loaded; a path that does not exist (yet) is an error only for a run, not for a
conversion that may precede the training that writes it. Paths are read as written: relative to the
folder the command runs in, as the release reads them.
"""

from __future__ import annotations

from pathlib import Path

from cir_lightning.errors import CIRConfigError, CIRError

__all__ = ["find_adapter", "release_adapter"]


def find_adapter(folder: str | Path) -> Path | None:
    """``folder`` if it is a peft adapter folder, else the newest one below it (a translated training run
    exports to ``<output_dir>/logs/version_N/adapter``), else None.

    Example:
        >>> import tempfile
        >>> from cir_lightning.fire_adapter import find_adapter
        >>> root = Path(tempfile.mkdtemp())
        >>> (root / "logs/version_0/adapter").mkdir(parents=True)
        >>> _ = (root / "logs/version_0/adapter/adapter_config.json").write_text("{}")
        >>> find_adapter(root).relative_to(root).as_posix(), find_adapter(root / "nothing")
        ('logs/version_0/adapter', None)
    """
    folder = Path(folder)
    if (folder / "adapter_config.json").is_file():
        return folder
    found = [p.parent for depth in range(1, 4) for p in folder.glob("*/" * depth + "adapter_config.json")
             if not any(part.startswith(".") for part in p.relative_to(folder).parts)]  # an export's temporary folder
    return max(found, key=lambda p: p.stat().st_mtime_ns) if found else None


def _check_adapter(found: Path, where: str) -> None:
    """``found``'s adapter_config.json reads as a JSON object and a weights file is beside it."""
    from cir_lightning.backbones.adapters import WEIGHT_FILES, adapter_settings

    try:
        adapter_settings(found)
    except CIRError as err:
        raise CIRConfigError(f"{where}: the adapter {found} is damaged: {err}") from None
    if not any((found / name).is_file() for name in WEIGHT_FILES):
        raise CIRConfigError(f"{where}: the adapter {found} holds adapter_config.json but no "
                             f"{' or '.join(WEIGHT_FILES)}: it was not saved completely")
    _check_rank(found, where)


def _check_rank(found: Path, where: str) -> None:
    """The rank adapter_config.json gives is that of the LoRA weights beside it (read from the safetensors
    header, no tensor loaded; a `rank_pattern` of per-module ranks, or `.bin` weights, are left to the loading)."""
    from safetensors import SafetensorError, safe_open

    from cir_lightning.backbones.adapters import adapter_settings
    from cir_lightning.reading import read_json

    file, rank = found / "adapter_model.safetensors", adapter_settings(found).get("r")
    if not file.is_file() or rank is None or read_json(found / "adapter_config.json", what="peft adapter config").get("rank_pattern"):
        return
    try:
        with safe_open(str(file), "pt") as weights:
            ranks = {weights.get_slice(k).get_shape()[0] for k in weights.keys() if ".lora_A." in k}
    except (SafetensorError, OSError) as err:
        raise CIRConfigError(f"{where}: the adapter {found} is damaged: {file.name} cannot be read "
                             f"({str(err).strip()})") from None
    if ranks and ranks != {rank}:
        raise CIRConfigError(f"{where}: the adapter {found} is damaged: its adapter_config.json gives rank {rank}, its "
                             f"LoRA weights have rank {', '.join(map(str, sorted(ranks)))}")


def release_adapter(adapter: str, where: str, must_exist: bool) -> tuple[str, str | None]:
    """The ``lora.init_adapter`` for ``model.adapter_path`` ``adapter`` (set ``where``: ``file:line: `key```)
    and a note for the translated config, or None.

    Args:
        adapter: the path as the FiRE config writes it.
        where: the FiRE file, line and key, for messages.
        must_exist: the run starts now (``scripts/eval.py``); else a conversion, which may precede the training
            that writes the adapter.

    Raises:
        CIRConfigError: ``adapter`` is a file, a folder without an adapter, a damaged adapter, or (``must_exist``)
            does not exist.

    Example:
        >>> from cir_lightning.fire_adapter import release_adapter
        >>> release_adapter("no/such/folder", "eval.yaml:5: `model.adapter_path`", must_exist=False)[1][:46]
        '`model.adapter_path` no/such/folder does not e'
        >>> release_adapter("no/such/folder", "eval.yaml:5: `model.adapter_path`", must_exist=True)
        Traceback (most recent call last):
        ...
        cir_lightning.errors.CIRConfigError: eval.yaml:5: `model.adapter_path` no/such/folder does not exist ...
    """
    path = Path(adapter)
    if not path.exists():
        if must_exist:
            raise CIRConfigError(f"{where} {adapter} does not exist (a relative path is read from the folder the "
                                 f"command runs in, {Path.cwd()})")
        return adapter, (f"`model.adapter_path` {adapter} does not exist yet: `lora.init_adapter` must name the "
                         "adapter folder itself when this runs (a translated training run exports it to "
                         "`<training.output_dir>/logs/version_N/adapter`; translating again then finds it)")
    if not path.is_dir():
        raise CIRConfigError(f"{where} {adapter} is a file: FiRE's `adapter_path` is a peft adapter folder "
                             "(adapter_config.json and adapter_model.safetensors)")
    found = find_adapter(path)
    if found is None:
        raise CIRConfigError(f"{where} {adapter} holds no peft adapter (no adapter_config.json in it, nor in a "
                             "folder below it)")
    _check_adapter(found, where)
    if found == path:
        return adapter, None
    return str(found), (f"`model.adapter_path` {adapter} holds no adapter_config.json: the newest adapter below it "
                        f"is used, {found} (where a translated training run exports its adapter)")
