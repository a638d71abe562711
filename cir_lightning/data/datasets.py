"""Map-style datasets of raw CIR samples: decoded images, texts and row indices, no model tensors.

The records they hold are parsed and checked once, when a DataModule is set up; images are decoded
lazily in ``__getitem__`` (so in DataLoader workers). Turning samples into model inputs is the job of
the collator the model hands to the DataModule (see ``CIRDataModule.connect``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from cir_lightning.data.images import DEFAULT_MAX_PIXELS, load_image
from cir_lightning.errors import CIRDataError
from cir_lightning.placeholders import refuse_placeholders


class ImageDataset:
    """The declared contract of every dataset that decodes images: it does so with the DataModule's image
    options (``max_short_edge``, and ``max_pixels``, which ``CIRDataModule`` sets from
    ``max_image_pixels`` on every ``ImageDataset`` it loads)."""

    max_short_edge: int | None = None
    max_pixels: int | None = DEFAULT_MAX_PIXELS
    upright: bool = False  # turn by EXIF orientation: the user's own photos (``cir-lightning index``), not benchmarks

    def _image(self, path: Path, source: str) -> Any:
        return load_image(path, self.max_short_edge, source, max_pixels=self.max_pixels, upright=self.upright)


@dataclass(frozen=True)
class Triplet:
    """One training sample: reference image + modification -> target image (captions optional)."""

    reference: Path
    target: Path
    modification: str
    source: str
    sample_id: str | None = None
    reference_caption: str | None = None
    target_caption: str | None = None


@dataclass(frozen=True)
class Query:
    """One evaluation query; ``positives`` and ``excluded`` are row indices into its gallery."""

    query_id: str
    reference: Path
    modification: str | tuple[str, ...]
    positives: tuple[int, ...]
    source: str
    reference_id: str | None = None
    excluded: tuple[int, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class GalleryItem:
    """One gallery image and its id."""

    image_id: str
    path: Path
    source: str


def refuse_shared_images(items: Sequence[GalleryItem]) -> None:
    """Refuse a gallery that lists one image file under two ids: the two would tie in every ranking, so the
    second could never come first (a target behind its twin loses a rank: wrong numbers, silently).

    Example:
        >>> items = [GalleryItem("a", Path("i/1.png"), "g.json:2"), GalleryItem("b", Path("i/1.png"), "g.json:3")]
        >>> refuse_shared_images(items)
        Traceback (most recent call last):
        ...
        cir_lightning.errors.CIRDataError: g.json:3: 'b' is the image `i/1.png` of 'a' too (g.json:2): ...
    """
    first: dict[Path, GalleryItem] = {}
    for item in items:
        other = first.setdefault(item.path, item)
        if other is not item:
            raise CIRDataError(f"{item.source}: {item.image_id!r} is the image `{item.path}` of {other.image_id!r} too "
                               f"({other.source}): the two ids would tie in every ranking, and the second could never "
                               "come first; list each image once")


def refuse_repeated_ids(sets: Sequence[tuple[QueryDataset, GalleryDataset]]) -> None:
    """Refuse, with the lines of both, a query id or a gallery id given twice in one subset: results files,
    rankings and server files name queries and images by id, so the second would hide the first. Checked by
    ``CIRDataModule.setup`` on what ``load_eval_sets`` returns (``data.contract.check_eval_sets``: these pairs), so
    every layout gets it.

    Example:
        >>> q = [Query("q0", Path("a.png"), "red", (0,), "q.csv:2"), Query("q0", Path("b.png"), "blue", (0,), "q.csv:3")]
        >>> refuse_repeated_ids([(QueryDataset(q), GalleryDataset([GalleryItem("a", Path("a.png"), "g")]))])
        Traceback (most recent call last):
        ...
        cir_lightning.errors.CIRDataError: q.csv:3: query id 'q0' is given twice (first at q.csv:2): ...
    """
    for queries, gallery in sets:
        for what, dataset, key in (("query", queries, "query_id"), ("gallery", gallery, "image_id")):
            first: dict[str, Any] = {}
            for r in dataset.records:
                other = first.setdefault(getattr(r, key), r)
                if other is not r:
                    raise CIRDataError(f"{r.source}: {what} id {getattr(r, key)!r} is given twice (first at "
                                       f"{other.source}): results and rankings name {what} items by id, so one "
                                       "would hide the other; give each its own id")


def refuse_placeholder_texts(datasets: Sequence[TripletDataset | QueryDataset | None],
                             placeholders: Sequence[str]) -> None:
    """Refuse, with its file and line, a record whose modification (or caption, where the dataset gives
    captions) holds one of the model's ``placeholders`` (``cir_lightning.placeholders``), before any batch.

    Example:
        >>> record = Query("q0", Path("a.png"), "make it <image> red", (0,), "q.jsonl:4")
        >>> refuse_placeholder_texts([None, QueryDataset([record])], ["<image>"])
        Traceback (most recent call last):
        ...
        cir_lightning.errors.CIRDataError: q.jsonl:4: the modification 'make it <image> red' holds '<image>', ...
    """
    if not placeholders:
        return
    for dataset in datasets:
        captions = isinstance(dataset, TripletDataset) and dataset.with_captions
        for r in dataset.records if dataset is not None else ():
            mods = [r.modification] if isinstance(r.modification, str) else list(r.modification)
            refuse_placeholders(mods, placeholders, "modification", r.source)
            if captions:
                refuse_placeholders([c for c in (r.reference_caption, r.target_caption) if c], placeholders,
                                    "caption", r.source)


class TripletDataset(ImageDataset, Dataset):
    """Training triplets; a sample is ``{"index", "reference_image", "modification", "target_image",
    "target_key"}`` (``target_key`` identifies the target image, so that two triplets with the same
    target count as positives of each other) plus ``"reference_caption"`` / ``"target_caption"`` when ``with_captions`` is set."""

    def __init__(self, records: list[Triplet], max_short_edge: int | None = None,
                 with_captions: bool = False) -> None:
        self.records = records
        self.max_short_edge = max_short_edge
        self.with_captions = with_captions

    def __len__(self) -> int:
        return len(self.records)

    def target_key(self, index: int) -> str:
        """The ``target_key`` of row ``index``'s sample, read from its record (no image is decoded)."""
        return str(self.records[index].target)

    def __getitem__(self, index: int) -> dict[str, Any]:
        r = self.records[index]
        sample = {
            "index": index,
            "reference_image": self._image(r.reference, r.source),
            "modification": r.modification,
            "target_image": self._image(r.target, r.source),
            "target_key": self.target_key(index),
        }
        if self.with_captions:
            sample["reference_caption"] = r.reference_caption
            sample["target_caption"] = r.target_caption
        return sample


