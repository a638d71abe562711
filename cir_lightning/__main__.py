"""The ``cir-lightning`` command's entry point (also ``python -m cir_lightning``): ``cir_lightning.cli.main``
in a process that is set up for a short life with large libraries in it.

Python's cyclic garbage collector traverses every tracked object in each full collection, and once more
when the interpreter exits. torch, Lightning and transformers leave about 600,000 of them at import,
almost none of them garbage (a collection finds 12,000). So, here only (``cli.main`` called from a program changes nothing):

- the collector is off while the libraries are imported, and what they made is then frozen
  (``gc.freeze``): later collections, during the run and in forked DataLoader workers, skip it;
- at the end, garbage is collected once (finalizers run as usual) and what is left is frozen, so the
  interpreter's own collection at exit does not traverse it again: on the 2-core development machine
  that exit took 1.5-2.0 s of a 10.5 s ``validate`` of the demo (see ``docs/performance.md``, "Start-up").

Everything else of the exit happens as before: ``atexit`` functions, logging's flush, non-daemon threads
and child processes joined, modules cleared.
"""

from __future__ import annotations

import gc


def main() -> None:
    gc.disable()
    try:
        from cir_lightning.cli import main as cli_main
    finally:
        gc.freeze()
        gc.enable()
    try:
        cli_main()
    finally:
        gc.collect()
        gc.freeze()


if __name__ == "__main__":
    main()
