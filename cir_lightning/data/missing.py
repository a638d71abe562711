"""Missing images: an error that lists them, or, when the user asks, dropping what needs them.

Benchmarks copied from the web are often incomplete. By default a DataModule stops at set-up with the
count and the first few missing files (and which sample needs each). With ``on_missing: drop`` it
leaves out the samples that need a missing image and warns, once, how many it dropped: numbers from a
reduced benchmark are then not comparable with published ones, and the warning says so.

Only an absent file is a missing download: a broken symbolic link counts as one (its target is what is
missing), but a folder (or a device, a pipe) where an image file should be is a mistake in the layout
or the annotations, and always an error, whatever ``on_missing`` says.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Literal, TypeVar

from lightning.pytorch.utilities import rank_zero_warn

from cir_lightning.errors import CIRConfigError, CIRDataError
from cir_lightning.messages import MISSING, first_few, path_problem

OnMissing = Literal["error", "drop"]
T = TypeVar("T")


def check_on_missing(on_missing: object) -> OnMissing:
    """``on_missing`` if it is ``"error"`` or ``"drop"``, else a ``CIRConfigError`` naming the option.

    Example:
        >>> from cir_lightning.data.missing import check_on_missing
        >>> check_on_missing("skip")
        Traceback (most recent call last):
        ...
        cir_lightning.errors.CIRConfigError: `on_missing` must be 'error' or 'drop', got 'skip'
    """
    if on_missing not in ("error", "drop"):
        raise CIRConfigError(f"`on_missing` must be 'error' or 'drop', got {on_missing!r}")
    return on_missing


def file_problem(path: Path) -> str | None:
    """What keeps ``path`` from being an image file, or None (``messages.path_problem``).

    Example:
        >>> import tempfile
        >>> from cir_lightning.data.missing import file_problem
        >>> root = Path(tempfile.mkdtemp())
        >>> (root / "x.png").mkdir()
        >>> [file_problem(root / n) for n in ("x.png", "y.png")]
        ['is a folder, not an image file', 'does not exist']
    """
    return path_problem(path, "an image file")


def check_files_exist(items: list[tuple[Path, str]]) -> None:
    """Every path must be an image file; the error lists the first few that are not (absent, a folder,
    a broken symbolic link ...) with the line that names each."""
    checked: dict[Path, str | None] = {}
    bad = []
    for p, src in items:
        if p not in checked:
            checked[p] = file_problem(p)
            if checked[p] is not None:
                bad.append((p, src, checked[p]))
    if bad:
        shown = first_few([f"{src}: {p}" + ("" if why == MISSING else f" {why}") for p, src, why in bad])
        head = "do not exist" if all(why == MISSING for _, _, why in bad) else "are missing or not image files"
        raise CIRDataError(f"{len(bad)} image file(s) {head}: {shown}")


def _is_missing(problem: str) -> bool:
    return problem == MISSING or problem.startswith("is a broken symbolic link")


def _listing(found: list[tuple[str, Path, str]]) -> str:
    return first_few([f"{name}: {path}" + (f" {problem}" if problem != MISSING else "") for name, path, problem in found])


def handle_missing(items: Sequence[T], paths: Callable[[T], Iterable[Path]], describe: Callable[[T], str], *,
                   what: str, where: str | Path, on_missing: OnMissing = "error") -> list[T]:
    """``items`` whose image files all exist; the others are an error or, with ``drop``, left out.

    A path that is a folder (or another non-file) is always an error: ``drop`` only leaves out images
    that are missing (absent, or a broken symbolic link).

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
        >>> (root / "c.png").mkdir()
        >>> handle_missing([("q3", root / "c.png")], lambda x: [x[1]], lambda x: x[0], what="queries",
        ...                where="val.json", on_missing="drop")
        Traceback (most recent call last):
        ...
        cir_lightning.errors.CIRDataError: val.json: 1 of 1 queries need image paths that are not image files: q3: .../c.png is a folder, not an image file; ...
    """
    check_on_missing(on_missing)
    checked: dict[Path, str | None] = {}
    kept, missing, wrong = [], [], []
    for item in items:
        problems = []
        for p in paths(item):
            if p not in checked:
                checked[p] = file_problem(p)
            if checked[p] is not None:
                problems.append((p, checked[p]))
        bad = next(((p, why) for p, why in problems if not _is_missing(why)), None)
        if bad is not None:
            wrong.append((describe(item), *bad))
        elif problems:
            missing.append((describe(item), *problems[0]))
        else:
            kept.append(item)
    if wrong:
        raise CIRDataError(f"{len(wrong)} of {len(items)} {what} need image paths that are not image files: "
                           f"{_listing(wrong)}; fix the files or the annotations (`on_missing: drop` "
                           "only leaves out missing images)", where)
    if not missing:
        return list(items)
    listing = _listing(missing)
    if on_missing == "error":
        raise CIRDataError(f"{len(missing)} of {len(items)} {what} need missing images: {listing}. Complete the "
                           "download, or set `on_missing: drop` to leave them out (the numbers are then not "
                           "comparable with published ones)", where)
    rank_zero_warn(f"{where}: dropped {len(missing)} of {len(items)} {what} whose images are missing "
                   f"({listing}); the numbers are not comparable with published ones")
    return kept
