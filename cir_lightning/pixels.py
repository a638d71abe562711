"""8-bit RGB from any PIL image: one conversion for the images the data modules decode and for the images a
backbone's collator is handed directly (``encode_query`` / ``encode_gallery``).

Alpha is dropped as ``convert("RGB")`` drops it, which is what every original model's pipeline did
(transformers 4's processors, ``Image.open(p).convert("RGB")``); transformers 5's processors would
composite transparency onto white instead. Deeper images (16-bit, 32-bit, float) are brought to 8 bits,
and values that cannot be mapped are a one-line error naming the image.

``shrink_short_edge`` is the resize before any model's processor (``max_short_edge``): FiRE's release's, so that a
translated FiRE config (380 px) reproduces its images exactly. A prompt preset's own resize (GME's ``pre_resize``)
is ``backbones.gme_images.fit_to_factor``, in that backbone's collator.
"""

from __future__ import annotations

import functools

import numpy as np
from PIL import Image

from cir_lightning.errors import CIRDataError

__all__ = ["SHRINK", "SIXTEEN_BIT_MODES", "shrink_short_edge", "to_rgb", "upright"]

SHRINK = "lanczos-floor"
"""How ``shrink_short_edge`` resizes, recorded with ``max_short_edge`` in embedding caches' identities (images
shrunk another way give other embeddings)."""

SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N"})


def to_rgb(img: Image.Image, name: str) -> Image.Image:
    """``img`` (loaded) as 8-bit RGB, as ``cir_lightning.data.images.load_image`` documents (alpha dropped,
    deep images brought to 8 bits); ``name`` starts any error message. ``img`` itself is not changed.

    Example:
        >>> from PIL import Image
        >>> from cir_lightning.pixels import to_rgb
        >>> to_rgb(Image.new("RGBA", (2, 1), (10, 20, 30, 0)), "x").getpixel((0, 0))
        (10, 20, 30)
    """
    mode = img.mode
    if mode in SIXTEEN_BIT_MODES or mode in ("I", "F"):
        return _deep_to_rgb(img, name)
    if mode == "La":  # Pillow cannot take premultiplied La to RGB directly
        return img.convert("LA").convert("RGB")
    if mode == "LAB":  # as Pillow 13's convert("RGB") does it; older Pillow copied the bands instead
        try:
            transform = _lab_to_srgb()
        except ImportError as err:
            raise CIRDataError(
                f"{name} is a CIELAB image (PIL mode 'LAB'), and converting it to RGB needs Pillow built "
                f"with LittleCMS ({err}); convert the file to RGB"
            ) from None
        from PIL import ImageCms

        return ImageCms.applyTransform(img, transform)
    if mode == "P" and isinstance(img.info.get("transparency"), bytes):
        # Dropped by convert("RGB") anyway (same pixels); removing it first spares the user Pillow's warning
        # (from a copy: the caller's image keeps its info)
        img = img.copy()
        del img.info["transparency"]
    try:
        return img.convert("RGB")
    except ValueError as err:
        raise CIRDataError(
            f"{name} has PIL mode {mode!r}, which cannot be converted to RGB ({err})"
        ) from None



@functools.lru_cache(maxsize=1)
def _lab_to_srgb() -> object:
    """The LittleCMS transform from Pillow's LAB to sRGB (ImportError without LittleCMS)."""
    from PIL import ImageCms

    lab, srgb = ImageCms.createProfile("LAB"), ImageCms.createProfile("sRGB")
    return ImageCms.buildTransform(lab, srgb, "LAB", "RGB")



def _deep_to_rgb(img: Image.Image, name: str) -> Image.Image:
    """16-bit and 32-bit grey (PIL modes ``I;16*``, ``I``, ``F``) to 8-bit RGB; see :func:`load_image`."""
    mode = img.mode
    values = np.asarray(img)
    if values.size == 0:
        return Image.new("RGB", img.size)
    if mode == "F":
        if not np.isfinite(values).all():
            raise CIRDataError(f"{name} is a 32-bit float image (PIL mode 'F') with NaN or infinite values")
        low, high = float(values.min()), float(values.max())
        if low < 0 or high > 255:
            raise CIRDataError(
                f"{name} is a 32-bit float image (PIL mode 'F') with values from {low:g} to {high:g}; only "
                "[0, 1] or [0, 255] can be mapped to 8 bits: save it as 8-bit (or 16-bit) integers"
            )
        scale, kind = (255.0, "[0, 1]") if high <= 1 else (1.0, "[0, 255]")
        eight = np.rint(values.astype(np.float64) * scale).astype(np.uint8)
    else:
        low, high = int(values.min()), int(values.max())
        if low < 0 or high > 65535:
            raise CIRDataError(
                f"{name} is a 32-bit integer image (PIL mode 'I') with values from {low} to {high}; only "
                "0..65535 (16 bits) can be mapped to 8 bits: save it as 8-bit or 16-bit unsigned integers"
            )
        kind = "16-bit"
        eight = (values.astype(np.uint16) >> 8).astype(np.uint8)
    if high > 0 and not eight.any():
        raise CIRDataError(
            f"{name} (PIL mode {mode!r}) has values only up to {high:g}, which decode as all black in its "
            f"{kind} range; if it holds 8-bit values, save it as an 8-bit image"
        )
    return Image.fromarray(eight).convert("RGB")


def shrink_short_edge(img: Image.Image, max_short_edge: int | None) -> Image.Image:
    """``img`` with its short edge brought down to ``max_short_edge`` (None: unchanged), aspect kept, never
    enlarged: LANCZOS to ``int(side * scale)`` (at least 1), as FiRE's release shrinks (``SHRINK``).

    Example:
        >>> from PIL import Image
        >>> from cir_lightning.pixels import shrink_short_edge
        >>> shrink_short_edge(Image.new("RGB", (803, 601)), 380).size  # 803 * 380 / 601 = 507.7
        (507, 380)
        >>> shrink_short_edge(Image.new("RGB", (30, 20)), 380).size
        (30, 20)
    """
    short = min(img.size)
    if max_short_edge is None or short <= max_short_edge:
        return img
    scale = max_short_edge / float(short)
    size = (max(1, int(img.width * scale)), max(1, int(img.height * scale)))
    return img.resize(size, Image.Resampling.LANCZOS)


def upright(img: Image.Image) -> Image.Image:
    """``img`` turned as its EXIF orientation says (a phone photo taken sideways, shown upright by browsers and
    viewers), the tag then removed; unchanged without one, or when the EXIF block cannot be read. For the
    user's own images (``cir-lightning index``, ``search``, ``serve``); benchmarks are read as their
    original code read them, without it.

    Example:
        >>> from PIL import Image
        >>> from cir_lightning.pixels import upright
        >>> photo = Image.new("RGB", (80, 40))
        >>> photo.getexif()[0x0112] = 6  # "rotate 90 degrees clockwise to view"
        >>> upright(photo).size, upright(Image.new("RGB", (80, 40))).size
        ((40, 80), (80, 40))
    """
    from PIL import ImageOps

    try:
        return ImageOps.exif_transpose(img)
    except (OSError, ValueError, SyntaxError, KeyError, TypeError, IndexError):  # a damaged EXIF block
        return img
