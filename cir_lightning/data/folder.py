"""A folder of the user's own images as a dataset: every image below it, in a stable order.

``list_images`` finds the files (recursively, hidden files and folders left out, sorted by their path
relative to the folder, with ``/`` separators), keeping those whose suffix Pillow can open.
``ImageFolderDataset`` decodes them like every cir_lightning dataset (``ImageDataset``: the image
options ``max_short_edge`` and ``max_pixels``); an image that cannot be decoded does not stop the run:
its sample says why (``"error"``), and ``KeepReadable`` (around the model's gallery collator) leaves it
out of the batch and lists it under ``"unreadable"``, so the caller decides to refuse or skip it.
"""

from __future__ import annotations

import functools
import os
import stat
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch.utils.data import Dataset

from cir_lightning.data.datasets import ImageDataset
from cir_lightning.data.idle_rows import is_idle
from cir_lightning.errors import CIRDataError
from cir_lightning.messages import first_few, os_reason, path_problem
from cir_lightning.pixels import shrink_short_edge
from cir_lightning.pixels import upright as _upright

__all__ = ["FolderScan", "ImageFolderDataset", "KeepReadable", "fit_image", "image_suffixes", "left_out_line",
           "list_images", "scan_images"]


@functools.lru_cache(maxsize=1)
def image_suffixes() -> frozenset[str]:
    """The file suffixes (lower case, with the dot) of the formats this Pillow can open.

    Example:
        >>> from cir_lightning.data.folder import image_suffixes
        >>> {".png", ".jpg", ".jpeg", ".webp"} <= image_suffixes(), ".txt" in image_suffixes()
        (True, False)
    """
    Image.init()
    return frozenset(ext.lower() for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN)


@dataclass(frozen=True)
class FolderScan:
    """What ``scan_images`` found below a folder: the images, and counts of what it passed over by rule.

    Args:
        relpaths: the image files, sorted relative paths with ``/`` separators.
        hidden: hidden files and folders (names starting with ``.``) not searched.
        other_types: files with a suffix Pillow cannot open, by suffix (lower case, ``""`` for none).
        reached_again: folders and files reached a second time, through a link or a link loop (their images
            listed once).
        through_outside_links: images listed whose file lies outside the folder (reached through a link).
    """

    relpaths: list[str]
    hidden: int = 0
    other_types: dict[str, int] = field(default_factory=dict)
    reached_again: int = 0
    through_outside_links: int = 0

    def counts(self) -> dict[str, Any]:
        """Everything but the paths, as recorded in an index's ``meta.json`` (``image_index.left_out``)."""
        return {"hidden": self.hidden, "other_types": dict(self.other_types), "reached_again": self.reached_again,
                "through_outside_links": self.through_outside_links}


def left_out_line(counts: dict[str, Any]) -> str:
    """One line saying what ``scan_images`` passed over (``FolderScan.counts()``); empty when nothing.

    Example:
        >>> from cir_lightning.data.folder import left_out_line
        >>> left_out_line({"hidden": 2, "other_types": {".txt": 1, ".heic": 3}, "reached_again": 1,
        ...                "through_outside_links": 0})
        'not indexed: 2 hidden files or folders (names starting with `.`), 4 files of other types (.heic 3, .txt 1), 1 folder or file reached again through a link (each image once)'
    """
    def many(n: int, one: str, more: str) -> str:
        return f"{n} {one if n == 1 else more}"

    parts = []
    if counts.get("hidden"):
        parts.append(many(counts["hidden"], "hidden file or folder", "hidden files or folders")
                     + " (names starting with `.`)")
    other = counts.get("other_types") or {}
    if other:
        kinds = sorted(other.items(), key=lambda item: (-item[1], item[0]))
        parts.append(many(sum(other.values()), "file", "files") + " of other types ("
                     + first_few([f"{k or 'no suffix'} {n}" for k, n in kinds], ", ", ", ...") + ")")
    if counts.get("reached_again"):
        parts.append(many(counts["reached_again"], "folder or file", "folders or files")
                     + " reached again through a link (each image once)")
    line = "not indexed: " + ", ".join(parts) if parts else ""
    if counts.get("through_outside_links"):
        line += ("; " if line else "") + many(counts["through_outside_links"], "image", "images") \
            + " indexed through links to files outside the folder"
    return line


