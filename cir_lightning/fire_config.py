"""FiRE's release configs (its ``scripts/train.py`` / ``scripts/eval.py`` YAML) as cir_lightning configs.

``read_fire_config`` reads a release YAML the way the release does (its defaults, ``RELEASE_DEFAULTS``, with
the file's values over them) and refuses what the release would have ignored or crashed on: an unknown
key, a value of the wrong type, each one line naming the file, line and key. ``translate_fire_config``
turns it into the LightningCLI config of the same run (``XGenMMBackbone``, a DataModule per
``data.task``, ``CIRModule`` options) with notes where the run differs from the release and why; the
mapping both ways is in docs/fire.md. Paths stay as written: like the release, they are relative to the
folder the command runs in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from cir_lightning.errors import CIRConfigError
from cir_lightning.fire_mapping import translate
from cir_lightning.messages import yaml_syntax_error

__all__ = ["RELEASE_DEFAULTS", "FireTranslation", "read_fire_config", "translate_fire_config"]

_END = " <|end|>" * 5
_QUERY = "Given the reference image <image> but modify it with: {modification}. Describe the new image ?" + _END
_LLAMA_NAMES = ["k_proj", "q_proj", "v_proj", "o_proj", "gate_proj", "down_proj", "up_proj"]
RELEASE_DEFAULTS: dict[str, Any] = {
    "seed": 42,
    "model.base_model": "Salesforce/xgen-mm-phi3-mini-instruct-interleave-r-v1.5", "model.adapter_path": None,
    "model.torch_dtype": "float16", "model.freeze_base_model": True,
    "model.lora.enabled": True, "model.lora.r": 64, "model.lora.alpha": 128, "model.lora.dropout": 0.1,
    "model.lora.target_modules": _LLAMA_NAMES,
    "data.image_root": None, "data.train_metadata": None, "data.query_metadata": None, "data.gallery_metadata": None,
    "data.task": "custom_jsonl", "data.split": "val", "data.dress_type": None, "data.max_short_edge": 380,
    "data.num_workers": 4,
    "prompts.train_query": _QUERY, "prompts.train_target": "{target_caption} ." + _END,
    "prompts.gallery": "Describe the image <image> ?" + _END, "prompts.eval_query": _QUERY,
    "training.output_dir": "outputs/fire_stage2", "training.per_device_train_batch_size": 4,
    "training.gradient_accumulation_steps": 1, "training.num_train_epochs": 2, "training.learning_rate": 1e-4,
    "training.weight_decay": 0.01, "training.warmup_steps": 3000, "training.logging_steps": 50,
    "training.save_every_steps": 1000, "training.max_length": 512, "training.fp16": True, "training.loss_scale": 100.0,
    "training.recall_loss_weight_at_1": 0.4, "training.recall_loss_weight_at_5": 0.15,
    "eval.batch_size": 16, "eval.max_length": 512, "eval.ks": [1, 5, 10, 50], "eval.exclude_reference": True,
}
"""Every key of the release's schema (dotted) with the release's default, which a file's value replaces."""

_OPTIONAL = {"model.adapter_path", "data.image_root", "data.train_metadata", "data.query_metadata",
             "data.gallery_metadata", "data.dress_type", "training.save_every_steps"}
_TASKS = ("custom_jsonl", "fashioniq", "cirr")
_SECTIONS = {key.rsplit(".", 1)[0] for key in RELEASE_DEFAULTS if "." in key}


def _load_with_lines(path: Path) -> tuple[Any, dict[str, int]]:
    """The YAML document and the line of every dotted key in it (a key given twice is an error)."""
    try:
        loader = yaml.SafeLoader(path.read_text(encoding="utf-8"))
        try:
            node = loader.get_single_node()
            data = loader.construct_document(node) if node is not None else None
        finally:
            loader.dispose()
    except (OSError, UnicodeDecodeError) as err:
        raise CIRConfigError(f"{path}: cannot read the FiRE config: {err}") from None
    except yaml.YAMLError as err:
        raise CIRConfigError(yaml_syntax_error(path, err)) from None
    lines: dict[str, int] = {}

    def walk(current: Any, prefix: str) -> None:
        if isinstance(current, yaml.MappingNode):
            for key, value in current.value:
                dotted = f"{prefix}{key.value}"
                if dotted in lines:
                    raise CIRConfigError(f"{path}:{key.start_mark.line + 1}: `{dotted}` is given twice (first on "
                                         f"line {lines[dotted]}); YAML would keep only the last")
                lines[dotted] = key.start_mark.line + 1
                walk(value, dotted + ".")

    walk(node, "")
    return data, lines


