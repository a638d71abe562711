"""Paths the user gave: ``resolved`` makes one absolute with its symbolic links followed, or is one line naming the
option when it cannot be (``Path.resolve`` raises a bare ``RuntimeError`` on a loop of links up to Python 3.12,
and from 3.13 returns a path inside the loop without a word); ``path_option`` refuses an empty one (``""`` would
be taken for "not given", or for the current folder)."""

from __future__ import annotations

import errno
import os
from pathlib import Path

from cir_lightning.errors import CIRConfigError, CIRFileError

__all__ = ["path_option", "resolved"]


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


def path_option(name: str, value: str | Path | None, *, optional: bool = False) -> str | Path | None:
    """``value`` unless it is an empty (or blank) string, or None where the option is not ``optional``: then a
    ``CIRConfigError`` naming ``name``. Checked where the option is set, before ``if value:`` reads ``""`` as not
    given (or ``Path("")`` as the current folder).

    Example:
        >>> from cir_lightning.paths import path_option
        >>> path_option("predictions.folder", None, optional=True) is None
        True
        >>> path_option("predictions.folder", "", optional=True)
        Traceback (most recent call last):
        ...
        cir_lightning.errors.CIRConfigError: `predictions.folder` is an empty string, not a path (null, not "", gives none)
    """
    if value is None and optional:
        return None
    if value is None or (isinstance(value, str) and not value.strip()):
        raise CIRConfigError(f"`{name}` is {'null' if value is None else 'an empty string'}, not a path"
                             + (' (null, not "", gives none)' if optional else ""))
    return value
