"""A gallery cache's ``stamps.npy``: each image file's stamp when it was embedded, read to name the images changed
since (``changed_images``) and checked against the digest ``meta.json`` records (``read_cache_stamps``): a damaged
one is a damaged cache, refused by ``cache.load_embeddings`` even when its images are unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import IO, Any

import numpy as np

from cir_lightning.retrieval.embedding_folder import array_of, stamps_digest
from cir_lightning.retrieval.image_stamps import STAMPS_FILE, changed_line, stamps_problem

__all__ = ["changed_images", "read_cache_stamps"]


def read_cache_stamps(meta: Mapping[str, Any], file: IO[bytes] | OSError, count: int,
                      known: np.ndarray | None) -> tuple[np.ndarray | None, str | None]:
    """A gallery cache's ``stamps.npy`` (``file``, as ``opened_files`` opened it) and what is wrong with it, if
    anything (``(None, None)``: a cache written before it, or a query cache). ``known``: stamps whose digest is the
    one ``meta.json`` records (the images' now), compared with in place of digesting the file's (a million stamps
    take seconds).

    Example:
        >>> from cir_lightning.retrieval.cache_stamps import read_cache_stamps
        >>> import tempfile
        >>> from pathlib import Path
        >>> path = Path(tempfile.mkdtemp()) / "stamps.npy"
        >>> np.save(path, np.zeros((3, 2), dtype=np.int64))
        >>> with open(path, "rb") as file:
        ...     read_cache_stamps({}, file, 4, None)[1]
        'holds int64 (3, 2), not int64 (4, 2)'
        >>> read_cache_stamps({}, FileNotFoundError(path), 4, None)
        (None, None)
    """
    if isinstance(file, FileNotFoundError):
        return None, None
    try:
        then = array_of(file)
        problem = stamps_problem(then, count)
        if problem is None and "image_stamps_sha256" in meta and not (known is not None and np.array_equal(then, known)):
            problem = None if stamps_digest(then) == meta["image_stamps_sha256"] else \
                "holds other stamps than meta.json records"
    except (OSError, ValueError, EOFError) as err:
        return None, f"cannot be read ({err})"
    return then, problem


def changed_images(then: np.ndarray | None, damage: str | None, images: Sequence[str], ids: Sequence[str],
                   now: np.ndarray) -> str:
    """What changed in a gallery's image files since its cache was written: the first changed or gone image, from
    the cache's ``stamps.npy`` (``read_cache_stamps``: ``then`` and its ``damage``), or, without one, that some did.

    Example:
        >>> from cir_lightning.retrieval.cache_stamps import changed_images
        >>> changed_images(np.array([[1, 0]]), None, ["/d/a.png"], ["a"], np.array([[2, 0]]))
        'image `/d/a.png` (id `a`) changed (another size: 2 bytes, 1 when embedded) since it was written'
    """
    changed = ("image files changed since it was written (size or modification time: the images were made or copied "
               "again)")
    if damage:
        return f"{changed}; its {STAMPS_FILE}, which would name them, {damage}: it is damaged"
    return (changed_line(images, ids, then, now, "it was written") if then is not None else None) or changed
