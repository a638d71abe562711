"""``check_writable``: that an output folder can be written, told before any work is done (``cir_lightning.files``
re-exports it)."""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

from cir_lightning.errors import CIRFileError
from cir_lightning.leftovers import temp_suffix
from cir_lightning.messages import os_reason

__all__ = ["check_writable"]


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