def _flatten(data: dict[str, Any], prefix: str, where: str, lines: dict[str, int], out: dict[str, Any]) -> None:
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        at = f"{where}:{lines.get(dotted, '?')}"
        if dotted in _SECTIONS:
            if not isinstance(value, dict):
                raise CIRConfigError(f"{at}: `{dotted}` must be a mapping of keys, got {value!r}")
            _flatten(value, dotted + ".", where, lines, out)
        elif dotted in RELEASE_DEFAULTS:
            out[dotted] = value
        else:
            section = prefix[:-1]
            known = sorted({k[len(prefix):].split(".")[0] for k in RELEASE_DEFAULTS if k.startswith(prefix)})
            hint = " (FiRE reads LoRA settings from `model.lora`)" if dotted.startswith("lora") else ""
            raise CIRConfigError(f"{at}: unknown key `{dotted}` in a FiRE config{hint}; the keys of "
                                 f"`{section or 'the top level'}` are: {', '.join(known)}")


_AT_LEAST_ONE = {"model.lora.r", "model.lora.alpha", "data.max_short_edge", "training.per_device_train_batch_size",
                 "training.gradient_accumulation_steps", "training.num_train_epochs", "training.logging_steps",
                 "training.max_length", "eval.batch_size", "eval.max_length"}
_POSITIVE = {"training.learning_rate", "training.loss_scale"}
_NOT_NEGATIVE = {"training.weight_decay", "training.recall_loss_weight_at_1", "training.recall_loss_weight_at_5"}
"""Values a FiRE run cannot use, refused here naming the FiRE file, line and key (not later, naming ours)."""
_MAX_SEED = 2**32 - 1  # numpy's (and so Lightning's `seed_everything`'s) largest seed


def _check_range(key: str, value: Any, at: str) -> None:
    if isinstance(value, float) and not math.isfinite(value):  # .inf: AdamW takes it, and every weight goes NaN
        raise CIRConfigError(f"{at}: `{key}` must be a finite number, got {value!r}")
    if key == "seed" and value > _MAX_SEED:
        raise CIRConfigError(f"{at}: `seed` must be at most {_MAX_SEED} (numpy's seeds), got {value!r}")
    if key in _AT_LEAST_ONE and value < 1:
        raise CIRConfigError(f"{at}: `{key}` must be at least 1, got {value!r}")
    if key in _POSITIVE and not value > 0:
        raise CIRConfigError(f"{at}: `{key}` must be greater than 0, got {value!r}")
    if key in _NOT_NEGATIVE and not value >= 0:
        raise CIRConfigError(f"{at}: `{key}` must be at least 0, got {value!r}")
    if key == "model.lora.dropout" and not 0 <= value < 1:
        raise CIRConfigError(f"{at}: `{key}` must be from 0 to below 1, got {value!r}")


def _check_type(key: str, value: Any, at: str) -> None:
    default = RELEASE_DEFAULTS[key]
    if value is None and key in _OPTIONAL:
        return
    if isinstance(default, bool):
        ok, kind = isinstance(value, bool), "true or false"
    elif isinstance(default, int) or key == "training.save_every_steps":
        ok, kind = isinstance(value, int) and not isinstance(value, bool) and value >= 0, "an integer >= 0"
    elif isinstance(default, float):
        ok, kind = isinstance(value, int | float) and not isinstance(value, bool), "a number"
    elif key == "eval.ks":
        ok = isinstance(value, list) and bool(value) and all(type(k) is int and k >= 1 for k in value)
        ok, kind = ok and len(set(value)) == len(value), "a list of distinct integers >= 1"
    elif isinstance(default, list):
        ok = isinstance(value, list) and bool(value) and all(isinstance(k, str) and k.strip() for k in value)
        kind = "a list of names"
    else:
        ok, kind = isinstance(value, str) and bool(value.strip()), "a non-empty string"
    if not ok:
        hint = " (YAML reads 1e-4 as text: write 1.0e-4)" if isinstance(value, str) and kind == "a number" else ""
        raise CIRConfigError(f"{at}: `{key}` must be {kind}, got {value!r}{hint}")
    if value is not None:
        _check_range(key, value, at)


