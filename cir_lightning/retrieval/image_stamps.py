"""Each image's stamp, ``[size, modification time in ns]`` of its file, taken before the image is read, and how an
image changed since: what an embedding cache's ``stamps.npy``, BGE-VL's identity files (``image_stamps``) and an
image index's ``stamps.npy`` record, with the one comparison (``stamp_change``) and the one line naming the first
changed image (``changed_line``) that refuse stale embeddings and mark search results.

A stamp that could not be taken (no file, no permission) is None, stored as ``[-1, -1]``.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["STAMPS_FILE", "changed_line", "file_stamp", "stamp_change", "stamps_array", "stamps_problem"]

STAMPS_FILE = "stamps.npy"
"""Each image file's stamp by row (int64 ``(count, 2)``; ``-1``: none), beside a folder's ``embeddings.npy``."""


def file_stamp(path: str | Path) -> list[int] | None:
    """``[size, modification time in ns]`` of a file (a link: of the file it leads to); None if it cannot be stat'ed.

    Example:
        >>> from cir_lightning.retrieval.image_stamps import file_stamp
        >>> file_stamp("no/such/file") is None
        True
    """
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return [stat.st_size, stat.st_mtime_ns]


def stamps_array(stamps: Iterable[Sequence[int] | None]) -> np.ndarray:
    """Stamps as ``STAMPS_FILE`` stores them: int64 ``(count, 2)``, ``[-1, -1]`` for None; ``ValueError`` for
    anything that is not a stamp or None.

    Example:
        >>> from cir_lightning.retrieval.image_stamps import stamps_array
        >>> stamps_array([[3, 1700000000000000000], None]).tolist()
        [[3, 1700000000000000000], [-1, -1]]
    """
    rows = [[-1, -1] if stamp is None else stamp for stamp in stamps]
    return np.array(rows, dtype=np.int64).reshape(len(rows), 2)


def stamps_problem(stamps: np.ndarray, count: int) -> str | None:
    """What is wrong with a ``STAMPS_FILE`` array that should hold ``count`` stamps (for a message), else None."""
    if stamps.shape != (count, 2) or stamps.dtype != np.int64:
        return f"holds {stamps.dtype} {stamps.shape}, not int64 ({count}, 2)"
    return None


def _stamp(stamp: Any) -> tuple[int, int] | None:
    return None if stamp is None or int(stamp[0]) < 0 else (int(stamp[0]), int(stamp[1]))


def _time(ns: int, spec: str) -> str:
    when = datetime.datetime.fromtimestamp(ns // 10**9).replace(microsecond=ns // 1000 % 10**6)
    return when.isoformat(" ", spec)


def stamp_change(then: Any, now: Any, *, times: bool = True) -> str | None:
    """How an image file changed since its stamp ``then`` was taken, ``now`` its stamp (None, or ``[-1, -1]``: no
    file), as the rest of a sentence naming the image; None if it did not. ``times=False`` compares sizes only
    (a copy below another folder may have new times).

    Example:
        >>> from cir_lightning.retrieval.image_stamps import stamp_change
        >>> stamp_change([120, 10**18], [120, 10**18]) is None
        True
        >>> stamp_change([120, 10**18], [96, 10**18])
        'changed (another size: 96 bytes, 120 when embedded)'
        >>> stamp_change([120, 10**18], None)
        'is gone'
        >>> stamp_change([120, 10**18], [120, 10**18 + 5 * 10**9], times=False) is None
        True
    """
    then, now = _stamp(then), _stamp(now)
    if then == now:
        return None
    if now is None:
        return "is gone"
    if then is None:
        return "changed (it had no file when embedded)"
    if now[0] != then[0]:
        return f"changed (another size: {now[0]} bytes, {then[0]} when embedded)"
    if not times:
        return None
    spec = "seconds" if now[1] // 10**9 != then[1] // 10**9 else "microseconds"
    return (f"changed (same size, another modification time: {_time(now[1], spec)}, {_time(then[1], spec)} when "
            "embedded)")


def changed_line(images: Sequence[str | Path], ids: Sequence[str], then: Sequence[Any], now: Sequence[Any],
                 since: str) -> str | None:
    """The line naming the first of ``images`` (and its id) whose stamp ``now`` differs from ``then`` (``stamp_change``)
    and how many more did, each ``since`` something; None when none changed (one stamp per image in each).

    Example:
        >>> from cir_lightning.retrieval.image_stamps import changed_line
        >>> changed_line(["/d/a.png", "/d/b.png", "/d/c.png"], ["a", "b", "c"], [[1, 0], [2, 0], [3, 0]],
        ...              [[1, 0], None, None], "these embeddings were saved")
        'image `/d/b.png` (id `b`) is gone since these embeddings were saved; 1 more changed or gone'
    """
    changes = [(row, how) for row in range(len(images)) if (how := stamp_change(then[row], now[row])) is not None]
    if not changes:
        return None
    row, how = changes[0]
    named = f"image `{images[row]}`" + (f" (id `{ids[row]}`)" if row < len(ids) else "")
    more = f"; {len(changes) - 1} more changed or gone" if len(changes) > 1 else ""
    return f"{named} {how} since {since}{more}"
