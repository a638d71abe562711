"""What a standalone ``validate`` / ``test`` leaves behind (never the validation inside ``fit``): the
gallery embedding caches, the results file and table, and the benchmark's server files.

``CIRModule`` calls ``RunOutputs.write`` at the end of an evaluation epoch; everything here reads the
trainer, the DataModule's declared hooks (``report``, ``write_predictions``) and the evaluator's
rankings, and writes through ``cir_lightning.files`` (atomically, never over an existing file).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from cir_lightning.data.base import CIRDataModule
from cir_lightning.retrieval.evaluator import RetrievalEvaluator
from cir_lightning.retrieval.gallery_cache import GalleryCache
from cir_lightning.retrieval.loop import EpochResults
from cir_lightning.retrieval.results import ranked_ids, report_results

__all__ = ["RunOutputs"]


class RunOutputs:
    """The files of a standalone evaluation run.

    Args:
        write_results: write ``results-<stage>.json`` and print the table.
        save_rankings: put every query's top-K gallery ids into the results file.
        cache: the gallery embedding caches (``None``: none).

    Example:
        >>> from cir_lightning.evaluation import RunOutputs
        >>> RunOutputs(write_results=True, save_rankings=False, cache=None).keep_rankings(None)
        False
    """

    def __init__(self, write_results: bool, save_rankings: bool, cache: GalleryCache | None) -> None:
        self.write_results = write_results
        self.save_rankings = save_rankings
        self.cache = cache

    def keep_rankings(self, datamodule: CIRDataModule | None) -> bool:
        """Whether the evaluator must keep every query's ranking: for the results file or server files."""
        return self.save_rankings or (datamodule is not None and datamodule.writes_predictions)

    def write(self, trainer: Any, stage: str, prefix: str, epoch: EpochResults, evaluator: RetrievalEvaluator,
              datamodule: CIRDataModule | None, fingerprint: Mapping[str, Any],
              config: Callable[[], Mapping[str, Any]]) -> None:
        """Save the caches, then, on rank zero, the results file (and table) and the server files.
        Every rank must call it (the log folder is a collective)."""
        folder = Path(trainer.log_dir or trainer.default_root_dir)  # broadcast from rank zero: ask on every rank
        if self.cache is not None:
            self.cache.save(evaluator)
        if not trainer.is_global_zero:
            return
        wanted = self.keep_rankings(datamodule)
        ranked = ranked_ids(epoch.subsets, evaluator.rankings) if wanted else {}
        if self.write_results and epoch.metrics:
            report_results(folder, stage, prefix, epoch.metrics, epoch.subsets, model=fingerprint, config=config(),
                           rankings=ranked if self.save_rankings else None,
                           report=datamodule.report(epoch.metrics) if datamodule is not None else "")
        if datamodule is not None and datamodule.writes_predictions:
            within = ranked_ids(epoch.subsets, evaluator.subset_rankings)
            for path in datamodule.write_predictions(folder, stage, ranked, within):
                print(f"predictions written to {path}")
