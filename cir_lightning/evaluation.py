"""``CIRModule``'s evaluation: ``Evaluation`` embeds each batch into the evaluator, loads and saves the
gallery embeddings (a ``GalleryStore``), and at an epoch's end searches, scores and logs (``retrieval.loop``);
a standalone ``validate`` / ``test`` (never the validation inside ``fit``) then leaves behind what
``run_outputs.RunOutputs`` writes. Its options are ``EvaluationOptions``.

Everything here reads the trainer, the DataModule's declared hooks (``gallery_identity``, ``summarize``,
``report``, ``write_predictions``) and the evaluator's rankings.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lightning.pytorch import LightningDataModule, Trainer
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

from cir_lightning.checks import cutoffs, non_negative_int
from cir_lightning.data.base import CIRDataModule, cir_datamodule
from cir_lightning.data.contract import CachedGalleries, EvalSets, Split
from cir_lightning.distributed import same_on_every_rank
from cir_lightning.errors import CIRConfigError
from cir_lightning.fit_summary import FitHistory, monitored, stale_last_warning, watched, watchers
from cir_lightning.messages import first_few
from cir_lightning.paths import path_option
from cir_lightning.retrieval.evaluator import EvalSubset, RetrievalEvaluator
from cir_lightning.retrieval.gallery_cache import GalleryCache, GalleryStore
from cir_lightning.retrieval.loop import EpochResults, EvaluationLoop
from cir_lightning.retrieval.protocol import metric_names
from cir_lightning.retrieval.search_config import SearchConfig
from cir_lightning.retrieval.subsets import subsets_from_datasets
from cir_lightning.run_outputs import RunOutputs

if TYPE_CHECKING:
    from cir_lightning.module import CIRModule

__all__ = ["EVALUATION_OPTIONS", "Evaluation", "EvaluationOptions"]


@dataclasses.dataclass(frozen=True)
class EvaluationOptions:
    """``CIRModule``'s evaluation options, of the same names and meanings (see its docstring), checked here.

    They are never checkpoint hyperparameters: LightningCLI re-applies those over the command line of a later
    ``validate --ckpt_path``, and evaluation options must stay the user's.

    Example:
        >>> from cir_lightning.evaluation import EvaluationOptions
        >>> EvaluationOptions(eval_ks=[10, 1]).eval_ks
        [1, 10]
        >>> EvaluationOptions(pictures=-1)
        Traceback (most recent call last):
        ...
        cir_lightning.errors.CIRConfigError: `pictures` must be an integer >= 0, got -1
    """

    eval_ks: list[int] | None = None
    search: SearchConfig | None = None
    write_results: bool = True
    save_rankings: bool = False
    embedding_cache: str | None = None
    overwrite_cache: bool = False
    pictures: int = 8
    pictures_during_fit: bool = False
    validate_before_fit: bool = False

    def __post_init__(self) -> None:
        if self.eval_ks is not None:
            object.__setattr__(self, "eval_ks", cutoffs("eval_ks", self.eval_ks))
        non_negative_int("pictures", self.pictures)
        path_option("embedding_cache", self.embedding_cache, optional=True)  # "" is refused, not taken for "no cache"


EVALUATION_OPTIONS = tuple(field.name for field in dataclasses.fields(EvaluationOptions))
"""The names of ``CIRModule``'s evaluation options (never checkpoint hyperparameters)."""

STAGE_PREFIX = {"validate": "val", "test": "test"}
"""The prefix of the logged metrics (``val/Recall@1``) and of the results files' split names."""


