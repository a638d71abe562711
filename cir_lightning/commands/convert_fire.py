"""FiRE's release configs on cir_lightning: ``cir-lightning convert-fire-config IN OUT`` writes the
translation (``cir_lightning.fire_config``), and ``run_release_script`` is what ``scripts/train.py`` and
``scripts/eval.py`` run: the release's own command lines, through the library.

    cir-lightning convert-fire-config eval.example.yaml eval.yaml      # then: cir-lightning validate --config eval.yaml
    python scripts/train.py --config train_stage2.example.yaml         # prints the YAML, trains, prints FiRE's line
    python scripts/eval.py --config eval.example.yaml                  # prints the YAML, evaluates, prints Recall@K
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from cir_lightning.commands import COMMANDS

Purpose = Literal["train", "eval"]


def _purpose(path: str, asked: str) -> Purpose:
    """``asked``, or for ``auto`` what the file is for: training when it sets `training` or `train_metadata`."""
    if asked != "auto":
        return "train" if asked == "fit" else "eval"
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return "eval"  # reading it again in the translation names the problem
    data = data if isinstance(data, dict) else {}
    section = data.get("data") if isinstance(data.get("data"), dict) else {}
    return "train" if "training" in data or section.get("train_metadata") else "eval"


def main(argv: Sequence[str]) -> None:
    """``cir-lightning convert-fire-config IN OUT``: write FiRE's config ``IN`` as a cir_lightning config ``OUT``."""
    from cir_lightning.files import write_atomic
    from cir_lightning.fire_config import translate_fire_config

    name = argv[0]
    parser = argparse.ArgumentParser(allow_abbrev=False, prog=f"cir-lightning {name}", description=COMMANDS[name][1])
    parser.add_argument("input", help="a FiRE release config (train_stage2.example.yaml, eval.example.yaml schema)")
    parser.add_argument("output", help="the cir_lightning config to write (never replaced unless --overwrite)")
    parser.add_argument("--for", dest="purpose", choices=["auto", "fit", "eval"], default="auto",
                        help="translate for training (scripts/train.py) or evaluation (scripts/eval.py); auto: "
                             "training when the file has a `training` section or `data.train_metadata`")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing OUTPUT")
    ns = parser.parse_args(argv[1:])
    translation = translate_fire_config(ns.input, _purpose(ns.input, ns.purpose))
    written = write_atomic(ns.output, translation.to_yaml(ns.output), overwrite=ns.overwrite)
    print(f"wrote {written}; run it with: cir-lightning {translation.subcommand} --config {written}")


def fire_metrics(metrics: Mapping[str, Any], ks: Sequence[int]) -> dict[str, float]:
    """FiRE's output, ``{"Recall@1": 0.25, ...}`` (fractions, as computed: float64, as the release's
    ``hits / n``), from an evaluation's metrics (``Recall@1`` or ``dress/Recall@1``, no stage prefix): the
    subset is kept in the key only when there are several (an average over one FashionIQ category is that
    category).

    Example:
        >>> from cir_lightning.commands.convert_fire import fire_metrics
        >>> fire_metrics({"Recall@1": 0.25, "Recall@5": 0.5, "MRR@10": 0.3}, [1, 5])
        {'Recall@1': 0.25, 'Recall@5': 0.5}
        >>> fire_metrics({"dress/Recall@1": 0.5, "average/Recall@1": 0.5}, [1])
        {'Recall@1': 0.5}
        >>> fire_metrics({"dress/Recall@1": 0.5, "shirt/Recall@1": 0.0, "average/Recall@1": 0.25}, [1])
        {'average/Recall@1': 0.25, 'dress/Recall@1': 0.5, 'shirt/Recall@1': 0.0}
    """
    wanted = [f"Recall@{k}" for k in ks]
    found: dict[tuple[str, str], float] = {}
    for key, value in metrics.items():
        subset, _, name = key.rpartition("/")
        if name in wanted:
            found[(subset, name)] = float(value)
    subsets = {subset for subset, _ in found}
    if len(subsets - {"average"}) == 1:
        found = {key: value for key, value in found.items() if key[0] != "average"}
    several = len(subsets - {"average"}) > 1
    ordered = sorted(found, key=lambda item: (item[0], wanted.index(item[1])))
    return {f"{subset}/{name}" if several else name: found[(subset, name)] for subset, name in ordered}


def _run(purpose: Purpose, config: str) -> dict[str, Any]:
    """Run the translated config through ``CIRLightningCLI`` (FiRE's release runs in one process) and return
    FiRE's output."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging as hf_logging

    from cir_lightning.cli import CIRLightningCLI
    from cir_lightning.fire_adapter import find_adapter
    from cir_lightning.fire_config import translate_fire_config

    hf_logging.disable_progress_bar()
    translation = translate_fire_config(config, purpose, run=True)
    print(f"# The same run with cir-lightning (`cir-lightning convert-fire-config {config} OUT` writes it):")
    print(translation.to_yaml(), flush=True)
    with warnings.catch_warnings():  # our own `--config` is not the run's: LightningCLI need not say so
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
        cli = CIRLightningCLI(args=[translation.subcommand, "--config", translation.to_yaml()])
    trainer = cli.trainer
    if purpose == "train":
        adapter = find_adapter(trainer.log_dir or trainer.default_root_dir)
        return {"status": "ok", "output_dir": str(adapter or trainer.log_dir)}
    results = cli.model.evaluation.last_results
    return fire_metrics(results.metrics if results is not None else {}, translation.ks)


def run_release_script(purpose: Purpose, argv: Sequence[str] | None = None) -> None:
    """FiRE's ``scripts/train.py`` (``purpose="train"``) or ``scripts/eval.py`` (``"eval"``): the same
    ``--config`` file, run by cir_lightning, the same output (``{"status": "ok", "output_dir": ...}`` with
    the exported adapter, or the ``Recall@K`` dict). A mistake in the config or the data is one line."""
    from cir_lightning.errors import user_error_line

    what = "Train FiRE" if purpose == "train" else "Evaluate FiRE"
    parser = argparse.ArgumentParser(allow_abbrev=False, prog=f"scripts/{purpose}.py",
                                     description=f"{what} from a FiRE release config, run by cir_lightning.")
    parser.add_argument("--config", required=True, help="Path to YAML config.")
    ns = parser.parse_args(sys.argv[1:] if argv is None else list(argv))
    try:
        output = _run(purpose, ns.config)
    except Exception as err:
        line = user_error_line(err, parser.prog)
        if line is None:
            raise
        print(line, file=sys.stderr)
        sys.exit(2)
    print(json.dumps(output, ensure_ascii=False, indent=None if purpose == "train" else 2))
