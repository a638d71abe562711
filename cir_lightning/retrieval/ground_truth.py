"""Checks and clean-ups of an evaluated subset's ground truth and embeddings, before anything is scored.

The metrics are defined on each query's ranked list with its excluded rows removed (docs/protocols.md):

- a query none of whose positives can appear in that list (no positive, positives outside the gallery, or
  all of them excluded) is an error naming the queries, not a silent miss;
- positives are a set: one listed twice counts once (PositiveRecall and mAP divide by their number);
- CIRR's Recall_subset ranks a query's candidates in that same list, so excluded rows (the reference) are
  never among them;
- embeddings that are not finite (NaN, inf) would rank arbitrarily: an error, not a number.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from cir_lightning.distributed import gather_sizes
from cir_lightning.errors import CIRDataError
from cir_lightning.messages import first_few
from cir_lightning.retrieval.index import pad_lists

__all__ = ["candidate_table", "check_embeddings", "check_finite", "check_positives", "check_shard", "positive_table"]


def check_positives(name: str, positives: Sequence[Sequence[int]] | None, excluded: Sequence[Sequence[int]],
                    num_gallery: int, query_ids: Sequence[str] | None = None, every_positive: bool = True) -> None:
    """Raise ``CIRDataError`` naming the queries none of whose positives can be retrieved, then (with
    ``every_positive``: PositiveRecall or mAP are computed, which count each positive) those with a positive that
    cannot be (outside the gallery, or excluded from the query's own ranking: a miss that no ranking avoids).
    ``positives`` None: no ground truth, nothing to check.

    Example:
        >>> check_positives("dress", [[1], [0, 2]], [[0], [1]], 3)
        >>> check_positives("dress", [[1], [], [5], [0]], [[], [], [], [0]], 3, ["a", "b", "c", "d"])
        Traceback (most recent call last):
        ...
        cir_lightning.errors.CIRDataError: subset 'dress': 3 of 4 queries have no positive that can be retrieved \
(none given, outside the gallery's 3 rows, or all excluded), so their metrics would be a silent miss: \
'b' (positives []), 'c' (positives [5]), 'd' (positives [0])
        >>> check_positives("dress", [[1], [0, 2]], [[], [2]], 3, every_positive=False)  # hit rate, MRR: fine
        >>> check_positives("dress", [[1], [0, 2]], [[], [2]], 3)
        Traceback (most recent call last):
        ...
        cir_lightning.errors.CIRDataError: subset 'dress': 1 of 2 queries list a positive that cannot be retrieved \
(outside the gallery's 3 rows, or excluded from its ranking), a miss no ranking avoids in PositiveRecall and mAP: \
row 1 (positives [0, 2], excluded [2])
    """
    if positives is None:
        return
    reachable = [{p for p in pos if 0 <= p < num_gallery} - set(exc)
                 for pos, exc in zip(positives, excluded, strict=True)]
    label = (lambda i: repr(query_ids[i])) if query_ids is not None else (lambda i: f"row {i}")
    bad = [i for i, ok in enumerate(reachable) if not ok]
    if bad:
        raise CIRDataError(f"subset {name!r}: {len(bad)} of {len(positives)} queries have no positive that can be "
                           f"retrieved (none given, outside the gallery's {num_gallery} rows, or all excluded), so "
                           "their metrics would be a silent miss: "
                           + first_few([f"{label(i)} (positives {list(positives[i])})" for i in bad], ", ", " ..."))
    some = [i for i, ok in enumerate(reachable) if len(ok) < len(set(positives[i]))] if every_positive else []
    if some:
        raise CIRDataError(f"subset {name!r}: {len(some)} of {len(positives)} queries list a positive that cannot be "
                           f"retrieved (outside the gallery's {num_gallery} rows, or excluded from its ranking), a "
                           "miss no ranking avoids in PositiveRecall and mAP: " + first_few(
                               [f"{label(i)} (positives {list(positives[i])}, excluded {list(excluded[i])})"
                                for i in some], ", ", " ..."))


def positive_table(positives: Sequence[Sequence[int]], rows: Sequence[int]) -> Tensor:
    """The positives of queries ``rows``, each once, -1 padded to the widest list of all queries.

    Example:
        >>> positive_table([[4, 2, 4], [1], [0, 3]], [0, 1]).tolist()
        [[4, 2, -1], [1, -1, -1]]
    """
    return pad_lists([list(dict.fromkeys(positives[i])) for i in rows], max(map(len, positives)))


def candidate_table(candidates: Sequence[Sequence[int]], excluded: Sequence[Sequence[int]],
                    rows: Sequence[int]) -> Tensor:
    """The candidates (CIRR's img_set members) of queries ``rows`` that are in their ranked lists: excluded
    rows (the reference) left out, each once; -1 padded to the widest list of all queries.

    Example:
        >>> candidate_table([[7, 3, 5, 3], [1, 2]], [[5], []], [0, 1]).tolist()
        [[7, 3, -1, -1], [1, 2, -1, -1]]
    """
    kept = [[c for c in dict.fromkeys(candidates[i]) if c not in set(excluded[i])] for i in rows]
    return pad_lists(kept, max(map(len, candidates)))


def _non_finite_rows(embeddings: Tensor) -> Tensor:
    """The rows of ``embeddings`` holding NaN or inf."""
    if not embeddings.numel():
        return torch.empty(0, dtype=torch.long)
    return (~torch.isfinite(embeddings)).flatten(1).any(1).nonzero().flatten()


def check_finite(embeddings: Tensor, what: str, indices: Tensor | None = None, bad_elsewhere: int = 0,
                 bad: Tensor | None = None, ids: Sequence[str] | None = None) -> None:
    """Raise ``CIRDataError`` if any row of ``embeddings`` holds NaN or inf (``indices``: their dataset rows;
    ``bad_elsewhere``: such rows other ranks found, so that every rank raises together; ``bad``: the rows
    already found, if the caller looked; ``ids``: the ids of the dataset rows, named in the message).

    Example:
        >>> check_finite(torch.ones(2, 3), "queries of subset 'x'")
        >>> check_finite(torch.tensor([[1.0, float("nan")], [0.0, 1.0]]), "queries of subset 'x'", ids=["q0", "q1"])
        Traceback (most recent call last):
        ...
        cir_lightning.errors.CIRDataError: 1 of the queries of subset 'x' are not finite (NaN or inf): rows 0 \
(ids q0); a ranking over them would be arbitrary (check the model for overflow, e.g. in float16)
    """
    bad = _non_finite_rows(embeddings) if bad is None else bad
    if len(bad) == 0 and bad_elsewhere == 0:
        return
    rows = (indices[bad] if indices is not None else bad).tolist()
    named = f" (ids {first_few([str(ids[r]) for r in rows], ', ', ' ...')})" if ids is not None and rows else ""
    here = f": rows {first_few([str(r) for r in rows], ', ', ' ...')}{named}" if rows else " (on other ranks)"
    raise CIRDataError(f"{len(rows) + bad_elsewhere} of the {what} are not finite (NaN or inf){here}; a ranking "
                       "over them would be arbitrary (check the model for overflow, e.g. in float16)")


def check_embeddings(name: str | int, queries: Tensor, gallery: Tensor | None, query_ids: Sequence[str] | None = None,
                     gallery_ids: Sequence[str] | None = None) -> None:
    """``check_finite`` of a subset's queries and (unless None) its gallery, naming the ids of bad rows where given."""
    check_finite(queries, f"queries of subset {name!r}", ids=query_ids)
    if gallery is not None:
        check_finite(gallery, f"gallery rows of subset {name!r}", ids=gallery_ids)


def check_shard(shard: Tensor, indices: Tensor, what: str, ids: Sequence[str] | None = None) -> None:
    """``check_finite`` of this rank's gallery rows (sharded search), raising on every rank if any rank has
    such rows (a collective)."""
    bad = _non_finite_rows(shard)
    check_finite(shard, what, indices, sum(gather_sizes(len(bad))) - len(bad), bad, ids)
