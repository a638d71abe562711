"""Exception types with actionable messages.

Every error a user can cause with their data or configuration is one of these, and its message says
what was wrong, where (file, line, id or option) and, where it helps, what to do.
"""

from __future__ import annotations

import os
from pathlib import Path


class CIRError(Exception):
    """Base class of all cir_lightning errors.

    The latest one raised is remembered (``CIRError.latest``): a library that catches it and raises its own
    error instead (jsonargparse does, when a class it instantiates refuses an option) still lets the
    command line show our one clear line (see ``embedded_error``).
    """

    latest: CIRError | None = None

    def __init__(self, *args: object) -> None:
        super().__init__(*args)
        CIRError.latest = self


def embedded_error(err: BaseException) -> CIRError | None:
    """The ``CIRError`` behind ``err``: ``err`` itself, one in its cause / context chain, or the latest one
    raised whose message ``err``'s text quotes (a library wrapped it into its own message).

    Example:
        >>> inner = CIRConfigError("`batch_size` must be an integer >= 1, got 0")
        >>> embedded_error(ValueError(f"Does not validate: - {inner}")) is inner
        True
        >>> embedded_error(ValueError("unrelated")) is None
        True
    """
    seen = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        if isinstance(current, CIRError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    latest = CIRError.latest
    if latest is not None and str(latest) and str(latest).splitlines()[0] in str(err):
        return latest
    return None


def user_error_line(err: BaseException, prog: str) -> str | None:
    """The one line a command prints for ``err`` when it is a mistake in the user's data or config (a
    ``CIRError``, also wrapped by a library or raised in a DataLoader worker); None when it is not one, or
    when ``CIR_LIGHTNING_TRACEBACK`` is set (then the caller re-raises it with its traceback).

    Example:
        >>> from cir_lightning.errors import CIRConfigError, user_error_line
        >>> user_error_line(CIRConfigError("`k` must be >= 1, got 0"), "cir-lightning").splitlines()[0]
        'cir-lightning: error: `k` must be >= 1, got 0'
        >>> user_error_line(KeyError("x"), "cir-lightning") is None
        True
    """
    ours = embedded_error(err)
    if ours is None or os.environ.get("CIR_LIGHTNING_TRACEBACK"):
        return None
    # raised in a DataLoader worker: torch put the worker's traceback in front of the message
    message = str(ours).rsplit(f"{type(ours).__module__}.{type(ours).__name__}: ", 1)[-1].strip()
    return f"{prog}: error: {message}\n(set CIR_LIGHTNING_TRACEBACK=1 to see where it was raised)"


class CIRDataError(CIRError, ValueError):
    """Bad or missing data: an annotation line, a field, an image or a path.

    Args:
        message: what is wrong.
        file: the file in which the problem was found.
        line: the 1-based line number in ``file``, when there is one.

    Example:
        >>> str(CIRDataError("missing field `modification`", file="train.jsonl", line=3))
        'train.jsonl:3: missing field `modification`'
    """

    def __init__(self, message: str, file: str | Path | None = None, line: int | None = None) -> None:
        self.file = None if file is None else str(file)
        self.line = line
        where = ""
        if self.file is not None:
            where = f"{self.file}:{line}: " if line is not None else f"{self.file}: "
        super().__init__(where + message)


class CIRConfigError(CIRError, ValueError):
    """An option or a combination of options that cannot work, named in the message."""


class CIRModelError(CIRError, RuntimeError):
    """A model, tokenizer or checkpoint that does not fit what cir_lightning needs from it."""


class CIRFileError(CIRError, OSError):
    """A file or folder that cannot be written (or read): full disk, permissions, a name already taken."""


def weight_mismatch(expected: dict[str, tuple[int, ...] | None], found: dict[str, tuple[int, ...] | None]) -> str:
    """What differs between the weights a model expects and those a file holds (names -> shapes; a shape
    of None is not compared), or "" when they agree.

    Example:
        >>> weight_mismatch({"a": (2,), "b": (3,)}, {"a": (4,), "c": (1,)})
        "1 missing (first: ['b']), 1 unexpected (first: ['c']), 1 of another shape (first: a: (4,) in the file, (2,) here)"
        >>> weight_mismatch({"a": (2,)}, {"a": (2,), "c": (1,)})  # only what differs is named
        "1 unexpected (first: ['c'])"
    """
    missing, extra = sorted(set(expected) - set(found)), sorted(set(found) - set(expected))
    shape = sorted(k for k in set(expected) & set(found)
                   if None not in (expected[k], found[k]) and tuple(expected[k]) != tuple(found[k]))
    parts = [f"{len(missing)} missing (first: {missing[:3]})"] if missing else []
    parts += [f"{len(extra)} unexpected (first: {extra[:3]})"] if extra else []
    parts += [f"{len(shape)} of another shape (first: {shape[0]}: {tuple(found[shape[0]])} in the file, "
              f"{tuple(expected[shape[0]])} here)"] if shape else []
    return ", ".join(parts)
