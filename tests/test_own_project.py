"""cir_lightning's pieces in someone else's Lightning project (docs/own-project.md): our
DataModules with their model and our callback, our metrics on their tensors, our CIRModule under their Trainer's
callbacks and limits, our command subclassed in their package."""

from __future__ import annotations

import warnings

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

from cir_lightning import CIRModule, FashionIQDataModule, JsonlCIRDataModule, RetrievalCallback
from cir_lightning.errors import CIRConfigError
from cir_lightning.retrieval import (
    Encoders,
    HitRateAtK,
    MAPAtK,
    MRRAtK,
    PositiveRecallAtK,
    SearchConfig,
    search,
)
from tests.data.fake_fashioniq import make_fake_fashioniq
from tests.test_cli import CONF


class TheirModel(pl.LightningModule):
    """Their model: a linear map of 8x8 thumbnails; it reads our DataModules' samples (lists of sample dicts)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.tower = torch.nn.Linear(8 * 8 * 3, 6)

    def _embed(self, images: list) -> torch.Tensor:
        pixels = [torch.from_numpy(np.asarray(im.convert("RGB").resize((8, 8)), dtype=np.float32)).flatten() / 255
                  for im in images]
        return F.normalize(self.tower(torch.stack(pixels)), dim=-1)

    def encode_query(self, batch: list[dict]) -> torch.Tensor:
        return self._embed([s["reference_image"] for s in batch])

    def encode_gallery(self, batch: list[dict]) -> torch.Tensor:
        return self._embed([s["image"] for s in batch])

    def validation_step(self, batch, batch_idx, dataloader_idx=0):
        pass


def _trainer(tmp_path, **kwargs) -> pl.Trainer:
    checkpoints = any(isinstance(c, ModelCheckpoint) for c in kwargs.get("callbacks", []))
    return pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                      enable_checkpointing=checkpoints, default_root_dir=tmp_path, **kwargs)


def test_their_model_is_evaluated_on_our_datamodule_without_a_collator(tmp_path, synthetic_root):
    """Without a model's collator our loaders yield lists of sample dicts; the callback took `batch["index"]` of the
    list (a TypeError)."""
    model, dm = TheirModel(), JsonlCIRDataModule(synthetic_root, eval_batch_size=50)
    trainer = _trainer(tmp_path, callbacks=[RetrievalCallback(ks=[1, 10], search=SearchConfig(backend="torch"))])
    [logged, _] = trainer.validate(model, datamodule=dm, verbose=False)
    [(queries, gallery)] = dm.val_sets
    with torch.no_grad():
        q = model.encode_query([queries[i] for i in range(len(queries))])
        g = torch.cat([model.encode_gallery([gallery[i] for i in range(j, min(j + 50, len(gallery)))])
                       for j in range(0, len(gallery), 50)])
    ranked = search(q, g, k=10, excluded=queries.excluded)
    expected = HitRateAtK(ks=[1, 10])
    expected.update(ranked, queries.positives)
    assert logged["val/Recall@1"] == pytest.approx(float(expected.compute()[1]), abs=1e-6)
    assert logged["val/Recall@10"] == pytest.approx(float(expected.compute()[10]), abs=1e-6)


def test_the_callback_evaluates_a_test_run_too(tmp_path, synthetic_root):
    """`trainer.test` with the callback logged nothing, silently."""
    class Tested(TheirModel):
        test_step = TheirModel.validation_step

    trainer = _trainer(tmp_path, callbacks=[RetrievalCallback(ks=[1, 10], search=SearchConfig(backend="torch"))])
    dm = JsonlCIRDataModule(synthetic_root, eval_batch_size=100)
    [validated, _] = trainer.validate(Tested(), datamodule=dm, verbose=False)
    [tested, _] = trainer.test(Tested(), dm.val_dataloader(), verbose=False)
    assert tested == {k.replace("val/", "test/"): v for k, v in validated.items()}
    assert len(tested) == 4


def test_the_callback_logs_what_our_datamodule_summarizes(tmp_path):
    """FashionIQ's average over categories, which CIRModule logs, was missing from the callback's metrics."""
    trainer = _trainer(tmp_path, callbacks=[RetrievalCallback(ks=[1, 5])])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the fake's galleries are smaller than FashionIQ's K
        [logged, *_] = trainer.validate(TheirModel(), datamodule=FashionIQDataModule(make_fake_fashioniq(tmp_path / "f")),
                                        verbose=False)
    categories = ("dress", "shirt", "toptee")
    assert logged["val/average/Recall@1"] == pytest.approx(np.mean([logged[f"val/{c}/Recall@1"] for c in categories]))

    class TheirData(pl.LightningDataModule):  # a `summarize` of their own, for something else: never ours to call
        def __init__(self, inner) -> None:
            super().__init__()
            self.inner = inner

        def setup(self, stage: str) -> None:
            self.inner.setup(stage)

        def val_dataloader(self):
            return self.inner.val_dataloader()

        def summarize(self, metrics):
            raise AssertionError("the callback called a summarize it was never promised")

    trainer = _trainer(tmp_path, callbacks=[RetrievalCallback(ks=[1, 5])])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        [theirs, *_] = trainer.validate(TheirModel(), datamodule=TheirData(FashionIQDataModule(tmp_path / "f")),
                                        verbose=False)
    assert theirs == {k: v for k, v in logged.items() if "/average/" not in k}


def test_what_the_callback_needs_is_declared_and_named_in_one_line(tmp_path):
    class Nothing(pl.LightningModule):
        def validation_step(self, batch, batch_idx, dataloader_idx=0):
            pass

    class Vectors(list):
        positives = [[0]]

    assert isinstance(TheirModel(), Encoders)
    assert not isinstance(Nothing(), Encoders)
    loaders = [torch.utils.data.DataLoader(Vectors([{"x": torch.ones(2)}])),
               torch.utils.data.DataLoader([{"x": torch.ones(2)}])]
    trainer = _trainer(tmp_path, callbacks=[RetrievalCallback(ks=[1])])
    with pytest.raises(CIRConfigError, match=r"needs `Nothing.encode_query\(batch\)` and `Nothing.encode_gallery"):
        trainer.validate(Nothing(), loaders, verbose=False)

    class NoIndex(TheirModel):
        def encode_query(self, batch):
            return batch["x"]

        encode_gallery = encode_query

    with pytest.raises(CIRConfigError, match=r'a mapping with an "index" entry .* got a dict with keys \[\'x\'\]'):
        trainer.validate(NoIndex(), loaders, verbose=False)


@pytest.mark.parametrize("metric", [HitRateAtK, PositiveRecallAtK, MRRAtK, MAPAtK])
def test_metrics_take_each_querys_positives_as_lists(metric):
    """A torchmetrics user passes ragged positives as lists; `update` failed on `list.ndim`."""
    ranked = torch.tensor([[4, 2, 7], [1, 3, 0], [5, 6, 8]])
    positives = [[2, 7], [0], []]
    from_lists, from_tensor = metric(ks=[1, 2, 3]), metric(ks=[1, 2, 3])
    from_lists.update(ranked, positives)
    from_tensor.update(ranked, torch.tensor([[2, 7], [0, -1], [-1, -1]]))
    assert from_lists.compute() == from_tensor.compute()
    assert from_lists.compute()[3] > 0


def _module(tiny_model_dir, **kwargs) -> CIRModule:
    from cir_lightning.backbones import HFMultimodalBackbone, LoRA

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return CIRModule(HFMultimodalBackbone(str(tiny_model_dir), lora=LoRA(r=4, alpha=8)), eval_ks=[1, 5],
                         pictures=0, write_results=False, **kwargs)


@pytest.mark.parametrize(("callback", "limit", "message"), [
    (EarlyStopping(monitor="val/Recall@10", mode="max"), 1.0,
     "an EarlyStopping monitors `val/Recall@10`, which this validation never logs"),
    (ModelCheckpoint(monitor="val/Recall@1", mode="max"), 0.5,
     r"`limit_val_batches` 0.5 validates on part of the gallery, .* a ModelCheckpoint monitors `val/Recall@1`"),
    (EarlyStopping(monitor="val/MRR@5", mode="max"), 2,
     r"`limit_val_batches` 2 validates on part of the gallery, .* an EarlyStopping monitors `val/MRR@5`"),
])
def test_their_monitors_are_checked_before_training(tmp_path, tiny_model_dir, synthetic_root, callback, limit, message):
    """Both failed after the first epoch's training, in a Lightning traceback."""
    trainer = _trainer(tmp_path, max_epochs=1, limit_val_batches=limit, callbacks=[callback])
    with pytest.raises(CIRConfigError, match=message):
        trainer.fit(_module(tiny_model_dir), datamodule=JsonlCIRDataModule(synthetic_root, batch_size=4,
                                                                           eval_batch_size=8))


