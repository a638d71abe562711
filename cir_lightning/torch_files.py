"""Reading torch checkpoint files safely, with one clear line for every way a file can be wrong.

``torch.load(weights_only=True)`` refuses files that hold more than tensors and plain containers, but
its message advises retrying with ``weights_only=False``, "which will likely succeed": on a hostile
file that runs the attacker's code. A truncated or random file gives a zip-reader or unpickler error
that does not say what the file is. ``load_torch_file`` tells them apart without running anything
from the file: a missing file, a folder, an empty / truncated / foreign file, and a pickle that would
import code (naming what it would import) are each a ``CIRModelError`` naming the file.
"""

from __future__ import annotations

import pathlib
import pickle
import pickletools
import struct
import warnings
import zipfile
from pathlib import Path
from typing import Any

from cir_lightning.errors import CIRModelError
from cir_lightning.messages import path_problem

__all__ = ["load_torch_file", "path_globals"]

_ZIP_MAGIC = b"PK\x03\x04"


def _pickle_imports(data: bytes) -> list[str] | None:
    """The ``module.name`` globals a pickle would import, read from its opcodes (nothing is run);
    None when ``data`` is not a pickle."""
    names: list[str] = []
    strings: list[str] = []
    try:
        for op, arg, _ in pickletools.genops(data):
            if op.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE", "BINUNICODE8"):
                strings.append(str(arg))
            elif op.name == "GLOBAL":
                names.append(str(arg).replace(" ", "."))
            elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                names.append(f"{strings[-2]}.{strings[-1]}")
            elif op.name == "STOP":
                break
    except (ValueError, pickle.UnpicklingError, EOFError, UnicodeDecodeError, IndexError):
        return names or None
    return names


def _zip_imports(path: Path) -> list[str]:
    with zipfile.ZipFile(path) as archive:
        data = next((archive.read(n) for n in archive.namelist() if n.endswith("data.pkl")), b"")
    return _pickle_imports(data) or []


_SAFE_PREFIXES = ("torch.", "collections.OrderedDict", "builtins.set", "builtins.frozenset", "builtins.slice",
                  "_codecs.encode", "numpy.", "builtins.complex", "builtins.bytearray", *(f"pathlib.{name}" for name in
                  ("Path", "PosixPath", "WindowsPath", "PurePath", "PurePosixPath", "PureWindowsPath")))
_PATHS = (pathlib.PosixPath, pathlib.WindowsPath, pathlib.PurePosixPath, pathlib.PureWindowsPath)
"""Paths, loaded with ``weights_only`` too: hyperparameters such as a DataModule's ``root`` given as a ``Path`` (a
path is built from its strings, running nothing); Lightning's checkpoints hold them, and torch refused them."""


def path_globals() -> Any:
    """A context in which ``torch.load(..., weights_only=True)`` also reads paths (``_PATHS``), for loads that are
    not ours (Lightning's read of ``--ckpt_path``'s hyperparameters)."""
    import torch

    return torch.serialization.safe_globals(list(_PATHS))


def _unsafe(names: list[str]) -> list[str]:
    return sorted({n for n in names if not n.startswith(_SAFE_PREFIXES)})


def load_torch_file(path: str | Path, *, weights_only: bool = True, map_location: Any = "cpu",
                    what: str = "checkpoint") -> Any:
    """``torch.load(path)`` that explains, in one line, why a file cannot be loaded.

    Args:
        path: the file.
        weights_only: load only tensors and plain containers (the default: never run code from a file).
        map_location: where tensors go (default the CPU).
        what: how the file is called in messages (``"checkpoint"``, ``"--ckpt_path"`` ...).

    Raises:
        CIRModelError: the file is missing, a folder, empty, truncated, not a torch file, or (with
            ``weights_only``) holds objects whose loading would import code.

    Example:
        >>> import tempfile, torch
        >>> folder = Path(tempfile.mkdtemp())
        >>> torch.save({"w": torch.ones(2)}, folder / "ok.ckpt")
        >>> load_torch_file(folder / "ok.ckpt")["w"].tolist()
        [1.0, 1.0]
        >>> _ = (folder / "bad.ckpt").write_bytes(b"not a checkpoint")
        >>> load_torch_file(folder / "bad.ckpt")
        Traceback (most recent call last):
        ...
        cir_lightning.errors.CIRModelError: checkpoint `.../bad.ckpt` is not a torch checkpoint (16 bytes that are neither a torch zip archive nor a pickle)
    """
    import torch

    path = Path(path)
    where = f"{what} `{path}`"
    problem = path_problem(path, "a checkpoint file")
    if problem is not None:  # not there, a broken link, a folder ...
        raise CIRModelError(f"{where} {problem}")
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(4)
    except OSError as err:
        raise CIRModelError(f"{where} cannot be read: {err.strerror or err}") from None
    if size == 0:
        raise CIRModelError(f"{where} is empty (0 bytes): a write that never finished?")
    try:
        with warnings.catch_warnings():  # torch's note on pickle protocols: noise before our own message
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            with path_globals():
                return torch.load(path, map_location=map_location, weights_only=weights_only)
    except pickle.UnpicklingError as err:
        raise _explain(path, where, size, head, weights_only, err) from None
    except (RuntimeError, OSError, EOFError, ValueError, zipfile.BadZipFile,
            KeyError, IndexError, TypeError, AttributeError, struct.error) as err:  # garbage read as pickle opcodes
        raise _explain(path, where, size, head, weights_only, err) from None


def _explain(path: Path, where: str, size: int, head: bytes, weights_only: bool, err: Exception) -> CIRModelError:
    if head == _ZIP_MAGIC:
        try:
            names = _unsafe(_zip_imports(path))
        except (zipfile.BadZipFile, OSError, EOFError, KeyError):
            return CIRModelError(f"{where} is truncated or damaged ({size} bytes; its zip archive cannot be read): "
                                 "write it again, or use another checkpoint")
        if weights_only and names:
            return _unsafe_message(where, names)
        return CIRModelError(f"{where} cannot be loaded: {str(err).strip().splitlines()[0][:200]}")
    names = _pickle_imports(path.read_bytes()) if head[:1] == b"\x80" else None
    if names is None:
        return CIRModelError(f"{where} is not a torch checkpoint ({size} bytes that are neither a torch zip archive "
                             "nor a pickle)")
    unsafe = _unsafe(names)
    if weights_only and unsafe:
        return _unsafe_message(where, unsafe)
    return CIRModelError(f"{where} is a plain pickle, not a checkpoint written by torch.save / Lightning "
                         f"({size} bytes): {str(err).strip().splitlines()[-1][:160] if str(err).strip() else ''}")


def _unsafe_message(where: str, names: list[str]) -> CIRModelError:
    shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    return CIRModelError(f"{where} is not a safe checkpoint: loading it would import {shown}, which a checkpoint of "
                         "tensors never needs. It was not loaded. `--weights_only false` would execute code from "
                         "the file: use it only for a file you made yourself or trust")
