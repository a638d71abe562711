"""The parser behind ``cir-lightning fit / validate / test / predict``: LightningCLI's, with each mistake one line.

A bad option is two lines (a tip, then what is wrong: ``option_errors`` in place of jsonargparse's nested report),
no usage; an option is its full name, never a prefix of one; a config entry read as a whole (``model:``,
``trainer:``) given a number, list, bool or null is the line of ``model: foo``; and a config file holding one bare
entry (``model:`` alone) is read as YAML reads it, ``{model: null}`` (jsonargparse took it for the text
``model:``, and said ``Unexpected config:`` with the file's lines).
"""

from __future__ import annotations

import os
import re
from typing import Any

from jsonargparse import Namespace
from lightning.pytorch.cli import LightningArgumentParser

from cir_lightning.option_errors import not_a_mapping, option_error, required_error

try:  # a group read as a whole (`model:`, `trainer:`); private in jsonargparse: without it, its own message stays
    from jsonargparse._actions import _ActionConfigLoad
except ImportError:  # pragma: no cover
    _ActionConfigLoad = None

__all__ = ["CIRParser"]

_BARE_ENTRY = re.compile(r"\s*([A-Za-z_][\w.-]*):[ \t]*\s*")  # `model:` alone: jsonargparse's yaml_load keeps the text


class CIRParser(LightningArgumentParser):
    """LightningCLI's parser, each mistake one line (see the module)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # `--model.save_ranking` is an error, not a guess
        super().__init__(*args, **{**kwargs, "allow_abbrev": False})

    def print_usage(self, file: Any = None) -> None:  # argparse calls it only before an error; --help is whole
        return

    def error(self, message: str, ex: Exception | None = None) -> Any:
        if self.exit_on_error and not os.environ.get("CIR_LIGHTNING_TRACEBACK"):  # printed here, not nested
            subcommands = getattr(getattr(self, "_subcommands_action", None), "choices", None) or {}
            message = option_error(message) or required_error(message, subcommands) or message
        return super().error(message, ex)

    def _check_value_key(self, action: Any, value: Any, key: str, *args: Any, **kwargs: Any) -> Any:
        whole = _ActionConfigLoad is not None and isinstance(action, _ActionConfigLoad)
        if whole and not isinstance(value, str | dict | Namespace):  # `model: 3`
            raise TypeError(not_a_mapping(key, value))  # jsonargparse kept it: "model.backbone is required"
        return super()._check_value_key(action, value, key, *args, **kwargs)

    def _load_config_parser_mode(self, content: str, *args: Any, **kwargs: Any) -> Any:
        bare = _BARE_ENTRY.fullmatch(content)
        if bare:  # YAML's {key: null}, which each entry's own check then names (`model`: expected a mapping ...)
            content = f"{bare.group(1)}: null\n"
        return super()._load_config_parser_mode(content, *args, **kwargs)
