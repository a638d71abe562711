"""What FiRE's stage-2 loss needs of the training data: negatives in its batches, checked at ``fit``'s set-up.

The loss contrasts each query with the other targets of its batch (of every process's batch with
``cross_rank_negatives``); triplets with the same target (their samples' ``target_key``) are positives of each other.
A batch whose triplets all share one target has no negative: its loss is constant, its gradient 0. The targets are
read from the training records (``TripletDataset.target_key``), so no image is decoded.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from typing import Any

from lightning.pytorch.utilities import rank_zero_warn

from cir_lightning.data.datasets import TripletDataset
from cir_lightning.errors import CIRConfigError, CIRDataError

WARN_SHARE = 0.1
"""Warn when at least this share of the training batches is expected to hold a single target image."""


def check_negatives(train_set: Any, batch_size: int, processes: int) -> None:
    """Refuse training that cannot have a negative, warn when many of its batches have none.

    Args:
        train_set: the DataModule's training set; checked when it is a ``TripletDataset``.
        batch_size: triplets a batch per process.
        processes: the processes whose batches share negatives (1 without ``cross_rank_negatives``).

    Example:
        >>> from pathlib import Path
        >>> from cir_lightning.data.datasets import Triplet
        >>> same = [Triplet(Path(f"r{i}.png"), Path("t.png"), "m", f"train.jsonl:{i + 1}") for i in range(4)]
        >>> check_negatives(TripletDataset(same), 2, 1)
        Traceback (most recent call last):
        ...
        cir_lightning.errors.CIRDataError: train.jsonl: all 4 training triplets have the same target image (`t.png`): ...
    """
    batch = batch_size * processes
    if batch < 2:
        raise CIRConfigError(f"`data.batch_size` = {batch_size} with {processes} process(es) sharing negatives: "
                             "FiRE's loss contrasts each query with the other targets of its batch, and with "
                             "one triplet there are none, so the loss is constant and nothing is learned "
                             "(gradient accumulation adds no negatives); use a batch of at least 2")
    if not isinstance(train_set, TripletDataset) or not len(train_set):
        return
    counts = Counter(train_set.target_key(i) for i in range(len(train_set)))
    where = ", ".join(training_files(train_set.records)) or None
    top, most = counts.most_common(1)[0]
    if len(counts) < 2:
        raise CIRDataError(f"all {len(train_set)} training triplets have the same target image (`{top}`): FiRE's loss "
                           "contrasts each query with the other targets of its batch, and triplets with the same target "
                           "are positives of each other, so there is no negative, the loss is constant and nothing is "
                           "learned; train on triplets with at least 2 different target images", where)
    share = single_target_share(list(counts.values()), batch)
    if share >= WARN_SHARE:
        rank_zero_warn(f"{where or 'the training set'}: {share:.0%} of the training batches are expected to hold a "
                       f"single target image ({most} of the {len(train_set)} triplets have `{top}`, {batch} triplets a "
                       "batch): they have no negative, so FiRE's loss learns nothing from them; raise "
                       "`data.batch_size` or add triplets with other targets")


def single_target_share(counts: Sequence[int], batch: int) -> float:
    """The probability that a batch of ``batch`` triplets drawn without replacement (a shuffled epoch's batch) holds
    triplets of one target only, given how many triplets each target has.

    Example:
        >>> single_target_share([15, 1], 8)  # C(15, 8) / C(16, 8)
        0.5
        >>> single_target_share([32, 32], 64), round(single_target_share([990, 10], 64), 2)
        (0.0, 0.51)
    """
    total = sum(counts)
    if batch > total:
        return 0.0

    def log_falling(n: int) -> float:  # log of n! / (n - batch)!, the orderings of C(n, batch) up to batch!
        return math.lgamma(n + 1) - math.lgamma(n - batch + 1)

    return round(sum((math.exp(log_falling(n) - log_falling(total)) for n in counts if n >= batch), 0.0), 12)


def training_files(records: Sequence[Any]) -> list[str]:
    """The files the training records were read from (their ``source``'s ``<file>:<line>``), in order.

    Example:
        >>> from types import SimpleNamespace as R
        >>> training_files([R(source="a.json:3: pairid 7"), R(source="b.jsonl:1"), R(source="a.json:9"), R(source="")])
        ['a.json', 'b.jsonl']
    """
    found = (re.match(r"(.+?):\d+(?::|$)", str(getattr(r, "source", "") or "")) for r in records)
    return list(dict.fromkeys(m.group(1) for m in found if m))
