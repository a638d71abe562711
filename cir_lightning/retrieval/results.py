"""Results files and tables: what an evaluation run leaves behind for the user.

``write_results`` writes one JSON file per run: every metric (fractions in [0, 1]) per subset, the
subsets' sizes, the model fingerprint, the configuration and, optionally, the top-K gallery ids of every
query. It never overwrites: an existing ``results-validate.json`` makes it write
``results-validate-1.json``. ``format_table`` prints the metrics in percent, one row per subset.
"""

from __future__ import annotations

import datetime
import io
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cir_lightning.errors import CIRFileError
from cir_lightning.files import free_path, write_atomic

if TYPE_CHECKING:
    from torch import Tensor

    from cir_lightning.retrieval.evaluator import EvalSubset

__all__ = ["format_table", "free_path", "ranked_ids", "report_results", "split_subsets", "write_results"]


def split_subsets(metrics: Mapping[str, float]) -> dict[str, dict[str, float]]:
    """``{"dress/Recall@10": x, "Recall@1": y}`` -> ``{"dress": {"Recall@10": x}, "": {"Recall@1": y}}``."""
    out: dict[str, dict[str, float]] = {}
    for key, value in metrics.items():
        subset, _, name = key.rpartition("/")
        out.setdefault(subset, {})[name] = value
    return out


def format_table(metrics: Mapping[str, float], title: str = "") -> str:
    """The metrics as a text table in percent, one row per subset.

    Example:
        >>> print(format_table({"Recall@1": 0.5, "Recall@10": 0.875}))
        ┏━━━━━━━━┳━━━━━━━━━━┳━━━━━━━━━━━┓
        ┃ subset ┃ Recall@1 ┃ Recall@10 ┃
        ┡━━━━━━━━╇━━━━━━━━━━╇━━━━━━━━━━━┩
        │ all    │    50.00 │     87.50 │
        └────────┴──────────┴───────────┘
    """
    from rich.console import Console
    from rich.table import Table

    rows = split_subsets(metrics)
    columns = list(dict.fromkeys(name for values in rows.values() for name in values))
    table = Table(title=title or None)
    table.add_column("subset")
    for name in columns:
        table.add_column(name, justify="right")
    for subset, values in rows.items():
        table.add_row(subset or "all", *(f"{100 * values[c]:.2f}" if c in values else "" for c in columns))
    buffer = io.StringIO()
    Console(file=buffer, width=max(80, 12 * (len(columns) + 1)), force_terminal=False).print(table)
    return buffer.getvalue().rstrip("\n")


def write_results(path: str | Path, metrics: Mapping[str, float], *, stage: str,
                  subsets: Mapping[str, Mapping[str, int]], model: Mapping[str, Any],
                  config: Mapping[str, Any], rankings: Mapping[str, Mapping[str, list]] | None = None) -> Path:
    """Write the results JSON at ``path`` (or the next free name) and return where it went.

    Args:
        path: the wanted file name.
        metrics: flat metric names (``"dress/Recall@10"``) to fractions.
        stage: ``"validate"`` or ``"test"``.
        subsets: per subset name, its sizes (``{"num_queries": ..., "num_gallery": ...}``).
        model: the backbone's fingerprint.
        config: the run's configuration (plain data).
        rankings: per subset, query id -> its top-K gallery ids.
    """
    from cir_lightning import __version__

    document = {
        "stage": stage,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cir_lightning": __version__,
        "metrics": split_subsets(metrics),
        "subsets": subsets,
        "model": model,
        "config": config,
    }
    if rankings is not None:
        document["rankings"] = rankings
    text = json.dumps(document, indent=1, default=str) + "\n"
    while True:  # another process may take the free name first: never overwrite, take the next one
        target = free_path(path)
        try:
            return write_atomic(target, text)
        except CIRFileError:
            if not target.exists():
                raise


def ranked_ids(subsets: Sequence[EvalSubset], rankings: Mapping[str, Tensor]) -> dict[str, dict[str, list[str]]]:
    """Subset name -> query id -> its ranked gallery ids, for the subsets whose rankings were kept.

    Example:
        >>> import torch
        >>> from cir_lightning.retrieval.evaluator import EvalSubset
        >>> from cir_lightning.retrieval.results import ranked_ids
        >>> sub = EvalSubset("", [[1]], [[]], 3, query_ids=["q"], gallery_ids=["a", "b", "c"])
        >>> ranked_ids([sub], {"": torch.tensor([[1, 2, 0]])})
        {'': {'q': ['b', 'c', 'a']}}
    """
    return {sub.name: sub.ranked_ids(rankings[sub.name]) for sub in subsets if sub.name in rankings}


def report_results(folder: str | Path, stage: str, prefix: str, metrics: Mapping[str, float],
                   subsets: Sequence[EvalSubset], *, model: Mapping[str, Any], config: Mapping[str, Any],
                   rankings: Mapping[str, Mapping[str, list]] | None = None, report: str = "") -> Path:
    """Write ``results-<stage>.json`` in ``folder`` (never over an earlier one) and print the table, the
    DataModule's ``report`` and where the file went: what a standalone ``validate`` / ``test`` shows."""
    sizes = {sub.name: {"num_queries": sub.num_queries, "num_gallery": sub.num_gallery} for sub in subsets}
    path = write_results(Path(folder) / f"results-{stage}.json", metrics, stage=stage, subsets=sizes, model=model,
                         config=config, rankings=rankings)
    print(format_table(metrics, title=f"{stage} ({prefix}/...), percent"))
    if report:
        print(report)
    print(f"results written to {path}")
    return path
