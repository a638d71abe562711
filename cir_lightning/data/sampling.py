"""The training order: seeded by epoch, and resumable in the middle of an epoch.

``CIRDataModule.train_dataloader`` uses them in one process; under DDP Lightning puts in its own
seeded distributed sampler.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch.utils.data import DataLoader, Sampler

__all__ = ["EpochSampler", "ResumableLoader"]


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
        >>> from cir_lightning.data.sampling import EpochSampler
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
    resumes with exactly the batches it had not trained yet.

    Example:
        >>> from cir_lightning.data.sampling import EpochSampler, ResumableLoader
        >>> loader = ResumableLoader(range(6), batch_size=2, sampler=EpochSampler(6, seed=0, batch_size=2))
        >>> loader.load_state_dict({"epoch": 0, "batches": 1})
        >>> len(list(loader))  # the first of the three batches was trained already
        2
    """

    def state_dict(self) -> dict[str, int]:
        return self.sampler.state_dict()

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.sampler.load_state_dict(state)
