"""What a cir_lightning DataModule and the model exchange: the splits, the evaluation subsets, rankings and
the collator.

A DataModule here only knows raw samples. The model's pre-processing (prompts, tokenizer, image
processor) reaches it through ``CIRDataModule.connect(collator)``, which ``CIRModule`` calls in its ``setup``;
the collator then runs in the DataLoader workers, so decoding and processing never block the training
process. A collator is any object with three methods, each taking a list of samples:

- ``triplets(samples)`` for training batches,
- ``queries(samples)`` for evaluation queries,
- ``gallery(samples)`` for gallery images;

and ``for_subset(name)`` gives the collator of one evaluation subset (itself unless prompts differ per subset).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, Protocol

from cir_lightning.data.datasets import GalleryDataset, QueryDataset

__all__ = ["STAGE_SPLITS", "CachedGalleries", "Collator", "EvalSets", "Rankings", "Split"]

Split = Literal["val", "test"]
EvalSets = list[tuple[QueryDataset, GalleryDataset]]
Rankings = Mapping[str, Mapping[str, list[str]]]
"""Subset name -> query id -> ranked gallery ids."""
STAGE_SPLITS: dict[str, Split] = {"fit": "val", "validate": "val", "test": "test", "predict": "test"}
"""The evaluation split each Lightning stage asks for (``fit`` validates on val; ``predict`` ranks test); the split
whose data it gets is ``CIRDataModule.split_for``'s (FashionIQ's test is its val split)."""


class Collator(Protocol):
    """What a model hands to ``CIRDataModule.connect``; ``placeholders``: what the user's texts may not hold."""

    placeholders: Sequence[str]
    def triplets(self, samples: list[dict[str, Any]]) -> Any: ...
    def queries(self, samples: list[dict[str, Any]]) -> Any: ...
    def gallery(self, samples: list[dict[str, Any]]) -> Any: ...
    def for_subset(self, name: str) -> Collator:
        """The collator for the evaluation subset ``name`` (``QueryDataset.name``; prompts may differ per subset)."""


CachedGalleries = Callable[[Split, EvalSets], set[int]]
"""``(split, sets) -> indices of the subsets whose gallery embeddings the model already has``; ``split`` is the
one the sets are (``CIRDataModule.split_for``), which names their caches."""
