"""``SummarizesMetrics``: the hook by which a DataModule adds metrics derived from an evaluation's (FashionIQ's
average over its categories).

It is declared here, below both ``cir_lightning.data`` and ``cir_lightning.retrieval`` (which may not import each
other): ``CIRDataModule`` inherits it, and ``RetrievalCallback`` calls ``summarize`` only on a DataModule that
inherits it, so a method of that name on someone else's DataModule is never called with the metrics.
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["SummarizesMetrics"]


class SummarizesMetrics:
    """A DataModule whose ``summarize`` the evaluation calls and logs (``CIRModule``'s and ``RetrievalCallback``)."""

    def summarize(self, metrics: Mapping[str, float]) -> dict[str, float]:
        """Metrics derived from the evaluated ones (keys without stage prefix), e.g. an average over
        subsets; the model logs them too. None by default (``{}``).

        Example:
            >>> from cir_lightning.data import CIRDataModule
            >>> CIRDataModule().summarize({"Recall@1": 0.5})
            {}
        """
        return {}
