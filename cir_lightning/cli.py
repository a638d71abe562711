"""The ``cir-lightning`` command: LightningCLI (fit / validate / test / predict) plus two offline tools.

    cir-lightning fit --config configs/demo.yaml
    cir-lightning validate --config configs/demo.yaml --ckpt_path PATH
    cir-lightning make-tiny-model OUT_DIR            # tiny random LLaVA-NeXT-style checkpoint folder
    cir-lightning make-synthetic-data OUT_DIR        # the synthetic CIR benchmark in the JSONL layout

Configs are parsed in jsonargparse's ``omegaconf+`` mode: ``${...}`` interpolation in YAML is resolved
after every config file and command-line override is applied, so ``--trainer.default_root_dir X``
also moves every path written as ``${trainer.default_root_dir}/...``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from jsonargparse import set_parsing_settings
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback

from cir_lightning.errors import CIRError
from cir_lightning.module import CIRModule
from cir_lightning.retrieval.results import free_path

TOOLS = {
    "make-tiny-model": "build a tiny random LLaVA-NeXT-style checkpoint folder (offline)",
    "make-synthetic-data": "write the synthetic CIR benchmark (JSONL layout) to a folder",
}


class KeepConfigCallback(SaveConfigCallback):
    """Saves the run's config next to its logs under a free name: ``config.yaml`` if it is not taken,
    else ``config-<stage>.yaml``, ``config-<stage>-1.yaml``, ... (a ``validate`` run in the folder of an
    earlier ``fit`` neither fails nor overwrites the earlier file)."""

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.already_saved:
            return
        log_dir = trainer.log_dir or trainer.default_root_dir
        name, stage = self.config_filename, getattr(stage, "value", stage)
        if trainer.is_global_zero:
            first = Path(log_dir) / name
            if first.exists():
                name = free_path(first.with_name(f"{first.stem}-{stage}{first.suffix}")).name
        self.config_filename = trainer.strategy.broadcast(name)
        super().setup(trainer, pl_module, stage)


class CIRLightningCLI(LightningCLI):
    """LightningCLI with cir_lightning's defaults: ``CIRModule``, any DataModule by ``class_path``,
    omegaconf interpolation, and a saved ``config.yaml`` per run that is never overwritten."""

    def __init__(self, args: Sequence[str] | None = None, run: bool = True, **kwargs: Any) -> None:
        # Under subcommands the config root is `fit.` / `validate.` ...: let `${trainer.x}` in a file mean
        # the same run's trainer.x, whichever subcommand loads it.
        set_parsing_settings(omegaconf_absolute_to_relative_paths=True)
        kwargs.setdefault("parser_kwargs", {"parser_mode": "omegaconf+", "description": _description()})
        kwargs.setdefault("save_config_callback", KeepConfigCallback)
        super().__init__(CIRModule, pl.LightningDataModule, subclass_mode_data=True, args=args, run=run,
                         **kwargs)

    def _prepare_subcommand_parser(self, klass: type, subcommand: str, **kwargs: Any) -> Any:
        parser = super()._prepare_subcommand_parser(klass, subcommand, **kwargs)
        if subcommand in ("validate", "test"):
            # CIRModule prints its own table, one row per subset; Lightning's would repeat every
            # epoch-level metric under each (queries, gallery) loader. `--verbose true` brings it back.
            parser.set_defaults(verbose=False)
        return parser

    def before_instantiate_classes(self) -> None:
        # `--ckpt_path` loads with weights_only=True unless the user explicitly says otherwise (Lightning
        # would otherwise unpickle arbitrary objects from checkpoints given by URL).
        config = self.config.get(self.subcommand) if self.subcommand else None
        if config is not None and "weights_only" in config and config["weights_only"] is None:
            config["weights_only"] = True


def _description() -> str:
    tools = "\n".join(f"  cir-lightning {name} --help   {text}" for name, text in TOOLS.items())
    return f"Composed image retrieval with PyTorch Lightning.\n\nOffline tools:\n{tools}"


def _tools(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog=f"cir-lightning {argv[0]}", description=TOOLS[argv[0]])
    parser.add_argument("out_dir", help="folder to write (must not exist, or be empty)")
    parser.add_argument("--seed", type=int, default=0)
    if argv[0] == "make-tiny-model":
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


def main(args: Sequence[str] | None = None) -> None:
    """Entry point of ``cir-lightning`` and ``python -m cir_lightning``."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # tokenizers forks into DataLoader workers
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # per-file "Loading weights" bars drown the training log
    argv = list(sys.argv[1:] if args is None else args)
    try:
        if argv and argv[0] in TOOLS:
            _tools(argv)
        else:
            CIRLightningCLI(args=None if args is None else argv)
    except CIRError as err:
        if os.environ.get("CIR_LIGHTNING_TRACEBACK"):
            raise
        # a mistake in the user's data or config: its message says what and where; no library traceback
        message = str(err)  # raised in a DataLoader worker: torch put the worker's traceback in front
        message = message.rsplit(f"{type(err).__module__}.{type(err).__name__}: ", 1)[-1].strip()
        print(f"cir-lightning: error: {message}\n(set CIR_LIGHTNING_TRACEBACK=1 to see where it was raised)",
              file=sys.stderr)
        sys.exit(2)
