"""The ``cir-lightning`` command: LightningCLI (fit / validate / test / predict) plus the commands of
``cir_lightning.commands``.

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
from jsonargparse import DefaultHelpFormatter, set_parsing_settings
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.utilities import rank_zero_info

from cir_lightning.checkpointing import find_last_checkpoint, overridden_settings
from cir_lightning.cli_parser import CIRParser
from cir_lightning.commands import COMMANDS, run_command
from cir_lightning.distributed import release_process_group
from cir_lightning.errors import CIRConfigError, CIRFileError, user_error_line
from cir_lightning.files import check_writable
from cir_lightning.interrupts import stops
from cir_lightning.messages import json_type, path_problem, yaml_syntax_error
from cir_lightning.module import TRAINING_SETTINGS, CIRModule
from cir_lightning.quiet import quiet_third_party
from cir_lightning.rank_lines import say
from cir_lightning.run_folder import KeepConfigCallback, VersionClaims
from cir_lightning.threads import ThreadBudget
from cir_lightning.torch_files import load_torch_file, path_globals
from cir_lightning.trainer_options import check_trainer, refused_options

_USER_OMP = "CIR_LIGHTNING_USER_OMP"


class CIRLightningCLI(LightningCLI):
    """LightningCLI with cir_lightning's defaults: ``CIRModule`` (or the ``model_class`` subclass of it given), any
    DataModule by ``class_path``, omegaconf interpolation, and a saved ``config.yaml`` per run that is never
    overwritten. Subclass it as any LightningCLI; ``main(cli_class=...)`` runs it with our one-line errors."""

    def __init__(self, args: Sequence[str] | None = None, run: bool = True,
                 model_class: type[CIRModule] = CIRModule, **kwargs: Any) -> None:
        if not (isinstance(model_class, type) and issubclass(model_class, CIRModule)):  # its checkpoints, its options
            raise CIRConfigError(f"CIRLightningCLI's `model_class` must be CIRModule or a subclass; got {model_class!r}")
        # Under subcommands the config root is `fit.` / `validate.` ...: let `${trainer.x}` in a file mean
        # the same run's trainer.x, whichever subcommand loads it.
        set_parsing_settings(omegaconf_absolute_to_relative_paths=True)
        kwargs.setdefault("parser_kwargs", {"parser_mode": "omegaconf+", "description": _description(),
                                            "formatter_class": _HelpFormatter})
        kwargs.setdefault("save_config_callback", KeepConfigCallback)
        kwargs.setdefault("parser_class", CIRParser)
        defaults = dict(kwargs.pop("trainer_defaults", None) or {})
        user_omp = os.environ.get(_USER_OMP, "1" if "OMP_NUM_THREADS" in os.environ else "0") == "1"
        defaults["callbacks"] = [*_plugins(defaults.get("callbacks")), ThreadBudget(user_set_omp=user_omp)]
        kwargs["trainer_defaults"] = defaults
        self.version_claims = VersionClaims()  # this run's `version_N` folders, removed if it fails before writing
        with self.version_claims.released_on_failure():
            super().__init__(model_class, pl.LightningDataModule, subclass_mode_data=True, args=args, run=run, **kwargs)

    def instantiate_trainer(self, **kwargs: Any) -> pl.Trainer:
        with refused_options():  # `--trainer.devices 0`: Lightning's traceback
            trainer = check_trainer(super().instantiate_trainer(**kwargs))
        self.version_claims.claim(trainer)  # its `version_N` made now: no other run started at this moment takes it
        return trainer

    def _set_seed(self) -> None:
        with refused_options(option="seed_everything"):  # outside numpy's range: Lightning's traceback
            super()._set_seed()

    def _prepare_subcommand_parser(self, klass: type, subcommand: str, **kwargs: Any) -> Any:
        parser = super()._prepare_subcommand_parser(klass, subcommand, **kwargs)
        if subcommand in ("validate", "test"):
            # CIRModule prints its own table, one row per subset; Lightning's would repeat every
            # epoch-level metric under each (queries, gallery) loader. `--verbose true` brings it back.
            parser.set_defaults(verbose=False)
        if subcommand == "predict":  # embeddings go to disk as they come (`--predictions.*`), never kept in memory
            from cir_lightning.predictions import EmbeddingWriter

            parser.add_lightning_class_args(EmbeddingWriter, "predictions")
            parser.set_defaults(return_predictions=False)
        return parser

    def before_instantiate_classes(self) -> None:
        # `--ckpt_path` loads with weights_only=True unless the user explicitly says otherwise (Lightning
        # would otherwise unpickle arbitrary objects from checkpoints given by URL).
        config = self.config.get(self.subcommand) if self.subcommand else None
        if config is None:
            return
        if "weights_only" in config and config["weights_only"] is None:
            config["weights_only"] = True
        # LightningCLI's own `--optimizer` / `--lr_scheduler` replace CIRModule.configure_optimizers (the model's
        # optimizer, warm-up and schedule dropped) or are ignored: refused, naming the model's options
        for option in ("optimizer", "lr_scheduler"):
            if config.get(option) is not None:
                raise CIRConfigError(f"`--{option}` is LightningCLI's and would replace or be ignored by the model's "
                                     "own: set `--model.optimizer` (class and lr), `--model.lr_schedule` "
                                     "(linear, cosine, constant) and `--model.warmup`")
        # Before any model is loaded or any image embedded: the output folders can be written, and the
        # checkpoint to start from exists (`last`: the newest last.ckpt of earlier runs in the same place).
        for option, folder in output_folders(config):
            check_writable(folder, option)

    def _parse_ckpt_path(self) -> None:
        # `last` is resolved to the newest last.ckpt of the earlier runs before Lightning reads the
        # checkpoint's hyperparameters. Lightning reads them with a bare torch.load (weights_only): when that
        # fails, the file is examined without being run, and the one line says what it is (missing,
        # truncated, foreign, unsafe). A good checkpoint is read once here, as before.
        subcommand = self.config.get("subcommand")
        config = self.config.get(subcommand) if subcommand else None
        path = None
        if config is not None and config.get("ckpt_path") is not None:
            config["ckpt_path"] = resolve_ckpt_path(str(config["ckpt_path"]), config)
            path = Path(config["ckpt_path"])
        given = config.get("model").as_dict() if config is not None and config.get("model") is not None else {}
        if path is not None and path.is_file() and config.get("weights_only") is False:
            # the user's explicit choice; Lightning's own read is always weights_only=True and would refuse
            self._apply_ckpt_hparams(load_torch_file(path, weights_only=False, what="`--ckpt_path`"))
        else:
            try:
                with path_globals():  # hyperparameters may hold paths (a DataModule's `root` given as a Path)
                    super()._parse_ckpt_path()
            except Exception:
                if path is not None and path.is_file():
                    load_torch_file(path, weights_only=True, what="`--ckpt_path`")  # raises the explanation
                raise
        if subcommand == "fit" and path is not None:  # Lightning put the checkpoint's training settings in
            overridden_settings(given, self.config[subcommand]["model"].as_dict(), self.model_class, path, TRAINING_SETTINGS,
                                even_default=("objective",))

    def _apply_ckpt_hparams(self, checkpoint: Any) -> None:
        """Lightning's merge of a checkpoint's hyperparameters into the ``model`` config, for a checkpoint
        read with ``weights_only: false``."""
        hparams = dict(checkpoint.get("hyper_parameters", {}) if isinstance(checkpoint, dict) else {})
        hparams.pop("_instantiator", None)
        if not hparams:
            return
        if "_class_path" in hparams:
            hparams = {"class_path": hparams.pop("_class_path"), "dict_kwargs": hparams}
        self.config = self.parser.parse_object({self.config.subcommand: {"model": hparams}}, self.config)


def _get(config: Any, key: str) -> Any:
    """``config[key]`` for a dotted key, None where any part is missing (Namespace or dict)."""
    for part in key.split("."):
        if config is None:
            return None
        config = config.get(part) if hasattr(config, "get") else getattr(config, part, None)
    return config


def _plugins(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [] if value in (None, True, False) else [value]


def output_folders(config: Any) -> list[tuple[str, Path]]:
    """The folders a run writes to, with the option that names each: the root, each logger's
    ``save_dir`` and each checkpoint callback's ``dirpath``."""
    root = _get(config, "trainer.default_root_dir")
    folders = [("trainer.default_root_dir", Path(root) if root else Path.cwd())]
    for i, logger in enumerate(_plugins(_get(config, "trainer.logger"))):
        save_dir = _get(logger, "init_args.save_dir")
        if save_dir:
            folders.append((f"trainer.logger[{i}].init_args.save_dir", Path(save_dir)))
    for i, callback in enumerate(_plugins(_get(config, "trainer.callbacks"))):
        dirpath = _get(callback, "init_args.dirpath")
        if dirpath:
            folders.append((f"trainer.callbacks[{i}].init_args.dirpath", Path(dirpath)))
    return folders


