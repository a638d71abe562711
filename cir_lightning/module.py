"""``CIRModule``: thin Lightning glue around a backbone, FiRE's losses and a retrieval evaluator.

Training is FiRE stage 2 (``objective: retrieval``: ``FireLoss`` on query / target embeddings, targets of all ranks
gathered with gradient under DDP) or stage 1 (``objective: caption``: cross-entropy on the target caption,
``cir_lightning.stage1``). Evaluation is ``evaluation.Evaluation`` (the evaluator, caches, in a standalone ``validate``
/ ``test`` the results and server files, and the summary ``fit`` ends with). Checkpoints hold the trainable weights
only (``cir_lightning.checkpointing``).
"""

from __future__ import annotations

import math
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.cli import OptimizerCallable
from torch import Tensor

from cir_lightning.backbones.base import Backbone
from cir_lightning.backbones.contract import check_backbone
from cir_lightning.checkpointing import (
    check_and_complete,
    export_adapter_after_fit,
    keep_trainable,
    prepare_strategy,
)
from cir_lightning.checks import number_in, positive_int
from cir_lightning.data.base import cir_datamodule
from cir_lightning.errors import CIRConfigError, CIRModelError
from cir_lightning.evaluation import Evaluation, EvaluationOptions
from cir_lightning.losses import FireLoss, RetrievalLoss, check_loss, distributed_loss
from cir_lightning.negatives import check_negatives
from cir_lightning.optim import lr_scheduler
from cir_lightning.resume import (
    check_resumed_training,
    record_schedule,
    record_training_order,
    resumed_schedule,
    warn_other_schedule,
)
from cir_lightning.retrieval.search_config import SearchConfig
from cir_lightning.retrieval.subsets import loader_role
from cir_lightning.stage1 import FIRE_STAGE1_INSTRUCTION, CaptionBatches, caption_step, check_caption_data
from cir_lightning.targets import target_keys


def _default_optimizer(params: Any) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=1e-4, weight_decay=0.01)


TRAINING_SETTINGS = ("lr_schedule", "warmup", "target_side", "cross_rank_negatives", "objective",
                     "caption_instruction", "max_caption_tokens")
"""``CIRModule``'s arguments kept as checkpoint hyperparameters: LightningCLI puts them back over the command
line of a ``--ckpt_path`` run (``checkpointing.overridden_settings`` refuses a conflict on ``fit``)."""


