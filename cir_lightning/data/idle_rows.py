"""More processes than rows to embed: the processes left over take an idle row each and embed nothing.

Lightning's predict sampler (``UnrepeatedDistributedSampler``) deals the rows out without repeating any, but gives
each process one row at least: a loader of fewer rows than processes is a bare AssertionError in one process while
the others wait. ``EveryProcessOne`` pads such a dataset with idle rows after its own, one for each process left
over, and ``SkipIdle`` (or ``folder.KeepReadable``) leaves them out of the batch: an idle process's batch is empty,
it embeds nothing and writes nothing. ``index`` (one new photo for an update on 8 GPUs) and ``predict`` (a subset
of one query) use it; the rows a writer lists and counts are the dataset's own (``unpadded``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils.data import Dataset

__all__ = ["EveryProcessOne", "SkipIdle", "is_idle", "unpadded"]


class EveryProcessOne(Dataset):
    """``data`` with idle rows ``{"index": i, "idle": True}`` after its own, up to ``processes`` rows in all (none
    when it has as many rows already).

    Example:
        >>> from cir_lightning.data.idle_rows import EveryProcessOne
        >>> padded = EveryProcessOne([{"index": 0, "image": None}], 3)
        >>> len(padded), padded[2]
        (3, {'index': 2, 'idle': True})
    """

    def __init__(self, data: Any, processes: int) -> None:
        self.data, self.size = data, max(len(data), processes)

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.data[index] if index < len(self.data) else {"index": index, "idle": True}


def is_idle(sample: Any) -> bool:
    """Whether ``sample`` is one of ``EveryProcessOne``'s idle rows."""
    return isinstance(sample, dict) and sample.get("idle") is True


def unpadded(dataset: Any) -> Any:
    """The dataset an ``EveryProcessOne`` pads (its rows, ids and name); any other dataset itself."""
    return dataset.data if isinstance(dataset, EveryProcessOne) else dataset


class SkipIdle:
    """A collate function: ``collate`` over the samples that are not idle rows; a batch of idle rows only is
    ``{"index": <empty>}``, which a ``predict_step`` answers without embedding. Picklable (DataLoader workers).

    Example:
        >>> from cir_lightning.data.idle_rows import SkipIdle
        >>> collate = SkipIdle(lambda samples: {"index": [s["index"] for s in samples]})
        >>> collate([{"index": 0}, {"index": 1, "idle": True}]), collate([{"index": 1, "idle": True}])
        ({'index': [0]}, {'index': tensor([], dtype=torch.int64)})
    """

    def __init__(self, collate: Callable[[list[Any]], Any]) -> None:
        self.collate = collate

    def __call__(self, samples: list[Any]) -> Any:
        rows = [s for s in samples if not is_idle(s)]
        return self.collate(rows) if rows else {"index": torch.empty(0, dtype=torch.long)}
