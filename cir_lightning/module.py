"""``CIRModule``: thin Lightning glue around a backbone, FiRE's losses and a retrieval evaluator.

Training is FiRE stage 2 (``objective: retrieval``: ``FireLoss`` on query / target embeddings, targets of
all ranks gathered with gradient under DDP) or stage 1 (``objective: caption``: cross-entropy on the
target caption, ``cir_lightning.stage1``). Evaluation runs ``retrieval.loop.EvaluationLoop`` and, in a
standalone ``validate`` / ``test``, ``evaluation.RunOutputs`` (results, server files, caches).
Checkpoints hold the trainable weights only (``cir_lightning.checkpointing``).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.cli import OptimizerCallable
from lightning.pytorch.trainer.states import TrainerFn
from torch import Tensor

from cir_lightning.backbones.base import Backbone
from cir_lightning.checkpointing import (
    check_and_complete,
    export_adapter_after_fit,
    keep_trainable,
    prepare_strategy,
)
from cir_lightning.checks import cutoffs, number_in, positive_int
from cir_lightning.data.base import CIRDataModule
from cir_lightning.errors import CIRConfigError
from cir_lightning.evaluation import RunOutputs
from cir_lightning.losses import FireLoss, caption_loss, distributed_fire_loss, target_keys
from cir_lightning.optim import lr_scheduler
from cir_lightning.retrieval.evaluator import (
    RetrievalEvaluator,
    loader_role,
)
from cir_lightning.retrieval.gallery_cache import GalleryCache
from cir_lightning.retrieval.index import SearchConfig
from cir_lightning.retrieval.loop import EvaluationLoop
from cir_lightning.stage1 import FIRE_STAGE1_INSTRUCTION, CaptionBatches

_STAGE_PREFIX = {"validate": "val", "test": "test"}


def _default_optimizer(params: Any) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=1e-4, weight_decay=0.01)


class CIRModule(pl.LightningModule):
    """Composed image retrieval with a multimodal backbone, trained with FiRE's stage-2 (or stage-1) loss.

    Args:
        backbone: the embedding model (e.g. ``HFMultimodalBackbone``).
        loss: the training loss (default: ``FireLoss()``, the paper's settings).
        optimizer: optimizer factory, applied to the trainable parameters only (default AdamW, lr 1e-4,
            weight decay 0.01).
        lr_schedule: ``"linear"`` (warm-up then linear decay to 0), ``"cosine"`` or ``"constant"``
            (after warm-up).
        warmup: warm-up length: a fraction of all optimizer steps if < 1, else a number of steps.
        target_side: align queries with the target ``"image"`` (paper) or the target ``"caption"``
            (release; needs captions in the data).
        eval_ks: the cut-offs K of Recall@K and MRR@K.
        search: how the gallery is searched: backend, faiss index type, ``nprobe`` / ``ef_search``,
            device (default: exact faiss ``Flat`` on the CPU).
        export_adapter: save the trained adapter with ``save_pretrained`` when ``fit`` ends.
        write_results: after ``validate`` / ``test`` (not the validation inside ``fit``), write
            ``results-<stage>.json`` to the log folder and print the metrics as a table.
        save_rankings: also put every query's top-K gallery ids (K = max ``eval_ks``) into that file.
        embedding_cache: a folder of gallery embedding caches for ``validate`` / ``test``: a gallery
            cached there by the same model and weights (checked; a mismatch is an error) is loaded
            instead of embedded, and one not there yet is written after it is embedded. It must be
            visible to every process.
        overwrite_cache: re-embed and replace the caches in ``embedding_cache``.
        cross_rank_negatives: under DDP, score each query against the targets of ALL ranks (gathered
            with gradient; duplicate targets across ranks are positives of each other), so training on
            R devices with batch b equals one device with batch R * b. No effect in one process.
        objective: ``"retrieval"`` (FiRE stage 2: ``loss`` on query / target embeddings) or
            ``"caption"`` (FiRE stage 1: generate the target caption; needs ``target_caption`` in the
            training data and a multimodal LLM backbone). Validation measures retrieval either way.
        caption_instruction: stage 1's prompt, with ``<image>`` and ``{modification}``; the target caption
            follows it (default: the paper's).
        max_caption_tokens: stage 1: cut target captions to this many tokens.

    Example:
        >>> from cir_lightning import CIRModule
        >>> import tempfile
        >>> from cir_lightning.backbones import HFMultimodalBackbone, LoRA
        >>> bb = HFMultimodalBackbone(tempfile.mkdtemp() + "/tiny", make_tiny_if_missing=True,
        ...                           lora=LoRA(r=4, alpha=8))
        >>> module = CIRModule(bb, eval_ks=[1, 10])
        >>> type(module.loss).__name__, module.loss.recall_ks, module.evaluator.ks
        ('FireLoss', [1, 5], [1, 10])
        >>> module.objective, module.evaluator.search.factory
        ('retrieval', 'Flat')
        >>> all("lora_" in name for name, p in module.named_parameters() if p.requires_grad)  # LoRA only
        True
    """

    def __init__(
        self,
        backbone: Backbone,
        loss: FireLoss | None = None,
        optimizer: OptimizerCallable = _default_optimizer,
        lr_schedule: Literal["linear", "cosine", "constant"] = "linear",
        warmup: float = 0.1,
        target_side: Literal["image", "caption"] = "image",
        eval_ks: list[int] | None = None,
        search: SearchConfig | None = None,
        export_adapter: bool = True,
        write_results: bool = True,
        save_rankings: bool = False,
        embedding_cache: str | None = None,
        overwrite_cache: bool = False,
        cross_rank_negatives: bool = True,
        objective: Literal["retrieval", "caption"] = "retrieval",
        caption_instruction: str = FIRE_STAGE1_INSTRUCTION,
        max_caption_tokens: int | None = None,
    ) -> None:
        super().__init__()
        # Only training settings become checkpoint hyperparameters: LightningCLI re-applies those over the
        # command line of a later `validate --ckpt_path`, and evaluation options must stay the user's.
        self.save_hyperparameters(ignore=["backbone", "loss", "optimizer", "eval_ks", "search", "export_adapter",
                                          "write_results", "save_rankings", "embedding_cache",
                                          "overwrite_cache"])
        self.backbone = backbone
        self.loss = loss or FireLoss()
        self.optimizer_factory = optimizer
        self.lr_schedule = lr_schedule
        self.warmup = warmup
        self.target_side = target_side
        number_in("warmup", warmup, 0, math.inf)
        positive_int("max_caption_tokens", max_caption_tokens, optional=True)
        self.evaluator = RetrievalEvaluator(cutoffs("eval_ks", eval_ks) if eval_ks is not None else [1, 5, 10, 50],
                                            search)
        self.loop = EvaluationLoop(self.evaluator)
        self.export_adapter = export_adapter
        self.write_results = write_results
        self.save_rankings = save_rankings
        self.cache = GalleryCache(embedding_cache, overwrite_cache) if embedding_cache else None
        self.outputs = RunOutputs(write_results, save_rankings, self.cache)
        self.cross_rank_negatives = cross_rank_negatives
        self.objective = objective
        self.caption_batches = None
        if objective == "caption":  # the backbone's collator must build generative batches (LLMs do)
            self.caption_batches = CaptionBatches(backbone.collator, caption_instruction, max_caption_tokens)

    # ------------------------------------------------------------------ data hookup
    def setup(self, stage: str) -> None:
        if self._trainer is not None:
            prepare_strategy(self)
        # the index type for the real embedding size, before anything is embedded (e.g. PQ16 on 30 dims)
        self.evaluator.search.check(self.backbone.embedding_dim)
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer else None
        if self.cache is not None and not isinstance(datamodule, CIRDataModule):
            raise CIRConfigError("`embedding_cache` needs a cir_lightning DataModule (one that skips the "
                                 f"cached gallery's images); got {type(datamodule).__name__}")
        if (self.objective == "caption" and stage == "fit" and isinstance(datamodule, CIRDataModule)
                and not datamodule.with_captions):
            raise CIRConfigError("`objective: caption` (FiRE stage 1) trains on target captions: set "
                                 "`data.init_args.with_captions: true` (every training line needs a `target_caption`)"
                                 if "with_captions" in datamodule.hparams else
                                 f"`objective: caption` (FiRE stage 1) trains on target captions, which "
                                 f"{type(datamodule).__name__} does not have: use JSONL data with `target_caption`")
        if isinstance(datamodule, CIRDataModule):
            collator = self.caption_batches or self.backbone.collator
            datamodule.connect(collator, self._cached_galleries if self.cache else None)

    def _cached_galleries(self, stage: str, sets: list[tuple[Any, Any]]) -> set[int]:
        """Asked once by the DataModule when it makes the evaluation loaders (after any checkpoint is
        loaded): the subsets whose gallery comes from the cache (never inside fit: the weights change)."""
        if self.trainer.state.fn not in (TrainerFn.VALIDATING, TrainerFn.TESTING):
            return set()
        model = {"fingerprint": self.backbone.fingerprint(), "weights": self.backbone.weights_digest()}
        return self.cache.lookup_sets(stage, sets, dataset=self.trainer.datamodule.gallery_identity(), model=model,
                                      sharded=self.evaluator.search.sharded)

    # ------------------------------------------------------------------ training
    @property
    def _distributed(self) -> bool:
        return self._trainer is not None and self.trainer.world_size > 1

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        if self.objective == "caption":
            return self._caption_step(batch)
        query = self.backbone(batch["query"])
        if self.target_side == "caption":
            if "target_text" not in batch:
                raise CIRConfigError("`target_side: caption` needs target captions in every training sample "
                                     "(set `with_captions: true` on the data and give `target_caption`)")
            target = self.backbone(batch["target_text"])
        else:
            target = self.backbone(batch["target"])
        cross_rank = self.cross_rank_negatives and self._distributed
        dataset = getattr(getattr(self.trainer, "train_dataloader", None), "dataset", None)
        keys = target_keys(batch, cross_rank, getattr(dataset, "records", None)).to(query.device)
        terms = distributed_fire_loss(self.loss, query, target, keys, cross_rank=cross_rank)
        bs = query.shape[0]
        # with cross-rank negatives a rank's terms are scaled shares: their mean over ranks is the global value
        self.log("train/loss", terms["loss"], prog_bar=True, batch_size=bs, sync_dist=cross_rank)
        self.log_dict({f"train/{k}": v for k, v in terms.items() if k != "loss"}, batch_size=bs,
                      sync_dist=cross_rank)
        return terms["loss"]

    def _caption_step(self, batch: dict[str, Any]) -> Tensor:
        if "caption_labels" not in batch:
            raise CIRConfigError("`objective: caption` got a batch without `caption_labels`: the DataModule must "
                                 "be connected to the module's collator (a cir_lightning DataModule is)")
        logits, targets = self.backbone.caption_logits(batch["caption"], batch["caption_labels"])
        loss = caption_loss(logits, targets)  # under DDP: the global token mean, see caption_loss
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["index"]), sync_dist=self._distributed)
        self.log("train/caption_tokens", float(targets.numel()), batch_size=len(batch["index"]))  # this rank's
        return loss

    # ------------------------------------------------------------------ evaluation
    def _embed(self, batch: dict[str, Any], key: str) -> Tensor:
        embeddings = self.backbone(batch[key])
        groups = batch.get("query_groups") if key == "query" else None
        if groups is not None:  # several texts per query (e.g. both caption orders): average, renormalise
            summed = embeddings.new_zeros(len(batch["index"]), embeddings.shape[1]).index_add_(0, groups, embeddings)
            embeddings = torch.nn.functional.normalize(summed, dim=-1)
        return embeddings

    def _eval_step(self, batch: dict[str, Any], dataloader_idx: int) -> None:
        self.loop.add_batch(self.trainer, dataloader_idx, lambda key: self._embed(batch, key), batch["index"])

    def _eval_epoch_start(self) -> None:
        if self.cache is not None:
            self.cache.provide(self.evaluator)

    def _eval_epoch_end(self, stage: str, loaders: Any) -> None:
        standalone = self.trainer.state.fn in (TrainerFn.VALIDATING, TrainerFn.TESTING)  # not inside fit
        datamodule = getattr(self.trainer, "datamodule", None)
        dm = datamodule if isinstance(datamodule, CIRDataModule) else None
        epoch = self.loop.finish(self.trainer, self, loaders, _STAGE_PREFIX[stage],
                                 keep_rankings=standalone and self.outputs.keep_rankings(dm),
                                 summarize=dm.summarize if dm is not None else None)
        if epoch is not None and standalone:
            self.outputs.write(self.trainer, stage, _STAGE_PREFIX[stage], epoch, self.evaluator, dm,
                               self.backbone.fingerprint(), lambda: self._run_config(datamodule))
        self.loop.reset()

    def _run_config(self, datamodule: Any) -> dict[str, Any]:
        """The run's configuration for results files: training hyperparameters, the evaluation options
        (which checkpoints do not store), the data and the checkpoint."""
        evaluation = {"eval_ks": self.evaluator.ks, "search": dataclasses.asdict(self.evaluator.search),
                      "save_rankings": self.save_rankings,
                      "embedding_cache": None if self.cache is None else self.cache.report()}
        hparams = {k: v for k, v in self.hparams.items() if not k.startswith("_")}
        return {"model": {**hparams, **evaluation}, "data": dict(getattr(datamodule, "hparams", {}) or {}),
                "data_class": type(datamodule).__name__ if datamodule is not None else None,
                "ckpt_path": self.trainer.ckpt_path}

    def validation_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step(batch, dataloader_idx)

    def on_validation_epoch_start(self) -> None:
        self._eval_epoch_start()

    def on_test_epoch_start(self) -> None:
        self._eval_epoch_start()

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("validate", self.trainer.val_dataloaders)

    def test_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step(batch, dataloader_idx)

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test", self.trainer.test_dataloaders)

    def predict_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> dict[str, Any]:
        """Embeddings of queries and gallery images: ``{"subset", "kind", "index", "embedding"}``."""
        subset, key = loader_role(dataloader_idx)
        return {"subset": subset, "kind": key, "index": batch["index"], "embedding": self._embed(batch, key).cpu()}

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self) -> Any:
        params = [p for p in self.parameters() if p.requires_grad]
        if not params:
            raise CIRConfigError("the model has no trainable parameters: set `model.backbone.init_args.lora` "
                                 "to train LoRA adapters")
        optimizer = self.optimizer_factory(params)
        scheduler = lr_scheduler(optimizer, self.lr_schedule, self.warmup, self.trainer.estimated_stepping_batches)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        keep_trainable(self, checkpoint, self.backbone.fingerprint())

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        check_and_complete(self, checkpoint, self.backbone.fingerprint())

    def on_fit_end(self) -> None:
        if self.export_adapter and self.backbone.lora is not None:
            export_adapter_after_fit(self)
