"""The shared base of every cir_lightning DataModule: loaders, batch sizes and the model's collator.

A DataModule here only knows raw samples. The model's pre-processing (prompts, tokenizer, image
processor) reaches it through ``connect(collator)``, which ``CIRModule`` calls in its ``setup``; the
collator then runs in the DataLoader workers, so decoding and processing never block the training
process. A collator is any object with three methods, each taking a list of samples:

- ``triplets(samples)`` for training batches,
- ``queries(samples)`` for evaluation queries,
- ``gallery(samples)`` for gallery images.

Without a collator the loaders yield plain lists of sample dicts, handy for looking at the data.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from cir_lightning.data.datasets import CachedGallery, GalleryDataset, QueryDataset, TripletDataset
from cir_lightning.errors import CIRConfigError


class Collator(Protocol):
    """What a model hands to ``CIRDataModule.connect``."""

    def triplets(self, samples: list[dict[str, Any]]) -> Any: ...
    def queries(self, samples: list[dict[str, Any]]) -> Any: ...
    def gallery(self, samples: list[dict[str, Any]]) -> Any: ...


CachedGalleries = Callable[[str, list[tuple[QueryDataset, GalleryDataset]]], set[int]]
"""``(stage, sets) -> indices of the subsets whose gallery embeddings the model already has``."""


def _as_list(samples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return samples


class CIRDataModule(pl.LightningDataModule):
    """Base class: subclasses fill ``train_set``, ``val_sets`` and ``test_sets`` in ``setup``.

    ``val_sets`` / ``test_sets`` are lists of ``(queries, gallery)`` pairs; each gives two loaders in the
    order queries, gallery (so ``dataloader_idx`` 2*i is the queries of subset i, 2*i+1 its gallery).

    Args:
        batch_size: training batch size per process.
        eval_batch_size: batch size of the evaluation loaders (default: ``batch_size``).
        num_workers: DataLoader worker processes; images are decoded and processed there.
        max_short_edge: shrink images whose short edge is longer than this, when decoded.
        pin_memory: pin host memory of batches (useful on GPUs).
    """

    def __init__(self, batch_size: int = 16, eval_batch_size: int | None = None, num_workers: int = 0,
                 max_short_edge: int | None = None, pin_memory: bool = False) -> None:
        super().__init__()
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.max_short_edge = max_short_edge
        self.pin_memory = pin_memory
        self.collator: Collator | None = None
        self.cached_galleries: CachedGalleries | None = None
        self.train_set: TripletDataset | None = None
        self.val_sets: list[tuple[QueryDataset, GalleryDataset]] = []
        self.test_sets: list[tuple[QueryDataset, GalleryDataset]] = []

    def connect(self, collator: Collator, cached_galleries: CachedGalleries | None = None) -> None:
        """Use ``collator`` (from the model) to turn samples into batches, in the loader workers.

        ``cached_galleries(stage, sets)``, asked once when the evaluation loaders are made, returns the
        subsets whose gallery embeddings the model already has (from a cache): their gallery loaders
        then yield nothing, so no gallery image is decoded.
        """
        self.collator = collator
        self.cached_galleries = cached_galleries

    def _loader(self, dataset: Dataset, collate: Any, batch_size: int, shuffle: bool,
                sampler: Sampler | None = None) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle and sampler is None,
            sampler=sampler,
            drop_last=shuffle,
            num_workers=self.num_workers,
            collate_fn=collate,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
        )

    def _eval_loaders(self, sets: list[tuple[QueryDataset, GalleryDataset]], stage: str) -> list[DataLoader]:
        c = self.collator
        cached = self.cached_galleries(stage, sets) if self.cached_galleries is not None else set()
        loaders = []
        for s, (queries, gallery) in enumerate(sets):
            if s in cached:
                gallery = CachedGallery(gallery)
            loaders.append(self._loader(queries, c.queries if c else _as_list, self.eval_batch_size, False))
            loaders.append(self._loader(gallery, c.gallery if c else _as_list, self.eval_batch_size, False))
        return loaders

    def train_dataloader(self) -> DataLoader:
        if self.train_set is None:
            raise CIRConfigError(f"{type(self).__name__} has no training data: set its training file "
                                 "(`train_file` for JSONL data)")
        collate = self.collator.triplets if self.collator else _as_list
        return self._loader(self.train_set, collate, self.batch_size, True, self._train_sampler())

    def _train_sampler(self) -> Sampler | None:
        """In one process, an order that depends only on the seed and the epoch (Lightning calls
        ``set_epoch``), not on the global random state, so ``fit --ckpt_path`` resumes with exactly the
        batches it would have seen: a plain shuffling loader draws from the global generator, which is
        not checkpointed. Under DDP Lightning puts in its own seeded distributed sampler (None here)."""
        trainer = getattr(self, "trainer", None)
        if trainer is not None and trainer.world_size > 1:
            return None
        return DistributedSampler(self.train_set, num_replicas=1, rank=0, shuffle=True, drop_last=True,
                                  seed=torch.initial_seed() % 2**31)

    def val_dataloader(self) -> list[DataLoader]:
        return self._eval_loaders(self.val_sets, "validate")

    def test_dataloader(self) -> list[DataLoader]:
        return self._eval_loaders(self.test_sets, "test")

    def predict_dataloader(self) -> list[DataLoader]:
        return self._eval_loaders(self.test_sets or self.val_sets, "predict")

    def eval_sets(self, stage: str) -> list[tuple[QueryDataset, GalleryDataset]]:
        """The ``(queries, gallery)`` subsets evaluated in ``stage`` ("validate", "test", "predict")."""
        if stage == "test":
            return self.test_sets
        if stage == "predict":
            return self.test_sets or self.val_sets
        return self.val_sets
