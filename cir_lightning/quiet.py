"""Third-party messages a normal ``cir-lightning`` run does not print, each matched exactly: the module that
emits it and the start of its text. Nothing of cir_lightning's own is ever filtered, nor any other message
of these libraries.

- ``lightning.pytorch.utilities._pytree``: Lightning 2.6 still builds torch's deprecated ``LeafSpec``
  (a ``FutureWarning`` about torch internals, nothing a user can act on);
- ``transformers.modeling_utils``: peft reads the deprecated ``is_gradient_checkpointing`` of every model
  it wraps (``FutureWarning``);
- ``lightning.pytorch.callbacks.model_checkpoint``: "The dirpath has changed", when ``validate`` / ``test``
  / ``predict --ckpt_path`` restore a ``ModelCheckpoint`` into a new log folder (they write no checkpoint;
  ``fit --ckpt_path`` keeps the warning: there the resumed run forgets its best checkpoint);
- ``lightning.pytorch.utilities.data``: "Total length of `DataLoader` across ranks is zero", in ``validate`` /
  ``test``: a gallery read from the embedding cache has an empty loader (its images are not read; the run prints
  where it was read from). cir_lightning's own datasets are never empty: an empty file is refused when read;
- Lightning's log line advertising LitLogger ("Tip: For seamless cloud logging ...").
"""

from __future__ import annotations

import logging
import warnings

__all__ = ["LOG_LINES", "WARNINGS", "quiet_third_party"]

WARNINGS: list[tuple[type[Warning], str, str, tuple[str, ...]]] = [
    (FutureWarning, r"lightning\.pytorch\.utilities\._pytree", r"`isinstance\(treespec, LeafSpec\)` is deprecated",
     ()),
    (FutureWarning, r"transformers\.modeling_utils", r"`is_gradient_checkpointing` is deprecated", ()),
    (UserWarning, r"lightning\.pytorch\.callbacks\.model_checkpoint", r"The dirpath has changed from ",
     ("validate", "test", "predict")),
    (UserWarning, r"lightning\.pytorch\.utilities\.data", r"Total length of `DataLoader` across ranks is zero",
     ("validate", "test")),
]
"""(category, emitting module, start of the message, subcommands it is filtered in; () = all)."""

LOG_LINES: dict[str, tuple[str, ...]] = {
    "lightning.pytorch.utilities.rank_zero": ("💡 Tip: For seamless cloud logging",),
    "lightning.fabric.utilities.rank_zero": ("💡 Tip: For seamless cloud logging",),
}
"""Logger name -> starts of the log lines dropped from it."""


class _DropLines(logging.Filter):
    def __init__(self, starts: tuple[str, ...]) -> None:
        super().__init__()
        self.starts = starts

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.starts)


def quiet_third_party(subcommand: str | None = None) -> None:
    """Filter the messages of ``WARNINGS`` (those meant for ``subcommand``) and ``LOG_LINES``. Calling it again
    adds nothing twice.

    Example:
        >>> import warnings
        >>> from cir_lightning.quiet import quiet_third_party
        >>> with warnings.catch_warnings(record=True) as seen:
        ...     warnings.simplefilter("always")
        ...     quiet_third_party("validate")
        ...     warnings.warn_explicit("The dirpath has changed from 'a' to 'b'", UserWarning, "model_checkpoint.py", 1,
        ...                            module="lightning.pytorch.callbacks.model_checkpoint")
        ...     warnings.warn_explicit("The dirpath has changed from 'a' to 'b'", UserWarning, "mine.py", 1,
        ...                            module="my_project.callbacks")
        >>> [w.filename for w in seen]  # only the third-party one is dropped
        ['mine.py']
    """
    for category, module, message, subcommands in WARNINGS:
        if not subcommands or subcommand in subcommands:
            warnings.filterwarnings("ignore", message=message, category=category, module=module + r"\Z")
    for name, starts in LOG_LINES.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropLines) for f in logger.filters):
            logger.addFilter(_DropLines(starts))
