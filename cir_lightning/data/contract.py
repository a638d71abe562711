"""What a cir_lightning DataModule and the model exchange: the splits, the evaluation subsets, rankings and
the collator.

A DataModule here only knows raw samples. The model's pre-processing (prompts, tokenizer, image
processor) reaches it through ``CIRDataModule.connect(collator)``, which ``CIRModule`` calls in its ``setup``;
the collator then runs in the DataLoader workers, so decoding and processing never block the training
process. A collator (``Collator``) is any object with three methods, each taking a list of samples:

- ``triplets(samples)`` for training batches,
- ``queries(samples)`` for evaluation queries,
- ``gallery(samples)`` for gallery images;

``for_subset(name)``, the collator of one evaluation subset (itself unless prompts differ per subset), and
``placeholders``, the texts a user's modification may not hold (the model's image token);
``check_collator`` names what an object handed to ``connect`` lacks; ``check_eval_sets`` what a DataModule's
``load_eval_sets`` returned that is not ``EvalSets``. ``constructor_args`` is what a DataModule
records of its own arguments (``hparams``).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, Protocol

from lightning.pytorch.utilities.parsing import collect_init_args

from cir_lightning.data.datasets import GalleryDataset, QueryDataset
from cir_lightning.errors import CIRConfigError

__all__ = ["STAGE_SPLITS", "CachedGalleries", "Collator", "EvalSets", "Rankings", "Split", "check_collator",
           "check_eval_sets", "constructor_args"]

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


def check_collator(collator: object) -> None:
    """Refuse, in one line naming what it lacks, an object that is not a ``Collator`` (checked by
    ``CIRDataModule.connect``, before any loader runs it in a worker).

    Example:
        >>> from cir_lightning.data.contract import check_collator
        >>> class Half:
        ...     placeholders = ()
        ...     def queries(self, samples): ...
        >>> check_collator(Half())
        Traceback (most recent call last):
        ...
        cir_lightning.errors.CIRConfigError: Half is not a collator (data.contract.Collator): it lacks `triplets`, `gallery`, `for_subset`; ...
    """
    lacking = [f"`{name}`" for name in ("triplets", "queries", "gallery", "for_subset")
               if not callable(getattr(collator, name, None))]
    lacking += [] if hasattr(collator, "placeholders") else ["`placeholders`"]
    if lacking:
        raise CIRConfigError(f"{type(collator).__name__} is not a collator (data.contract.Collator): it lacks "
                             f"{', '.join(lacking)}; a backbone's collator can subclass "
                             "`cir_lightning.backbones.SampleBatches`, which needs only the model inputs")


def check_eval_sets(sets: object, owner: str, split: str) -> None:
    """Refuse, in one line naming the subset, what ``owner.load_eval_sets(split)`` returned unless it is
    ``EvalSets``: a list of ``(QueryDataset, GalleryDataset)`` pairs. Their records, ids, image paths and protocol
    are what the evaluation, the caches, the pictures and the results read (checked by ``CIRDataModule.setup``:
    another dataset failed later with an AttributeError, or was passed over).

    Example:
        >>> from cir_lightning.data.contract import check_eval_sets
        >>> check_eval_sets([], "Mine", "val")
        >>> check_eval_sets([([], [])], "Mine", "val")
        Traceback (most recent call last):
        ...
        cir_lightning.errors.CIRConfigError: Mine.load_eval_sets('val') must return a list of (QueryDataset, GalleryDataset) pairs (cir_lightning.data.datasets); subset 0 is (list, list)
    """
    if not isinstance(sets, list):
        raise CIRConfigError(f"{owner}.load_eval_sets({split!r}) must return a list of (QueryDataset, GalleryDataset) "
                             f"pairs (cir_lightning.data.datasets), got {type(sets).__name__}")
    for i, pair in enumerate(sets):
        if not (isinstance(pair, tuple) and len(pair) == 2 and isinstance(pair[0], QueryDataset)
                and isinstance(pair[1], GalleryDataset)):
            got = (f"({', '.join(type(x).__name__ for x in pair)})" if isinstance(pair, tuple)
                   else type(pair).__name__)
            raise CIRConfigError(f"{owner}.load_eval_sets({split!r}) must return a list of (QueryDataset, "
                                 f"GalleryDataset) pairs (cir_lightning.data.datasets); subset {i} is {got}")


def constructor_args(datamodule: object, frame: Any, base: type) -> dict[str, Any]:
    """The arguments of ``type(datamodule)``'s constructor as passed, in the order its signature names them: read
    from the ``__init__`` frames that called ``base.__init__`` (``frame``), the outermost one winning. What
    ``CIRDataModule`` records as ``hparams``: results files name the run's data by them, ``show`` rebuilds it."""
    taken = inspect.signature(type(datamodule)).parameters
    args: dict[str, Any] = {}
    for level in collect_init_args(frame, [], classes=(base,)):
        args.update(level)
    return {name: args[name] for name in taken if name in args}
