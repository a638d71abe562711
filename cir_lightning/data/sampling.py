"""The training order: seeded by epoch, and resumable in the middle of an epoch.

``CIRDataModule.train_dataloader`` uses ``EpochSampler`` in one process and ``DistributedEpochSampler`` (the
order of the sampler Lightning would put in) under DDP, in a ``ResumableLoader``: both skip the batches of the
epoch a checkpoint written in its middle had trained (``ResumableSampler``). Both hand out each row as an
``EpochIndex``, which carries the order's seed and epoch: a dataset that draws per sample (FashionIQ's caption
forms) draws from them, never from the global random state, so the draws do not depend on the workers, the
processes or a resume.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, DistributedSampler, Sampler

__all__ = ["DistributedEpochSampler", "EpochIndex", "EpochSampler", "ResumableLoader", "ResumableSampler", "order_seed",
           "train_sampler", "training_order"]


class EpochIndex(int):
    """A dataset row (an ``int``) with the seed and epoch of the training order that handed it out.

    Example:
        >>> from cir_lightning.data.sampling import EpochIndex
        >>> row = EpochIndex(7, seed=42, epoch=3)
        >>> row + 1, row.epoch, int(torch.randint(4, (), generator=row.generator())) == int(
        ...     torch.randint(4, (), generator=EpochIndex(7, seed=42, epoch=3).generator()))
        (8, 3, True)
    """

    seed: int
    epoch: int

    def __new__(cls, index: int, seed: int, epoch: int) -> EpochIndex:
        row = super().__new__(cls, index)
        row.seed, row.epoch = int(seed), int(epoch)
        return row

    def __reduce__(self) -> tuple:  # to DataLoader workers with its seed and epoch
        return EpochIndex, (int(self), self.seed, self.epoch)

    def generator(self) -> torch.Generator:
        """A generator seeded from (seed, epoch, row) alone: this row's draws in this epoch."""
        key = hashlib.blake2b(f"{self.seed}:{self.epoch}:{int(self)}".encode(), digest_size=8).digest()
        return torch.Generator().manual_seed(int.from_bytes(key, "big") >> 1)


class ResumableSampler(Sampler[int]):
    """A training order that resumes in the middle of an epoch: when an epoch's iteration starts, the epoch is read
    from ``epoch_fn`` (else the value of ``set_epoch``) and the batches of it already trained from ``position_fn``
    (Lightning's restored loop position, a count of batches, not of optimizer steps: non-zero only when ``fit
    --ckpt_path`` resumes a checkpoint written in the middle of an epoch), and those batches are skipped.
    ``EpochSampler`` (one process) and ``DistributedEpochSampler`` (a rank's share) are the two."""

    seed: int
    """The order's seed: what ``training_order`` records of the running order (every sampler here sets it)."""
    epoch: int
    batch_size: int
    epoch_fn: Callable[[], int] | None = None
    position_fn: Callable[[], int] | None = None

    def current_epoch(self) -> int:
        return int(self.epoch_fn()) if self.epoch_fn is not None else self.epoch

    def position(self) -> int:
        return int(self.position_fn()) if self.position_fn is not None else 0

    def first_untrained(self, size: int) -> int:
        """Where an epoch's order of ``size`` rows goes on: after the batches already trained (at 0 once all of its
        whole batches were: that epoch was complete, it starts anew; the incomplete batch is dropped)."""
        start = self.position() * self.batch_size
        return 0 if start >= size - size % self.batch_size else start

    def state_dict(self) -> dict[str, int]:
        """Where training is: the epoch and the batches of it already trained."""
        return {"epoch": self.current_epoch(), "batches": self.position()}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Nothing to restore: the epoch and position are read from Lightning's restored loops when the
        epoch's iteration starts (they equal ``state``)."""


class EpochSampler(ResumableSampler):
    """The training order in one process: a permutation that depends only on the seed and the epoch.

    A plain shuffling loader draws from the global random generator, which checkpoints do not hold;
    this order is ``torch.randperm(size)`` from a generator seeded with ``seed + epoch`` (the order of
    ``DistributedSampler(num_replicas=1, seed=seed)``), so a resumed run sees exactly the batches it
    would have seen (the batches already trained are skipped: ``ResumableSampler``).

    Example:
        >>> from cir_lightning.data.sampling import EpochSampler
        >>> full = list(EpochSampler(6, seed=0, batch_size=2))
        >>> trained = [0]
        >>> s = EpochSampler(6, seed=0, batch_size=2, position_fn=lambda: trained[0])
        >>> list(s) == full
        True
        >>> trained[0] = 2  # resumed after two batches of this epoch
        >>> list(s) == full[4:]
        True
    """

    def __init__(self, size: int, seed: int, batch_size: int, epoch_fn: Callable[[], int] | None = None,
                 position_fn: Callable[[], int] | None = None) -> None:
        self.size, self.seed, self.batch_size = size, seed, batch_size
        self.epoch = 0
        self.epoch_fn = epoch_fn
        self.position_fn = position_fn

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[int]:
        epoch = self.current_epoch()
        generator = torch.Generator()
        generator.manual_seed(self.seed + epoch)
        order = torch.randperm(self.size, generator=generator).tolist()
        for index in order[self.first_untrained(self.size):]:
            yield EpochIndex(index, self.seed, epoch)


