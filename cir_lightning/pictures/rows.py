"""The rows of a retrieval picture: which queries are drawn, and what each one retrieved."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cir_lightning.data.datasets import GalleryDataset, QueryDataset

TOP = 5
"""Results drawn per query."""


@dataclass(frozen=True)
class Hit:
    """One retrieved gallery image: its id, file, source (for messages), score (None when unknown), whether
    it is a true target, and a ``mark`` drawn on its tile when not "" (``search``'s ``changed since indexed``).

    Example:
        >>> from cir_lightning.pictures import Hit
        >>> Hit("scene_007", Path("images/scene_007.png"), "gallery.jsonl", 0.81, target=True).target
        True
    """

    image_id: str
    path: Path
    source: str
    score: float | None
    target: bool
    mark: str = ""


@dataclass(frozen=True)
class QueryRow:
    """One query of a retrieval picture.

    Args:
        query_id: the query's id.
        reference: its reference image file.
        source: where the reference comes from (for error messages).
        text: the modification text.
        hits: its top results, best first.
        target_rank: 1-based rank of its first true target in the ranking; None when none is ranked.
        depth: how many results the ranking holds.
        has_targets: False on splits without ground truth (nothing is outlined).
        target: its first true target (the best ranked one, else the first listed); None without ground truth.

    Example:
        >>> from cir_lightning.pictures import QueryRow
        >>> QueryRow("q0", Path("r.png"), "queries.jsonl", "make it red", [], target_rank=12, depth=50).has_targets
        True
    """

    query_id: str
    reference: Path
    source: str
    text: str
    hits: list[Hit]
    target_rank: int | None
    depth: int
    has_targets: bool = True
    target: Hit | None = None


def sample_queries(num_queries: int, count: int, seed: int = 0) -> list[int]:
    """A fixed, seeded sample of ``count`` query rows (all of them if there are fewer), ascending.

    Example:
        >>> from cir_lightning.pictures import sample_queries
        >>> sample_queries(100, 3) == sample_queries(100, 3), sample_queries(2, 8)
        (True, [0, 1])
    """
    return sorted(random.Random(seed).sample(range(num_queries), min(count, num_queries)))


def query_rows(queries: QueryDataset, gallery: GalleryDataset, picks: Sequence[int], ranked: Sequence[Sequence[int]],
               scores: Sequence[Sequence[float]] | None = None, top: int = TOP) -> list[QueryRow]:
    """The rows of a retrieval picture.

    Args:
        queries: a query dataset whose ``records`` have ``query_id``, ``reference``, ``modification``,
            ``positives`` (gallery rows) and ``source`` (``QueryDataset``).
        gallery: its gallery, whose ``records`` have ``image_id``, ``path`` and ``source`` (``GalleryDataset``).
        picks: the query rows to draw.
        ranked: per pick, its ranked gallery rows (-1: none).
        scores: per pick, the scores of those rows (None: draw ranks only).
        top: results shown per query.

    Example:
        >>> from cir_lightning.pictures import query_rows
        >>> from cir_lightning.data.datasets import GalleryItem, GalleryDataset, Query, QueryDataset
        >>> gallery = GalleryDataset([GalleryItem(f"g{i}", Path(f"g{i}.png"), "gallery.jsonl") for i in range(9)])
        >>> queries = QueryDataset([Query("q0", Path("r.png"), "make it red", (7,), "queries.jsonl")])
        >>> [row] = query_rows(queries, gallery, [0], [[3, 1, 2, 0, 4, 5, 6, 7, -1]], top=5)
        >>> [h.image_id for h in row.hits], row.target_rank, row.depth, row.target.image_id
        (['g3', 'g1', 'g2', 'g0', 'g4'], 8, 8, 'g7')
    """
    truth = queries.has_ground_truth
    rows = []
    for n, q in enumerate(picks):
        record = queries.records[q]
        kept = [(j, None if scores is None else float(scores[n][i])) for i, j in enumerate(ranked[n]) if j >= 0]
        positives = set(record.positives) if truth else set()
        rank = next((i + 1 for i, (j, _) in enumerate(kept) if j in positives), None)
        hits = [_hit(gallery, j, score, j in positives) for j, score in kept[:top]]
        first = kept[rank - 1] if rank is not None else (record.positives[0], None) if positives else None
        text = record.modification if isinstance(record.modification, str) else " | ".join(record.modification)
        rows.append(QueryRow(record.query_id, Path(record.reference), record.source, text, hits, rank, len(kept),
                             truth, None if first is None else _hit(gallery, first[0], first[1], True)))
    return rows


def _hit(gallery: GalleryDataset, row: int, score: float | None, target: bool) -> Hit:
    item = gallery.records[row]
    return Hit(item.image_id, Path(item.path), item.source, score, target)
