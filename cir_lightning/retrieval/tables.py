"""Metric tables as text, drawn with rich: labelled rows, one column per metric, values in percent.

A column's name is never cut. A table wider than the room it has (the terminal's width when standard
output is one; no limit when it is a file or a pipe) is wrapped: its metric columns are split over
several tables, each repeating the label columns.
"""

from __future__ import annotations

import io
import shutil
import sys
from collections.abc import Mapping, Sequence

__all__ = ["format_rows", "output_width"]

_UNLIMITED = 1_000_000


def output_width() -> int | None:
    """The terminal's width when standard output is a terminal, else None (no limit).

    Example:
        >>> from cir_lightning.retrieval.tables import output_width
        >>> output_width() is None  # doctests write to a buffer, not a terminal
        True
    """
    isatty = getattr(sys.stdout, "isatty", None)
    return shutil.get_terminal_size().columns if isatty is not None and isatty() else None


def format_rows(header: Sequence[str], rows: Sequence[tuple[Sequence[str], Mapping[str, float]]], *,
                title: str = "", width: int | None = None, sections: bool = False) -> str:
    """Rows of ``(labels, metrics)`` as text tables in percent (fractions x 100, 2 decimals).

    Args:
        header: the names of the label columns (one per label of a row).
        rows: each row's labels and its metrics; the metric columns are every name seen, in order of first
            appearance; a row without a metric leaves its cell blank.
        title: printed above the (first) table.
        width: the room in characters (default: ``output_width()``); wider tables are split by columns.
        sections: draw a line under each row whose first label differs from the next row's.

    Example:
        >>> from cir_lightning.retrieval.tables import format_rows
        >>> rows = [(["all"], {"Recall@1": 0.5, "Recall_subset@1": 0.75}), (["dress"], {"Recall@1": 0.25})]
        >>> print(format_rows(["subset"], rows, width=30))  # 39 characters wide in one piece: wrapped
        ┏━━━━━━━━┳━━━━━━━━━━┓
        ┃ subset ┃ Recall@1 ┃
        ┡━━━━━━━━╇━━━━━━━━━━┩
        │ all    │    50.00 │
        │ dress  │    25.00 │
        └────────┴──────────┘
        ┏━━━━━━━━┳━━━━━━━━━━━━━━━━━┓
        ┃ subset ┃ Recall_subset@1 ┃
        ┡━━━━━━━━╇━━━━━━━━━━━━━━━━━┩
        │ all    │           75.00 │
        │ dress  │                 │
        └────────┴─────────────────┘
    """
    from rich.console import Console

    columns = list(dict.fromkeys(name for _, values in rows for name in values))
    room = width if width is not None else output_width() or _UNLIMITED
    measure = Console(file=io.StringIO(), width=_UNLIMITED)
    chunks: list[list[str]] = []
    for name in columns:
        if chunks and measure.measure(_table(header, rows, [*chunks[-1], name], "", sections)).maximum <= room:
            chunks[-1].append(name)
        else:
            chunks.append([name])
    parts = []
    for i, chunk in enumerate(chunks or [[]]):
        table = _table(header, rows, chunk, title if i == 0 else "", sections)
        buffer = io.StringIO()
        natural = measure.measure(table).maximum
        Console(file=buffer, width=natural, force_terminal=False).print(table)
        parts.append(buffer.getvalue().rstrip("\n"))
    return "\n".join(parts)


def _table(header: Sequence[str], rows: Sequence[tuple[Sequence[str], Mapping[str, float]]], columns: Sequence[str],
           title: str, sections: bool):
    from rich.table import Table

    table = Table(title=title or None)
    for name in header:
        table.add_column(name)
    for name in columns:
        table.add_column(name, justify="right")
    for i, (labels, values) in enumerate(rows):
        last_of_group = sections and i + 1 < len(rows) and rows[i + 1][0][:1] != labels[:1]
        table.add_row(*labels, *(f"{100 * values[c]:.2f}" if c in values else "" for c in columns),
                      end_section=last_of_group)
    return table
