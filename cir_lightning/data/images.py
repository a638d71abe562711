"""Image paths and decoding: paths cannot leave their root, and every failure names its source."""

from __future__ import annotations

import contextlib
import os
import stat
import struct
import threading
import zlib
from collections.abc import Iterator
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from cir_lightning.errors import CIRDataError
from cir_lightning.messages import os_reason, path_problem
from cir_lightning.pixels import shrink_short_edge
from cir_lightning.pixels import to_rgb as _to_rgb
from cir_lightning.pixels import upright as _upright


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


DEFAULT_MAX_PIXELS: int = 2 * (1024 * 1024 * 1024 // 4 // 3)
"""The default ``max_pixels`` of :func:`load_image`: 178,956,970 pixels, the size at which Pillow's own
decompression-bomb check raises (``2 * PIL.Image.MAX_IMAGE_PIXELS`` with Pillow's default)."""

_PILLOW_LIMIT_LOCK = threading.Lock()


def load_image(path: Path, max_short_edge: int | None = None, source: str | None = None, *,
               max_pixels: int | None = DEFAULT_MAX_PIXELS, upright: bool = False) -> Image.Image:
    """Decode an image as RGB, shrinking it so its short edge is at most ``max_short_edge`` pixels.

    8-bit images are decoded exactly as ``Image.open(path).convert("RGB")`` decodes them (alpha is dropped,
    a palette is looked up, CMYK and YCbCr use Pillow's formulas). Deeper images are brought to 8 bits:

    - 16-bit grey (PIL modes ``I;16``, ``I;16B``, ``I;16L``, ``I;16N``; Pillow 13 opens 16-bit grey PNG and
      TIFF files as ``I;16``, big-endian TIFF as ``I;16B``) keeps the high byte, ``value >> 8``, as Pillow
      itself does with 16-bit RGB, RGBA and LA files: ``v * 257`` in 16 bits decodes exactly like ``v`` in 8.
    - 32-bit integers (``I``: 16-bit PGM files, 32-bit and signed 16-bit TIFF files, 16-bit grey PNG files
      with older Pillow) are read as 16-bit values, ``value >> 8``; values outside 0..65535 are an error.
    - 32-bit floats (``F``: float TIFF, PFM) are read as [0, 1] when no value exceeds 1
      (``round(255 * value)``), else as [0, 255] (``round(value)``); negative, larger, NaN or infinite values
      are an error.
    - A deep image with non-zero values that would come out all black (e.g. 8-bit values stored in 16 bits)
      is an error, not a black picture.
    - ``La`` (premultiplied alpha) is un-premultiplied first; ``LAB`` is converted to sRGB with LittleCMS.

    Args:
        path: the image file.
        max_short_edge: shrink (``pixels.shrink_short_edge``: LANCZOS, aspect kept) when the short edge is
            longer; never enlarges.
        source: where the path came from (``"file.jsonl:12"``), put in front of any error.
        max_pixels: refuse images with more pixels than this (read from the header, before decoding), a guard
            against decompression bombs; None for no limit. Pillow's own global limit
            (``PIL.Image.MAX_IMAGE_PIXELS``) is not applied here.
        upright: turn the image as its EXIF orientation says (``pixels.upright``; the user's own photos).

    Raises:
        CIRDataError: one line naming ``source`` and the file: missing, a folder, a broken symbolic link, not
            a regular file (a named pipe would block), empty, not readable, not an image, truncated or corrupt, larger
            than ``max_pixels``, or deep values that cannot be mapped to 8 bits.

    Example:
        >>> import tempfile
        >>> p = Path(tempfile.mkdtemp()) / "x.png"
        >>> Image.new("RGB", (200, 100)).save(p)
        >>> load_image(p, max_short_edge=50).size
        (100, 50)
        >>> import numpy as np
        >>> v = np.array([[0, 64, 255]], dtype=np.uint16)
        >>> Image.fromarray(v * 257).save(p)  # a 16-bit grayscale PNG; convert("RGB") would clip it to white
        >>> [load_image(p).getpixel((x, 0)) for x in range(3)]
        [(0, 0, 0), (64, 64, 64), (255, 255, 255)]
    """
    where = f"{source}: " if source else ""
    name = f"{where}image `{path}`"
    try:
        found = os.stat(path)
        mode = found.st_mode
    except (OSError, TypeError):
        mode = None  # missing, a broken link, unreadable (said below, as Pillow finds it), or an open file
    if mode is not None and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):  # reading a pipe would wait forever
        raise CIRDataError(f"{name} is not a regular file (a pipe, socket or device), so it is not read as an image")
    if mode is not None and stat.S_ISREG(mode) and found.st_size == 0:  # (a failed copy or download)
        raise CIRDataError(f"{name} is an empty file (0 bytes), not an image")
    try:
        with _pillow_bomb_check_off():  # ours is applied below, from the header, with `max_pixels`
            opened = Image.open(path)
    except (IsADirectoryError, FileNotFoundError, PermissionError) as err:
        # not there, a broken link or a folder (Windows raises PermissionError for one); else unreadable
        problem = path_problem(path, "an image file")
        reason = "permission denied" if isinstance(err, PermissionError) else os_reason(err)
        raise CIRDataError(f"{name} {problem}" if problem else f"{name} cannot be read: {reason}") from None
    except UnidentifiedImageError:
        raise CIRDataError(
            f"{name} cannot be read: not a recognised image format, or truncated or corrupt"
        ) from None
    except OSError as err:
        if err.errno is not None:  # the file system failed, not the decoder
            raise CIRDataError(f"{name} cannot be read: {err.strerror or err}") from None
        raise CIRDataError(f"{name} is truncated or corrupt ({err})") from None
    except (ValueError, Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise CIRDataError(f"{name} cannot be read: {err}") from None
    with opened as img:
        w, h = img.size
        if max_pixels is not None and w * h > max_pixels:
            raise CIRDataError(
                f"{name} is {w}x{h} = {w * h:,} pixels, more than the limit of {max_pixels:,} that guards "
                "against decompression bombs; if the image is genuine, shrink it or raise the limit: "
                "`max_image_pixels` of the data module (`max_pixels` of load_image; null/None: no limit)"
            )
        try:
            # The full decode happens here, inside the `with` and the `try`: a truncated file fails now, not
            # later as a traceback, and never as a partly grey picture (LOAD_TRUNCATED_IMAGES is left off).
            pillow_limit = Image.MAX_IMAGE_PIXELS
            if pillow_limit is not None and w * h > pillow_limit:  # some formats repeat Pillow's check here
                with _pillow_bomb_check_off():
                    img.load()
            else:
                img.load()
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
            raise CIRDataError(
                f"{name} is refused by Pillow's decompression-bomb check ({err}); if the image is genuine, "
                "raise `PIL.Image.MAX_IMAGE_PIXELS` (None: no limit)"
            ) from None
        except MemoryError:
            raise CIRDataError(f"{name} is {w}x{h} pixels, too large to decode in memory") from None
        except OSError as err:
            if err.errno is not None:  # the file system failed, not the decoder
                raise CIRDataError(f"{name} cannot be read: {err.strerror or err}") from None
            raise CIRDataError(f"{name} is truncated or corrupt ({err})") from None
        except (SyntaxError, EOFError, ValueError, IndexError, TypeError, struct.error, zlib.error) as err:
            raise CIRDataError(f"{name} is truncated or corrupt ({err})") from None
        img = _to_rgb(_upright(img) if upright else img, name)
    return shrink_short_edge(img, max_short_edge)


@contextlib.contextmanager
def _pillow_bomb_check_off() -> Iterator[None]:
    """Switch Pillow's global decompression-bomb check off while the body runs and put back the value it had.

    The lock keeps two threads in here from restoring each other's ``None`` for good; other code sees the
    change only while the body runs (reading a header, or decoding an image already known to be large).
    """
    with _PILLOW_LIMIT_LOCK:
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = saved


