"""``cir-lightning make-tiny-model OUT_DIR`` and ``cir-lightning make-synthetic-data OUT_DIR``: the demo's
model and data, built offline."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from cir_lightning.commands import COMMANDS


def main(argv: Sequence[str]) -> None:
    """Build a tiny model (``argv[0] == "make-tiny-model"``) or the synthetic benchmark into ``OUT_DIR``."""
    name = argv[0]
    parser = argparse.ArgumentParser(allow_abbrev=False, prog=f"cir-lightning {name}", description=COMMANDS[name][1])
    parser.add_argument("out_dir", help="folder to write: it must not exist" + (
        " or must be empty (--overwrite replaces a checkpoint folder)" if name == "make-tiny-model" else ""))
    parser.add_argument("--seed", type=int, default=0)
    if name == "make-tiny-model":
        parser.add_argument("--overwrite", action="store_true", help="replace an existing checkpoint folder")
        ns = parser.parse_args(argv[1:])
        from cir_lightning.backbones.tiny import make_tiny_model

        print(make_tiny_model(ns.out_dir, seed=ns.seed, overwrite=ns.overwrite))
    else:
        parser.add_argument("--num-train", type=int, default=7400)
        parser.add_argument("--num-val", type=int, default=500)
        parser.add_argument("--image-size", type=int, default=64)
        ns = parser.parse_args(argv[1:])
        from cir_lightning.data.synthetic import make_synthetic_cir

        print(make_synthetic_cir(ns.out_dir, seed=ns.seed, num_train=ns.num_train, num_val=ns.num_val,
                                 image_size=ns.image_size))
