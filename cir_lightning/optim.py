"""The learning-rate schedule of ``CIRModule``: warm-up, then linear or cosine decay (or constant).

FiRE's release warms up for 3000 steps and decays linearly; the paper's settings are in
``configs/fire_stage2.yaml``. The schedule is a plain function of the step so it can be read, plotted and
tested on its own (litgpt's ``get_lr_scheduler`` is the model).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch
from lightning.pytorch.utilities import rank_zero_warn

from cir_lightning.errors import CIRConfigError

Schedule = Literal["linear", "cosine", "constant"]

__all__ = ["Schedule", "lr_factor", "lr_scheduler", "warmup_steps"]


def warmup_steps(warmup: float, total: int) -> int:
    """Warm-up length in steps: a fraction of ``total`` when ``warmup < 1``, else a number of steps.

    Example:
        >>> from cir_lightning.optim import warmup_steps
        >>> warmup_steps(0.1, 200), warmup_steps(30, 200)
        (20, 30)
    """
    return int(warmup * total) if warmup < 1 else int(warmup)


def lr_factor(schedule: Schedule, warmup: int, total: int) -> Callable[[int], float]:
    """The factor the base learning rate is multiplied by at each optimizer step.

    Warm-up rises linearly to 1 over ``warmup`` steps ((step + 1) / (warmup + 1)), then ``linear`` decays
    to 0 at ``total``, ``cosine`` follows half a cosine to 0, ``constant`` stays at 1.

    Example:
        >>> from cir_lightning.optim import lr_factor
        >>> f = lr_factor("linear", warmup=2, total=6)
        >>> [round(f(step), 3) for step in range(7)]
        [0.333, 0.667, 1.0, 0.75, 0.5, 0.25, 0.0]
        >>> round(lr_factor("cosine", 0, 4)(2), 3), lr_factor("constant", 0, 4)(3)
        (0.5, 1.0)
    """
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        if schedule == "linear":
            return 1.0 - progress
        if schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return 1.0

    return factor


def lr_scheduler(optimizer: torch.optim.Optimizer, schedule: Schedule, warmup: float,
                 total_steps: float) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-step ``LambdaLR`` following ``lr_factor``; ``total_steps`` may be infinite only for a
    ``constant`` schedule with its warm-up given in steps.

    Example:
        >>> from cir_lightning.optim import lr_scheduler
        >>> opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        >>> scheduler = lr_scheduler(opt, "linear", warmup=0.5, total_steps=4)
        >>> [round(g["lr"], 3) for g in opt.param_groups]
        [0.333]
    """
    known = math.isfinite(total_steps)
    if not known:
        if schedule != "constant" or 0 < warmup < 1:
            raise CIRConfigError(f"`lr_schedule: {schedule}` with `warmup: {warmup}` needs a known training length: "
                                 "set `trainer.max_steps` or `trainer.max_epochs` (or use `lr_schedule: constant` "
                                 "with a warm-up given in steps)")
        total_steps = 1
    total = max(1, int(total_steps))
    steps = warmup_steps(warmup, total)
    if steps >= total and known:  # e.g. FiRE's 3000 warm-up steps on a small dataset
        rank_zero_warn(f"`warmup: {warmup}` is {steps} optimizer steps, and the training has {total}: the learning "
                       f"rate never reaches `lr` (it ends at {total / (steps + 1):.2%} of it); give a shorter "
                       "warm-up, or a fraction of the training (e.g. 0.1)")
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(schedule, steps, total))
