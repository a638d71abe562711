"""The ``cir-lightning`` commands besides LightningCLI's ``fit`` / ``validate`` / ``test`` / ``predict``.

Each command is a module here with a ``main(argv)`` function (argparse; errors raised as ``CIRError``s,
which the entry point prints as one line). They are registered in ``COMMANDS`` (name -> module and
one-line help) and imported only when run, so ``cir-lightning fit`` pays for none of them.

Example:
    >>> from cir_lightning.commands import COMMANDS
    >>> COMMANDS["make-tiny-model"][0], "convert-fire-config" in COMMANDS
    ('cir_lightning.commands.offline', True)
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence

COMMANDS: dict[str, tuple[str, str]] = {
    "make-tiny-model": ("cir_lightning.commands.offline",
                        "build a tiny random LLaVA-NeXT-style checkpoint folder (offline)"),
    "make-synthetic-data": ("cir_lightning.commands.offline",
                            "write the synthetic CIR benchmark (JSONL layout) to a folder"),
    "index": ("cir_lightning.commands.index", "embed every image below a folder into a search index (resumable)"),
    "search": ("cir_lightning.commands.search", "the indexed images closest to a reference image changed by a text"),
    "serve": ("cir_lightning.commands.serve", "a local web page to search an index, one reference at a time"),
    "show": ("cir_lightning.commands.show", "draw the Recall@K curves and retrievals of a results file with rankings"),
    "convert-fire-config": ("cir_lightning.commands.convert_fire", "write a FiRE release config as a cir-lightning config"),
    "reproduce": ("cir_lightning.commands.reproduce",
                  "run the zero-shot config of every published model whose weights and data are here; ours vs published"),
}
"""Command name -> (module with ``main(argv)``, one-line help)."""


def run_command(argv: Sequence[str]) -> None:
    """Run ``argv[0]`` (a name in ``COMMANDS``) with the arguments after it."""
    module, _ = COMMANDS[argv[0]]
    importlib.import_module(module).main(list(argv))
