"""How error messages quote what they found: values cut short, JSON types, lists of offenders, OS errors.

Every message that lists offenders (missing images, unknown ids, problems of a submission) shows the
first ``SHOW`` of them and counts the rest, through ``first_few``. This module imports nothing of
cir_lightning, so that reading, writing and the data layouts can all use it.
"""

from __future__ import annotations

import errno
import os
import re
import reprlib
import stat
from collections.abc import Sequence
from pathlib import Path

__all__ = ["MISSING", "SHOW", "first_few", "json_type", "os_error_in", "os_reason", "path_problem", "short_repr"]

SHOW = 5
"""How many offenders a message lists before it only counts the rest."""

MISSING = "does not exist"
"""What ``path_problem`` says of a path where nothing is."""

_REPR = reprlib.Repr()
_REPR.maxstring, _REPR.maxother, _REPR.maxlong = 80, 80, 40
_REPR.maxlist = _REPR.maxtuple = _REPR.maxset = 6
_REPR.maxdict, _REPR.maxlevel = 4, 3


def first_few(items: Sequence[str], sep: str = "; ", more: str = "; ... and {n} more") -> str:
    """The first ``SHOW`` of ``items`` joined by ``sep``; then, when some are left out, ``more`` with
    ``{n}`` replaced by how many.

    Example:
        >>> from cir_lightning.messages import first_few
        >>> first_few(["a", "b"])
        'a; b'
        >>> first_few([str(i) for i in range(8)])
        '0; 1; 2; 3; 4; ... and 3 more'
        >>> first_few([str(i) for i in range(8)], ", ", " ...")
        '0, 1, 2, 3, 4 ...'
    """
    text = sep.join(items[:SHOW])
    return text + more.format(n=len(items) - SHOW) if len(items) > SHOW else text


def short_repr(value: object) -> str:
    """``repr(value)`` cut to a readable length, for messages that quote what a file holds.

    Example:
        >>> from cir_lightning.messages import short_repr
        >>> short_repr(["a"] * 100)
        "['a', 'a', 'a', 'a', 'a', 'a', ...]"
        >>> short_repr([[[[[1]]]]])
        '[[[[...]]]]'
    """
    return _REPR.repr(value)


def json_type(value: object) -> str:
    """The type of a parsed JSON value, as messages name it (``dict``, ``list``, ``str``, ``null`` ...).

    Example:
        >>> from cir_lightning.messages import json_type
        >>> json_type(None), json_type([1])
        ('null', 'list')
    """
    return "null" if value is None else type(value).__name__


def os_reason(err: OSError) -> str:
    """Why a file operation failed, in a few words (``no space left on the device``).

    Example:
        >>> import errno
        >>> from cir_lightning.messages import os_reason
        >>> os_reason(OSError(errno.EROFS, "Read-only file system"))
        'the file system is read-only'
    """
    if err.errno == errno.ENOSPC:
        return "no space left on the device"
    if err.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    if err.errno == errno.EROFS:
        return "the file system is read-only"
    if err.errno == errno.ENOTDIR:
        return "a file stands where a folder is needed"
    if err.errno == errno.EISDIR:
        return "a folder stands where the file should be"
    return err.strerror or str(err)


def os_error_in(err: BaseException) -> OSError | None:
    """The operating system's error that a library reported in its own exception type, as an ``OSError``
    (safetensors' and tokenizers' Rust I/O errors end with ``(os error 28)``, faiss's write errors with
    ``(No space left on device)``); None when it names none.

    Example:
        >>> from cir_lightning.messages import os_error_in, os_reason
        >>> os_reason(os_error_in(RuntimeError("I/O error: No space left on device (os error 28)")))
        'no space left on the device'
        >>> os_reason(os_error_in(RuntimeError("write error in x.faiss: 4051 != 51200 (No space left on device)")))
        'no space left on the device'
        >>> os_error_in(ValueError("bad header")) is None
        True
    """
    text = str(err)
    found = re.search(r"\(os error (\d+)\)", text)
    code = int(found.group(1)) if found else next(
        (c for c in (errno.ENOSPC, errno.EDQUOT) if f"({os.strerror(c)})" in text), None)
    return None if code is None else OSError(code, os.strerror(code))


def path_problem(path: str | Path, kind: str = "a file") -> str | None:
    """What keeps ``path`` from being a readable ``kind`` of file, or None when it is a regular file:
    ``MISSING``, a broken symbolic link (naming its target), a folder, something else that is not a
    regular file, a path that cannot be checked, or a name that cannot exist. Every message about a file
    that is not there or not a file says it in these words.

    Example:
        >>> import tempfile
        >>> from cir_lightning.messages import path_problem
        >>> root = Path(tempfile.mkdtemp())
        >>> (root / "x.png").mkdir()
        >>> (root / "link.png").symlink_to(root / "gone.png")
        >>> [path_problem(root / n, "an image file") for n in ("x.png", "link.png", "y.png")]
        ['is a folder, not an image file', 'is a broken symbolic link (to `...gone.png`)', 'does not exist']
    """
    try:
        mode = os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        if os.path.islink(path):
            return f"is a broken symbolic link (to `{os.readlink(path)}`)"
        return MISSING
    except OSError as err:
        return f"cannot be checked: {os_reason(err)}"
    except ValueError:  # a NUL byte or a lone surrogate in the name
        return "is not a valid file name"
    if stat.S_ISDIR(mode):
        return f"is a folder, not {kind}"
    if not stat.S_ISREG(mode):
        return "is not a regular file"
    return None


def yaml_syntax_error(path: object, err: Exception) -> str:
    """One line for a YAML file that does not parse: ``file:line:column: YAML syntax error: what``.

    Example:
        >>> import yaml
        >>> from cir_lightning.messages import yaml_syntax_error
        >>> try:
        ...     yaml.safe_load("a: [1, 2")
        ... except yaml.YAMLError as err:
        ...     print(yaml_syntax_error("c.yaml", err))
        c.yaml:1:9: YAML syntax error: expected ',' or ']', but got '<stream end>'
    """
    mark = getattr(err, "problem_mark", None)
    where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
    return f"{where}: YAML syntax error: {getattr(err, 'problem', None) or str(err).splitlines()[0]}"
