"""Image paths and decoding: paths cannot leave their root, and every failure names its source."""

from __future__ import annotations

import os
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from cir_lightning.errors import CIRDataError


def resolve_image_path(root: Path, relative: object, file: str | Path, line: int | None, field: str) -> Path:
    """Join ``relative`` to ``root`` and refuse anything that is not a file path inside ``root``.

    Args:
        root: the image root, already resolved (``Path.resolve()``).
        relative: the value read from the annotation file.
        file: the annotation file, for the error message.
        line: its 1-based line number (None for files without lines, e.g. a JSON dict).
        field: the field name, for the error message.

    Example:
        >>> import tempfile
        >>> root = Path(tempfile.mkdtemp()).resolve()
        >>> resolve_image_path(root, "a/b.png", "q.jsonl", 1, "image_path") == root / "a" / "b.png"
        True
        >>> resolve_image_path(root, "../secret.png", "q.jsonl", 7, "image_path")
        Traceback (most recent call last):
        ...
        cir_lightning.errors.CIRDataError: q.jsonl:7: `image_path` '../secret.png' points outside the image root ...
    """
    if not isinstance(relative, str) or not relative.strip() or "\x00" in relative:
        raise CIRDataError(f"`{field}` must be a non-empty relative path string, got {relative!r}", file, line)
    if Path(relative).is_absolute():
        raise CIRDataError(
            f"`{field}` {relative!r} is absolute; image paths must be relative to the image root `{root}`",
            file, line,
        )
    # Checked lexically, so a folder the user symlinked under the root (root/images -> /data/images)
    # still works, while `..` in an annotation can never climb out of it.
    normal = os.path.normpath(relative)
    if normal == ".." or normal.startswith(".." + os.sep):
        raise CIRDataError(
            f"`{field}` {relative!r} points outside the image root `{root}`; paths may not escape it",
            file, line,
        )
    return root / normal


def load_image(path: Path, max_short_edge: int | None = None, source: str | None = None) -> Image.Image:
    """Decode an image as RGB, shrinking it so its short edge is at most ``max_short_edge`` pixels.

    Args:
        path: the image file.
        max_short_edge: shrink (bicubic, aspect ratio kept) when the short edge is longer; never enlarges.
        source: where the path came from (``"file.jsonl:12"``), put in front of any error.

    Example:
        >>> import tempfile
        >>> p = Path(tempfile.mkdtemp()) / "x.png"
        >>> Image.new("RGB", (200, 100)).save(p)
        >>> load_image(p, max_short_edge=50).size
        (100, 50)
    """
    where = f"{source}: " if source else ""
    try:
        with Image.open(path) as img:
            img = img.convert("RGB")
    except FileNotFoundError:
        raise CIRDataError(f"{where}image `{path}` does not exist") from None
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise CIRDataError(f"{where}image `{path}` cannot be read: {err}") from None
    if max_short_edge is not None and min(img.size) > max_short_edge:
        w, h = img.size
        scale = max_short_edge / min(w, h)
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        img = img.resize(size, Image.Resampling.BICUBIC)
    return img
