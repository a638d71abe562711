"""Checks of numeric options, run when an option is set (in constructors), naming the option.

A bad number must never reach torch or faiss, where it would end in a traceback far from its cause
(``batch_size: 0``) or, worse, in a run that finishes with a wrong result (``max_short_edge: 0``
shrinks every image to 1x1). Every constructor that takes a count, a size or a cut-off calls one of
these, so a new option is checked by adding one line.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from cir_lightning.errors import CIRConfigError


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def positive_int(name: str, value: object, *, optional: bool = False) -> int | None:
    """``value`` if it is an integer >= 1 (or None when ``optional``), else a ``CIRConfigError``.

    Example:
        >>> positive_int("batch_size", 4)
        4
        >>> positive_int("batch_size", 0)
        Traceback (most recent call last):
        ...
        cir_lightning.errors.CIRConfigError: `batch_size` must be an integer >= 1, got 0
    """
    return _int_at_least(name, value, 1, optional)


def non_negative_int(name: str, value: object, *, optional: bool = False) -> int | None:
    """``value`` if it is an integer >= 0 (or None when ``optional``).

    Example:
        >>> non_negative_int("num_workers", -1)
        Traceback (most recent call last):
        ...
        cir_lightning.errors.CIRConfigError: `num_workers` must be an integer >= 0, got -1
    """
    return _int_at_least(name, value, 0, optional)


def _int_at_least(name: str, value: object, minimum: int, optional: bool) -> int | None:
    if value is None and optional:
        return None
    if not _is_int(value) or value < minimum:
        raise CIRConfigError(f"`{name}` must be an integer >= {minimum}, got {value!r}")
    return value


def positive_number(name: str, value: object, *, optional: bool = False) -> float | None:
    """``value`` if it is a finite number > 0.

    Example:
        >>> positive_number("tau2", 0.0)
        Traceback (most recent call last):
        ...
        cir_lightning.errors.CIRConfigError: `tau2` must be a finite number > 0, got 0.0
    """
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
        raise CIRConfigError(f"`{name}` must be a finite number > 0, got {value!r}")
    return value


def number_in(name: str, value: object, low: float, high: float, *, high_open: bool = False) -> float:
    """``value`` if it is a number in ``[low, high]`` (``[low, high)`` with ``high_open``).

    Example:
        >>> number_in("dropout", 1.0, 0, 1, high_open=True)
        Traceback (most recent call last):
        ...
        cir_lightning.errors.CIRConfigError: `dropout` must be a number in [0, 1), got 1.0
    """
    ok = not isinstance(value, bool) and isinstance(value, int | float) and math.isfinite(value)
    if not ok or value < low or value > high or (high_open and value == high):
        bracket = ")" if high_open else "]"
        raise CIRConfigError(f"`{name}` must be a number in [{low}, {high}{bracket}, got {value!r}")
    return value


def cutoffs(name: str, values: object) -> list[int]:
    """A non-empty list of distinct integers >= 1 (the cut-offs K of a metric), sorted.

    Example:
        >>> cutoffs("eval_ks", [10, 1, 5])
        [1, 5, 10]
        >>> cutoffs("eval_ks", [])
        Traceback (most recent call last):
        ...
        cir_lightning.errors.CIRConfigError: `eval_ks` must be a non-empty list of integers >= 1, got []
        >>> cutoffs("eval_ks", [-1, 5])
        Traceback (most recent call last):
        ...
        cir_lightning.errors.CIRConfigError: `eval_ks` must be a non-empty list of integers >= 1, got [-1, 5]
    """
    if (not isinstance(values, Sequence) or isinstance(values, str) or not values
            or not all(_is_int(k) and k >= 1 for k in values)):
        raise CIRConfigError(f"`{name}` must be a non-empty list of integers >= 1, got {values!r}")
    if len(set(values)) != len(values):
        raise CIRConfigError(f"`{name}` lists a cut-off more than once: {list(values)}")
    return sorted(values)
