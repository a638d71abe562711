"""One evaluation epoch, as both ``CIRModule`` and ``RetrievalCallback`` run it.

Evaluation loaders come in (queries, gallery) pairs. Each batch's embeddings are handed to the
``RetrievalEvaluator`` with their dataset rows (``add_batch``; nothing during Lightning's sanity check,
whose few batches are not a gallery, unless ``sanity_check`` says it covers every batch); at the epoch's
end the ground truth is read from the loaders' datasets, the evaluator searches and scores once, the
metrics are logged on every rank (``finish``; not those of a sanity check, which Lightning would drop),
and the caller may use the rankings before ``reset``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from cir_lightning.messages import first_few
from cir_lightning.retrieval.evaluator import EvalSubset, RetrievalEvaluator
from cir_lightning.retrieval.protocol import chance_level, subset_families
from cir_lightning.retrieval.subsets import loader_role, subsets_from_loaders

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
        sanity_check: also evaluate Lightning's sanity check (meant for one that runs every validation
            batch: ``num_sanity_val_steps: -1``); its metrics are returned by ``finish``, not logged.

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
        >>> module = SimpleNamespace(log_dict=lambda values, **how: logged.update(values))
        >>> loop.finish(trainer, module, [queries, gallery], "val").metrics
        {'Recall@1': 1.0, 'MRR@1': 1.0}
        >>> logged
        {'val/Recall@1': 1.0, 'val/MRR@1': 1.0}
    """

    def __init__(self, evaluator: RetrievalEvaluator, sanity_check: bool = False) -> None:
        self.evaluator = evaluator
        self.sanity_check = sanity_check
        self._warned_trivial = False

    def _skips(self, trainer: Any) -> bool:
        return trainer.sanity_checking and not self.sanity_check

    def add_batch(self, trainer: Any, dataloader_idx: int, embed: Callable[[str], Tensor], index: Tensor) -> None:
        """Embed a batch of loader ``dataloader_idx`` (``embed(kind)``, kind "query" or "gallery") and keep it."""
        if self._skips(trainer):
            return
        subset, kind = loader_role(dataloader_idx)
        self.evaluator.add(subset, kind, embed(kind), index)

    def finish(self, trainer: Any, module: Any, loaders: Any, prefix: str, keep_rankings: bool = False,
               summarize: Callable[[Mapping[str, float]], Mapping[str, float]] | None = None,
               prog_bar: Collection[str] = ()) -> EpochResults | None:
        """Search, score and log ``<prefix>/<metric>`` on every rank; None in a skipped sanity check (then
        reset).

        ``summarize`` adds entries computed from the metrics (e.g. an average over subsets). The logged names
        in ``prog_bar`` (e.g. a checkpoint's ``monitor``) are shown in the progress bar as well. The
        evaluator keeps the rankings (with ``keep_rankings``) until ``reset``.
        """
        if self._skips(trainer):
            self.evaluator.reset()
            return None
        subsets = subsets_from_loaders(loaders, self.evaluator.added_ks)
        self._warn_trivial(subsets)
        metrics = self.evaluator.compute(subsets, keep_rankings=keep_rankings)
        if metrics and summarize is not None:
            metrics.update(summarize(metrics))
        if not trainer.sanity_checking:  # every rank holds the same values: their max is each exactly, where
            logged = {f"{prefix}/{k}": v for k, v in metrics.items()}  # the default mean of 3 float32s can round
            module.log_dict({k: v for k, v in logged.items() if k not in prog_bar}, sync_dist=True, reduce_fx="max")
            if any(k in prog_bar for k in logged):
                module.log_dict({k: v for k, v in logged.items() if k in prog_bar}, sync_dist=True, reduce_fx="max",
                                prog_bar=True)
        return EpochResults(metrics, subsets)

    def _warn_trivial(self, subsets: list[EvalSubset]) -> None:
        """Warn once about cut-offs that every ranking meets (a recall whose chance level is 1: each query's
        candidates all fit in the first K), e.g. the default Recall@50 on a gallery of 30 images."""
        if self._warned_trivial:  # said once; not recomputed every epoch
            return
        trivial = [f"{sub.name + ' ' if sub.name else ''}{name}" for sub in subsets
                   for name, chance in chance_level(sub, subset_families(sub, self.evaluator.ks)).items()
                   if chance >= 1.0]
        if trivial:
            self._warned_trivial = True
            warnings.warn(f"{first_few(trivial, ', ', ', ... and {n} more')}: 100% for any ranking, as every query's "
                          "candidates fit in the first K; these say nothing of the model (a K of the protocol, or of "
                          "`eval_ks`, reaches the gallery size)", stacklevel=2)

    def reset(self) -> None:
        """Forget this epoch's embeddings and rankings."""
        self.evaluator.reset()
