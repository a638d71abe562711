"""The evaluation loaders' datasets read into ``EvalSubset``s: the one place that reads the query and gallery
datasets' ground-truth attributes (the contract ``subsets_from_datasets`` states)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from cir_lightning.errors import CIRConfigError
from cir_lightning.retrieval.evaluator import EvalSubset, check_names
from cir_lightning.retrieval.protocol import with_added_ks

__all__ = ["loader_role", "subsets_from_datasets", "subsets_from_loaders"]


def loader_role(dataloader_idx: int) -> tuple[int, str]:
    """Which subset a loader belongs to and what it holds: loaders come in (queries, gallery) pairs.

    Example:
        >>> loader_role(0), loader_role(3)
        ((0, 'query'), (1, 'gallery'))
    """
    subset, kind = divmod(dataloader_idx, 2)
    return subset, "query" if kind == 0 else "gallery"


def subsets_from_loaders(loaders: Any, added_ks: Sequence[int] = ()) -> list[EvalSubset]:
    """The ``EvalSubset`` of each (queries, gallery) pair of evaluation loaders (loaders come in pairs, queries
    first): ``subsets_from_datasets`` of their datasets.

    Example:
        >>> from cir_lightning.retrieval import subsets_from_loaders
        >>> from torch.utils.data import DataLoader
        >>> class Queries(list):  # a query dataset: its samples, and the ground truth as attributes
        ...     name, positives, excluded = "toy", [[1], [0]], [[], [1]]
        >>> [sub] = subsets_from_loaders([DataLoader(Queries(["q0", "q1"])), DataLoader(["g0", "g1", "g2"])])
        >>> sub.name, sub.positives, sub.num_gallery
        ('toy', [[1], [0]], 3)
        >>> subsets_from_loaders([DataLoader(["g0"])])
        Traceback (most recent call last):
        ...
        cir_lightning.errors.CIRConfigError: evaluation needs (queries, gallery) pairs of dataloaders, got 1
    """
    loaders = list(loaders) if isinstance(loaders, list | tuple) else [loaders]
    if len(loaders) % 2:
        raise CIRConfigError(f"evaluation needs (queries, gallery) pairs of dataloaders, got {len(loaders)}")
    pairs = [(q.dataset, g.dataset) for q, g in zip(loaders[0::2], loaders[1::2], strict=True)]
    return subsets_from_datasets(pairs, added_ks)


def subsets_from_datasets(pairs: Sequence[tuple[Any, Any]], added_ks: Sequence[int] = ()) -> list[EvalSubset]:
    """The ``EvalSubset`` of each (queries, gallery) pair of evaluation datasets.

    The query dataset has ``positives`` (gallery rows per query,
    or None without ground truth) and may have ``excluded``, ``name``, ``ids``, ``metrics``,
    ``candidates`` and ``depth`` (see ``EvalSubset``); the gallery dataset may have ``ids``, and
    ``num_items`` when it stands in for a gallery it does not load (embeddings from a cache). ``added_ks``
    (the evaluator's ``added_ks``) are added to the query dataset's own ``metrics`` (``with_added_ks``).

    Example:
        >>> from cir_lightning.retrieval.subsets import subsets_from_datasets
        >>> class Queries(list):  # a query dataset: its samples, and the ground truth as attributes
        ...     name, positives, excluded = "toy", [[1], [0]], [[], [1]]
        >>> [sub] = subsets_from_datasets([(Queries(["q0", "q1"]), ["g0", "g1", "g2"])])
        >>> sub.name, sub.positives, sub.excluded, sub.num_gallery
        ('toy', [[1], [0]], [[], [1]], 3)
    """
    subsets = []
    for queries, gallery in pairs:
        if not hasattr(queries, "positives"):
            raise CIRConfigError("evaluation loaders must come in (queries, gallery) pairs whose query dataset "
                                 f"has `positives` (gallery rows per query); got {type(queries).__name__}")
        subsets.append(EvalSubset(
            getattr(queries, "name", ""), queries.positives,
            getattr(queries, "excluded", None) or [()] * len(queries),
            getattr(gallery, "num_items", None) or len(gallery),
            getattr(queries, "ids", None), getattr(gallery, "ids", None),
            metrics=with_added_ks(getattr(queries, "metrics", None), added_ks),
            candidates=getattr(queries, "candidates", None), depth=getattr(queries, "depth", 0)))
    check_names(subsets)
    return subsets
