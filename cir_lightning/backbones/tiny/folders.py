"""Writing tiny checkpoint folders: complete or not at all, never over a folder the user did not give up."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from cir_lightning.errors import CIRConfigError, CIRFileError
from cir_lightning.files import write_folder
from cir_lightning.writable import exists_error


def check_out_dir(out: Path, overwrite: bool, replace: str = "`overwrite=True`") -> None:
    """Refuse to write into a folder that exists and is not empty, unless ``overwrite`` (``replace`` says how to ask).

    Example:
        >>> from cir_lightning.backbones.tiny.folders import check_out_dir
        >>> check_out_dir(Path("."), overwrite=False)
        Traceback (most recent call last):
        ...
        cir_lightning.errors.CIRFileError: `.` already exists; it is never overwritten unless asked (choose another name, or pass `overwrite=True` to replace it)
    """
    if out.exists() and not out.is_dir():  # never replaced, even with overwrite: it is not a model folder
        raise CIRConfigError(f"`{out}` is a file, not a folder; choose another folder")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise exists_error(out, replace=replace)


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Draw a tiny model's random weights from ``seed`` without touching the caller's random state.

    Building a model must not reseed the process: a run that builds its tiny model first would otherwise
    initialise LoRA and shuffle its data from the model's seed instead of the run's, and train differently
    from the same run with the model already built.

    Example:
        >>> import torch
        >>> from cir_lightning.backbones.tiny.folders import seeded
        >>> _ = torch.manual_seed(42); expected = torch.rand(1); _ = torch.manual_seed(42)
        >>> with seeded(0):
        ...     _ = torch.rand(3)
        >>> bool(torch.rand(1) == expected)
        True
    """
    import torch

    with torch.random.fork_rng(devices=[]):  # the weights are drawn on the CPU: its generator alone
        torch.default_generator.manual_seed(seed)  # not torch.manual_seed, which reseeds the GPUs' too
        yield


def save_atomically(out: Path, write: Callable[[Path], None], overwrite: bool = False) -> Path:
    """Run ``write(folder)`` so that ``out`` appears complete or not at all (``cir_lightning.files.atomic_folder``).

    The files go to a temporary folder beside ``out`` that is renamed to it once complete, with the modes the
    user's umask gives new files. Processes racing to build the same folder (DDP ranks) never see a
    half-written checkpoint: one that finds ``out`` complete when it is done drops its copy (for the same seed
    the contents are identical). An existing empty folder counts as absent. With ``overwrite`` an existing
    ``out`` is swapped out only once the new folder is complete, then removed: no file of it survives.

    Example:
        >>> from cir_lightning.backbones.tiny import save_atomically
        >>> import tempfile
        >>> out = Path(tempfile.mkdtemp()) / "m"
        >>> _ = save_atomically(out, lambda f: (f / "a.txt").write_text("1"))
        >>> _ = save_atomically(out, lambda f: (f / "b.txt").write_text("2"), overwrite=True)
        >>> sorted(p.name for p in out.iterdir())
        ['b.txt']
    """
    out = Path(out)
    if out.is_dir() and not any(out.iterdir()):
        with contextlib.suppress(OSError):  # not empty any more: another process filled it meanwhile
            out.rmdir()
    replace = overwrite and out.exists()
    if out.exists() and not replace:
        return out  # another process built it since the caller looked
    try:
        write_folder(out, write, overwrite=replace)
    except CIRFileError:
        if not replace and out.is_dir() and any(out.iterdir()):
            return out  # another process finished first: our copy is dropped
        raise
    return out


def write_checkpoint(out: Path, model: Any, processor: Any, overwrite: bool = False) -> Path:
    """Save a transformers ``model`` and its ``processor`` to the folder ``out`` with ``save_atomically``.

    Example:
        >>> from cir_lightning.backbones.tiny.folders import write_checkpoint
        >>> import tempfile
        >>> from transformers import CLIPTextConfig, CLIPTextModel
        >>> from cir_lightning.backbones.tiny.tokenizer import tiny_clip_tokenizer
        >>> model = CLIPTextModel(CLIPTextConfig(hidden_size=8, intermediate_size=8, num_hidden_layers=1,
        ...                                      num_attention_heads=2))
        >>> out = write_checkpoint(Path(tempfile.mkdtemp()) / "m", model, tiny_clip_tokenizer())
        >>> (out / "model.safetensors").is_file(), (out / "tokenizer.json").is_file()
        (True, True)
    """
    def write(folder: Path) -> None:
        model.save_pretrained(folder)
        processor.save_pretrained(folder)

    return save_atomically(out, write, overwrite)