def list_images(root: str | Path, leave_out: Sequence[str | Path] = ()) -> list[str]:
    """The image files below ``root``, as sorted relative paths with ``/`` separators: ``scan_images``'s.

    Example:
        >>> from cir_lightning.data.folder import list_images
        >>> import tempfile
        >>> root = Path(tempfile.mkdtemp())
        >>> for name in ("b/2.png", "a.JPG", "b/1.webp", ".hidden/x.png", "notes.txt"):
        ...     (root / name).parent.mkdir(parents=True, exist_ok=True)
        ...     _ = (root / name).write_bytes(b"")
        >>> list_images(root)
        ['a.JPG', 'b/1.webp', 'b/2.png']
        >>> list_images(root / "b" / "1.webp")
        Traceback (most recent call last):
        ...
        cir_lightning.errors.CIRDataError: .../1.webp: is not a folder of images
    """
    return scan_images(root, leave_out).relpaths


def scan_images(root: str | Path, leave_out: Sequence[str | Path] = ()) -> FolderScan:
    """The image files below ``root`` (those whose suffix, in any case, Pillow can open), and what was passed over.

    Hidden files and folders (names starting with ``.``) and the folders in ``leave_out`` (e.g. an index
    being written inside the image folder) are not searched; files of other types are not listed. Both are
    counted (``FolderScan``). Symbolic links are followed, to files and to folders, also to outside ``root``
    (a photo folder linked in is searched like one copied in; counted too); a folder or file reached a second
    time, by another link or a link loop, is listed once only (a file under its own name rather than a
    link's), so no image appears twice.

    Raises:
        CIRDataError: ``root`` is missing or not a folder, or holds no image file.

    Example:
        >>> from cir_lightning.data.folder import scan_images
        >>> import tempfile
        >>> root = Path(tempfile.mkdtemp())
        >>> for name in ("a.png", ".DS_Store", ".thumbnails/a.png", "notes.txt", "IMG_1.HEIC"):
        ...     (root / name).parent.mkdir(parents=True, exist_ok=True)
        ...     _ = (root / name).write_bytes(b"")
        >>> scan = scan_images(root)
        >>> scan.relpaths, scan.hidden, scan.other_types
        (['a.png'], 2, {'.heic': 1, '.txt': 1})
    """
    root = Path(root)
    if not root.is_dir():
        raise CIRDataError(path_problem(root) or "is not a folder of images", root)  # missing, a loop of links ...
    skipped = {os.path.realpath(p) for p in leave_out}
    found, listed = {}, set()  # relative path -> (is a link, the real file)
    hidden, reached_again, other_types = 0, 0, Counter()
    for folder, dirnames, filenames in os.walk(root, followlinks=True, onerror=_unlistable):
        real = os.path.realpath(folder)
        if real in listed:  # a second link to a folder already listed (or a link loop): its images once only
            dirnames[:] = []
            reached_again += 1
            continue
        listed.add(real)
        hidden += sum(d.startswith(".") for d in dirnames) + sum(f.startswith(".") for f in filenames)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".")  # sorted: which link lists a folder
                             and os.path.realpath(os.path.join(folder, d)) not in skipped)  # does not vary
        relative = Path(folder).relative_to(root)
        for name in filenames:
            if name.startswith("."):
                continue
            if Path(name).suffix.lower() not in image_suffixes():
                other_types[Path(name).suffix.lower()] += 1
                continue
            _refuse_special(Path(folder) / name)
            link = os.path.islink(os.path.join(folder, name))
            found[(relative / name).as_posix()] = (link, os.path.realpath(os.path.join(folder, name)) if link
                                                   else os.path.join(real, name))
    # a file reached under two names (a link to it) is listed once: under a name that is not a link if it has
    # one, else the first in order (an image listed twice would tie with itself in every search)
    keep: dict[str, str] = {}
    for relpath, (_, real_file) in sorted(found.items(), key=lambda item: (item[1][0], item[0])):
        keep.setdefault(real_file, relpath)
    inside = os.path.realpath(root)
    outside = sum(1 for real_file in keep if os.path.commonpath([inside, real_file]) != inside)
    scan = FolderScan(sorted(keep.values()), hidden, dict(sorted(other_types.items())),
                      reached_again + len(found) - len(keep), outside)
    if not found:  # (what it holds instead: iPhone photos are .heic, which this Pillow may not open)
        passed_over = left_out_line(scan.counts()).replace("not indexed: ", "; it holds ")
        raise CIRDataError("holds no image files (looked for " + ", ".join(sorted(
            {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"} & image_suffixes()))
            + f" ... in every sub-folder{passed_over})", root)
    undecodable = [os.fsencode(p) for p in scan.relpaths if not _is_utf8(p)]
    if undecodable:  # (an old camera's or zip's Latin-1 names): ids.json, meta.json and URLs hold UTF-8 text
        raise CIRDataError(f"{len(undecodable)} image file names are not valid UTF-8 ("
                           + first_few([repr(name)[1:] for name in undecodable], ", ", ", ...") + "), which an index "
                           "cannot record; rename them (e.g. `convmv -f latin1 -t utf8 -r --notest FOLDER`)", root)
    return scan


def _is_utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # os.walk's surrogate escapes of undecodable bytes
        return False
    return True


def _unlistable(err: OSError) -> None:
    """A folder below the image folder that cannot be listed would leave its images out without a word."""
    raise CIRDataError(f"cannot be listed ({os_reason(err)}), so its images cannot be found; make it readable, or "
                       "move it out of the image folder", err.filename) from None


def _refuse_special(path: Path) -> None:
    """A named pipe (or device, socket) with an image's name would block the reader forever."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return  # a broken link: listed, then reported unreadable when it is read
    if not stat.S_ISREG(mode):
        raise CIRDataError("is not a regular file (a pipe, socket or device) but has an image's name; move it out "
                           "of the image folder", path)


def fit_image(image: Image.Image, max_short_edge: int | None = None, upright: bool = False) -> Image.Image:
    """``image`` as RGB (first turned by its EXIF orientation with ``upright``), shrunk
    (``pixels.shrink_short_edge``) so its short edge is at most ``max_short_edge``, as ``load_image`` prepares
    an image read from a file.

    Example:
        >>> from cir_lightning.data.folder import fit_image
        >>> image = fit_image(Image.new("L", (200, 100)), max_short_edge=50)
        >>> image.mode, image.size
        ('RGB', (100, 50))
    """
    image = _upright(image) if upright else image
    return shrink_short_edge(image if image.mode == "RGB" else image.convert("RGB"), max_short_edge)


class ImageFolderDataset(ImageDataset, Dataset):
    """The images ``relpaths`` below ``root``; a sample is ``{"index", "image"}``, or ``{"index", "error"}``
    (the one-line reason) for an image that cannot be decoded.

    Example:
        >>> from cir_lightning.data.folder import ImageFolderDataset
        >>> import tempfile
        >>> root = Path(tempfile.mkdtemp())
        >>> Image.new("RGB", (64, 32)).save(root / "a.png")
        >>> _ = (root / "b.png").write_bytes(b"not a png")
        >>> data = ImageFolderDataset(root, ["a.png", "b.png"], max_short_edge=16)
        >>> data[0]["image"].size
        (32, 16)
        >>> data[1]["error"]
        'image `.../b.png` cannot be read: not a recognised image format, or truncated or corrupt'
    """

    def __init__(self, root: str | Path, relpaths: Sequence[str], max_short_edge: int | None = None,
                 upright: bool = False) -> None:
        self.root = Path(root)
        self.relpaths = list(relpaths)
        self.max_short_edge, self.upright = max_short_edge, upright

    def __len__(self) -> int:
        return len(self.relpaths)

    def __getitem__(self, index: int) -> dict[str, Any]:
        try:
            return {"index": index, "image": self._image(self.root / self.relpaths[index], "")}
        except CIRDataError as err:
            return {"index": index, "error": str(err)}


class KeepReadable:
    """A collate function that runs ``collate`` (the model's gallery collator) on the decoded samples only and lists
    the undecodable ones in ``batch["unreadable"]`` as ``(index, reason)`` pairs; an idle row (neither image nor
    error: ``idle_rows.EveryProcessOne``'s) is dropped, not listed. With no sample decoded, ``collate`` is not
    called: the batch is an empty ``index`` and ``unreadable``. Picklable, so it runs in DataLoader workers.

    Example:
        >>> from cir_lightning.data.folder import KeepReadable
        >>> collate = KeepReadable(lambda samples: {"index": torch.tensor([s["index"] for s in samples])})
        >>> batch = collate([{"index": 0, "image": None}, {"index": 1, "error": "corrupt"}])
        >>> batch["index"].tolist(), batch["unreadable"]
        ([0], [(1, 'corrupt')])
        >>> none_decoded = collate([{"index": 1, "error": "corrupt"}])
        >>> none_decoded["index"].tolist(), none_decoded["unreadable"]
        ([], [(1, 'corrupt')])
    """

    def __init__(self, collate: Callable[[list[dict[str, Any]]], dict[str, Any]]) -> None:
        self.collate = collate

    def __call__(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        good = [s for s in samples if "error" not in s and not is_idle(s)]
        batch = self.collate(good) if good else {"index": torch.empty(0, dtype=torch.long)}
        batch["unreadable"] = [(s["index"], s["error"]) for s in samples if "error" in s]
        return batch
