"""Identical gallery rows tie exactly: the lower gallery index first, as the protocols define ties.

Two gallery rows holding the same embedding (one image listed under two ids, two copies of one file) have
the same similarity to every query. A float32 matrix product need not compute it the same way for both: BLAS
blocks treat rows by their position, so the later row may score one unit in the last place above the earlier
one and rank first, against the rule "equal scores: lower gallery index first" (docs/protocols.md). Measured with a
5,000-row gallery holding one row twice and 256 queries near it: Recall@1 of the later row 0.195 with faiss's
exact search, where the definition gives 0.

``identical_rows`` finds such rows cheaply: a hash of each row's first 8 values picks the candidates (real
embeddings differ there), which are then compared whole (about 0.1 s for a million rows of 768 values,
1% of exact search's time for 1,000 queries on this 2-core machine). ``tie_identical`` gives every member of a group found
among a query's results the group's best score, adds the members that were not found, and re-sorts by
(score descending, gallery index ascending). Excluded rows are removed afterwards (``index.drop_excluded``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

__all__ = ["IdenticalRows", "identical_rows", "prefix_hashes", "tie_identical"]

_PREFIX = 8  # values per row hashed to find the candidates
_MULTIPLIERS = torch.tensor([0x9E3779B97F4A7C15 - 2**64 + 2 * i for i in range(_PREFIX)], dtype=torch.long)


@dataclass(frozen=True)
class IdenticalRows:
    """Groups of identical gallery rows: ``group[row]`` is the group of ``row`` (-1: its row is unique) and
    ``members[g]`` the rows of group ``g``, ascending."""

    group: Tensor
    members: list[list[int]]


def prefix_hashes(gallery: Tensor | np.ndarray) -> Tensor:
    """A 64-bit hash of the bits of each row's first 8 values (-0.0 counted as 0.0); equal rows hash equal.

    Example:
        >>> from cir_lightning.retrieval.ties import prefix_hashes
        >>> h = prefix_hashes(torch.tensor([[0.5, -0.0], [0.25, 1.0], [0.5, 0.0]]))
        >>> h[0] == h[2], h[0] == h[1]
        (tensor(True), tensor(False))
    """
    rows = torch.as_tensor(gallery)[:, :_PREFIX].float().cpu() + 0.0  # + 0.0 turns -0.0 into 0.0
    bits = rows.contiguous().view(torch.int32).long()
    return (bits * _MULTIPLIERS[: bits.shape[1]]).sum(dim=1)  # int64 arithmetic wraps: a hash, any order


def identical_rows(gallery: Tensor | np.ndarray, hashes: Tensor | None = None,
                   indices: Tensor | None = None) -> IdenticalRows | None:
    """The groups of equal rows of ``gallery`` (None when every row is unique). ``hashes`` and ``indices``
    (the rows' gallery indices, default 0..N-1) let a caller pass rows gathered from several processes.

    Example:
        >>> from cir_lightning.retrieval.ties import identical_rows
        >>> found = identical_rows(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 0.0]]))
        >>> found.group.tolist(), found.members
        ([0, -1, 0, 0], [[0, 2, 3]])
        >>> identical_rows(torch.eye(3)) is None
        True
    """
    gallery = torch.as_tensor(gallery)
    hashes = prefix_hashes(gallery) if hashes is None else hashes
    indices = torch.arange(len(gallery)) if indices is None else indices.cpu()
    _, inverse, counts = torch.unique(hashes, return_inverse=True, return_counts=True)
    candidates = (counts[inverse] > 1).nonzero().flatten()
    if len(candidates) == 0:
        return None
    rows = gallery[candidates.to(gallery.device)].float().cpu() + 0.0
    _, same, sizes = torch.unique(rows, dim=0, return_inverse=True, return_counts=True)
    keep = sizes[same] > 1  # candidates whose whole row equals another's
    if not keep.any():
        return None
    members: dict[int, list[int]] = {}
    for key, row in zip(same[keep].tolist(), indices[candidates[keep]].tolist(), strict=True):
        members.setdefault(key, []).append(row)
    groups = sorted(sorted(m) for m in members.values())
    group = torch.full((int(indices.max()) + 1 if len(indices) else 0,), -1, dtype=torch.long)
    for g, rows_of in enumerate(groups):
        group[rows_of] = g
    return IdenticalRows(group, groups)


def tie_identical(ids: Tensor, scores: Tensor, identical: IdenticalRows | None,
                  limit: int | None = None) -> tuple[Tensor, Tensor]:
    """Rankings (each row by score descending, -1 / -inf padded) in which identical gallery rows tie: each
    group found in a row takes its best score there, its missing members are added, and the row is re-sorted
    by (score descending, gallery index ascending). The result may be wider than ``ids``; ``limit`` keeps the
    first ``limit`` of each row (work and width bounded where thousands of rows are identical, e.g. blank ones).

    Example:
        >>> from cir_lightning.retrieval.ties import identical_rows, tie_identical
        >>> same = identical_rows(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]]))
        >>> ids, scores = tie_identical(torch.tensor([[2, 1]]), torch.tensor([[0.90001, 0.5]]), same)
        >>> ids.tolist()
        [[0, 2, 1]]
    """
    if identical is None or ids.numel() == 0:
        return ids, scores
    found = identical.group[ids.clamp(min=0, max=len(identical.group) - 1)]
    touched = ((found >= 0) & (ids >= 0) & (ids < len(identical.group))).any(dim=1).nonzero().flatten().tolist()
    if not touched:
        return ids, scores
    rows = {i: _tied_row(ids[i].tolist(), scores[i].tolist(), identical, limit) for i in touched}
    width = max(ids.shape[1], *(len(r) for r in rows.values()))
    out_ids = torch.cat([ids, ids.new_full((len(ids), width - ids.shape[1]), -1)], dim=1)
    out_scores = torch.cat([scores, scores.new_full((len(ids), width - ids.shape[1]), float("-inf"))], dim=1)
    for i, row in rows.items():
        out_ids[i] = torch.tensor([r for r, _ in row] + [-1] * (width - len(row)))
        out_scores[i] = torch.tensor([s for _, s in row] + [float("-inf")] * (width - len(row)))
    return out_ids, out_scores


def _tied_row(ids: list[int], scores: list[float], identical: IdenticalRows,
              limit: int | None) -> list[tuple[int, float]]:
    out, seen = [], set()
    for row, score in zip(ids, scores, strict=True):
        group = int(identical.group[row]) if 0 <= row < len(identical.group) else -1
        if row < 0 or group in seen:
            continue
        if group < 0:
            out.append((row, score))
        else:
            seen.add(group)
            out += [(member, score) for member in identical.members[group][:limit]]  # later ones: never before
    return sorted(out, key=lambda item: (-item[1], item[0]))[:limit]
