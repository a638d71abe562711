"""How many torch threads each process uses: the machine's cores shared between the processes on this node
and their DataLoader workers, unless the user chose.

torch starts with one thread per core in every process. With several processes on a node (DDP), or with
DataLoader workers decoding images beside the model, that oversubscribes the cores: on 2 cores the demo
(one process, one worker) ran 1.5x faster with one torch thread than with torch's default two
(`docs/performance.md`). Lightning divides the cores between DDP processes only; the workers are not
counted. ``ThreadBudget`` (added by the ``cir-lightning`` command) sets::

    threads = max(1, cores_available // processes_on_this_node - workers_per_process)

``CIR_TORCH_THREADS=N`` sets N instead, and an ``OMP_NUM_THREADS`` the user set before launch is left
alone (the budget is then theirs).
"""

from __future__ import annotations

import os
from typing import Any

import torch
from lightning.pytorch.callbacks import Callback

from cir_lightning.data.base import cir_datamodule
from cir_lightning.errors import CIRConfigError

__all__ = ["ThreadBudget", "thread_budget"]


def thread_budget(cores: int, processes: int, workers: int) -> int:
    """Torch threads per process for ``processes`` processes on ``cores`` cores, each feeding its model from
    ``workers`` DataLoader workers.

    Example:
        >>> from cir_lightning.threads import thread_budget
        >>> thread_budget(cores=2, processes=1, workers=1), thread_budget(cores=64, processes=8, workers=4)
        (1, 4)
        >>> thread_budget(cores=2, processes=1, workers=0), thread_budget(cores=4, processes=8, workers=2)
        (2, 1)
    """
    return max(1, cores // max(1, processes) - max(0, workers))


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))  # what this process may run on (taskset, cgroups' cpusets)
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _requested() -> int | None:
    value = os.environ.get("CIR_TORCH_THREADS")
    if value is None:
        return None
    if not value.strip().isdigit() or int(value) < 1:
        raise CIRConfigError(f"`CIR_TORCH_THREADS` must be an integer >= 1, got {value!r}")
    return int(value)


class ThreadBudget(Callback):
    """Set this process's torch threads when a run is set up (see the module's docstring).

    Args:
        user_set_omp: the user set ``OMP_NUM_THREADS`` before launch: leave the threads alone.

    Example:
        >>> from types import SimpleNamespace
        >>> import torch
        >>> from cir_lightning.threads import ThreadBudget
        >>> before = torch.get_num_threads()
        >>> trainer = SimpleNamespace(strategy=SimpleNamespace(num_processes=1), datamodule=None)
        >>> ThreadBudget().setup(trainer, None, "fit") >= 1
        True
        >>> torch.set_num_threads(before)
    """

    def __init__(self, user_set_omp: bool = False) -> None:
        self.user_set_omp = user_set_omp
        self.threads: int | None = None

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> int | None:
        requested = _requested()
        if requested is None and self.user_set_omp:
            return None
        processes = int(getattr(trainer.strategy, "num_processes", 1) or 1)
        datamodule = cir_datamodule(trainer)
        workers = datamodule.num_workers if datamodule is not None else 0
        self.threads = requested or thread_budget(_cores(), processes, workers)
        torch.set_num_threads(self.threads)
        return self.threads
