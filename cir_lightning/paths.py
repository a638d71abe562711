"""``resolved``: a path the user gave, made absolute with its symbolic links followed, or one line naming the option
when it cannot be (``Path.resolve`` raises a bare ``RuntimeError`` on a loop of links up to Python 3.12, and from
3.13 returns a path inside the loop without a word)."""

from __future__ import annotations

import errno
import os
from pathlib import Path

from cir_lightning.errors import CIRFileError

__all__ = ["resolved"]


def resolved(path: str | Path, option: str) -> Path:
    """``Path(path).resolve()``; a loop of symbolic links on the way is a ``CIRFileError`` naming ``option``.

    Example:
        >>> import tempfile
        >>> from cir_lightning.paths import resolved
        >>> loop = Path(tempfile.mkdtemp()) / "loop"
        >>> loop.symlink_to(loop)
        >>> resolved(loop / "photos", "--root")
        Traceback (most recent call last):
        ...
        cir_lightning.errors.CIRFileError: `--root`: `.../loop/photos` leads into a loop of symbolic links
    """
    loop = CIRFileError(f"`{option}`: `{path}` leads into a loop of symbolic links")
    try:
        found = Path(path).resolve()
    except RuntimeError:  # up to Python 3.12
        raise loop from None
    try:
        os.stat(found)  # from 3.13 resolve() ends inside a loop quietly; a stat of it says ELOOP
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise loop from None
    return found
