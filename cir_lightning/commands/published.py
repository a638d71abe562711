"""``configs/zeroshot/published.yaml``, the published numbers ``cir-lightning reproduce`` compares with: its check
(``check_published``: every entry one this code reads, every metric a number) and docs/reproduction.md's tables
(``markdown_tables``)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cir_lightning.errors import CIRConfigError
from cir_lightning.messages import short_repr

__all__ = ["ENTRIES", "HEADLINE", "check_published", "markdown_tables"]

ENTRIES = {
    "model": ("name", "paper", "checkpoint", "base_model", "ours", "results", "notes", "missing", "protocol"),
    "result": ("split", "source", "metrics", "protocol", "zero_shot", "other_sources"),
}
"""The entries of a model and of one of its results (a benchmark's) in published.yaml (see its header)."""


def check_published(published: Any, path: Path) -> Mapping[str, Any]:
    """``published`` (read from ``path``) as the model -> results -> benchmark -> metrics mapping, every metric
    a number (percent) and every entry one this code reads (``ENTRIES``); anything else is one error naming the file
    and the key (a misspelt ``result:`` or ``metric:`` left a model's numbers out without a word)."""
    if not isinstance(published, Mapping):
        raise CIRConfigError(f"{path}: expected a mapping of model -> results, got {type(published).__name__}")
    for model, entry in published.items():
        _check_entries(entry, f"{model}", "model", path)
        for benchmark, result in (entry.get("results") or {}).items():
            _check_entries(result, f"{model}.results.{benchmark}", "result", path)
            for metric, value in (result.get("metrics") or {}).items():
                if isinstance(value, bool) or not isinstance(value, int | float):
                    raise CIRConfigError(f"{path}: `{model}.results.{benchmark}.metrics.{metric}` must be a "
                                         f"number (percent), got {value!r}")
    return published


def _check_entries(value: Any, key: str, kind: str, path: Path) -> None:
    """``value`` (at ``key``) is a mapping of ``ENTRIES[kind]``, its ``results`` / ``metrics`` mappings too."""
    if not isinstance(value, Mapping):
        raise CIRConfigError(f"{path}: `{key}` must be a mapping of {', '.join(ENTRIES[kind])}, got {short_repr(value)}")
    unknown = [name for name in value if name not in ENTRIES[kind]]
    if unknown:
        raise CIRConfigError(f"{path}: `{key}.{unknown[0]}` is not an entry of a {kind} (a misspelling?); a {kind} has "
                             f"{', '.join(ENTRIES[kind])}")
    inner = "results" if kind == "model" else "metrics"
    if value.get(inner) is not None and not isinstance(value[inner], Mapping):
        raise CIRConfigError(f"{path}: `{key}.{inner}` must be a mapping, got {short_repr(value[inner])}")


HEADLINE = {
    "cirr": ["Recall@1", "Recall@5", "Recall@10", "Recall@50", "Recall_subset@1", "Recall_subset@2", "Recall_subset@3"],
    "circo": ["mAP@5", "mAP@10", "mAP@25", "mAP@50"],
    "fashioniq": ["average/Recall@10", "average/Recall@50", "dress/Recall@10", "dress/Recall@50",
                  "shirt/Recall@10", "shirt/Recall@50", "toptee/Recall@10", "toptee/Recall@50"],
}
"""The columns of docs/reproduction.md's table per benchmark."""


def _number(value: float) -> str:
    """A published percentage with the decimals it was printed with (one or two)."""
    return f"{value:.1f}" if round(value * 10) == value * 10 else f"{value:.2f}"


def markdown_tables(published: Mapping[str, Any], configs: Path) -> str:
    """docs/reproduction.md's tables, one per benchmark: the published numbers with their source, the
    config that reproduces them, and ours (the model's ``ours`` record: only what was really measured)."""
    names = {p.parent.name + "/" + p.stem for p in configs.glob("*/*.yaml")}
    parts = []
    for benchmark, columns in HEADLINE.items():
        header = ["model", "split", *(c.replace("average/", "avg ") for c in columns), "source", "config and command",
                  "ours"]
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for model, entry in published.items():
            result = (entry.get("results") or {}).get(benchmark)
            if not result:
                continue
            metrics = result.get("metrics") or {}
            config = (f"`configs/zeroshot/{model}/{benchmark}.yaml`: `cir-lightning reproduce --only {model}/{benchmark} "
                      f"--data {benchmark}=DATA`" if f"{model}/{benchmark}" in names else "none")
            ours = ((entry.get("ours") or {}).get(benchmark) if isinstance(entry.get("ours"), dict) else None)
            cells = [entry.get("name", model), str(result.get("split", "?")),
                     *(_number(metrics[c]) if c in metrics else "-" for c in columns),
                     str(result.get("source", "?")).replace("|", "/"), config, str(ours or "not measured")]
            lines.append("| " + " | ".join(cells) + " |")
        parts.append(f"### {benchmark}\n\n" + "\n".join(lines))
    return "\n\n".join(parts) + "\n"