def resolve_ckpt_path(ckpt_path: str, config: Any) -> str:
    """``--ckpt_path`` checked before the run: a path must exist; ``last`` becomes the newest ``last.ckpt``
    under the run's folders (Lightning looks only in the NEW run's checkpoint folder, finds nothing,
    warns once and trains from scratch), or is refused when there is none."""
    if ckpt_path == "best":  # Lightning's "best" is the best of a fit in the same process: none in a new command
        raise CIRConfigError("`--ckpt_path best` names the best checkpoint of a `fit` run in the same process, and "
                             "this command starts a new one: give the best checkpoint's path (its file under the "
                             "run's checkpoints folder), or `last`")
    if ckpt_path in ("hpc", "registry") or "://" in ckpt_path or ckpt_path.startswith("registry:"):
        return ckpt_path
    if ckpt_path != "last":
        problem = path_problem(ckpt_path, "a checkpoint file")
        if problem is not None and not (Path(ckpt_path) / "checkpoint").is_dir():  # DeepSpeed's are folders
            raise CIRFileError(f"`--ckpt_path`: `{ckpt_path}` {problem}")
        return ckpt_path
    roots = list(dict.fromkeys(folder for _, folder in output_folders(config)))
    last = find_last_checkpoint(roots)
    if last is None:
        raise CIRConfigError(f"`--ckpt_path last`: there is no last.ckpt below {', '.join(f'`{r}`' for r in roots)} "
                             "to resume from (is `--trainer.default_root_dir` the folder of the earlier run, and "
                             "did its ModelCheckpoint have `save_last: true`?). Give a checkpoint's path, or leave "
                             "out `--ckpt_path` to start a new run")
    rank_zero_info(f"--ckpt_path last: resuming from {last} (the newest last.ckpt below {', '.join(map(str, roots))})")
    return str(last)


