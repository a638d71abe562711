"""Files and folders written under the first name not taken (``results.json``, ``results-1.json``, ...), also when
another run sharing the folder takes names at the same moment: the name is claimed by an operation that fails if
it exists (``os.link`` of the written file, ``os.mkdir`` of the folder), never by a check before the write.

- ``free_path`` finds the first name not taken now (what a name will likely be; another run may take it first).
- ``write_free`` writes a file (``files.write_atomic``) under the first name still free when it is linked in.
- ``reserve_folder`` claims a folder's name at once (an empty folder), for a folder written over a whole run
  (``files.atomic_folder(..., reserved=True)`` puts the complete folder there at the end).
"""

from __future__ import annotations

import os
from pathlib import Path

from cir_lightning.errors import CIRFileError
from cir_lightning.files import write_atomic, write_error

__all__ = ["free_path", "reserve_folder", "write_free"]


def free_path(path: str | Path) -> Path:
    """``path`` if nothing is there, else the first free ``<stem>-N<suffix>`` beside it.

    Example:
        >>> from cir_lightning.free_names import free_path
        >>> import tempfile
        >>> p = Path(tempfile.mkdtemp()) / "results.json"
        >>> _ = p.write_text("{}")
        >>> free_path(p).name
        'results-1.json'
    """
    path = Path(path)
    n, candidate = 0, path
    while candidate.exists() or candidate.is_symlink():
        n += 1
        candidate = path.with_name(f"{path.stem}-{n}{path.suffix}")
    return candidate


def write_free(path: str | Path, data: bytes | str, then: str | Path | None = None) -> Path:
    """Write ``data`` to ``path``, or to the first free ``<stem>-N<suffix>`` if it is taken, when the file is put
    in place: a name another run takes meanwhile is never overwritten, the next one is taken. Returns the path.
    ``then``: where the free names are looked for once ``path`` is taken (``config-fit.yaml`` for ``config.yaml``).

    Example:
        >>> from cir_lightning.free_names import write_free
        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp())
        >>> [write_free(folder / "results.json", "{}").name for _ in range(2)]
        ['results.json', 'results-1.json']
    """
    if then is not None:
        written = _unless_taken(Path(path), data)
        if written is not None:
            return written
        path = then
    while True:
        written = _unless_taken(free_path(path), data)
        if written is not None:
            return written


def _unless_taken(target: Path, data: bytes | str) -> Path | None:
    """``target`` written (``write_atomic``), or None if another file holds the name; any other failure raises."""
    try:
        return write_atomic(target, data)
    except CIRFileError:
        if not (target.exists() or target.is_symlink()):  # not taken: the write itself failed
            raise
    return None


def reserve_folder(path: str | Path) -> Path:
    """Claim ``path``, or the first free ``<stem>-N`` beside it, as an empty folder (``mkdir`` fails if it exists:
    two runs never claim the same); returns it. Write it with ``atomic_folder(..., reserved=True)``.

    Example:
        >>> from cir_lightning.free_names import reserve_folder
        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp())
        >>> [reserve_folder(folder / "predictions").name for _ in range(2)]
        ['predictions', 'predictions-1']
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise write_error(path.parent, err, "create the folder") from None
    while True:
        target = free_path(path)
        try:
            os.mkdir(target)
            return target
        except FileExistsError:  # taken since free_path looked
            continue
        except OSError as err:
            raise write_error(target, err, "create the folder") from None