class DistributedEpochSampler(DistributedSampler, ResumableSampler):
    """Under DDP: the order of the distributed sampler Lightning would put in (the same seed, epoch and shares, padded
    to equal shares), its rows handed out as ``EpochIndex``; a rank resumes its own share after the batches of it
    already trained (``ResumableSampler``). The epoch is read when the iteration starts, not only from
    ``set_epoch``: with DataLoader workers, Lightning starts a resumed run's first iteration before it sets the epoch.

    Example:
        >>> from cir_lightning.data.sampling import DistributedEpochSampler
        >>> rows = list(DistributedEpochSampler(range(6), num_replicas=2, rank=1, seed=0))
        >>> rows == list(DistributedSampler(range(6), num_replicas=2, rank=1, seed=0)), rows[0].epoch
        (True, 0)
        >>> list(DistributedEpochSampler(range(6), num_replicas=2, rank=1, seed=0, batch_size=1,
        ...                              position_fn=lambda: 2)) == rows[2:]  # two batches of its share trained
        True
    """

    def __init__(self, dataset: Any, *, batch_size: int = 1, epoch_fn: Callable[[], int] | None = None,
                 position_fn: Callable[[], int] | None = None, **kwargs: Any) -> None:
        super().__init__(dataset, **kwargs)
        self.batch_size, self.epoch_fn, self.position_fn = batch_size, epoch_fn, position_fn

    def __iter__(self) -> Iterator[int]:
        self.epoch = self.current_epoch()
        share = list(super().__iter__())
        for index in share[self.first_untrained(len(share)):]:
            yield EpochIndex(index, self.seed, self.epoch)


class ResumableLoader(DataLoader):
    """A training ``DataLoader`` over a ``ResumableSampler`` (``CIRDataModule`` makes one for no other sampler). Having ``state_dict`` / ``load_state_dict`` tells
    Lightning the loader resumes mid-epoch (it stores the position in checkpoints and does not warn); the
    sampler itself reads the restored position, so a run killed in the middle of an epoch resumes with
    exactly the batches it had not trained yet.

    Example:
        >>> from cir_lightning.data.sampling import EpochSampler, ResumableLoader
        >>> loader = ResumableLoader(range(6), batch_size=2,
        ...                          sampler=EpochSampler(6, seed=0, batch_size=2, position_fn=lambda: 1))
        >>> loader.state_dict(), len(list(loader))  # the first of the three batches was trained already
        ({'epoch': 0, 'batches': 1}, 2)
    """

    def state_dict(self) -> dict[str, int]:
        return self.sampler.state_dict()

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.sampler.load_state_dict(state)


def order_seed(trainer: Any) -> int:
    """The seed of the training order: Lightning's (``seed_everything``, the same on every rank) under DDP, torch's
    initial seed (which ``seed_everything`` sets) in one process."""
    if trainer is not None and trainer.world_size > 1:
        return int(os.environ.get("PL_GLOBAL_SEED", 0))
    return torch.initial_seed() % 2**31


def train_sampler(size: int, batch_size: int, trainer: Any) -> Sampler:
    """The training order of ``size`` rows: seeded by the epoch (``order_seed``); a checkpoint written mid-epoch
    resumes at the next untrained batch, in one process and on each rank under DDP (of its own share)."""
    epoch_fn = position_fn = None
    if trainer is not None:  # the epoch and position Lightning's loops are at (restored on resume)
        def epoch_fn() -> int:
            return trainer.fit_loop.epoch_progress.current.processed

        def position_fn() -> int:  # batches (not optimizer steps) of this epoch already trained, restored on resume
            return trainer.fit_loop.epoch_loop.batch_progress.current.ready
    if trainer is not None and trainer.world_size > 1:
        return DistributedEpochSampler(range(size), **trainer.distributed_sampler_kwargs, shuffle=True,
                                       seed=order_seed(trainer), batch_size=batch_size, epoch_fn=epoch_fn,
                                       position_fn=position_fn)
    return EpochSampler(size, order_seed(trainer), batch_size, epoch_fn, position_fn)


def training_order(size: int, batch_size: int, trainer: Any) -> dict[str, int]:
    """What decides which rows a position in the middle of an epoch (batches already trained) stands for: a checkpoint
    keeps it, so that a resume with other values is refused (``cir_lightning.resume``).

    Example:
        >>> from cir_lightning.data.sampling import training_order
        >>> order = training_order(64, 16, None)
        >>> order["samples"], order["batch_size"], order["processes"], order["seed"] == torch.initial_seed() % 2**31
        (64, 16, 1, True)
    """
    processes = trainer.world_size if trainer is not None else 1
    running = trainer.train_dataloader if trainer is not None else None  # once fit has made its loader
    seed = running.sampler.seed if isinstance(running, ResumableLoader) else order_seed(trainer)  # the order's own
    return {"batch_size": batch_size, "samples": size, "processes": processes, "seed": int(seed)}
