"""Missing images: an error that lists them, or, when the user asks, dropping what needs them.

Benchmarks copied from the web are often incomplete. By default a DataModule stops at set-up with the
count and the first few missing files (and which sample needs each). With ``on_missing: drop`` it
leaves out the samples that need a missing image and warns, once, how many it dropped: numbers from a
reduced benchmark are then not comparable with published ones, and the warning says so.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Literal, TypeVar

from lightning.pytorch.utilities import rank_zero_warn

from cir_lightning.errors import CIRDataError

OnMissing = Literal["error", "drop"]
T = TypeVar("T")
_SHOW = 5


def handle_missing(items: Sequence[T], paths: Callable[[T], Iterable[Path]], describe: Callable[[T], str], *,
                   what: str, where: str | Path, on_missing: OnMissing = "error") -> list[T]:
    """``items`` whose image files all exist; the others are an error or, with ``drop``, left out.

    Args:
        items: the samples (triplets, queries, gallery items).
        paths: the image files an item needs.
        describe: how an item is named in messages (its id or source line).
        what: what the items are, plural ("val queries of shirt").
        where: the annotation file or folder they come from.
        on_missing: ``"error"`` (default) or ``"drop"``.

    Example:
        >>> import tempfile
        >>> root = Path(tempfile.mkdtemp())
        >>> _ = (root / "a.png").write_bytes(b"")
        >>> items = [("q1", root / "a.png"), ("q2", root / "b.png")]
        >>> handle_missing(items, lambda x: [x[1]], lambda x: x[0], what="queries", where="val.json")
        Traceback (most recent call last):
        ...
        cir_lightning.errors.CIRDataError: val.json: 1 of 2 queries need missing images: q2: .../b.png. ...
        >>> [x[0] for x in handle_missing(items, lambda x: [x[1]], lambda x: x[0], what="queries",
        ...                               where="val.json", on_missing="drop")]
        ['q1']
    """
    if on_missing not in ("error", "drop"):
        raise ValueError(f"`on_missing` must be 'error' or 'drop', got {on_missing!r}")
    exists: dict[Path, bool] = {}
    kept, missing = [], []
    for item in items:
        absent = [p for p in paths(item) if not exists.setdefault(p, p.is_file())]
        if absent:
            missing.append((item, absent[0]))
        else:
            kept.append(item)
    if not missing:
        return list(items)
    listing = "; ".join(f"{describe(item)}: {path}" for item, path in missing[:_SHOW])
    if len(missing) > _SHOW:
        listing += f"; ... and {len(missing) - _SHOW} more"
    if on_missing == "error":
        raise CIRDataError(f"{len(missing)} of {len(items)} {what} need missing images: {listing}. Complete the "
                           "download, or set `on_missing: drop` to leave them out (the numbers are then not "
                           "comparable with published ones)", where)
    rank_zero_warn(f"{where}: dropped {len(missing)} of {len(items)} {what} whose images are missing "
                   f"({listing}); the numbers are not comparable with published ones")
    return kept
