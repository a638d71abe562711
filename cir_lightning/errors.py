"""Exception types with actionable messages.

Every error a user can cause with their data or configuration is one of these, and its message says
what was wrong, where (file, line, id or option) and, where it helps, what to do.
"""

from __future__ import annotations

from pathlib import Path


class CIRError(Exception):
    """Base class of all cir_lightning errors."""


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
