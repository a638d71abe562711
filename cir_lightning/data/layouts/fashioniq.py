"""FashionIQ's files and protocol: two relative captions per (reference, target) pair of dresses, shirts, tops.

Layout under ``root`` (categories dress, shirt, toptee; splits train, val: test has no public targets)::

    captions/cap.<category>.<split>.json       [{"candidate": id, "target": id, "captions": [c0, c1]}, ...]
    image_splits/split.<category>.<split>.json [id, ...]   (the val one is the category's gallery)
    images/<id>.png                            or .jpg; or images/<category>/<id>.*; or `image_root`

Protocol (the defaults): each val query searches the whole ``split.<category>.val.json`` (not only the
images of val pairs: higher, non-comparable numbers); the reference is not excluded; Recall@K is the hit
rate. Captions lose stray surrounding whitespace (182 dress-val captions have some).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple

import torch

from cir_lightning.data.datasets import (
    GalleryDataset,
    GalleryItem,
    Query,
    QueryDataset,
    Triplet,
    TripletDataset,
)
from cir_lightning.data.missing import OnMissing, handle_missing
from cir_lightning.data.sampling import EpochIndex
from cir_lightning.errors import CIRConfigError, CIRDataError
from cir_lightning.messages import first_few, json_type, short_repr
from cir_lightning.reading import read_json_list

__all__ = ["CATEGORIES", "EVAL_KS", "Category", "FashionIQFiles", "QueryText", "make_query_text", "make_train_text"]

Category = Literal["dress", "shirt", "toptee"]
QueryText = Literal["clip4cir", "bge_vl", "e5v", "both_orders"]
CATEGORIES: tuple[Category, ...] = ("dress", "shirt", "toptee")
EVAL_KS = (1, 5, 10, 20, 50, 100)
"""Cut-offs of Recall@K (hit rate) and MRR@K on every category (those of the BGE-VL script)."""
_EXTENSIONS = (".png", ".jpg", ".jpeg")  # preferred first when an id has several files


def _clean(caption: str) -> str:
    return caption.strip(".?, ")


def make_train_text(c0: str, c1: str, form: int = 0) -> str:
    """Training text ``form`` 0-3: "C0 and c1", "C1 and c0", "C0", "C1" (CLIP4Cir's augmentation).

    Example:
        >>> from cir_lightning.data.layouts.fashioniq import make_train_text
        >>> [make_train_text("is red.", "has sleeves?", i) for i in range(4)]
        ['Is red and has sleeves', 'Has sleeves and is red', 'Is red', 'Has sleeves']
    """
    a, b = _clean(c0), _clean(c1)
    return (f"{a.capitalize()} and {b}", f"{b.capitalize()} and {a}", a.capitalize(), b.capitalize())[form]


def make_query_text(c0: str, c1: str, form: QueryText = "clip4cir") -> str | tuple[str, str]:
    """The text of a val query: CLIP4Cir's, the BGE-VL eval files', E5-V's, or SEARLE's two orders to average.

    Example:
        >>> from cir_lightning.data.layouts.fashioniq import make_query_text
        >>> make_query_text("is red.", "has sleeves?")
        'Is red and has sleeves'
        >>> [make_query_text("is red.", "has sleeves?", form) for form in ("bge_vl", "e5v")]
        ['is red., and has sleeves?', ('is red, has sleeves', 'has sleeves, is red')]
        >>> make_query_text("is red.", "has sleeves?", "both_orders")
        ('is red and has sleeves', 'has sleeves and is red')
    """
    a, b = _clean(c0), _clean(c1)
    forms = {"clip4cir": make_train_text(c0, c1, 0), "bge_vl": f"{c0}, and {c1}",
             "e5v": (f"{a}, {b}", f"{b}, {a}"),  # kongds/E5-V retrieval.py; its presets sum the two
             "both_orders": (f"{a} and {b}", f"{b} and {a}")}  # as SEARLE: stripped, not capitalised
    if form in forms:
        return forms[form]
    raise CIRConfigError(f"`query_text` must be one of clip4cir, bge_vl, e5v, both_orders, got {form!r}")


class _Entry(NamedTuple):
    index: int  # 0-based position in the caption file (query ids are ``<category>-<index>``)
    reference: str
    target: str
    captions: tuple[str, str]
    line: int = 0  # where the entry starts in the file

    @property
    def where(self) -> str:
        """``entry 12 (candidate 'B00..')``: counted from 1, as in messages."""
        return f"entry {self.index + 1} (candidate {self.reference!r})"


def _read_list(path: Path, category: str) -> list[tuple[int, Any]]:
    return read_json_list(path, "file", "`root` must be the FashionIQ folder (with captions/ and image_splits/)"
                          f"; without the files of {category!r}, leave it out of `categories`")


def _image_id(v: object, path: Path, line: int, where: str, field: str) -> str:
    if not isinstance(v, str) or not v.strip() or "\0" in v or Path(v).name != v or v in (".", ".."):
        raise CIRDataError(f"{where}: `{field}` must be an image id (a file name without folders or "
                           f"extension), got {short_repr(v)}", path, line)
    return v


def _read_captions(path: Path, category: str) -> list[_Entry]:
    """The entries of a ``cap.<category>.<split>.json`` file, captions stripped of surrounding whitespace."""
    entries = []
    for i, (line, e) in enumerate(_read_list(path, category)):
        where = f"entry {i + 1}"
        if not isinstance(e, dict):
            raise CIRDataError(f"{where}: expected a JSON object, got {json_type(e)}", path, line)
        reference = _image_id(e.get("candidate"), path, line, where, "candidate")
        where = f"{where} (candidate {reference!r})"
        target = _image_id(e.get("target"), path, line, where, "target")
        caps = e.get("captions")
        if not (isinstance(caps, list) and len(caps) == 2 and all(isinstance(c, str) for c in caps)):
            raise CIRDataError(f"{where}: `captions` must be a list of two strings, got {short_repr(caps)}",
                               path, line)
        if not any(_clean(c.strip()) for c in caps):  # one blank is kept: the official files hold 17 (CLIP4Cir's too)
            raise CIRDataError(f"{where}: both captions are blank, so the query has no text", path, line)
        entries.append(_Entry(i, reference, target, (caps[0].strip(), caps[1].strip()), line))
    if not entries:
        raise CIRDataError("no entries", path)
    return entries


def _read_gallery_ids(path: Path, category: str) -> tuple[list[str], list[int]]:
    """The ids of a ``split.<category>.<split>.json`` file, each once, and the line of each."""
    listed = _read_list(path, category)
    ids = [_image_id(v, path, line, f"entry {i + 1}", "image id") for i, (line, v) in enumerate(listed)]
    first: dict[str, int] = {}
    for i, v in enumerate(ids):
        if (j := first.setdefault(v, i)) != i:
            raise CIRDataError(f"entry {i + 1}: duplicate image id {v!r} (first: entry {j + 1}, line "
                               f"{listed[j][0]})", path, listed[i][0])
    if not ids:
        raise CIRDataError("no image ids: the gallery would be empty", path)
    return ids, [line for line, _ in listed]


@dataclass(frozen=True)
class _CaptionedTriplet(Triplet):
    """A training triplet that keeps both captions, so that its text can be drawn anew each time."""

    captions: tuple[str, str] = ("", "")


class _AugmentedTriplets(TripletDataset):
    """Training triplets whose text is one of ``make_train_text``'s four forms, equally likely, drawn at every access
    from the order's seed, epoch and row (``EpochIndex``: resumed or DDP runs draw alike; a plain ``int``: torch's)."""

    def __getitem__(self, index: int) -> dict[str, Any]:
        draws = index.generator() if isinstance(index, EpochIndex) else None
        form = int(torch.randint(4, (), generator=draws))
        return {**super().__getitem__(index), "modification": make_train_text(*self.records[index].captions, form)}


class FashionIQFiles:
    """The FashionIQ files under ``root`` and the images under ``image_root``, read into datasets.

    Args:
        root: the FashionIQ folder (``captions/``, ``image_splits/``).
        image_root: the images folder; ids are looked up as ``<id>.png``, ``.jpg`` or ``.jpeg``, in
            ``<image_root>/<category>/`` first, then in ``<image_root>``.
        on_missing: images that do not exist: ``error`` or ``drop`` what needs them, with a warning.
        max_short_edge: shrink images whose short edge is longer than this, when decoded.

    Example:
        >>> from cir_lightning.data.layouts.fashioniq import FashionIQFiles
        >>> FashionIQFiles(Path("fiq"), Path("fiq/images")).image_path("B001", "dress").as_posix()  # no file yet
        'fiq/images/B001.png'
    """

    def __init__(self, root: Path, image_root: Path, on_missing: OnMissing = "error",
                 max_short_edge: int | None = None) -> None:
        self.root, self.image_root, self.on_missing, self.max_short_edge = root, image_root, on_missing, max_short_edge
        self._listings: dict[Path, tuple[dict[str, Path], ...]] = {}

    def _listing(self, folder: Path) -> tuple[dict[str, Path], ...]:
        """The image files of ``folder`` by id, and apart from them the other entries with an image's name
        (folders, broken links): those are only named in messages, never taken for an image."""
        if folder not in self._listings:
            best: tuple[dict[str, tuple[int, str]], dict[str, tuple[int, str]]] = ({}, {})
            try:
                entries = list(os.scandir(folder)) if folder.is_dir() else []
            except OSError as err:
                raise CIRDataError(f"cannot list the images folder: {err.strerror or err}", folder) from None
            for entry in entries:
                stem, ext = os.path.splitext(entry.name)
                if ext.lower() in _EXTENSIONS:
                    try:
                        regular = entry.is_file()  # follows symbolic links
                    except OSError:
                        regular = False
                    rank = (_EXTENSIONS.index(ext.lower()), entry.name)
                    found = best[0 if regular else 1]
                    found[stem] = min(found.get(stem, rank), rank)
            self._listings[folder] = tuple({stem: folder / name for stem, (_, name) in b.items()} for b in best)
        return self._listings[folder]

    def image_path(self, image_id: str, category: str) -> Path:
        """The file of ``image_id`` (``<image_root>/<category>/`` first, ``.png`` before ``.jpg``); where
        there is none, a folder or broken link of that name, else ``<image_root>/<id>.png`` (reported as
        missing or as not an image file)."""
        for kind in (0, 1):
            for folder in (self.image_root / category, self.image_root):
                if image_id in self._listing(folder)[kind]:
                    return self._listing(folder)[kind][image_id]
        return self.image_root / f"{image_id}.png"

    def file(self, kind: Literal["cap", "split"], category: str, split: str) -> Path:
        """``captions/cap.<category>.<split>.json`` or ``image_splits/split.<category>.<split>.json``."""
        return self.root / ("captions" if kind == "cap" else "image_splits") / f"{kind}.{category}.{split}.json"

    def triplets(self, categories: Sequence[str], augment: bool) -> TripletDataset:
        """The training triplets of ``categories``, mixed; ``augment``: text drawn per access."""
        records = []
        for cat in categories:
            path = self.file("cap", cat, "train")
            records += [_CaptionedTriplet(self.image_path(e.reference, cat), self.image_path(e.target, cat),
                                          make_train_text(*e.captions), f"{path}:{e.line}: {e.where}",
                                          sample_id=f"{cat}-{e.index}", captions=e.captions)
                        for e in _read_captions(path, cat)]
        records = handle_missing(records, lambda r: (r.reference, r.target), lambda r: r.source,
                                 what="training triplets", where=self.root / "captions", on_missing=self.on_missing)
        return (_AugmentedTriplets if augment else TripletDataset)(records, self.max_short_edge)

    def val_set(self, cat: str, query_text: QueryText, exclude_reference: bool) -> tuple[QueryDataset, GalleryDataset]:
        """The val queries of category ``cat`` and its whole val gallery (metrics: Recall@K, MRR@K at
        ``EVAL_KS``); ``exclude_reference`` removes each query's reference from its ranking."""
        cap_path, split_path = self.file("cap", cat, "val"), self.file("split", cat, "val")
        ids, lines = _read_gallery_ids(split_path, cat)
        entries = _read_captions(cap_path, cat)
        known = set(ids)
        absent = [f"line {e.line} {e.where}: {field} {v!r}" for e in entries
                  for field, v in (("target", e.target), ("candidate", e.reference)) if v not in known]
        if absent:
            raise CIRDataError(f"{len(absent)} image id(s) of the queries are not in the gallery {split_path} "
                               "(do the caption and split files match?); a target outside the gallery could "
                               f"never be retrieved: {first_few(absent)}", cap_path)
        gallery = [GalleryItem(v, self.image_path(v, cat), f"{split_path}:{lines[i]}: entry {i + 1} ({v!r})")
                   for i, v in enumerate(ids)]
        gallery = handle_missing(gallery, lambda g: [g.path], lambda g: g.image_id, where=split_path,
                                 what=f"val gallery images of {cat}", on_missing=self.on_missing)
        entries = handle_missing(entries, lambda e: [self.image_path(e.reference, cat), self.image_path(e.target, cat)],
                                 lambda e: f"line {e.line} {e.where}", what=f"val queries of {cat}", where=cap_path,
                                 on_missing=self.on_missing)
        row = {g.image_id: i for i, g in enumerate(gallery)}
        queries = [Query(f"{cat}-{e.index}", self.image_path(e.reference, cat),
                         make_query_text(*e.captions, query_text), (row[e.target],),
                         f"{cap_path}:{e.line}: {e.where}", reference_id=e.reference,
                         excluded=(row[e.reference],) if exclude_reference and e.reference != e.target else ())
                   for e in entries]
        metrics = {"recall": list(EVAL_KS), "mrr": list(EVAL_KS)}
        return (QueryDataset(queries, self.max_short_edge, name=cat, metrics=metrics),
                GalleryDataset(gallery, self.max_short_edge))