class Evaluation:
    """Retrieval evaluation inside a LightningModule: the evaluator, its epoch loop, the gallery caches and
    the files of standalone runs (the options are ``CIRModule``'s of the same names).

    Example:
        >>> from cir_lightning.evaluation import Evaluation, EvaluationOptions
        >>> evaluation = Evaluation(EvaluationOptions(eval_ks=[1, 10]))
        >>> evaluation.evaluator.ks, evaluation.cache is None
        ([1, 10], True)
    """

    def __init__(self, options: EvaluationOptions) -> None:
        self.options = options
        self.evaluator = RetrievalEvaluator(options.eval_ks, options.search)
        self.loop = EvaluationLoop(self.evaluator, sanity_check=options.validate_before_fit)
        self.history = FitHistory()
        self.last_results: EpochResults | None = None  # the last epoch's metrics as computed (float64), on every rank
        self.cache: GalleryStore | None = (GalleryCache(options.embedding_cache, options.overwrite_cache)
                                           if options.embedding_cache else None)
        self.outputs = RunOutputs(options.write_results, options.save_rankings, self.cache, options.pictures,
                                  options.pictures_during_fit)

    def use_cache(self, cache: GalleryStore) -> None:
        """Load and save gallery embeddings through ``cache`` instead of ``embedding_cache``'s folders, e.g.
        BGE-VL's embedding files (``retrieval.memmap.MemmapGalleries``)."""
        if not isinstance(cache, GalleryStore):
            raise CIRConfigError(f"a gallery store needs `lookup_sets`, `provide`, `save`, `report` and `location` "
                                 f"(`retrieval.gallery_cache.GalleryStore`); got {type(cache).__name__}")
        self.cache = self.outputs.cache = cache

    def connect(self, module: CIRModule, datamodule: LightningDataModule | None) -> CachedGalleries | None:
        """What the DataModule asks when it makes the evaluation loaders (after any checkpoint is loaded):
        which subsets' galleries come from the cache (None without a cache). Called in the module's ``setup``."""
        trainer = module._trainer
        if (trainer is not None and isinstance(datamodule, CIRDataModule) and self._sharded_across_ranks(trainer)
                and trainer.state.fn in (TrainerFn.VALIDATING, TrainerFn.TESTING)):  # fit's: in fit_start
            sets = datamodule.test_sets if trainer.state.fn == TrainerFn.TESTING else datamodule.val_sets
            _refuse_ranking_within_candidates(subsets_from_datasets(sets))
        if self.cache is None:
            return None
        if not isinstance(datamodule, CIRDataModule):
            raise CIRConfigError("`embedding_cache` needs a cir_lightning DataModule (one that skips the "
                                 f"cached gallery's images); got {type(datamodule).__name__}")

        def cached_galleries(split: Split, sets: EvalSets) -> set[int]:
            if module.trainer.state.fn not in (TrainerFn.VALIDATING, TrainerFn.TESTING):
                return set()  # never inside fit: the weights change
            model = module.backbone.identity(module.trainer.precision)
            found = self.cache.lookup_sets(split, sets, dataset=datamodule.gallery_identity(), model=model,
                                           sharded=self.evaluator.search.sharded)
            if not same_on_every_rank([int(s in found) for s in range(len(sets))]):  # else the loaders differ: a hang
                where = (f"`model.embedding_cache` `{self.options.embedding_cache}`" if self.options.embedding_cache
                         else f"the embedding cache `{self.cache.location}`")
                raise CIRConfigError(f"{where}: some processes found cached galleries that others did not; it must be "
                                     "one folder every process sees (on a disk all nodes share), not written by "
                                     "another run meanwhile")
            return found

        return cached_galleries

    def _sharded_across_ranks(self, trainer: Trainer) -> bool:
        """Whether each process searches only its share of the gallery (``search.sharded`` under DDP)."""
        return self.evaluator.search.sharded and trainer.world_size > 1

    def step(self, trainer: Trainer, dataloader_idx: int, embed: Callable[[str], Tensor], index: Tensor) -> None:
        """Embed one evaluation batch (``embed(side)``) and keep it."""
        self.loop.add_batch(trainer, dataloader_idx, embed, index)

    def epoch_start(self) -> None:
        if self.cache is not None:
            self.cache.provide(self.evaluator)

    def epoch_end(self, module: CIRModule, stage: str, loaders: Any) -> EpochResults | None:
        """Search, score and log ``<prefix>/<metric>``; in a standalone run also write the outputs."""
        trainer = module.trainer
        standalone = trainer.state.fn in (TrainerFn.VALIDATING, TrainerFn.TESTING)
        dm = cir_datamodule(trainer)
        keep = self.outputs.keep_rankings(dm) if standalone else self.outputs.pictures_in_fit
        # in fit, what the callbacks monitor (a checkpoint's `val/Recall@1`) goes to the progress bar too
        shown = () if standalone else watched(trainer)
        epoch = self.loop.finish(trainer, module, loaders, STAGE_PREFIX[stage], keep_rankings=keep,
                                 summarize=dm.summarize if dm is not None else None, prog_bar=shown)
        self.last_results = epoch if epoch is not None else self.last_results
        if epoch is not None and standalone:  # the model's identity: fingerprint and the trained weights' digest
            self.outputs.write(trainer, stage, STAGE_PREFIX[stage], epoch, self.evaluator, dm,
                               module.backbone.identity(trainer.precision), lambda: self.run_config(module), loaders)
        elif epoch is not None and keep:
            when = "before-fit" if trainer.sanity_checking else f"epoch{trainer.current_epoch}"
            # the weights that drew it (hashed on rank zero only: the others draw nothing)
            about = module.backbone.identity(trainer.precision) if trainer.is_global_zero else None
            self.outputs.draw(trainer, f"{STAGE_PREFIX[stage]}-{when}", STAGE_PREFIX[stage], epoch, self.evaluator,
                              loaders, about=about)
        if epoch is not None and trainer.state.fn == TrainerFn.FITTING:
            self._record(trainer, STAGE_PREFIX[stage], epoch)
        self.loop.reset()
        return epoch

    def check_monitors(self, trainer: Trainer, datamodule: CIRDataModule, subsets: Sequence[EvalSubset]) -> None:
        """A ModelCheckpoint or EarlyStopping monitoring a ``val/`` metric this validation never logs (e.g.
        ``val/Recall@1`` with ``eval_ks: [5, 10]``, or any with ``limit_val_batches`` cutting the gallery) failed
        after the first epoch, in a Lightning traceback: refused before training (``subsets``: the DataModule's
        ``val_sets`` read with the evaluator's ``added_ks``)."""
        names = metric_names(subsets, self.evaluator.ks)
        names += list(datamodule.summarize(dict.fromkeys(names, 0.0)))
        for kind, monitor in watchers(trainer):
            kind = f"{'an' if kind[0] in 'AEIOU' else 'a'} {kind}"
            if monitor.startswith("val/") and monitor[len("val/"):] not in names:
                raise CIRConfigError(f"{kind} monitors `{monitor}`, which this validation never logs (it "
                                     f"logs {first_few(['val/' + n for n in names], ', ', ', ...')}): set its `monitor` "
                                     "to one of these, or `model.eval_ks` to the K it names")
            limit = trainer.limit_val_batches
            if monitor.startswith("val/") and not trainer.fast_dev_run and _partial(limit, datamodule, trainer):
                raise CIRConfigError(f"`limit_val_batches` {limit} validates on part of the gallery, which logs no "
                                     f"retrieval metric (it would be wrong), but {kind} monitors `{monitor}`: "
                                     "validate on every batch (`limit_val_batches` 1.0) or monitor another metric")

    def fit_start(self, trainer: Trainer, datamodule: CIRDataModule | None) -> None:
        """When ``fit`` sets the module up: forget an earlier fit's validations, warn of a ``last.ckpt`` that will not
        be the newest, refuse a checkpoint monitoring a metric never logged (and, with ``search.sharded`` under DDP,
        validation subsets ranked within candidates) and, with ``validate_before_fit``, let Lightning's sanity check
        run every validation batch (not under ``fast_dev_run``)."""
        self.history.reset()
        warning = stale_last_warning(trainer)
        if warning:
            rank_zero_warn(warning)
        if datamodule is not None and datamodule.val_sets:
            subsets = subsets_from_datasets(datamodule.val_sets, self.evaluator.added_ks)  # read once, for both checks
            self.check_monitors(trainer, datamodule, subsets)
            if self._sharded_across_ranks(trainer):
                _refuse_ranking_within_candidates(subsets)
        if self.loop.sanity_check and not trainer.fast_dev_run:
            trainer.num_sanity_val_steps = float("inf")  # what `num_sanity_val_steps: -1` sets

    def _record(self, trainer: Trainer, prefix: str, epoch: EpochResults) -> None:
        before = trainer.sanity_checking
        self.history.record(epoch.metrics, epoch.subsets, epoch=trainer.current_epoch, step=trainer.global_step,
                            before=before)
        if before and epoch.metrics:  # Lightning drops what its sanity check logs: the loggers get it directly
            for logger in trainer.loggers:  # (rank zero only, as Lightning's loggers write)
                logger.log_metrics({f"{prefix}/{k}": v for k, v in epoch.metrics.items()}, step=trainer.global_step)

    def fit_end(self, trainer: Trainer) -> None:
        """On rank zero, print the tables of the fit's best and last validations and what training changed."""
        text = self.history.summary(monitored(trainer), self.evaluator.ks) if trainer.is_global_zero else ""
        if text:
            print(text)

    def run_config(self, module: CIRModule) -> dict[str, Any]:
        """The run's configuration for results files: training hyperparameters, the evaluation options
        (which checkpoints do not store), the data and the checkpoint."""
        datamodule = module.trainer.datamodule
        evaluation = {"eval_ks": self.evaluator.ks, "search": dataclasses.asdict(self.evaluator.search),
                      "save_rankings": self.options.save_rankings,
                      "embedding_cache": None if self.cache is None else self.cache.report()}
        hparams = {k: v for k, v in module.hparams.items() if not k.startswith("_")}
        lora = module.backbone.lora
        init_adapter = lora.init_adapter if lora is not None else None
        return {"model": {**hparams, **evaluation}, "data": dict(datamodule.hparams) if datamodule is not None else {},
                "data_class_path": f"{type(datamodule).__module__}.{type(datamodule).__qualname__}"
                if datamodule is not None else None,
                # absolute: a results file is read from elsewhere (the weights themselves: `model.weights`)
                "ckpt_path": _absolute(module.trainer.ckpt_path), "init_adapter": _absolute(init_adapter)}


def _refuse_ranking_within_candidates(subsets: Sequence[EvalSubset]) -> None:
    """``search.sharded`` under DDP cannot rank within candidates (CIRR's Recall_subset): refused before the
    embedding (the evaluator would refuse it only after it)."""
    for s, sub in enumerate(subsets):
        if sub.candidates is not None:
            raise CIRConfigError(f"subset {sub.name or s!r}: rankings within candidates (recall_subset) need the whole "
                                 "gallery on every rank: turn `search.sharded` off")


def _partial(limit: int | float, datamodule: CIRDataModule, trainer: Trainer) -> bool:
    """Whether ``limit_val_batches`` leaves out some batch of a validation loader (0 validates nothing)."""
    if isinstance(limit, float):
        return 0.0 < limit < 1.0
    per_rank = [-(-len(dataset) // trainer.world_size) for pair in datamodule.val_sets for dataset in pair]
    return 0 < limit < max((-(-n // datamodule.eval_batch_size) for n in per_rank), default=0)


def _absolute(path: str | Path | None) -> str | None:
    return None if path is None else str(Path(path).absolute())
