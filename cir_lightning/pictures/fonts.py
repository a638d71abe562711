"""Fonts for the pictures: Pillow's own, or an installed one that draws the text's letters (accents, CJK)."""

from __future__ import annotations

import functools
from typing import Any

from PIL import Image, ImageDraw, ImageFont

__all__ = ["FALLBACK_FONTS", "default_font", "draws", "font", "system_font"]

FALLBACK_FONTS = ("DejaVuSans.ttf", "NotoSans-Regular.ttf", "NotoSansCJK-Regular.ttc", "DroidSansFallbackFull.ttf",
                  "Arial Unicode.ttf", "arial.ttf")
"""System fonts tried, in order, for text that Pillow's own font has no glyphs for (accents, Cyrillic, CJK)."""


def font(size: int, text: str = "") -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Pillow's scalable default font at ``size`` pixels (its bitmap font without FreeType); for a ``text``
    it cannot draw (its glyphs stop at ASCII), the first of ``FALLBACK_FONTS`` installed that can, so that
    ``färbe es rot`` or a Japanese file name is not drawn as boxes; when none draws them all, the one that
    draws the most (DejaVu's accents beside CJK boxes, rather than boxes for every letter)."""
    chars = "".join(sorted({c for c in text if not c.isspace() and not c.isascii()}))
    default = default_font(size)
    if not chars or draws(default, chars):
        return default
    best, drawn = default, sum(draws(default, c) for c in chars)
    for name in FALLBACK_FONTS:
        found = system_font(name, size)
        count = 0 if found is None else sum(draws(found, c) for c in chars)
        if count == len(chars):
            return found
        if count > drawn:
            best, drawn = found, count
    return best  # boxes where no installed font draws a character; the text is still in the results file


@functools.lru_cache(maxsize=8)
def default_font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)  # Pillow's own scalable font (with FreeType)
    except (TypeError, OSError, ImportError):
        return ImageFont.load_default()


@functools.lru_cache(maxsize=64)
def system_font(name: str, size: int) -> ImageFont.FreeTypeFont | None:
    try:
        return ImageFont.truetype(name, size)  # found in the system's font folders by Pillow
    except (OSError, ImportError):
        return None


@functools.lru_cache(maxsize=4096)
def draws(face: Any, chars: str) -> bool:
    """Whether the font ``face`` has a glyph for each of ``chars`` (a missing one is drawn as the font's box, U+FFFF's)."""
    def ink(char: str) -> bytes:
        image = Image.new("L", (48, 48))
        ImageDraw.Draw(image).text((4, 4), char, font=face, fill=255)
        return image.tobytes()

    box = ink("\uffff")
    return all(ink(char) != box for char in chars)