def read_fire_config(path: str | Path) -> dict[str, Any]:
    """The settings of a FiRE release config: ``RELEASE_DEFAULTS`` with the file's values over them (dotted
    keys), and for messages ``_file`` (the path) and ``_lines`` (the line where the file sets each key).

    Example:
        >>> import tempfile
        >>> from cir_lightning.fire_config import read_fire_config
        >>> path = Path(tempfile.mkdtemp()) / "eval.yaml"
        >>> _ = path.write_text("seed: 7\\neval:\\n  ks: [1, 10]\\n")
        >>> settings = read_fire_config(path)
        >>> settings["seed"], settings["eval.ks"], settings["eval.batch_size"]
        (7, [1, 10], 16)
        >>> _ = path.write_text("model:\\n  lora:\\n    rank: 8\\n")
        >>> read_fire_config(path)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        cir_lightning.errors.CIRConfigError: .../eval.yaml:3: unknown key `model.lora.rank` in a FiRE config; ...
    """
    path = Path(path)
    if not path.is_file():
        raise CIRConfigError(f"`--config`: the FiRE config `{path}` does not exist or is not a file")
    data, lines = _load_with_lines(path)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise CIRConfigError(f"{path}: a FiRE config is a mapping of keys (seed, model, data, ...), got {data!r}")
    given: dict[str, Any] = {}
    _flatten(data, "", str(path), lines, given)
    for key, value in given.items():
        _check_type(key, value, f"{path}:{lines.get(key, '?')}")
    if given.get("data.task", "custom_jsonl") not in _TASKS:
        raise CIRConfigError(f"{path}:{lines['data.task']}: `data.task` must be one of {', '.join(_TASKS)}, "
                             f"got {given['data.task']!r}")
    return {**RELEASE_DEFAULTS, **given, "_file": str(path), "_lines": lines}


@dataclass
class FireTranslation:
    """A FiRE release config as a cir_lightning run.

    Args:
        config: the LightningCLI config (``seed_everything``, ``trainer``, ``model``, ``data``).
        subcommand: the ``cir-lightning`` subcommand that runs it (``fit``, ``validate`` or ``test``).
        ks: the cut-offs of FiRE's output (``eval.ks``).
        notes: where the run differs from the release, and why.

    Example:
        >>> from cir_lightning.fire_config import FireTranslation
        >>> t = FireTranslation({"seed_everything": 42}, "validate", [1, 5], ["a note"])
        >>> print(t.to_yaml("run.yaml"))
        # Translated from a FiRE release config. Run it with:
        #   cir-lightning validate --config run.yaml
        # Differences from the release:
        # - a note
        seed_everything: 42
        <BLANKLINE>
    """

    config: dict[str, Any]
    subcommand: str
    ks: list[int]
    notes: list[str] = field(default_factory=list)

    def to_yaml(self, name: str = "THIS_FILE.yaml") -> str:
        """The config as YAML, headed by comments: the command that runs it (as ``name``) and the notes."""
        head = ["Translated from a FiRE release config. Run it with:",
                f"  cir-lightning {self.subcommand} --config {name}"]
        if self.notes:
            head += ["Differences from the release:", *(f"- {note}" for note in self.notes)]
        body = yaml.safe_dump(self.config, sort_keys=False, allow_unicode=True, width=120)
        return "".join(f"# {line}\n" for line in head) + body


def translate_fire_config(path: str | Path, purpose: Literal["train", "eval"], run: bool = False) -> FireTranslation:
    """The cir_lightning run of FiRE's ``scripts/train.py`` (``purpose="train"``) or ``scripts/eval.py``
    (``"eval"``) with the config at ``path``; ``run``: it starts now, so ``model.adapter_path`` must exist (a
    conversion may precede the training that writes it).

    Example:
        >>> import tempfile
        >>> from cir_lightning.fire_config import translate_fire_config
        >>> path = Path(tempfile.mkdtemp()) / "eval.yaml"
        >>> _ = path.write_text("data:\\n  query_metadata: q.jsonl\\n  gallery_metadata: g.jsonl\\n")
        >>> t = translate_fire_config(path, "eval")
        >>> t.subcommand, t.config["data"]["class_path"], t.config["model"]["eval_ks"]
        ('validate', 'cir_lightning.data.JsonlCIRDataModule', [1, 5, 10, 50])
    """
    config, subcommand, notes = translate(read_fire_config(path), train=purpose == "train", run=run)
    return FireTranslation(config, subcommand, list(config["model"]["eval_ks"]), notes)
