"""``CIRModule``'s evaluation: ``Evaluation`` embeds each batch into the evaluator, loads and saves the
gallery embedding caches, and at an epoch's end searches, scores and logs (``retrieval.loop``); a
standalone ``validate`` / ``test`` (never the validation inside ``fit``) then leaves behind what
``RunOutputs`` writes: the caches, the results file and table, and the benchmark's server files.

Everything here reads the trainer, the DataModule's declared hooks (``gallery_identity``, ``summarize``,
``report``, ``write_predictions``) and the evaluator's rankings, and writes through ``cir_lightning.files``
(atomically, never over an existing file).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from lightning.pytorch.trainer.states import TrainerFn
from torch import Tensor

from cir_lightning.data.base import CIRDataModule
from cir_lightning.errors import CIRConfigError
from cir_lightning.retrieval.evaluator import RetrievalEvaluator
from cir_lightning.retrieval.gallery_cache import GalleryCache
from cir_lightning.retrieval.index import SearchConfig
from cir_lightning.retrieval.loop import EpochResults, EvaluationLoop
from cir_lightning.retrieval.results import ranked_ids, report_results

__all__ = ["Evaluation", "RunOutputs"]

STAGE_PREFIX = {"validate": "val", "test": "test"}
"""The prefix of the logged metrics (``val/Recall@1``) and of the results files' split names."""


def _cir_datamodule(trainer: Any) -> CIRDataModule | None:
    datamodule = getattr(trainer, "datamodule", None)
    return datamodule if isinstance(datamodule, CIRDataModule) else None


class Evaluation:
    """Retrieval evaluation inside a LightningModule: the evaluator, its epoch loop, the gallery caches and
    the files of standalone runs (the options are ``CIRModule``'s of the same names).

    Example:
        >>> from cir_lightning.evaluation import Evaluation
        >>> evaluation = Evaluation(ks=[1, 10], search=None, write_results=True, save_rankings=False)
        >>> evaluation.evaluator.ks, evaluation.cache is None
        ([1, 10], True)
    """

    def __init__(self, ks: Sequence[int], search: SearchConfig | None, write_results: bool, save_rankings: bool,
                 embedding_cache: str | None = None, overwrite_cache: bool = False) -> None:
        self.evaluator = RetrievalEvaluator(ks, search)
        self.loop = EvaluationLoop(self.evaluator)
        self.save_rankings = save_rankings
        self.cache = GalleryCache(embedding_cache, overwrite_cache) if embedding_cache else None
        self.outputs = RunOutputs(write_results, save_rankings, self.cache)

    def connect(self, module: Any, datamodule: Any) -> Callable[[str, list[tuple[Any, Any]]], set[int]] | None:
        """What the DataModule asks when it makes the evaluation loaders (after any checkpoint is loaded):
        which subsets' galleries come from the cache (None without a cache)."""
        if self.cache is None:
            return None
        if not isinstance(datamodule, CIRDataModule):
            raise CIRConfigError("`embedding_cache` needs a cir_lightning DataModule (one that skips the "
                                 f"cached gallery's images); got {type(datamodule).__name__}")

        def cached_galleries(stage: str, sets: list[tuple[Any, Any]]) -> set[int]:
            if module.trainer.state.fn not in (TrainerFn.VALIDATING, TrainerFn.TESTING):
                return set()  # never inside fit: the weights change
            model = {"fingerprint": module.backbone.fingerprint(), "weights": module.backbone.weights_digest()}
            return self.cache.lookup_sets(stage, sets, dataset=datamodule.gallery_identity(), model=model,
                                          sharded=self.evaluator.search.sharded)

        return cached_galleries

    def step(self, trainer: Any, dataloader_idx: int, embed: Callable[[str], Tensor], index: Tensor) -> None:
        """Embed one evaluation batch (``embed(side)``) and keep it."""
        self.loop.add_batch(trainer, dataloader_idx, embed, index)

    def epoch_start(self) -> None:
        if self.cache is not None:
            self.cache.provide(self.evaluator)

    def epoch_end(self, module: Any, stage: str, loaders: Any) -> EpochResults | None:
        """Search, score and log ``<prefix>/<metric>``; in a standalone run also write the outputs."""
        trainer = module.trainer
        standalone = trainer.state.fn in (TrainerFn.VALIDATING, TrainerFn.TESTING)
        dm = _cir_datamodule(trainer)
        epoch = self.loop.finish(trainer, module, loaders, STAGE_PREFIX[stage],
                                 keep_rankings=standalone and self.outputs.keep_rankings(dm),
                                 summarize=dm.summarize if dm is not None else None)
        if epoch is not None and standalone:
            self.outputs.write(trainer, stage, STAGE_PREFIX[stage], epoch, self.evaluator, dm,
                               module.backbone.fingerprint(), lambda: self.run_config(module))
        self.loop.reset()
        return epoch

    def run_config(self, module: Any) -> dict[str, Any]:
        """The run's configuration for results files: training hyperparameters, the evaluation options
        (which checkpoints do not store), the data and the checkpoint."""
        datamodule = getattr(module.trainer, "datamodule", None)
        evaluation = {"eval_ks": self.evaluator.ks, "search": dataclasses.asdict(self.evaluator.search),
                      "save_rankings": self.save_rankings,
                      "embedding_cache": None if self.cache is None else self.cache.report()}
        hparams = {k: v for k, v in module.hparams.items() if not k.startswith("_")}
        return {"model": {**hparams, **evaluation}, "data": dict(getattr(datamodule, "hparams", {}) or {}),
                "data_class": type(datamodule).__name__ if datamodule is not None else None,
                "ckpt_path": module.trainer.ckpt_path}


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
