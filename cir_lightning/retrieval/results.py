"""Results files and tables: what an evaluation run leaves behind for the user.

``write_results`` writes one JSON file per run: every metric (fractions in [0, 1]) per subset, the
subsets' sizes, the model fingerprint, the data evaluated (split and digests), the libraries' versions, the
configuration, the run's other files and, optionally, the top-K gallery ids of every
query (``rankings``) with the search's scores of those ids (``scores``, same order). It never overwrites:
an existing ``results-validate.json`` makes it write ``results-validate-1.json``. ``format_table`` prints the
metrics in percent, one row per subset.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cir_lightning.free_names import write_free
from cir_lightning.retrieval.tables import format_rows

if TYPE_CHECKING:
    from torch import Tensor

    from cir_lightning.retrieval.evaluator import EvalSubset

__all__ = ["LIBRARIES", "format_table", "library_versions", "ranked_ids", "ranked_scores", "report_results", "split_subsets",
           "write_results"]


def split_subsets(metrics: Mapping[str, float]) -> dict[str, dict[str, float]]:
    """``{"dress/Recall@10": x, "Recall@1": y}`` -> ``{"dress": {"Recall@10": x}, "": {"Recall@1": y}}``."""
    out: dict[str, dict[str, float]] = {}
    for key, value in metrics.items():
        subset, _, name = key.rpartition("/")
        out.setdefault(subset, {})[name] = value
    return out


def format_table(metrics: Mapping[str, float], title: str = "", width: int | None = None) -> str:
    """The metrics as a text table in percent, one row per subset. Names are never cut: a table wider
    than ``width`` (default: the terminal's, no limit when output goes to a file) is split by columns
    (``retrieval.tables.format_rows``).

    Example:
        >>> print(format_table({"Recall@1": 0.5, "Recall@10": 0.875}))
        ┏━━━━━━━━┳━━━━━━━━━━┳━━━━━━━━━━━┓
        ┃ subset ┃ Recall@1 ┃ Recall@10 ┃
        ┡━━━━━━━━╇━━━━━━━━━━╇━━━━━━━━━━━┩
        │ all    │    50.00 │     87.50 │
        └────────┴──────────┴───────────┘
    """
    rows = [([subset or "all"], values) for subset, values in split_subsets(metrics).items()]
    return format_rows(["subset"], rows, title=title, width=width)


LIBRARIES = ("torch", "lightning", "transformers", "peft", "faiss-cpu", "faiss-gpu", "faiss-gpu-cu12", "numpy",
             "pillow", "open_clip_torch")
"""The libraries whose versions a results file records (those installed): another version can move the numbers."""


def library_versions() -> dict[str, str]:
    """The installed versions of ``LIBRARIES`` (the package's own is the file's ``cir_lightning`` key).

    Example:
        >>> from cir_lightning.retrieval.results import library_versions
        >>> "torch" in library_versions()
        True
    """
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in LIBRARIES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            continue
    return found


def write_results(path: str | Path, metrics: Mapping[str, float], *, stage: str,
                  subsets: Mapping[str, Mapping[str, int]], model: Mapping[str, Any],
                  config: Mapping[str, Any], rankings: Mapping[str, Mapping[str, list]] | None = None,
                  scores: Mapping[str, Mapping[str, list[float]]] | None = None,
                  protocol: Mapping[str, Mapping[str, Any]] | None = None,
                  data: Mapping[str, Any] | None = None, files: Mapping[str, Sequence[str]] | None = None) -> Path:
    """Write the results JSON at ``path`` (or the next free name) and return where it went.

    Args:
        path: the wanted file name.
        metrics: flat metric names (``"dress/Recall@10"``) to fractions.
        stage: ``"validate"`` or ``"test"``.
        subsets: per subset name, its sizes (``{"num_queries": ..., "num_gallery": ...}``).
        model: the backbone's identity (``Backbone.identity``: its fingerprint and the trained weights' digest).
        config: the run's configuration (plain data).
        rankings: per subset, query id -> its top-K gallery ids.
        scores: per subset, query id -> the scores of those ids (cosine similarity for normalised embeddings).
        protocol: per subset, the metric families and cut-offs it used and their chance levels
            (``retrieval.protocol.subset_protocol``).
        data: what was evaluated: the split, the gallery's identity and, per subset, digests of the queries
            (ids, reference, text, ground truth), the gallery ids and the image paths (``RunOutputs.data_identity``).
        files: the other files of the same run, by kind (``config``, ``pictures``, ``server_files``: their names).
    """
    from cir_lightning import __version__

    document = {
        "stage": stage,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cir_lightning": __version__,
        "versions": library_versions(),
        "metrics": split_subsets(metrics),
        "subsets": subsets,
        **({"protocol": protocol} if protocol is not None else {}),
        **({"data": data} if data is not None else {}),
        "model": model,
        "config": config,
        **({"files": files} if files is not None else {}),
    }
    if rankings is not None:
        document["rankings"] = rankings
    if scores:
        document["scores"] = scores
    text = json.dumps(document, indent=1, default=str) + "\n"
    return write_free(path, text)  # another run may take the free name first: never overwritten, the next one


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


def ranked_scores(subsets: Sequence[EvalSubset], rankings: Mapping[str, Tensor],
                  scores: Mapping[str, Tensor]) -> dict[str, dict[str, list[float]]]:
    """Subset name -> query id -> the scores of its ranked gallery ids (as ``ranked_ids`` lists them), 6 decimals.

    Example:
        >>> import torch
        >>> from cir_lightning.retrieval.evaluator import EvalSubset
        >>> from cir_lightning.retrieval.results import ranked_scores
        >>> sub = EvalSubset("", [[1]], [[]], 3, query_ids=["q"], gallery_ids=["a", "b", "c"])
        >>> ranked_scores([sub], {"": torch.tensor([[1, 2, -1]])}, {"": torch.tensor([[0.5, 0.25, float("-inf")]])})
        {'': {'q': [0.5, 0.25]}}
    """
    return {sub.name: {q: [round(v, 6) for j, v in zip(row, values, strict=True) if j >= 0]
                       for q, row, values in zip(sub.query_ids, rankings[sub.name].tolist(),
                                                 scores[sub.name].tolist(), strict=True)}
            for sub in subsets if sub.name in rankings and sub.name in scores and sub.query_ids is not None}


def report_results(folder: str | Path, stage: str, prefix: str, metrics: Mapping[str, float],
                   subsets: Sequence[EvalSubset], *, model: Mapping[str, Any], config: Mapping[str, Any],
                   rankings: Mapping[str, Mapping[str, list]] | None = None, report: str = "",
                   scores: Mapping[str, Mapping[str, list[float]]] | None = None,
                   default_ks: Sequence[int] = (1, 5, 10, 50), data: Mapping[str, Any] | None = None,
                   files: Mapping[str, Sequence[str]] | None = None) -> Path:
    """Write ``results-<stage>.json`` in ``folder`` (never over an earlier one) and print the table, the
    DataModule's ``report`` and where the file went: what a standalone ``validate`` / ``test`` shows.
    ``default_ks`` are the evaluator's cut-offs, used by the subsets that name none of their own; a split
    without ground truth has no table, only its rankings."""
    from cir_lightning.retrieval.protocol import subset_protocol

    sizes = {sub.name: {"num_queries": sub.num_queries, "num_gallery": sub.num_gallery} for sub in subsets}
    path = write_results(Path(folder) / f"results-{stage}.json", metrics, stage=stage, subsets=sizes, model=model,
                         config=config, rankings=rankings, scores=scores,
                         protocol={sub.name: subset_protocol(sub, default_ks) for sub in subsets}, data=data,
                         files=files)
    if metrics:
        print(format_table(metrics, title=f"{stage} ({prefix}/...), percent"))
    else:
        print(f"{stage}: no metrics (the split has no public ground truth); the rankings are in the results file")
    if report:
        print(report)
    print(f"results written to {path}")
    return path