def test_a_limit_covering_every_batch_is_not_partial(tmp_path, tiny_model_dir, synthetic_root):
    from cir_lightning.evaluation import _partial

    dm = JsonlCIRDataModule(synthetic_root, eval_batch_size=100)
    dm.setup("validate")
    trainer = _trainer(tmp_path, limit_val_batches=6)  # 576 gallery images: 6 batches
    assert not _partial(6, dm, trainer)
    assert _partial(5, dm, trainer)
    assert not _partial(0, dm, trainer)  # no validation at all: nothing partial


def test_their_trainer_checkpoints_and_validates_from_a_checkpoint_of_a_path_root(tmp_path, tiny_model_dir,
                                                                                  synthetic_root):
    """A DataModule given a `Path` (as `make_synthetic_cir` returns) saved it in the checkpoint's hyperparameters,
    and the safe loader refused the user's own checkpoint (`pathlib.PosixPath`)."""
    dm = JsonlCIRDataModule(synthetic_root, batch_size=4, eval_batch_size=64)
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="val/Recall@5", mode="max")
    trainer = pl.Trainer(accelerator="cpu", max_epochs=1, limit_train_batches=2, num_sanity_val_steps=0,
                         precision="bf16-mixed", accumulate_grad_batches=2, enable_progress_bar=False,
                         enable_model_summary=False, logger=False, default_root_dir=tmp_path, callbacks=[checkpoint])
    module = _module(tiny_model_dir, export_adapter=False)
    trainer.fit(module, datamodule=dm)
    assert type(torch.load(checkpoint.best_model_path, weights_only=False)["datamodule_hyper_parameters"]["root"]) \
        is type(synthetic_root)
    [logged, _] = trainer.validate(module, datamodule=dm, ckpt_path=checkpoint.best_model_path, verbose=False)
    assert logged["val/Recall@5"] == pytest.approx(float(checkpoint.best_model_score), abs=1e-6)


