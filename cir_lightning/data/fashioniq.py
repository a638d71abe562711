"""FashionIQ: two relative captions per (reference, target) pair of dresses, shirts and tops/tees.

The official layout under ``root``::

    captions/cap.<category>.<split>.json       [{"candidate": id, "target": id, "captions": [c0, c1]}, ...]
    image_splits/split.<category>.<split>.json [id, ...]   (the val one is the category's gallery)
    images/<id>.png                            or .jpg; or images/<category>/<id>.*; or `image_root`

for the categories dress, shirt, toptee and the splits train, val (test has no public targets).

Protocol (the standard ones are the defaults): training mixes the selected categories; validation is
per category, each query searching the whole ``split.<category>.val.json`` (not only the images of val
pairs, which gives higher, non-comparable numbers); the reference is not excluded; Recall@K is the hit
rate. Test labels are not public, so ``test`` (and ``predict``) use the val split, as papers do.
Captions lose stray surrounding whitespace (182 dress-val captions have some).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple

import torch
from lightning.pytorch.utilities import rank_zero_info

from cir_lightning.data.base import CIRDataModule
from cir_lightning.data.datasets import (
    GalleryDataset,
    GalleryItem,
    Query,
    QueryDataset,
    Triplet,
    TripletDataset,
)
from cir_lightning.data.images import DEFAULT_MAX_PIXELS
from cir_lightning.data.missing import OnMissing, handle_missing
from cir_lightning.errors import CIRConfigError, CIRDataError
from cir_lightning.files import json_type, read_json_list, short_repr

Category = Literal["dress", "shirt", "toptee"]
QueryText = Literal["clip4cir", "bge_vl", "both_orders"]
CATEGORIES: tuple[Category, ...] = ("dress", "shirt", "toptee")
EVAL_KS = (1, 5, 10, 20, 50, 100)
"""Cut-offs of Recall@K (hit rate) and MRR@K on every category (those of the BGE-VL script)."""
_EXTENSIONS = (".png", ".jpg", ".jpeg")  # preferred first when an id has several files
_SHOW = 5


def _clean(caption: str) -> str:
    return caption.strip(".?, ")


def make_train_text(c0: str, c1: str, form: int = 0) -> str:
    """Training text ``form`` 0-3: "C0 and c1", "C1 and c0", "C0", "C1" (CLIP4Cir's augmentation).

    Example:
        >>> [make_train_text("is red.", "has sleeves?", i) for i in range(4)]
        ['Is red and has sleeves', 'Has sleeves and is red', 'Is red', 'Has sleeves']
    """
    a, b = _clean(c0), _clean(c1)
    return (f"{a.capitalize()} and {b}", f"{b.capitalize()} and {a}", a.capitalize(), b.capitalize())[form]


def make_query_text(c0: str, c1: str, form: QueryText = "clip4cir") -> str | tuple[str, str]:
    """The text of a val query: CLIP4Cir's, the BGE-VL eval files', or SEARLE's two orders to average.

    Example:
        >>> make_query_text("is red.", "has sleeves?")
        'Is red and has sleeves'
        >>> make_query_text("is red.", "has sleeves?", "bge_vl")
        'is red., and has sleeves?'
        >>> make_query_text("is red.", "has sleeves?", "both_orders")
        ('is red and has sleeves', 'has sleeves and is red')
    """
    if form == "clip4cir":
        return make_train_text(c0, c1, 0)
    if form == "bge_vl":
        return f"{c0}, and {c1}"
    if form == "both_orders":  # as SEARLE: stripped, not capitalised
        return f"{_clean(c0)} and {_clean(c1)}", f"{_clean(c1)} and {_clean(c0)}"
    raise CIRConfigError(f"`query_text` must be one of clip4cir, bge_vl, both_orders, got {form!r}")


def average_over_categories(metrics: dict[str, float], categories: Sequence[str]) -> dict[str, float]:
    """``average/<metric>`` over ``categories`` for each metric all of them have, plus
    ``average/Recall@10+50`` = (average R@10 + average R@50) / 2; nothing unless every category is there.

    Example:
        >>> m = {"dress/Recall@10": 0.2, "dress/Recall@50": 0.4,
        ...      "shirt/Recall@10": 0.3, "shirt/Recall@50": 0.6}
        >>> {k: round(v, 3) for k, v in average_over_categories(m, ["dress", "shirt"]).items()}
        {'average/Recall@10': 0.25, 'average/Recall@50': 0.5, 'average/Recall@10+50': 0.375}
        >>> average_over_categories(m, ["dress", "toptee"])
        {}
    """
    per = [{k[len(c) + 1:]: v for k, v in metrics.items() if k.startswith(f"{c}/")} for c in categories]
    if not per or not all(per):
        return {}
    common = [name for name in per[0] if all(name in p for p in per)]
    out = {f"average/{name}": sum(p[name] for p in per) / len(per) for name in common}
    if "average/Recall@10" in out and "average/Recall@50" in out:
        out["average/Recall@10+50"] = (out["average/Recall@10"] + out["average/Recall@50"]) / 2
    return out


def summary_lines(metrics: dict[str, float], categories: Sequence[str]) -> list[str]:
    """The BGE-VL script's summary: ``<category>: R@10 / R@50`` in percent, then ``overall`` (their mean).

    Example:
        >>> summary_lines({"dress/Recall@10": 0.45671, "dress/Recall@50": 0.6789}, ["dress"])
        ['dress: 45.67 / 67.89', 'overall: 45.67 / 67.89']
    """
    rows = [(c, metrics[f"{c}/Recall@10"], metrics[f"{c}/Recall@50"]) for c in categories
            if f"{c}/Recall@10" in metrics and f"{c}/Recall@50" in metrics]
    lines = [f"{c}: {100 * r10:.2f} / {100 * r50:.2f}" for c, r10, r50 in rows]
    if rows and len(rows) == len(categories):
        lines.append(f"overall: {100 * sum(r[1] for r in rows) / len(rows):.2f} / "
                     f"{100 * sum(r[2] for r in rows) / len(rows):.2f}")
    return lines


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
    """``(line, element)`` of a FashionIQ JSON list file."""
    return read_json_list(path, "file", "`root` must be the FashionIQ folder (with captions/ and image_splits/)"
                          f"; without the files of {category!r}, leave it out of `categories`")


def _image_id(value: object, path: Path, line: int, where: str, field: str) -> str:
    if not isinstance(value, str) or not value.strip() or Path(value).name != value or value in (".", ".."):
        raise CIRDataError(f"{where}: `{field}` must be an image id (a file name without folders or "
                           f"extension), got {short_repr(value)}", path, line)
    return value


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
        entries.append(_Entry(i, reference, target, (caps[0].strip(), caps[1].strip()), line))
    if not entries:
        raise CIRDataError("no entries", path)
    return entries


@dataclass(frozen=True)
class _CaptionedTriplet(Triplet):
    """A training triplet that keeps both captions, so that its text can be drawn anew each time."""

    captions: tuple[str, str] = ("", "")


class _AugmentedTriplets(TripletDataset):
    """Training triplets whose text is one of ``make_train_text``'s four forms, drawn with equal probability
    at every access from torch's generator (reproducible under ``seed_everything(workers=True)``)."""

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = super().__getitem__(index)
        sample["modification"] = make_train_text(*self.records[index].captions, int(torch.randint(4, ())))
        return sample


class FashionIQDataModule(CIRDataModule):
    """FashionIQ in its official layout: training on the mixed categories, validation per category.

    Metrics per category (``val/dress/Recall@10``): Recall@K (hit rate) and MRR@K at ``EVAL_KS``;
    ``summarize`` adds their mean over the categories and ``report`` the BGE-VL summary lines.

    Args:
        root: the FashionIQ folder (``captions/``, ``image_splits/``, ``images/``).
        image_root: the images folder (default ``<root>/images``); ids are looked up as ``<id>.png``,
            ``.jpg`` or ``.jpeg``, in ``<image_root>/<category>/`` first, then in ``<image_root>``.
        categories: the categories to train and validate on.
        query_text: text of a val query from its captions c0, c1: ``clip4cir`` (default, CLIP4Cir / SPRC:
            "C0 and c1" with ``.?, `` stripped, first letter capitalised), ``bge_vl`` ("c0, and c1" as in the
            BGE-VL eval files: punctuation kept; like every form it starts from the captions with stray
            surrounding whitespace removed, as the protocol asks) or ``both_orders`` (SEARLE: "c0 and c1" and "c1 and c0", stripped, not
            capitalised; the model averages the two embeddings).
        exclude_reference: remove each query's reference from its ranking (CoVR); not the standard.
        train_augment: training text drawn per access among "C0 and c1", "C1 and c0", "C0", "C1"
            (CLIP4Cir); off: always "C0 and c1".
        on_missing: images that do not exist: ``error`` (default) or ``drop`` the samples and gallery
            items needing them, with a warning (the numbers are then not comparable).
        batch_size: training batch size per process.
        eval_batch_size: evaluation batch size (default: ``batch_size``).
        num_workers: DataLoader worker processes.
        max_short_edge: shrink images whose short edge is longer than this, when decoded.
        pin_memory: pin host memory of batches.
        max_image_pixels: refuse images with more pixels than this (read from the header, before decoding);
            ``None``: no limit (default: Pillow's limit).

    Example:
        >>> import tempfile
        >>> from PIL import Image
        >>> root = Path(tempfile.mkdtemp())
        >>> for sub in ("captions", "image_splits", "images"): (root / sub).mkdir()
        >>> for name in "abc": Image.new("RGB", (8, 8)).save(root / "images" / f"{name}.jpg")
        >>> _ = (root / "image_splits/split.dress.val.json").write_text('["a", "b", "c"]')
        >>> _ = (root / "captions/cap.dress.val.json").write_text(
        ...     '[{"candidate": "a", "target": "b", "captions": ["is red.", " has sleeves "]}]')
        >>> dm = FashionIQDataModule(str(root), categories=["dress"])
        >>> dm.setup("validate")
        >>> queries, gallery = dm.val_sets[0]
        >>> queries.name, queries.records[0].modification, queries.positives, gallery.ids
        ('dress', 'Is red and has sleeves', [(1,)], ['a', 'b', 'c'])
    """

    def __init__(
        self,
        root: str,
        image_root: str | None = None,
        categories: Sequence[Category] = CATEGORIES,
        query_text: QueryText = "clip4cir",
        exclude_reference: bool = False,
        train_augment: bool = True,
        on_missing: OnMissing = "error",
        batch_size: int = 16,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        max_short_edge: int | None = None,
        pin_memory: bool = False,
        max_image_pixels: int | None = DEFAULT_MAX_PIXELS,
    ) -> None:
        super().__init__(batch_size=batch_size, eval_batch_size=eval_batch_size, num_workers=num_workers,
                         max_short_edge=max_short_edge, pin_memory=pin_memory, max_image_pixels=max_image_pixels)
        self.save_hyperparameters()
        unknown = [c for c in categories if c not in CATEGORIES]
        if not categories or unknown or len(set(categories)) != len(categories):
            raise CIRConfigError(f"`categories` must be distinct names among {list(CATEGORIES)}, "
                                 f"got {list(categories)}")
        make_query_text("", "", query_text)  # an unknown form fails here, not at set-up
        self.root = Path(root)
        self.image_root = Path(image_root) if image_root else self.root / "images"
        self.categories = list(categories)
        self.query_text = query_text
        self.exclude_reference = exclude_reference
        self.train_augment = train_augment
        self.on_missing = on_missing
        self._listings: dict[Path, tuple[dict[str, Path], ...]] = {}

    def _listing(self, folder: Path) -> tuple[dict[str, Path], dict[str, Path]]:
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
        folders = (self.image_root / category, self.image_root)
        for kind in (0, 1):
            for folder in folders:
                if image_id in self._listing(folder)[kind]:
                    return self._listing(folder)[kind][image_id]
        return self.image_root / f"{image_id}.png"

    def _file(self, kind: str, category: str, split: str) -> Path:
        folder = "captions" if kind == "cap" else "image_splits"
        return self.root / folder / f"{kind}.{category}.{split}.json"

    def _train_set(self) -> TripletDataset:
        records = []
        for cat in self.categories:
            path = self._file("cap", cat, "train")
            records += [_CaptionedTriplet(self.image_path(e.reference, cat), self.image_path(e.target, cat),
                                         make_train_text(*e.captions), f"{path}:{e.line}: {e.where}",
                                         sample_id=f"{cat}-{e.index}", captions=e.captions)
                        for e in _read_captions(path, cat)]
        records = handle_missing(records, lambda r: (r.reference, r.target), lambda r: r.source,
                                 what="training triplets", where=self.root / "captions",
                                 on_missing=self.on_missing)
        cls = _AugmentedTriplets if self.train_augment else TripletDataset
        return cls(records, self.max_short_edge)

    def _eval_set(self, cat: str) -> tuple[QueryDataset, GalleryDataset]:
        cap_path, split_path = self._file("cap", cat, "val"), self._file("split", cat, "val")
        listed = _read_list(split_path, cat)
        ids = [_image_id(v, split_path, line, f"entry {i + 1}", "image id") for i, (line, v) in enumerate(listed)]
        row: dict[str, int] = {}
        for i, v in enumerate(ids):
            if row.setdefault(v, i) != i:
                first = row[v]
                raise CIRDataError(f"entry {i + 1}: duplicate image id {v!r} (first: entry {first + 1}, line "
                                   f"{listed[first][0]})", split_path, listed[i][0])
        if not ids:
            raise CIRDataError("no image ids: the gallery would be empty", split_path)
        entries = _read_captions(cap_path, cat)
        absent = [f"line {e.line} {e.where}: {field} {v!r}" for e in entries
                  for field, v in (("target", e.target), ("candidate", e.reference)) if v not in row]
        if absent:
            more = f"; ... and {len(absent) - _SHOW} more" if len(absent) > _SHOW else ""
            raise CIRDataError(f"{len(absent)} image id(s) of the queries are not in the gallery {split_path} "
                               "(do the caption and split files match?); a target outside the gallery could "
                               f"never be retrieved: {'; '.join(absent[:_SHOW])}{more}", cap_path)
        gallery = [GalleryItem(v, self.image_path(v, cat), f"{split_path}:{listed[i][0]}: entry {i + 1} ({v!r})")
                   for i, v in enumerate(ids)]
        gallery = handle_missing(gallery, lambda g: [g.path], lambda g: g.image_id, where=split_path,
                                 what=f"val gallery images of {cat}", on_missing=self.on_missing)
        entries = handle_missing(entries, lambda e: [self.image_path(e.reference, cat),
                                                     self.image_path(e.target, cat)],
                                 lambda e: f"line {e.line} {e.where}", what=f"val queries of {cat}", where=cap_path,
                                 on_missing=self.on_missing)
        row = {g.image_id: i for i, g in enumerate(gallery)}
        exclude = self.exclude_reference
        queries = [Query(f"{cat}-{e.index}", self.image_path(e.reference, cat),
                         make_query_text(*e.captions, self.query_text), (row[e.target],),
                         f"{cap_path}:{e.line}: {e.where}", reference_id=e.reference,
                         excluded=(row[e.reference],) if exclude and e.reference != e.target else ())
                   for e in entries]
        metrics = {"recall": list(EVAL_KS), "mrr": list(EVAL_KS)}
        return (QueryDataset(queries, self.max_short_edge, name=cat, metrics=metrics),
                GalleryDataset(gallery, self.max_short_edge))

    def setup(self, stage: str) -> None:
        if not self.image_root.is_dir():
            raise CIRDataError("the images folder does not exist; set `image_root` (or `root`)",
                               self.image_root)
        if stage == "fit" and self.train_set is None:
            self.train_set = self._train_set()
        if not self.val_sets:
            self.val_sets = [self._eval_set(cat) for cat in self.categories]
        if stage == "test" and not self.test_sets:
            rank_zero_info("FashionIQ's test labels are not public: `test` evaluates the val split")
            self.test_sets = self.val_sets

    def summarize(self, metrics: dict[str, float]) -> dict[str, float]:
        """Averages over the categories (``average/Recall@10``, ``average/Recall@10+50``, ...), given the
        per-category metrics without stage prefix; empty unless every selected category is there."""
        return average_over_categories(metrics, self.categories)

    def report(self, metrics: dict[str, float]) -> str:
        """The BGE-VL summary block: ``dress: 45.67 / 67.89`` per category, then ``overall`` (R@10 / R@50
        in percent)."""
        return "\n".join(summary_lines(metrics, self.categories))