def check_config_files(argv: Sequence[str]) -> None:
    """Every ``--config`` file exists and is valid YAML, else one line naming the file, line and column
    (jsonargparse would name the YAML text ``<unicode string>``)."""
    import yaml

    for i, arg in enumerate(argv):
        value = arg.split("=", 1)[1] if arg.startswith("--config=") else argv[i + 1] if arg == "--config" and \
            i + 1 < len(argv) else None
        if value is None or value.lstrip().startswith(("{", "[")) or "\n" in value:
            continue  # an inline YAML/JSON value: jsonargparse reports it
        problem = path_problem(value, "a config file")
        if problem is not None:
            raise CIRFileError(f"`--config`: `{value}` {problem}")
        path = Path(value)
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except UnicodeDecodeError as err:
            raise CIRConfigError(f"{value}: not valid UTF-8 (byte {err.start + 1})") from None
        except yaml.YAMLError as err:
            raise CIRConfigError(yaml_syntax_error(value, err)) from None
        except RecursionError:
            raise CIRConfigError(f"{value}: YAML nested too deeply") from None
        if not isinstance(loaded, dict):  # jsonargparse: "Unexpected config: " and the file's text
            raise CIRConfigError(f"{value}: a config is a mapping of options (trainer:, model:, data: ...), got "
                                 + ("nothing" if loaded is None else f"a YAML {json_type(loaded)}"))


class _HelpFormatter(DefaultHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """jsonargparse's help, with the description's lines kept (the list of other commands)."""


def _description() -> str:
    width = max(map(len, COMMANDS)) + 24
    tools = "\n".join(f"  {f'cir-lightning {name} --help':<{width}}{text}" for name, (_, text) in COMMANDS.items())
    return f"Composed image retrieval with PyTorch Lightning.\n\nOther commands:\n{tools}"


def main(args: Sequence[str] | None = None, cli_class: type[CIRLightningCLI] = CIRLightningCLI, **cli_kwargs: Any) -> None:
    """Entry point of ``cir-lightning`` and ``python -m cir_lightning``; a project's own command passes its
    ``cli_class`` (a ``CIRLightningCLI`` subclass) and keyword arguments for it (``model_class=...``)."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # tokenizers forks into DataLoader workers
    # whether the user chose the threads, read before Lightning sets OMP_NUM_THREADS for DDP (children inherit it)
    os.environ.setdefault(_USER_OMP, "1" if "OMP_NUM_THREADS" in os.environ else "0")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # per-file "Loading weights" bars drown the training log
    argv = list(sys.argv[1:] if args is None else args)
    subcommand = next((a for a in argv if not a.startswith("-")), None)
    quiet_third_party(subcommand)
    try:
        with stops("cir-lightning", subcommand):  # Ctrl-C, SIGTERM: one line, 130 / 143
            if argv and argv[0] in COMMANDS:
                run_command(argv)
            else:
                check_config_files(argv)
                cli = cli_class(args=None if args is None else argv, **cli_kwargs)
                del cli
                release_process_group()
    except Exception as err:
        # a mistake in the user's data or config: its message says what and where; no library traceback
        line = user_error_line(err, "cir-lightning")
        if line is None:
            raise
        say(line)  # once for a run of several processes (rank_lines)
        sys.exit(2)
