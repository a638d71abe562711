"""An output path checked before any work is done: ``check_writable`` (its folder can be written; ``cir_lightning.files``
re-exports it) and ``exists_error`` (the one line for a path that is already there and is not replaced)."""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

from cir_lightning.errors import CIRFileError
from cir_lightning.leftovers import temp_suffix
from cir_lightning.messages import os_reason

__all__ = ["check_writable", "exists_error"]


def check_writable(folder: str | Path, option: str) -> Path:
    """Make sure files can be written in ``folder`` (creating it if needed), before any work is done.

    Args:
        folder: the output folder.
        option: the option that names it, for the message (e.g. ``trainer.default_root_dir``).

    Raises:
        CIRFileError: naming the option, the folder and why it cannot be written.

    Example:
        >>> from cir_lightning.files import check_writable
        >>> import tempfile
        >>> check_writable(Path(tempfile.mkdtemp()) / "new", "model.embedding_cache").is_dir()
        True
        >>> f = Path(tempfile.mkdtemp()) / "file"
        >>> _ = f.write_text("")
        >>> check_writable(f / "sub", "trainer.default_root_dir")
        Traceback (most recent call last):
        ...
        cir_lightning.errors.CIRFileError: `trainer.default_root_dir`: cannot write in `.../file/sub`: a file stands where a folder is needed
    """
    folder = Path(folder)
    try:
        if folder.exists() and not folder.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, "not a folder", str(folder))
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".cir_lightning-write-check.", suffix=temp_suffix(), dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise CIRFileError(f"`{option}`: cannot write in `{folder}`: {os_reason(err)}") from None
    return folder



def exists_error(path: str | Path, option: str | None = None, *, replace: str | None = None,
                 other: str | None = None) -> CIRFileError:
    """The one line for an output ``path`` that already exists and is not replaced, for every writer.

    Args:
        path: the file or folder in the way.
        option: the option that chose ``path`` (``--out``, ``predictions.folder``), named first; None when no
            option did (a name the package chose).
        replace: how to allow replacing it (``--overwrite``, ``overwrite=True``), where the writer can; the way
            out is otherwise to remove it.
        other: one more way out (``reuse it with `--load_embedding```).

    Example:
        >>> from cir_lightning.writable import exists_error
        >>> print(exists_error("out/a.png", "--out"))
        `--out`: `out/a.png` already exists; it is never overwritten (choose another name, or remove it)
        >>> print(exists_error("tiny", replace="`--overwrite`"))
        `tiny` already exists; it is never overwritten unless asked (choose another name, or pass `--overwrite` to replace it)
    """
    ways = ["choose another name", f"pass {replace} to replace it" if replace else "remove it", *([other] if other else [])]
    head = f"`{option}`: " if option else ""
    return CIRFileError(f"{head}`{path}` already exists; it is never overwritten{' unless asked' if replace else ''} "
                        f"({', '.join(ways[:-1])}, or {ways[-1]})")