class CIRModule(pl.LightningModule):
    """Composed image retrieval with a multimodal backbone, trained with FiRE's stage-2 (or stage-1) loss.

    Args:
        backbone: the embedding model (e.g. ``HFMultimodalBackbone``).
        loss: the training loss, a ``losses.RetrievalLoss`` (default: ``FireLoss()``, the paper's settings; or one of
            your own: ``--model.loss mypackage.MyLoss``).
        optimizer: optimizer factory, applied to the trainable parameters only (default AdamW, lr 1e-4,
            weight decay 0.01).
        lr_schedule: ``"linear"`` (warm-up then linear decay to 0), ``"cosine"`` or ``"constant"``
            (after warm-up).
        warmup: warm-up length: a fraction of all optimizer steps if < 1, else a number of steps.
        target_side: align queries with the target ``"image"`` (paper) or the target ``"caption"``
            (release; needs captions in the data).
        eval_ks: the cut-offs K of Recall@K and MRR@K (default 1, 5, 10, 50) where the data has no protocol;
            given, they are also added to a protocol's Recall, MRR and mAP (FashionIQ's Recall@2 beside its own).
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
        validate_before_fit: validate on the whole validation set before training (in place of Lightning's
            sanity check), so that the summary ``fit`` ends with shows where the metrics started.
        pictures: after a standalone ``validate`` / ``test``, draw this many seeded queries per subset with
            their top 5 (``retrievals-<stage>[-<subset>].png`` next to the results, and to the logger); 0: none.
        pictures_during_fit: draw them after every validation inside ``fit`` too.
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
        loss: RetrievalLoss | None = None,
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
        validate_before_fit: bool = False,
        pictures: int = 8,
        pictures_during_fit: bool = False,
        cross_rank_negatives: bool = True,
        objective: Literal["retrieval", "caption"] = "retrieval",
        caption_instruction: str = FIRE_STAGE1_INSTRUCTION,
        max_caption_tokens: int | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(*TRAINING_SETTINGS)  # only these (not EVALUATION_OPTIONS, not the parts)
        number_in("warmup", warmup, 0, math.inf)
        if warmup >= 1 and not float(warmup).is_integer():  # 1.5 trained with a warm-up of 1 step
            raise CIRConfigError(f"`warmup` from 1 on is a number of optimizer steps (below 1, a fraction of the "
                                 f"training), so it must be whole: got {warmup}")
        positive_int("max_caption_tokens", max_caption_tokens, optional=True)
        check_backbone(backbone)  # a backbone of the user's own lacking a part: named now, not mid-run
        self.backbone, self.export_adapter = backbone, export_adapter
        self.loss = FireLoss() if loss is None else loss
        check_loss(self.loss)  # not a loss, or one lacking `forward`: named now, not at the first step
        self.optimizer_factory, self.lr_schedule, self.warmup = optimizer, lr_schedule, warmup
        self.target_side, self.objective, self.cross_rank_negatives = target_side, objective, cross_rank_negatives
        self.evaluation = Evaluation(EvaluationOptions(
            eval_ks=eval_ks, search=search, write_results=write_results, save_rankings=save_rankings,
            embedding_cache=embedding_cache, overwrite_cache=overwrite_cache, pictures=pictures,
            pictures_during_fit=pictures_during_fit, validate_before_fit=validate_before_fit))
        self.evaluator = self.evaluation.evaluator
        self.caption_batches = None
        # the optimizer steps this run's schedule is laid over, and a resumed checkpoint's (``resume``)
        self._schedule_steps: float | None = None
        self._resumed_schedule: tuple[float, int] | None = None
        if objective == "caption":  # the backbone's collator must build generative batches (LLMs do)
            self.caption_batches = CaptionBatches(backbone.collator, caption_instruction, max_caption_tokens)

    # ------------------------------------------------------------------ data hookup
    def setup(self, stage: str) -> None:
        if self._trainer is not None:
            prepare_strategy(self, cached=self.evaluation.cache is not None)
        self._schedule_steps = None if stage == "fit" else self._schedule_steps  # this fit's, once it makes one
        # the index type for the real embedding size, before anything is embedded (e.g. PQ16 on 30 dims)
        self.evaluator.search.check(self.backbone.embedding_dim)
        datamodule = cir_datamodule(self._trainer)
        if stage == "fit":  # the validations' bookkeeping and the checkpoints' monitors
            self.evaluation.fit_start(self.trainer, datamodule)
        cached_galleries = self.evaluation.connect(self, self.trainer.datamodule if self._trainer else None)
        if datamodule is not None:
            if self.objective == "caption" and stage == "fit":
                check_caption_data(datamodule)
            elif self.target_side == "caption" and stage == "fit":  # before the first step, not in it
                check_caption_data(datamodule, "`target_side: caption`")
            if self.objective == "retrieval" and stage == "fit":
                ranks = self.trainer.world_size if self.cross_rank_negatives else 1
                check_negatives(datamodule.train_set, datamodule.batch_size, ranks)
            datamodule.connect(self.caption_batches or self.backbone.collator, cached_galleries)

    # ------------------------------------------------------------------ training
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        distributed = self.trainer.world_size > 1
        if self.objective == "caption":
            loss, tokens = caption_step(self.backbone, batch)
            self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["index"]), sync_dist=distributed)
            self.log("train/caption_tokens", float(tokens), batch_size=len(batch["index"]))  # this rank's
            return self._finite(loss, batch_idx)
        query = self.backbone(batch["query"])
        if self.target_side == "caption" and "target_text" not in batch:
            raise CIRConfigError("`target_side: caption` needs target captions in every training sample "
                                 "(set `with_captions: true` on the data and give `target_caption`)")
        target = self.backbone(batch["target_text" if self.target_side == "caption" else "target"])
        cross_rank = self.cross_rank_negatives and distributed
        keys = target_keys(batch, cross_rank).to(query.device)
        terms = distributed_loss(self.loss, query, target, keys, cross_rank=cross_rank)
        bs = query.shape[0]
        # with cross-rank negatives a rank's terms are scaled shares: their mean over ranks is the global value
        self.log("train/loss", terms["loss"], prog_bar=True, batch_size=bs, sync_dist=cross_rank)
        self.log_dict({f"train/{k}": v for k, v in terms.items() if k != "loss"}, batch_size=bs,
                      sync_dist=cross_rank)
        return self._finite(terms["loss"], batch_idx)

    def _finite(self, loss: Tensor, batch_idx: int) -> Tensor:
        """``loss``, or one line at the first step whose loss is NaN or infinite (on any rank): training on would
        turn every weight to NaN, and the run failed only at the next validation, blaming the queries."""
        finite = bool(torch.isfinite(loss.detach()))
        if self.trainer.world_size > 1:
            finite = self.trainer.strategy.reduce_boolean_decision(finite, all=True)
        if not finite:
            raise CIRModelError(f"the training loss is {float(loss.detach())} at step {self.trainer.global_step + 1} "
                                f"(epoch {self.current_epoch}, batch {batch_idx}): the weights diverged or the model "
                                "overflowed; lower `model.optimizer.init_args.lr`, or train with `--trainer.precision` "
                                "32-true or bf16-mixed instead of float16. Checkpoints written before this step are "
                                "unaffected")
        return loss

    # ------------------------------------------------------------------ evaluation (see evaluation.Evaluation)
    def validation_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        self.evaluation.step(self.trainer, dataloader_idx, lambda side: self.backbone.embed_batch(batch, side),
                             batch["index"])

    def on_validation_epoch_start(self) -> None:
        self.evaluation.epoch_start()

    def on_validation_epoch_end(self) -> None:
        self.evaluation.epoch_end(self, "validate", self.trainer.val_dataloaders)

    test_step = validation_step
    on_test_epoch_start = on_validation_epoch_start

    def on_test_epoch_end(self) -> None:
        self.evaluation.epoch_end(self, "test", self.trainer.test_dataloaders)

    def predict_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> dict[str, Any]:
        """Embeddings of queries and gallery images: ``{"subset", "kind", "index", "embedding"}`` (None for a batch of
        no rows: a process's idle row, ``data.idle_rows``)."""
        subset, side = loader_role(dataloader_idx)
        embedding = self.backbone.embed_batch(batch, side).cpu() if len(batch["index"]) else None
        return {"subset": subset, "kind": side, "index": batch["index"], "embedding": embedding}

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self) -> Any:
        params = [p for p in self.parameters() if p.requires_grad]
        if not params:
            raise CIRConfigError("the model has no trainable parameters: set `model.backbone.init_args.lora` "
                                 "to train LoRA adapters")
        try:
            optimizer = self.optimizer_factory(params)
        except ValueError as err:  # torch's check of its options (`lr: -1`): a traceback before any step
            raise CIRConfigError(f"`model.optimizer`: the optimizer refuses its options: {err}") from err
        self._schedule_steps = self.trainer.estimated_stepping_batches
        scheduler = lr_scheduler(optimizer, self.lr_schedule, self.warmup, self._schedule_steps)
        self._check_schedule()
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        keep_trainable(self, checkpoint, self.backbone.fingerprint(), self.backbone.peft_model)
        record_training_order(self, checkpoint)
        record_schedule(checkpoint, self._schedule_steps)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        check_and_complete(self, checkpoint, self.backbone.fingerprint(), self.backbone.peft_model)
        if self._trainer is not None and self.trainer.state.fn == "fit":  # optimizer and loops resume too
            check_resumed_training(self, checkpoint)
            self._resumed_schedule = resumed_schedule(checkpoint)
            self._check_schedule()

    def _check_schedule(self) -> None:
        """Once both are known (the checkpoint is loaded before ``configure_optimizers``, or after it under DeepSpeed
        and FSDP): warn when the resumed run lays its schedule over another number of steps."""
        if self._resumed_schedule is not None and self._schedule_steps is not None:
            warn_other_schedule(self.lr_schedule, self.warmup, self._resumed_schedule, self._schedule_steps,
                                self.trainer.ckpt_path)
            self._resumed_schedule = None

    def on_fit_end(self) -> None:
        if self.export_adapter and self.backbone.lora is not None:
            export_adapter_after_fit(self)

    def teardown(self, stage: str) -> None:
        if stage == "fit":  # after the progress bar has stopped: the summary is the run's last output
            self.evaluation.fit_end(self.trainer)
