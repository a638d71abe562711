"""How a ``cir-lightning`` command that is stopped ends: one line on stderr and the shell's status for the signal.

- Ctrl-C (SIGINT): Lightning catches the ``KeyboardInterrupt`` of ``fit`` / ``validate`` / ``test`` / ``predict``
  (and of ``index``'s embedding), tells the callbacks (``on_exception``: the predictions' temporary folder is
  removed, ``index`` keeps the images embedded so far) and exits with status 1, as an error would. ``stops``
  notes the key press and ends with status 130 (128 + SIGINT) instead, saying what is kept; a Ctrl-C outside
  Lightning (loading a model, reading the data, ``search``) is the same line, not a traceback.
- SIGTERM: Lightning's ``SIGTERMException`` (a bare exit with status 0, as if the run had ended), raised by its
  training loop and by the ``predict`` / ``index`` writers (Lightning's predict loop carries on), becomes 143.

Under DDP the line is said once for the run (``cir_lightning.rank_lines``). Either way nothing half-written is left under a final name: every file is written through
``cir_lightning.files``, whose temporary files and folders are removed when the write is interrupted.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Iterator
from typing import Any

from lightning.pytorch.utilities.exceptions import SIGTERMException

from cir_lightning.rank_lines import say

__all__ = ["stops"]

_KEPT = {
    "fit": "`fit --ckpt_path last` resumes from its newest checkpoint",
    "index": "the images embedded so far are kept: run the same command again to continue",
}


def _line(prog: str, what: str, command: str | None) -> str:
    kept = _KEPT.get(command or "", "files being written were removed, nothing half-written is left")
    return f"{prog}: stopped by {what}; {kept}"


@contextlib.contextmanager
def stops(prog: str, command: str | None) -> Iterator[None]:
    """Run a command's body; a Ctrl-C or a SIGTERM ends it with one line and status 130 / 143 (see the module).

    Example:
        >>> import contextlib, io, pytest
        >>> from cir_lightning.interrupts import stops
        >>> with contextlib.redirect_stderr(io.StringIO()) as err, pytest.raises(SystemExit) as stopped:
        ...     with stops("cir-lightning", "validate"):
        ...         raise KeyboardInterrupt
        >>> stopped.value.code, err.getvalue()
        (130, 'cir-lightning: stopped by Ctrl-C; files being written were removed, nothing half-written is left\\n')
    """
    pressed: list[bool] = []

    def on_sigint(signum: int, frame: Any) -> None:
        pressed.append(True)
        raise KeyboardInterrupt

    # only where Python's own handler is in place (not in a thread, nor a caller's handler, nor an ignored SIGINT)
    ours = threading.current_thread() is threading.main_thread() and \
        signal.getsignal(signal.SIGINT) is signal.default_int_handler
    if ours:
        signal.signal(signal.SIGINT, on_sigint)
    try:
        yield
    except KeyboardInterrupt:  # Lightning's launcher kills the other ranks on it: rank 0 waits for none of them
        say(_line(prog, "Ctrl-C", command), wait=False)
        sys.exit(130)  # 128 + SIGINT, what a shell reports for a process the key press ended
    except SIGTERMException:  # Lightning stops on SIGTERM with a bare SystemExit: status 0, as if the run had ended
        say(_line(prog, "SIGTERM", command))
        sys.exit(143)  # 128 + SIGTERM
    except SystemExit as err:
        if not (pressed and err.code == 1):  # Lightning's exit after a KeyboardInterrupt
            raise
        say(_line(prog, "Ctrl-C", command), wait=False)
        sys.exit(130)
    finally:
        if ours:  # Lightning leaves SIGINT ignored after a Ctrl-C: a caller in the same process gets its handler back
            signal.signal(signal.SIGINT, signal.default_int_handler)