class QueryDataset(ImageDataset, Dataset):
    """Evaluation queries; a sample is ``{"index", "reference_image", "modification"}``.

    The ground truth and the protocol stay here, not in the batches; the evaluator reads them once all
    embeddings are gathered (see ``cir_lightning.retrieval.EvalSubset``).

    Args:
        records: the queries; ``positives`` / ``excluded`` are gallery rows.
        max_short_edge: shrink decoded images to this short edge.
        name: labels the subset in metric names ("dress" gives ``val/dress/Recall@10``; "" none).
        metrics: metric family -> cut-offs K (e.g. ``{"recall": [1, 5], "recall_subset": [1, 2, 3]}``);
            None: Recall@K (hit rate) and MRR@K at the module's ``eval_ks``.
        candidates: per query, the gallery rows of its restricted ranking (CIRR's img_set).
        depth: rank at least this many gallery items per query (for prediction files).
        has_ground_truth: False for splits without public labels (``positives`` is then None and only
            rankings are made).

    A record's ``modification`` may be a list of texts: the query is then embedded once per text and
    the embeddings averaged (FashionIQ's both-order averaging).
    """

    def __init__(self, records: list[Query], max_short_edge: int | None = None, name: str = "",
                 metrics: dict[str, list[int]] | None = None, candidates: list[list[int]] | None = None,
                 depth: int = 0, has_ground_truth: bool = True) -> None:
        self.records = records
        self.max_short_edge = max_short_edge
        self.name = name
        self.metrics = metrics
        self.candidates = candidates
        self.depth = depth
        self.has_ground_truth = has_ground_truth

    @property
    def ids(self) -> list[str]:
        return [r.query_id for r in self.records]

    @property
    def positives(self) -> list[tuple[int, ...]] | None:
        return [r.positives for r in self.records] if self.has_ground_truth else None

    @property
    def excluded(self) -> list[tuple[int, ...]]:
        return [r.excluded for r in self.records]

    def digest(self) -> str:
        """SHA-256 of each query's id, reference, text, ground truth, exclusions and candidates: what ties a
        results file or a predict folder to these queries (a text edited in place gives another digest)."""
        rows = [json.dumps([r.query_id, str(r.reference), r.modification, r.positives, r.excluded,
                            self.candidates[i] if self.candidates is not None else None], default=str)
                for i, r in enumerate(self.records)]
        return hashlib.sha256("\n".join(rows).encode()).hexdigest()

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        r = self.records[index]
        return {
            "index": index,
            "reference_image": self._image(r.reference, r.source),
            "modification": r.modification,
        }


class GalleryDataset(ImageDataset, Dataset):
    """Gallery images; a sample is ``{"index", "image"}``, ``ids[i]`` is the id of row ``i``."""

    def __init__(self, records: list[GalleryItem], max_short_edge: int | None = None) -> None:
        self.records = records
        self.max_short_edge = max_short_edge

    @property
    def ids(self) -> list[str]:
        return [r.image_id for r in self.records]

    @property
    def paths(self) -> list[str]:
        """The image file of each row (what an embedding cache of this gallery is checked against)."""
        return [str(r.path) for r in self.records]

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        r = self.records[index]
        return {"index": index, "image": self._image(r.path, r.source)}


class CachedGallery(Dataset):
    """Stands in for a gallery whose embeddings come from a cache: no samples, but its ids and size."""

    def __init__(self, gallery: GalleryDataset) -> None:
        self.gallery = gallery

    @property
    def ids(self) -> list[str]:
        return self.gallery.ids

    @property
    def num_items(self) -> int:
        return len(self.gallery)

    def __len__(self) -> int:
        return 0

    def __getitem__(self, index: int) -> dict[str, Any]:
        raise IndexError("a cached gallery has no samples to load")
