"""Drawing with Pillow: the retrieval picture (one row per query), Recall@K curves, and stacking pictures."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from cir_lightning.errors import CIRDataError
from cir_lightning.pictures.fonts import font as _font
from cir_lightning.pictures.rows import TOP, QueryRow

TILE, GAP, LABEL, HEADER, TEXT_WIDTH, THUMB = 128, 14, 22, 44, 240, 58
"""Tile side; space between tiles; label line under a tile; title bar; text column width; the target's
thumbnail in the text column (pixels)."""
GREEN, ORANGE, RED, GREY, INK = (0, 170, 60), (215, 120, 0), (200, 30, 30), (120, 120, 120), (25, 25, 25)
PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (127, 127, 127)]
"""Curve colours, one per subset."""


def tile_origin(row: int, column: int) -> tuple[int, int]:
    """Top-left pixel of a tile of ``retrieval_picture``: column 0 is the reference, 1.. the results.

    Example:
        >>> from cir_lightning.pictures import tile_origin
        >>> tile_origin(0, 0)
        (14, 58)
    """
    x = GAP if column == 0 else 3 * GAP + TILE + TEXT_WIDTH + (column - 1) * (TILE + GAP)
    return x, HEADER + GAP + row * (TILE + LABEL + GAP)


def _load(path: Path, source: str) -> Image.Image:
    from cir_lightning.data.images import load_image

    return load_image(path, None, source)


def _thumbnail(image: Image.Image) -> Image.Image:
    tile = Image.new("RGB", (TILE, TILE), (60, 60, 60))
    small = image.copy()
    scale = TILE / max(small.size)
    small = small.resize((max(1, round(small.width * scale)), max(1, round(small.height * scale))),
                         Image.Resampling.LANCZOS if scale < 1 else Image.Resampling.NEAREST if scale >= 2
                         else Image.Resampling.BICUBIC)  # tiny images stay crisp
    tile.paste(small, ((TILE - small.width) // 2, (TILE - small.height) // 2))
    return tile


def missing_tile(name: str, note: str = "no file") -> Image.Image:
    """A tile in place of an image whose file is not there (rather than no picture at all): ``note`` and ``name``
    (the image's id or path, cut into lines, the last ending in ``...`` when cut) on grey, framed in red.

    Example:
        >>> from cir_lightning.pictures.draw import TILE, missing_tile
        >>> tile = missing_tile("photos/2024/a.jpg", "gone")
        >>> tile.size == (TILE, TILE), tile.getpixel((0, 0))
        (True, (200, 30, 30))
    """
    tile = Image.new("RGB", (TILE, TILE), (236, 238, 242))
    draw = ImageDraw.Draw(tile)
    draw.rectangle([0, 0, TILE - 1, TILE - 1], outline=RED, width=2)
    draw.text((8, 8), note, fill=RED, font=_font(14, note))
    face, lines = _font(12, name), [""]
    for char in name:  # by character: a path has no spaces to break at
        if lines[-1] and draw.textlength(lines[-1] + char, font=face) > TILE - 16:
            lines.append("")
        lines[-1] += char
    if len(lines) > 5:  # the rest cut: the name is in the results printed beside the picture
        last = lines[4]
        while last and draw.textlength(last + "...", font=face) > TILE - 16:
            last = last[:-1]
        lines = [*lines[:4], last + "..."]
    draw.multiline_text((8, 32), "\n".join(lines), fill=INK, font=face, spacing=3)
    return tile


def _wrap(draw: ImageDraw.ImageDraw, text: str, font: Any, width: int, max_lines: int) -> list[str]:
    lines: list[str] = []
    for word in text.split():
        while len(word) > 1 and draw.textlength(word, font=font) > width:  # a word wider than the column
            word = word[:-1]
        if lines and draw.textlength(f"{lines[-1]} {word}", font=font) <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    if len(lines) > max_lines:
        lines, last = lines[:max_lines], lines[max_lines - 1].rstrip(".,;")
        while last and draw.textlength(last + " ...", font=font) > width:  # the mark stays inside the column
            last = last[:-1]
        lines[-1] = last + " ..."
    return lines


def _fit(draw: ImageDraw.ImageDraw, text: str, font: Any, width: int) -> str:
    """``text`` cut to ``width`` pixels, ending in ``...`` when cut (a long id must not run over the results)."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "...", font=font) > width:
        text = text[:-1]
    return text + "..."


def _status(row: QueryRow, top: int) -> tuple[str, tuple[int, int, int]]:
    if not row.has_targets:
        return "no ground truth", GREY
    if row.target_rank is None:
        return f"target not in the top {row.depth}", RED
    return f"target at rank {row.target_rank}", GREEN if row.target_rank <= top else ORANGE


def retrieval_picture(rows: Sequence[QueryRow], title: str = "", top: int = TOP,
                      load: Callable[[Path, str], Image.Image] = _load) -> Image.Image:
    """One row per query: reference, text, the top results with rank and score, targets outlined in green.

    Raises:
        CIRDataError: an image cannot be read (``load``'s error), in one line naming the file and whose image it
            is (``query `q0`'s result #2``).

    Example:
        >>> from cir_lightning.pictures import Hit, QueryRow, retrieval_picture, tile_origin
        >>> red = lambda path, source: Image.new("RGB", (32, 32), (255, 0, 0))
        >>> hits = [Hit(f"g{i}", Path(f"g{i}.png"), "gallery", 0.9 - i / 10, i == 1) for i in range(5)]
        >>> picture = retrieval_picture([QueryRow("q", Path("r.png"), "", "make it red", hits, 2, 50)], load=red)
        >>> picture.size
        (1120, 222)
        >>> x, y = tile_origin(0, 2)  # the second result, a target: outlined in green
        >>> picture.getpixel((x - 2, y + 10)), picture.getpixel((x + 10, y + 10))
        ((0, 170, 60), (255, 0, 0))
    """
    width = tile_origin(0, max(top, 1))[0] + TILE + GAP
    picture = Image.new("RGB", (width, tile_origin(len(rows), 0)[1]), "white")
    draw = ImageDraw.Draw(picture)
    draw.text((GAP, GAP), title, fill=INK, font=_font(18, title))
    if any(row.has_targets for row in rows):  # (a search over your own images has none)
        legend = width - GAP - 90
        draw.rectangle([legend, GAP + 2, legend + 14, GAP + 16], outline=GREEN, width=3)
        draw.text((legend + 20, GAP + 1), "true target", fill=INK, font=_font(14))
    tiles: dict[Path, Image.Image] = {}

    def tile(path: Path, source: str, row: QueryRow, what: str) -> Image.Image:
        if path not in tiles:
            try:
                tiles[path] = _thumbnail(load(path, source))
            except CIRDataError as err:  # the file, and which query's picture needed it
                raise CIRDataError(f"query `{row.query_id}`'s {what}: {err}") from None
        return tiles[path]

    for r, row in enumerate(rows):
        x, y = tile_origin(r, 0)
        picture.paste(tile(row.reference, row.source, row, "reference"), (x, y))
        draw.text((x, y + TILE + 4), "reference", fill=GREY, font=_font(13))
        tx, ty = x + TILE + GAP, y + TILE + LABEL - THUMB  # the text column; its bottom strip: the target
        font = _font(13, row.query_id)
        draw.text((tx, y), _fit(draw, row.query_id, font, TEXT_WIDTH), fill=GREY, font=font)
        lines = _wrap(draw, row.text, _font(16, row.text), TEXT_WIDTH, (ty - y - 26) // 20)
        draw.multiline_text((tx, y + 20), "\n".join(lines), fill=INK, font=_font(16, row.text), spacing=4)
        status, colour = _status(row, top)
        if row.target is not None:
            target = tile(row.target.path, row.target.source, row, "target")
            picture.paste(target.resize((THUMB - 6, THUMB - 6)), (tx + 3, ty + 3))
            draw.rectangle([tx, ty, tx + THUMB - 1, ty + THUMB - 1], outline=GREEN, width=2)
            draw.text((tx + THUMB + 8, ty + 8), "target", fill=GREY, font=_font(13))
        draw.text((tx + (THUMB + 8 if row.target is not None else 0), ty + 28), status, fill=colour, font=_font(14))
        for k, hit in enumerate(row.hits[:top]):
            hx, hy = tile_origin(r, k + 1)
            picture.paste(tile(hit.path, hit.source, row, f"result #{k + 1}"), (hx, hy))
            if hit.target:
                draw.rectangle([hx - 4, hy - 4, hx + TILE + 3, hy + TILE + 3], outline=GREEN, width=4)
            if hit.mark:  # a badge on the tile, as `serve` shows it
                face = _font(11, hit.mark)
                badge = _wrap(draw, hit.mark, face, TILE - 18, 2)
                right = hx + 14 + max(draw.textlength(line, font=face) for line in badge)
                draw.rectangle([hx + 4, hy + 4, right, hy + 8 + 13 * len(badge)], fill=ORANGE)
                draw.multiline_text((hx + 9, hy + 6), "\n".join(badge), fill="white", font=face, spacing=2)
            label = f"#{k + 1}" + ("" if hit.score is None else f"   {hit.score:.3f}")
            draw.text((hx, hy + TILE + 5), label, fill=GREEN if hit.target else INK, font=_font(14))
    return picture


def recall_points(metrics: Mapping[str, Mapping[str, float]], family: str = "Recall") -> dict[str, list]:
    """Per subset, its ``(K, value)`` points of ``<family>@K``, K ascending (subsets without any left out).

    Example:
        >>> from cir_lightning.pictures import recall_points
        >>> recall_points({"": {"Recall@10": 0.5, "Recall@1": 0.1, "MRR@10": 0.2}, "x": {"mAP@5": 0.3}})
        {'': [(1, 0.1), (10, 0.5)]}
    """
    pattern = re.compile(rf"{re.escape(family)}@(\d+)")
    points = {name: sorted((int(m.group(1)), float(v)) for key, v in values.items() if (m := pattern.fullmatch(key)))
              for name, values in metrics.items()}
    return {name: p for name, p in points.items() if p}


def recall_curves(metrics: Mapping[str, Mapping[str, float]], title: str = "Recall@K",
                  family: str = "Recall") -> Image.Image:
    """Recall@K (percent) against K, one curve per subset (``metrics``: subset -> metric name -> fraction).

    Raises:
        ValueError: no subset has a ``<family>@K`` metric.

    Example:
        >>> from cir_lightning.pictures import recall_curves
        >>> recall_curves({"": {"Recall@1": 0.1, "Recall@10": 0.5}, "dress": {"Recall@10": 0.3}}).size
        (760, 420)
    """
    curves = recall_points(metrics, family)
    if not curves:
        raise ValueError(f"no `{family}@K` metrics to draw")
    width, height, left, right, top, bottom = 760, 420, 64, 200, 48, 52
    picture = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(picture)
    draw.text((left, 14), title, fill=INK, font=_font(18, title))
    ks = sorted({k for points in curves.values() for k, _ in points})
    log = ks[-1] / ks[0] >= 10
    span = (math.log(ks[-1]) - math.log(ks[0])) if log else ks[-1] - ks[0]

    def x(k: int) -> float:
        if span == 0:
            return (left + width - right) / 2
        offset = math.log(k) - math.log(ks[0]) if log else k - ks[0]
        return left + offset / span * (width - left - right)

    def y(value: float) -> float:
        return height - bottom - value * (height - top - bottom)

    for percent in range(0, 101, 20):
        draw.line([(left, y(percent / 100)), (width - right, y(percent / 100))], fill=(225, 225, 225))
        draw.text((left - 8, y(percent / 100)), str(percent), fill=GREY, font=_font(13), anchor="rm")
    for k in ks:
        draw.text((x(k), height - bottom + 8), str(k), fill=GREY, font=_font(13), anchor="mt")
    draw.text(((left + width - right) / 2, height - 18), "K" + (" (log scale)" if log else ""), fill=INK,
              font=_font(14), anchor="mm")
    draw.text((14, top - 22), "%", fill=INK, font=_font(14))
    for i, (name, points) in enumerate(curves.items()):
        colour = PALETTE[i % len(PALETTE)]
        xy = [(x(k), y(v)) for k, v in points]
        if len(xy) > 1:
            draw.line(xy, fill=colour, width=3, joint="curve")
        for px, py in xy:
            draw.ellipse([px - 4, py - 4, px + 4, py + 4], fill=colour)
        ly = top + 10 + 24 * i
        draw.line([(width - right + 16, ly), (width - right + 40, ly)], fill=colour, width=3)
        draw.text((width - right + 48, ly), name or "all", fill=INK, font=_font(14, name or "all"), anchor="lm")
    return picture


def stack(images: Sequence[Image.Image], gap: int = GAP) -> Image.Image:
    """The images one below the other, on white.

    Example:
        >>> from cir_lightning.pictures import stack
        >>> stack([Image.new("RGB", (10, 5)), Image.new("RGB", (20, 5))], gap=2).size
        (20, 12)
    """
    out = Image.new("RGB", (max(i.width for i in images), sum(i.height for i in images) + gap * (len(images) - 1)),
                    "white")
    y = 0
    for image in images:
        out.paste(image, (0, y))
        y += image.height + gap
    return out
