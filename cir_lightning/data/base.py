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

from collections.abc import Callable, Iterator
from typing import Any, Protocol

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from cir_lightning.checks import non_negative_int, positive_int
from cir_lightning.data.datasets import CachedGallery, GalleryDataset, QueryDataset, TripletDataset
from cir_lightning.data.images import DEFAULT_MAX_PIXELS
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


class EpochSampler(Sampler[int]):
    """The training order: a permutation that depends only on the seed and the epoch, resumable mid-epoch.

    A plain shuffling loader draws from the global random generator, which checkpoints do not hold;
    this order is ``torch.randperm(size)`` from a generator seeded with ``seed + epoch`` (the order of
    ``DistributedSampler(num_replicas=1, seed=seed)``), so a resumed run sees exactly the batches it
    would have seen. When an epoch's iteration starts, the epoch is read from ``epoch_fn`` (else the
    value of ``set_epoch``) and the batches of it already trained from ``position_fn`` (Lightning's
    restored loop position: non-zero only when ``fit --ckpt_path`` resumes a checkpoint written in the
    middle of an epoch), and those batches are skipped. ``resume(epoch, batches)`` sets the position
    by hand (``ResumableLoader.load_state_dict``).

    Example:
        >>> s = EpochSampler(6, seed=0, batch_size=2)
        >>> full = list(s)
        >>> s.resume(0, 2)
        >>> list(s) == full[4:], list(s) == full   # skipped once, then whole again
        (True, True)
    """

    def __init__(self, size: int, seed: int, batch_size: int, epoch_fn: Callable[[], int] | None = None,
                 position_fn: Callable[[], int] | None = None) -> None:
        self.size, self.seed, self.batch_size = size, seed, batch_size
        self.epoch = 0
        self.epoch_fn = epoch_fn
        self.position_fn = position_fn
        self._skip: tuple[int, int] | None = None  # (epoch, batches)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def resume(self, epoch: int, batches: int) -> None:
        self._skip = (int(epoch), int(batches))

    def current_epoch(self) -> int:
        return int(self.epoch_fn()) if self.epoch_fn is not None else self.epoch

    def position(self) -> int:
        return int(self.position_fn()) if self.position_fn is not None else 0

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[int]:
        epoch = self.current_epoch()
        generator = torch.Generator()
        generator.manual_seed(self.seed + epoch)
        order = torch.randperm(self.size, generator=generator).tolist()
        skip, self._skip = self._skip, None
        batches = skip[1] if skip is not None and skip[0] == epoch else self.position()
        start = batches * self.batch_size
        if start >= self.size - self.size % self.batch_size:  # that epoch was complete: start it anew
            start = 0
        yield from order[start:]

    def state_dict(self) -> dict[str, int]:
        """Where training is: the epoch and the batches of it already trained."""
        return {"epoch": self.current_epoch(), "batches": self.position()}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.resume(state.get("epoch", 0), state.get("batches", 0))


class ResumableLoader(DataLoader):
    """A training ``DataLoader`` whose position Lightning stores in checkpoints (``state_dict``) and
    restores on ``fit --ckpt_path`` (``load_state_dict``), so a run killed in the middle of an epoch
    resumes with exactly the batches it had not trained yet."""

    def state_dict(self) -> dict[str, int]:
        return self.sampler.state_dict()

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.sampler.load_state_dict(state)


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
        max_image_pixels: refuse images with more pixels than this (their header is read first, so a
            "decompression bomb" is never decoded); ``None``: no limit. Default: Pillow's own limit.
    """

    def __init__(self, batch_size: int = 16, eval_batch_size: int | None = None, num_workers: int = 0,
                 max_short_edge: int | None = None, pin_memory: bool = False,
                 max_image_pixels: int | None = DEFAULT_MAX_PIXELS) -> None:
        super().__init__()
        self.batch_size = positive_int("batch_size", batch_size)
        self.eval_batch_size = positive_int("eval_batch_size", eval_batch_size, optional=True) or batch_size
        self.num_workers = non_negative_int("num_workers", num_workers)
        self.max_short_edge = positive_int("max_short_edge", max_short_edge, optional=True)
        self.max_image_pixels = positive_int("max_image_pixels", max_image_pixels, optional=True)
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
        if hasattr(dataset, "max_pixels"):  # an image option of the DataModule, used where images are decoded
            dataset.max_pixels = self.max_image_pixels
        loader = ResumableLoader if isinstance(sampler, EpochSampler) else DataLoader
        return loader(
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
        """In one process, an ``EpochSampler``: the order depends only on the seed and the epoch, not on
        the global random state, and a checkpoint written mid-epoch resumes at the next untrained batch,
        so ``fit --ckpt_path`` continues exactly as an uninterrupted run would. Under DDP Lightning puts
        in its own seeded distributed sampler (None here; it resumes exactly from epoch ends)."""
        trainer = getattr(self, "trainer", None)
        if trainer is not None and trainer.world_size > 1:
            return None
        epoch_fn = position_fn = None
        if trainer is not None:  # the epoch and position Lightning's loops are at (restored on resume)
            def epoch_fn() -> int:
                return trainer.fit_loop.epoch_progress.current.processed

            def position_fn() -> int:  # batches of this epoch already trained (restored on resume)
                return trainer.fit_loop.epoch_loop.batch_progress.current.ready
        return EpochSampler(len(self.train_set), torch.initial_seed() % 2**31, self.batch_size, epoch_fn, position_fn)

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
