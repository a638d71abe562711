"""``cir-lightning reproduce``: run the zero-shot config of every published model whose weights and data are
here, and print our numbers next to the published ones.

    cir-lightning reproduce --list                    # every config, and what it needs that is not here
    cir-lightning reproduce --data cirr=/data/cirr --data fashioniq=/data/fashioniq --data circo=/data/CIRCO
    cir-lightning reproduce --only e5v --only gme_2b/circo --data circo=/data/CIRCO -- --trainer.devices 8

The configs are ``configs/zeroshot/<model>/<benchmark>.yaml``; the published numbers are
``configs/zeroshot/published.yaml`` (model -> benchmark -> split, source, metrics in percent). A config
runs when its weights are here (a folder, or a hub name already in the Hugging Face cache: runs are
offline, nothing is downloaded unless ``--allow-download``) and its benchmark's data root is given
(``--data BENCHMARK=ROOT``) or the config's own ``data.init_args.root`` exists. Each run is
``cir-lightning validate`` in its own process, below ``--out``; arguments after ``--`` go to every run.
We compare on the split we can score: papers report CIRR and CIRCO on their test servers, so those rows
say ``val`` against ``test``, and the server files that ``cir-lightning test`` writes are the comparison
that counts there.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cir_lightning.commands import COMMANDS
from cir_lightning.commands.published import check_published, markdown_tables
from cir_lightning.errors import CIRConfigError, CIRDataError
from cir_lightning.free_names import write_free
from cir_lightning.writable import check_writable

HERE = Path(__file__).resolve().parents[2] / "configs" / "zeroshot"


@dataclass
class Run:
    """One (model, benchmark) config, with what it needs and what the papers report for it."""

    model: str
    benchmark: str
    config: Path
    weights: list[str]
    data_root: str | None
    published: Mapping[str, Any] | None
    missing: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.model}/{self.benchmark}"


def _read_yaml(path: Path) -> Any:
    import yaml

    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise CIRConfigError(f"{path}: cannot be read as YAML ({str(err).splitlines()[0]})") from None


def weights_of(config: Mapping[str, Any]) -> list[str]:
    """The checkpoint and adapter a config loads (``model.backbone.init_args``).

    Example:
        >>> weights_of({"model": {"backbone": {"init_args": {"model_name_or_path": "royokong/e5-v",
        ...     "lora": {"init_adapter": "fire/adapter"}}}}})
        ['royokong/e5-v', 'fire/adapter']
    """
    args = (((config.get("model") or {}).get("backbone") or {}).get("init_args") or {})
    found = [args.get("model_name_or_path")]
    found.append((args.get("lora") or {}).get("init_adapter") if isinstance(args.get("lora"), dict) else None)
    return [str(w) for w in found if w]


def present(name: str) -> bool:
    """Whether a checkpoint is here: a folder, a file (a cir_lightning ``.ckpt`` as ``lora.init_adapter``), or a
    hub name whose ``config.json`` is in the local cache (an adapter folder holds ``adapter_config.json`` instead)."""
    if Path(name).expanduser().exists():
        return True
    if Path(name).is_absolute() or name.startswith((".", "~")) or name.count("/") != 1:
        return False
    from huggingface_hub import try_to_load_from_cache

    return any(isinstance(try_to_load_from_cache(name, f), str) for f in ("config.json", "adapter_config.json"))


def discover(configs: Path, published: Mapping[str, Any], data: Mapping[str, str]) -> list[Run]:
    """Every ``<model>/<benchmark>.yaml`` below ``configs``, with what it lacks here."""
    runs = []
    for path in sorted(configs.glob("*/*.yaml")):
        model, benchmark = path.parent.name, path.stem
        config = _read_yaml(path) or {}
        if not isinstance(config, Mapping):
            raise CIRConfigError(f"{path}: a config is a mapping of options (trainer, model, data), got "
                                 f"{type(config).__name__}")
        weights = weights_of(config)
        own_root = ((config.get("data") or {}).get("init_args") or {}).get("root")
        root = data.get(benchmark, own_root)
        entry = ((published.get(model) or {}).get("results") or {}).get(benchmark)
        run = Run(model, benchmark, path, weights, root, entry)
        run.missing += [f"weights `{w}` (not a folder, not in the Hugging Face cache)" for w in weights
                        if not present(w)]
        if not root or not Path(root).expanduser().is_dir():
            run.missing.append(f"data: give --data {benchmark}=ROOT" + (f" (`{root}` is not a folder)" if root else ""))
        runs.append(run)
    return runs


def newest_results(folder: Path, stage: str) -> Path:
    found = sorted(folder.rglob(f"results-{stage}*.json"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise CIRDataError(f"the run wrote no results-{stage}.json below it", folder)
    return found[-1]


def ours_in_percent(document: Mapping[str, Any]) -> dict[str, float]:
    """A results file's metrics as ``subset/metric`` (``Recall@1`` for a single subset) -> percent.

    Example:
        >>> ours_in_percent({"metrics": {"": {"Recall@1": 0.25}, "dress": {"Recall@10": 0.5}}})
        {'Recall@1': 25.0, 'dress/Recall@10': 50.0}
    """
    return {(f"{subset}/{name}" if subset else name): 100.0 * float(value)
            for subset, metrics in document["metrics"].items() for name, value in metrics.items()}


def run_one(run: Run, out: Path, extra: Sequence[str], allow_download: bool) -> Path:
    """``cir-lightning validate`` for one config in its own process; the results file it wrote."""
    folder = out / run.model / run.benchmark
    command = [sys.executable, "-m", "cir_lightning", "validate", "--config", str(run.config),
               "--trainer.default_root_dir", str(folder), "--data.init_args.root", str(run.data_root), *extra]
    env = dict(os.environ)
    if not allow_download:
        env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    print(f"[{run.name}] {' '.join(command)}", flush=True)
    done = subprocess.run(command, env=env, check=False)
    if done.returncode != 0:
        raise CIRDataError(f"`cir-lightning validate` failed (exit code {done.returncode}); its error is above",
                           run.config)
    return newest_results(folder, "validate")


def comparison_rows(run: Run, ours: Mapping[str, float]) -> list[list[str]]:
    """Rows ``model/benchmark, metric, published (split), ours (val), difference`` for the published metrics
    (every metric of ours, published ``-``, where nothing was published under this protocol)."""
    entry = run.published or {}
    split = str(entry.get("split", "?"))
    published = entry.get("metrics") or dict.fromkeys(ours)
    rows = []
    for metric, value in published.items():
        mine = ours.get(metric)
        rows.append([run.name, metric, "-" if value is None else f"{float(value):.2f} ({split})",
                     "-" if mine is None else f"{mine:.2f} (val)",
                     "-" if mine is None or value is None else f"{mine - float(value):+.2f}"])
    return rows


def format_rows(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(c)) for c in column) for column in zip(header, *rows, strict=True)]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(line, widths, strict=True)).rstrip()
             for line in (header, *rows)]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:]])


def _parse_data(items: Sequence[str]) -> dict[str, str]:
    data = {}
    for item in items:
        benchmark, sep, root = item.partition("=")
        if not sep or not benchmark or not root:
            raise CIRConfigError(f"--data {item!r}: expected BENCHMARK=ROOT, e.g. --data cirr=/data/cirr")
        data[benchmark] = root
    return data


def main(argv: Sequence[str]) -> None:
    argv = list(argv)[1:]
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(allow_abbrev=False, prog="cir-lightning reproduce", description=COMMANDS["reproduce"][1])
    parser.add_argument("--configs", type=Path, default=HERE, help=f"the zero-shot configs (default: {HERE})")
    parser.add_argument("--published", type=Path, help="the published numbers (default: CONFIGS/published.yaml)")
    parser.add_argument("--data", action="append", default=[], metavar="BENCHMARK=ROOT",
                        help="a benchmark's data root (cirr, circo, fashioniq, ...); repeat for each")
    parser.add_argument("--only", action="append", default=[], metavar="MODEL[/BENCHMARK]",
                        help="run only these (repeat); default: every config that can run here")
    parser.add_argument("--out", type=Path, default=Path("reproduce_runs"), help="where the runs write")
    parser.add_argument("--list", action="store_true", help="list the configs and what each lacks; run nothing")
    parser.add_argument("--markdown", action="store_true", help="print docs/reproduction.md's tables; run nothing")
    parser.add_argument("--allow-download", action="store_true",
                        help="let runs download missing weights from the hub (default: offline)")
    args = parser.parse_args(argv)
    if not args.configs.is_dir():
        raise CIRConfigError(f"--configs {args.configs}: not a folder")
    published_path = args.published or args.configs / "published.yaml"
    published = check_published(_read_yaml(published_path), published_path) if published_path.is_file() else {}
    if args.markdown:
        print(markdown_tables(published, args.configs), end="")
        return
    data, known = _parse_data(args.data), sorted({p.stem for p in args.configs.glob("*/*.yaml")})
    for benchmark in [b for b in data if b not in known]:  # a typo's root was never used, without a word
        raise CIRConfigError(f"--data {benchmark}={data[benchmark]}: no config below {args.configs} is of a benchmark "
                             f"{benchmark!r}; they are of: {', '.join(known)}")
    runs = [r for r in discover(args.configs, published, data) if not args.only or r.model in args.only
            or r.name in args.only]
    if args.only and not runs:
        raise CIRConfigError(f"--only {' '.join(args.only)}: no such config below {args.configs}")
    if args.allow_download:
        for run in runs:
            run.missing = [m for m in run.missing if not m.startswith("weights")]
    print(format_rows(["config", "published", "runs here?"],
                      [[r.name, "yes" if (r.published or {}).get("metrics") else "none", "yes" if not r.missing else "no: " + "; ".join(r.missing)]
                       for r in runs]))
    if args.list:
        return
    if any(not r.missing for r in runs):  # reproduce.json is written after every run: a folder refused first
        check_writable(args.out, "--out")
    rows, record = [], {}
    for run in runs:
        if run.missing:
            continue
        results = run_one(run, args.out, extra, args.allow_download)
        ours = ours_in_percent(json.loads(results.read_text(encoding="utf-8")))
        rows += comparison_rows(run, ours)
        record[run.name] = {"results": str(results), "ours": ours, "published": run.published}
    if not record:
        print("\nnothing ran: no config has its weights and data here (see above)")
        return
    print("\n" + format_rows(["config", "metric", "published", "ours", "difference"], rows))
    summary = write_free(args.out / "reproduce.json", json.dumps(record, indent=1) + "\n")
    print(f"\nwritten: {summary}")