def test_their_command_subclasses_ours_with_their_module(tmp_path, tiny_model_dir, synthetic_root, capsys):
    """`CIRLightningCLI(model_class=...)` was a TypeError (CIRModule was passed as well)."""
    from cir_lightning.cli import CIRLightningCLI, main

    class TheirModule(CIRModule):
        def __init__(self, *args, their_option: int = 0, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self.their_option = their_option

    class TheirCLI(CIRLightningCLI):
        def add_arguments_to_parser(self, parser) -> None:
            parser.add_argument("--their_tag", default="")

    args = ["--config", str(CONF), "--model.backbone.init_args.model_name_or_path", str(tiny_model_dir),
            "--data.init_args.root", str(synthetic_root), "--trainer.default_root_dir", str(tmp_path),
            "--model.their_option", "3", "--their_tag", "x"]
    cli = TheirCLI(args=args, run=False, model_class=TheirModule)
    assert type(cli.model) is TheirModule
    assert cli.model.their_option == 3
    assert cli.config.their_tag == "x"
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        main(["validate", *args[:6]], cli_class=TheirCLI, model_class=pl.LightningModule)
    assert exit_.value.code == 2
    line = capsys.readouterr().err.strip().splitlines()[0]  # then where to see the traceback, as for every error
    assert line.startswith("cir-lightning: error: CIRLightningCLI's `model_class` must be CIRModule or a subclass; "
                           "got <class 'lightning.pytorch.core.module.LightningModule'>")
