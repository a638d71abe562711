"""The shared base of every cir_lightning DataModule: its contract with the model, loaders and batch sizes.

A DataModule here only knows raw samples; the model's pre-processing reaches it through ``connect(collator)``
(the collator's contract, and the types both sides exchange, are in ``data.contract``). Without a collator the
loaders yield plain lists of sample dicts, handy for looking at the data.

What else the model may ask of a DataModule is declared on ``CIRDataModule``, with defaults that do
nothing: ``summarize`` / ``report`` (extra metrics, text to print), ``write_predictions`` (files such
as an evaluation server's), ``with_captions``, ``gallery_identity`` and ``split_for`` (for embedding caches and
``predict``'s folders), ``training_order`` (what a checkpoint written in the middle of an epoch must be
resumed with). Its constructor records every argument of the subclass's constructor as ``hparams`` (what
results files name as the run's data, and what ``cir-lightning show`` rebuilds the DataModule from).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import lightning.pytorch as pl
from torch.utils.data import DataLoader, Dataset, Sampler

from cir_lightning.checks import non_negative_int, positive_int
from cir_lightning.data import contract, datasets
from cir_lightning.data.contract import (
    STAGE_SPLITS,
    CachedGalleries,
    Collator,
    EvalSets,
    Rankings,
    Split,
    check_eval_sets,
)
from cir_lightning.data.datasets import CachedGallery, ImageDataset, TripletDataset
from cir_lightning.data.idle_rows import EveryProcessOne, SkipIdle
from cir_lightning.data.images import DEFAULT_MAX_PIXELS
from cir_lightning.data.sampling import ResumableLoader, ResumableSampler, train_sampler, training_order
from cir_lightning.errors import CIRConfigError, CIRDataError
from cir_lightning.pixels import SHRINK
from cir_lightning.summaries import SummarizesMetrics


def _as_list(samples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return samples


class CIRDataModule(pl.LightningDataModule, SummarizesMetrics):
    """Base class: a subclass reads its files in ``load_train_set`` and ``load_eval_sets``.

    ``setup(stage)`` fills, once, ``train_set`` (``fit``), ``val_sets`` (``fit``, ``validate``) and
    ``test_sets`` (``test``, ``predict``). ``val_sets`` / ``test_sets`` are lists of ``(queries,
    gallery)`` pairs; each gives two loaders in the order queries, gallery (so ``dataloader_idx`` 2*i is
    the queries of subset i, 2*i+1 its gallery).

    Every DataModule ends its ``__init__`` with the options below, each a typed parameter (LightningCLI
    makes a flag of each); they are documented here only, and ``--help`` takes the text from here.

    Args:
        batch_size: training batch size per process.
        eval_batch_size: batch size of the evaluation loaders (default: ``batch_size``).
        num_workers: DataLoader worker processes; images are decoded and processed there.
        max_short_edge: shrink images whose short edge is longer than this, when decoded.
        pin_memory: pin host memory of batches (useful on GPUs).
        max_image_pixels: refuse images with more pixels than this (their header is read first, so a
            "decompression bomb" is never decoded); ``None``: no limit. Default: Pillow's own limit.

    Example:
        >>> from cir_lightning.data import CIRDataModule
        >>> dm = CIRDataModule(batch_size=4)
        >>> dm.setup("validate")
        >>> dm.eval_batch_size, dm.val_sets, dm.with_captions
        (4, [], False)
    """

    with_captions: bool = False
    """Whether training samples carry ``reference_caption`` / ``target_caption`` (FiRE stage 1 needs them)."""

    GALLERY_OPTIONS: ClassVar[tuple[str, ...]] = ("root", "image_root", "gallery_root", "image_info_file",
                                                  "max_short_edge")
    """The attributes that decide which gallery images are embedded, in the order ``gallery_identity``
    names them; those a DataModule does not have, or has as None, are left out."""

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
        self.save_hyperparameters(contract.constructor_args(self, inspect.currentframe(), CIRDataModule))
        self.collator: Collator | None = None
        self.cached_galleries: CachedGalleries | None = None
        self.train_set: TripletDataset | None = None
        self.val_sets: EvalSets = []
        self.test_sets: EvalSets = []

    # ------------------------------------------------------------------ what the model asks
    def connect(self, collator: Collator, cached_galleries: CachedGalleries | None = None) -> None:
        """Use ``collator`` (from the model) to turn samples into batches, in the loader workers.

        ``cached_galleries(split, sets)``, asked once when the evaluation loaders are made (``split``: the one
        ``split_for`` names), returns the subsets whose gallery embeddings the model already has (from a
        cache): their gallery loaders then yield nothing, so no gallery image is decoded.
        """
        contract.check_collator(collator)
        self.collator = collator
        self.cached_galleries = cached_galleries
        datasets.refuse_placeholder_texts([self.train_set, *(q for q, _ in self.val_sets + self.test_sets)],
                                 collator.placeholders)

    def report(self, metrics: Mapping[str, float]) -> str:
        """Text to print after a standalone ``validate`` / ``test`` (after the table); "" by default.

        Example:
            >>> from cir_lightning.data import CIRDataModule
            >>> CIRDataModule().report({"Recall@1": 0.5})
            ''
        """
        return ""

    def write_predictions(self, folder: Path, stage: str, rankings: Rankings,
                          subset_rankings: Rankings) -> list[Path]:
        """Write files from the rankings of a standalone ``validate`` / ``test`` (e.g. an evaluation
        server's); none by default.

        Args:
            folder: the run's log folder.
            stage: ``"validate"`` or ``"test"``.
            rankings: subset name -> query id -> ranked gallery ids (excluded ids removed).
            subset_rankings: the same within each query's candidates, for subsets that have them.

        Returns:
            The files written.

        Example:
            >>> from cir_lightning.data import CIRDataModule
            >>> CIRDataModule().write_predictions(Path("out"), "test", {}, {}), CIRDataModule().writes_predictions
            ([], False)
        """
        return []

    @property
    def writes_predictions(self) -> bool:
        """Whether ``write_predictions`` is overridden, so that the model keeps the rankings it needs."""
        return type(self).write_predictions is not CIRDataModule.write_predictions

    def gallery_identity(self) -> str:
        """Which gallery images this DataModule embeds: its class and its ``GALLERY_OPTIONS`` (paths
        resolved), the dataset part of an embedding cache's identity. The string must not change: caches
        written before compare equal only with the same string.

        Example:
            >>> from cir_lightning.data import CIRDataModule
            >>> CIRDataModule(max_short_edge=224).gallery_identity()  # how it shrinks, too (``pixels.SHRINK``)
            'CIRDataModule(max_short_edge=224:lanczos-floor)'
        """
        where = {name: getattr(self, name) for name in self.GALLERY_OPTIONS if getattr(self, name, None) is not None}
        where = {k: Path(v).resolve() if isinstance(v, str | Path) else f"{v}:{SHRINK}" if k == "max_short_edge" else v
                 for k, v in where.items()}
        return f"{type(self).__name__}({', '.join(f'{k}={v}' for k, v in where.items())})"

    # ------------------------------------------------------------------ reading the data
    def setup(self, stage: str) -> None:
        """Read what ``stage`` needs, once: training triplets for ``fit``, then the evaluation split of
        ``STAGE_SPLITS[stage]``."""
        if stage == "fit" and self.train_set is None:
            self.train_set = self.load_train_set()
        split = STAGE_SPLITS.get(stage)
        if split == "val" and not self.val_sets:
            self.val_sets = self.load_eval_sets("val")
            check_eval_sets(self.val_sets, type(self).__name__, "val")
        elif split == "test" and not self.test_sets:
            self.test_sets = self.load_eval_sets("test")
            check_eval_sets(self.test_sets, type(self).__name__, "test")
        datasets.refuse_repeated_ids(self.val_sets + self.test_sets)

    def split_for(self, stage: str) -> Split:
        """The split whose data ``stage`` evaluates or embeds, the name its caches and ``predict``'s folders get
        (``val-dress-gallery``): ``STAGE_SPLITS[stage]`` unless ``load_eval_sets("test")`` reads the val split.

        Example:
            >>> from cir_lightning.data import CIRDataModule
            >>> [CIRDataModule().split_for(stage) for stage in ("fit", "validate", "test", "predict")]
            ['val', 'val', 'test', 'test']
        """
        return STAGE_SPLITS[stage]

    def load_train_set(self) -> TripletDataset | None:
        """The training triplets, read and checked; None: no training data (the default).

        Example:
            >>> from cir_lightning.data import CIRDataModule
            >>> CIRDataModule().load_train_set() is None
            True
        """
        return None

    def load_eval_sets(self, split: Split) -> EvalSets:
        """The ``(queries, gallery)`` subsets of ``split`` (``"val"`` or ``"test"``), read and checked;
        none by default.

        Example:
            >>> from cir_lightning.data import CIRDataModule
            >>> CIRDataModule().load_eval_sets("test")
            []
        """
        return []

    # ------------------------------------------------------------------ loaders
    def _loader(self, dataset: Dataset, collate: Any, batch_size: int, shuffle: bool,
                sampler: Sampler | None = None, processes: int = 1) -> DataLoader:
        if isinstance(dataset, ImageDataset):  # an image option of the DataModule, used where images are decoded
            dataset.max_pixels = self.max_image_pixels
        if 0 < len(dataset) < processes:  # predict's sampler gives every process a row: the others an idle one
            dataset, collate = EveryProcessOne(dataset, processes), SkipIdle(collate)
        loader = ResumableLoader if isinstance(sampler, ResumableSampler) else DataLoader
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

    def _eval_loaders(self, sets: EvalSets, split: Split, processes: int = 1) -> list[DataLoader]:
        c = self.collator
        cached = self.cached_galleries(split, sets) if self.cached_galleries is not None else set()
        loaders = []
        for s, (queries, gallery) in enumerate(sets):
            if s in cached:
                gallery = CachedGallery(gallery)
            sc = c.for_subset(queries.name) if c else None
            for data, collate in ((queries, sc.queries if sc else _as_list), (gallery, sc.gallery if sc else _as_list)):
                loaders.append(self._loader(data, collate, self.eval_batch_size, False, processes=processes))
        return loaders

    def train_dataloader(self) -> DataLoader:
        if self.train_set is None:
            raise CIRConfigError(f"{type(self).__name__} has no training data: set its training file "
                                 "(`train_file` for JSONL data)")
        trainer = self.trainer
        ranks = trainer.world_size if trainer is not None else 1
        per_rank = -(-len(self.train_set) // ranks)  # the distributed sampler pads the ranks to equal shares
        if per_rank < self.batch_size:  # training drops the incomplete batch: not one step would be trained
            raise CIRDataError(f"the training set has {len(self.train_set)} triplet(s), {per_rank} per process over "
                               f"{ranks} process(es), fewer than `batch_size` = {self.batch_size}: training drops "
                               "incomplete batches, so nothing would be trained; lower `batch_size`")
        collate = self.collator.triplets if self.collator else _as_list
        sampler = train_sampler(len(self.train_set), self.batch_size, trainer)
        return self._loader(self.train_set, collate, self.batch_size, True, sampler)

    def training_order(self) -> dict[str, int] | None:
        """What decides the rows a checkpoint's position in an epoch stands for (``data.sampling.training_order``:
        batch size, training samples, processes, seed); None without training data."""
        if self.train_set is None:
            return None
        return training_order(len(self.train_set), self.batch_size, self.trainer)

    def val_dataloader(self) -> list[DataLoader]:
        return self._eval_loaders(self.val_sets, self.split_for("validate"))

    def test_dataloader(self) -> list[DataLoader]:
        return self._eval_loaders(self.test_sets, self.split_for("test"))

    def predict_dataloader(self) -> list[DataLoader]:
        """``predict``'s loaders; a subset with fewer queries or images than processes is padded with idle rows
        (``data.idle_rows``), which the processes left over take and embed nothing of."""
        split, sets = self.predict_sets()
        return self._eval_loaders(sets, split, self.trainer.world_size if self.trainer is not None else 1)

    def predict_sets(self) -> tuple[Split, EvalSets]:
        """What ``predict`` embeds, and the split its folders are named by (``split_for``): the test subsets
        ``setup("predict")`` reads; without any, the val subsets an earlier stage read."""
        if self.test_sets:
            return self.split_for("predict"), self.test_sets
        return self.split_for("validate"), self.val_sets


def cir_datamodule(trainer: pl.Trainer | None) -> CIRDataModule | None:
    """``trainer.datamodule`` when it is a cir_lightning DataModule; None without a trainer, with plain loaders
    or with another DataModule (which declares none of the hooks above)."""
    datamodule = trainer.datamodule if trainer is not None else None
    return datamodule if isinstance(datamodule, CIRDataModule) else None
