"""``cir-lightning`` that SIGKILLs its whole process group (every DDP rank) once the first process has saved
``CIR_KILL_AFTER_SHARDS`` index shards, as a crash or a pre-empted job would. Run as a script (Lightning then
starts the other ranks with it too, ``tests/test_image_index.py``); importing it changes nothing."""

from __future__ import annotations

import os
import signal
import sys


def _patch() -> None:
    import cir_lightning.indexing as indexing

    flush = indexing.ShardWriter._flush

    def flush_then_kill(self: indexing.ShardWriter, rank: int) -> None:
        flush(self, rank)
        if rank == 0 and self._seq >= int(os.environ["CIR_KILL_AFTER_SHARDS"]):
            sys.stdout.flush()
            os.killpg(os.getpgid(0), signal.SIGKILL)

    indexing.ShardWriter._flush = flush_then_kill


if __name__ == "__main__":
    _patch()
    from cir_lightning.cli import main

    main()
