"""One evaluation epoch, as both ``CIRModule`` and ``RetrievalCallback`` run it.

Evaluation loaders come in (queries, gallery) pairs. Each batch's embeddings are handed to the
``RetrievalEvaluator`` with their dataset rows (``add_batch``; nothing during Lightning's sanity check,
whose few batches are not a gallery); at the epoch's end the ground truth is read from the loaders'
datasets, the evaluator searches and scores once, the metrics are logged on every rank
(``finish``), and the caller may use the rankings before ``reset``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from cir_lightning.retrieval.evaluator import (
    EvalSubset,
    RetrievalEvaluator,
    loader_role,
    subsets_from_loaders,
)

__all__ = ["EpochResults", "EvaluationLoop"]


@dataclass
class EpochResults:
    """What an evaluation epoch produced: the metrics (no stage prefix) and the subsets they are about."""

    metrics: dict[str, float]
    subsets: list[EvalSubset]


class EvaluationLoop:
    """Feeds an evaluator during an evaluation epoch and logs what it computes at the end.

    Args:
        evaluator: collects embeddings, searches and scores.

    Example:
        >>> import torch
        >>> from types import SimpleNamespace
        >>> from cir_lightning.retrieval.loop import EvaluationLoop
        >>> from cir_lightning.retrieval import RetrievalEvaluator, SearchConfig
        >>> loop = EvaluationLoop(RetrievalEvaluator(ks=[1], search=SearchConfig(backend="torch")))
        >>> trainer = SimpleNamespace(sanity_checking=False)
        >>> loop.add_batch(trainer, 1, lambda kind: torch.eye(2), torch.arange(2))  # loader 1: the gallery
        >>> loop.add_batch(trainer, 0, lambda kind: torch.eye(2), torch.arange(2))  # loader 0: the queries
        >>> queries = SimpleNamespace(dataset=SimpleNamespace(positives=[(0,), (1,)], excluded=[(), ()]))
        >>> gallery = SimpleNamespace(dataset=[0, 1])
        >>> logged = {}
        >>> module = SimpleNamespace(log_dict=lambda values, sync_dist: logged.update(values))
        >>> loop.finish(trainer, module, [queries, gallery], "val").metrics
        {'Recall@1': 1.0, 'MRR@1': 1.0}
        >>> logged
        {'val/Recall@1': 1.0, 'val/MRR@1': 1.0}
    """

    def __init__(self, evaluator: RetrievalEvaluator) -> None:
        self.evaluator = evaluator

    def add_batch(self, trainer: Any, dataloader_idx: int, embed: Callable[[str], Tensor], index: Tensor) -> None:
        """Embed a batch of loader ``dataloader_idx`` (``embed(kind)``, kind "query" or "gallery") and keep it."""
        if trainer.sanity_checking:
            return
        subset, kind = loader_role(dataloader_idx)
        self.evaluator.add(subset, kind, embed(kind), index)

    def finish(self, trainer: Any, module: Any, loaders: Any, prefix: str, keep_rankings: bool = False,
               summarize: Callable[[Mapping[str, float]], Mapping[str, float]] | None = None) -> EpochResults | None:
        """Search, score and log ``<prefix>/<metric>`` on every rank; None in the sanity check (then reset).

        ``summarize`` adds entries computed from the metrics (e.g. an average over subsets). The evaluator
        keeps the rankings (with ``keep_rankings``) until ``reset``.
        """
        if trainer.sanity_checking:
            self.evaluator.reset()
            return None
        subsets = subsets_from_loaders(loaders)
        metrics = self.evaluator.compute(subsets, keep_rankings=keep_rankings)
        if metrics and summarize is not None:
            metrics.update(summarize(metrics))
        module.log_dict({f"{prefix}/{k}": v for k, v in metrics.items()}, sync_dist=True)
        return EpochResults(metrics, subsets)

    def reset(self) -> None:
        """Forget this epoch's embeddings and rankings."""
        self.evaluator.reset()
