"""Map-style datasets of raw CIR samples: decoded images, texts and row indices, no model tensors.

The records they hold are parsed and checked once, when a DataModule is set up; images are decoded
lazily in ``__getitem__`` (so in DataLoader workers). Turning samples into model inputs is the job of
the collator the model hands to the DataModule (see ``CIRDataModule.connect``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from cir_lightning.data.images import load_image


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
    modification: str
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


class TripletDataset(Dataset):
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

    def __getitem__(self, index: int) -> dict[str, Any]:
        r = self.records[index]
        sample = {
            "index": index,
            "reference_image": load_image(r.reference, self.max_short_edge, r.source),
            "modification": r.modification,
            "target_image": load_image(r.target, self.max_short_edge, r.source),
            "target_key": str(r.target),
        }
        if self.with_captions:
            sample["reference_caption"] = r.reference_caption
            sample["target_caption"] = r.target_caption
        return sample


class QueryDataset(Dataset):
    """Evaluation queries; a sample is ``{"index", "reference_image", "modification"}``.

    ``name`` labels the subset in metric names ("dress" gives ``val/dress/Recall@10``; "" none).
    The ground truth stays here, not in the batches: ``positives[i]`` and ``excluded[i]`` are the gallery
    rows of query ``i``, read by the evaluator once all embeddings are gathered.
    """

    def __init__(self, records: list[Query], max_short_edge: int | None = None, name: str = "") -> None:
        self.records = records
        self.max_short_edge = max_short_edge
        self.name = name

    @property
    def ids(self) -> list[str]:
        return [r.query_id for r in self.records]

    @property
    def positives(self) -> list[tuple[int, ...]]:
        return [r.positives for r in self.records]

    @property
    def excluded(self) -> list[tuple[int, ...]]:
        return [r.excluded for r in self.records]

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        r = self.records[index]
        return {
            "index": index,
            "reference_image": load_image(r.reference, self.max_short_edge, r.source),
            "modification": r.modification,
        }


class GalleryDataset(Dataset):
    """Gallery images; a sample is ``{"index", "image"}``, ``ids[i]`` is the id of row ``i``."""

    def __init__(self, records: list[GalleryItem], max_short_edge: int | None = None) -> None:
        self.records = records
        self.max_short_edge = max_short_edge

    @property
    def ids(self) -> list[str]:
        return [r.image_id for r in self.records]

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        r = self.records[index]
        return {"index": index, "image": load_image(r.path, self.max_short_edge, r.source)}
