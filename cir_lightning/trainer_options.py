"""Lightning's refusal of a trainer option, as one line naming the option.

``pl.Trainer`` checks its options only when it is made, and refuses a bad one with its own exception and traceback
(``--trainer.devices 0``, ``max_steps: -5``, ``num_nodes: 0``); ``seed_everything: -1`` is refused the same way.
``refused_options`` turns such a refusal into a ``CIRConfigError`` that names the option as the command spells it
(``trainer.devices``, ``--devices``) and keeps Lightning's reason. ``check_trainer`` refuses what Lightning accepts
and then fails on mid-run (``accumulate_grad_batches: 0``) or ignores (a negative ``gradient_clip_val``).
"""

from __future__ import annotations

import contextlib
import inspect
import re
from collections.abc import Iterator, Mapping

import lightning.pytorch as pl
from lightning.fabric.utilities.exceptions import MisconfigurationException

from cir_lightning.checks import positive_int
from cir_lightning.errors import CIRConfigError, embedded_error

__all__ = ["check_trainer", "refused_options"]


def _named(message: str, names: Mapping[str, str]) -> str | None:
    """The option of ``names`` (Lightning's name -> the user's) that ``message`` names first, else None."""
    found = [(match.start(), shown) for name, shown in names.items()
             if (match := re.search(rf"(?<![\w.]){re.escape(name)}(?!\w)", message))]
    return min(found)[1] if found else None


@contextlib.contextmanager
def refused_options(names: Mapping[str, str] | None = None, prefix: str = "trainer.",
                    option: str | None = None) -> Iterator[None]:
    """Lightning's ``MisconfigurationException`` / ``ValueError`` / ``TypeError`` raised inside as one
    ``CIRConfigError`` line: ``option``, else the option its message names (a ``Trainer`` argument, shown as
    ``prefix`` + its name, or as ``names`` maps it), and Lightning's reason. A ``CIRError`` inside passes as it is,
    and so does a ``TypeError`` / ``ValueError`` that names no option (a bug somewhere, with its traceback).

    Example:
        >>> import lightning.pytorch as pl
        >>> from cir_lightning.trainer_options import refused_options
        >>> with refused_options():
        ...     pl.Trainer(accelerator="cpu", num_nodes=0)
        Traceback (most recent call last):
        ...
        cir_lightning.errors.CIRConfigError: `trainer.num_nodes`: Lightning refuses it: `num_nodes` must be a positive integer, but got 0.
    """
    try:
        yield
    except (MisconfigurationException, ValueError, TypeError) as err:
        if embedded_error(err) is not None:
            raise
        shown = {name: f"{prefix}{name}" for name in inspect.signature(pl.Trainer.__init__).parameters}
        shown["Timer(duration"] = f"{prefix}max_time"  # its refusal names the Timer it makes
        reason = " ".join(str(err).split())
        option = option or _named(reason, {**shown, **(names or {})})
        if option is None and not isinstance(err, MisconfigurationException):
            raise  # naming no option, a TypeError / ValueError is a fault of code (a plugin's), not a refusal
        raise CIRConfigError(f"`{option}`: Lightning refuses it: {reason}" if option else
                             f"the trainer's options: Lightning refuses them: {reason}") from err


def check_trainer(trainer: pl.Trainer, prefix: str = "trainer.") -> pl.Trainer:
    """``trainer``, after refusing what Lightning takes when it is made and then fails on mid-run or ignores:
    ``accumulate_grad_batches`` 0 (a division by zero; below 0, a step every batch and a schedule of one step),
    ``check_val_every_n_epoch`` or an integer ``val_check_interval`` of 0 (a division by zero), a negative
    ``gradient_clip_val`` (nothing clipped).

    Example:
        >>> import lightning.pytorch as pl
        >>> from cir_lightning.trainer_options import check_trainer
        >>> check_trainer(pl.Trainer(accelerator="cpu", accumulate_grad_batches=0, logger=False))
        Traceback (most recent call last):
        ...
        cir_lightning.errors.CIRConfigError: `trainer.accumulate_grad_batches` must be an integer >= 1, got 0
        >>> check_trainer(pl.Trainer(accelerator="cpu", gradient_clip_val=-1, logger=False))
        Traceback (most recent call last):
        ...
        cir_lightning.errors.CIRConfigError: `trainer.gradient_clip_val` must be a number >= 0 (0 or null: no clipping), got -1; Lightning clips nothing below 0
    """
    positive_int(f"{prefix}accumulate_grad_batches", trainer.accumulate_grad_batches)
    positive_int(f"{prefix}check_val_every_n_epoch", trainer.check_val_every_n_epoch, optional=True)
    if isinstance(trainer.val_check_interval, int):  # a float is a fraction of the epoch (0.0: every batch)
        positive_int(f"{prefix}val_check_interval", trainer.val_check_interval)
    clip = trainer.gradient_clip_val
    if clip is not None and clip < 0:
        raise CIRConfigError(f"`{prefix}gradient_clip_val` must be a number >= 0 (0 or null: no clipping), got {clip}; "
                             "Lightning clips nothing below 0")
    return trainer
