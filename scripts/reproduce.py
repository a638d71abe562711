"""Our zero-shot numbers next to the published ones, for every model whose weights and data are here.

    python scripts/reproduce.py --list
    python scripts/reproduce.py --data cirr=/data/cirr --data fashioniq=/data/fashioniq --data circo=/data/CIRCO

The same as ``cir-lightning reproduce`` (``cir_lightning/commands/reproduce.py`` says what it runs and how
it compares); the configs are ``configs/zeroshot/<model>/<benchmark>.yaml``, the published numbers
``configs/zeroshot/published.yaml``, and docs/reproduction.md is the table.
"""

import sys

from cir_lightning.commands import run_command
from cir_lightning.errors import user_error_line

if __name__ == "__main__":
    try:
        run_command(["reproduce", *sys.argv[1:]])
    except Exception as err:
        line = user_error_line(err, "scripts/reproduce.py")
        if line is None:
            raise
        sys.exit(line)
