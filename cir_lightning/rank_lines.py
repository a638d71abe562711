"""The line a command ends with (a user's error, a Ctrl-C, a SIGTERM), said once by a run of several processes.

Under DDP every process runs the command, and an error in the data or the config is usually met by all of them
at once: each printed the same line, N lines for N processes. ``say`` prints it once, and never hides a line
that is not the one every process has:

- one process (or no process group yet: an error before the processes are started) prints its line;
- rank 0 prints its line, then posts it in the process group's store (a key-value server in rank 0's process)
  and waits, up to ``FIRST_WAITS_S``, until the other ranks have read it (its process ending ends the store);
- any other rank waits, up to ``OTHERS_WAIT_S``, for rank 0's line, and prints its own, marked ``[rank r]``,
  unless rank 0 printed the very same line. So a message of rank 1 alone (its share of the data, its GPU's
  memory), or one rank 0 did not say in time (rank 0 busy elsewhere, or gone), is printed by that rank, named.

Across nodes the store is the same (rank 0's), so the rule holds for the whole run.
"""

from __future__ import annotations

import contextlib
import sys
from datetime import timedelta
from typing import Any, TextIO

__all__ = ["FIRST_WAITS_S", "OTHERS_WAIT_S", "say", "say_through"]

FIRST_WAITS_S = 2.0
"""How long rank 0 waits for the other ranks to read its line before its process, and the store, end."""
OTHERS_WAIT_S = 3.0
"""How long another rank waits for rank 0's line before it prints its own (marked with its rank)."""
_KEY = "cir_lightning/said"


def _store() -> Any:
    """The default process group's store, or None without a process group."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return None
    try:
        from torch.distributed.distributed_c10d import _get_default_store

        return _get_default_store()
    except (ImportError, RuntimeError, ValueError):
        return None


def say(line: str, out: TextIO | None = None, wait: bool = True) -> None:
    """Print ``line`` (on stderr), once for a run of several processes (see the module). ``wait=False``: rank 0 posts
    its line but does not wait for the others to read it (after a Ctrl-C, Lightning's launcher kills them).

    Example:
        >>> import io
        >>> from cir_lightning.rank_lines import say
        >>> out = io.StringIO()
        >>> say("cir-lightning: error: `k` must be >= 1, got 0", out)  # one process: printed
        >>> out.getvalue()
        'cir-lightning: error: `k` must be >= 1, got 0\\n'
    """
    out = out or sys.stderr
    store = _store()
    if store is None:
        print(line, file=out, flush=True)
        return
    from cir_lightning.distributed import world

    rank, size = world()
    say_through(store, line, rank, size, out, first_waits_s=FIRST_WAITS_S if wait else 0.0)


def say_through(store: Any, line: str, rank: int, size: int, out: TextIO, first_waits_s: float = FIRST_WAITS_S,
                others_wait_s: float = OTHERS_WAIT_S) -> None:
    """``say``'s rule for process ``rank`` of ``size``, through ``store`` (a ``torch.distributed.Store``): rank 0
    prints and posts; another rank prints, marked, unless rank 0 posted the same line. A store that cannot answer
    (timed out, rank 0 gone) means the line is printed."""
    if size <= 1 or rank == 0:
        print(line, file=out, flush=True)
        if size > 1:  # only after it is printed: a rank that reads it stays silent
            with contextlib.suppress(Exception):
                store.set(_KEY, line)
                if first_waits_s > 0:
                    store.wait([f"{_KEY}/read/{r}" for r in range(1, size)], timedelta(seconds=first_waits_s))
        return
    first = None
    with contextlib.suppress(Exception):
        store.wait([_KEY], timedelta(seconds=others_wait_s))
        first = store.get(_KEY).decode("utf-8")
    if first != line:
        print(f"[rank {rank}] {line}", file=out, flush=True)
    with contextlib.suppress(Exception):
        store.set(f"{_KEY}/read/{rank}", "1")
