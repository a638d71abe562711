"""RetrievalCallback in someone else's Lightning project: their module, their data, our metrics."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from cir_lightning.errors import CIRConfigError
from cir_lightning.retrieval import Encoders, RetrievalCallback


class Items(Dataset):
    """Their dataset: vectors, with the row index in every sample."""

    def __init__(self, x: torch.Tensor, positives=None, excluded=None) -> None:
        self.x = x
        if positives is not None:
            self.positives, self.excluded = positives, excluded

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict:
        return {"index": i, "x": self.x[i]}


class TheirModel(pl.LightningModule):
    """Their model: two linear towers; knows nothing about cir_lightning."""

    def __init__(self) -> None:
        super().__init__()
        self.query_tower = torch.nn.Linear(6, 4)
        self.gallery_tower = torch.nn.Linear(6, 4)

    def encode_query(self, batch: dict) -> torch.Tensor:
        return F.normalize(self.query_tower(batch["x"]), dim=-1)

    def encode_gallery(self, batch: dict) -> torch.Tensor:
        return F.normalize(self.gallery_tower(batch["x"]), dim=-1)

    def training_step(self, batch, batch_idx):
        return self.encode_query(batch).sum() * 0

    def validation_step(self, batch, batch_idx, dataloader_idx=0):
        pass

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


def test_callback_logs_the_metrics_of_a_foreign_module(tmp_path):
    torch.manual_seed(0)
    gallery, queries = torch.randn(40, 6), torch.randn(23, 6)
    positives = [[i % 40, (3 * i) % 40] for i in range(23)]
    excluded = [[(i + 1) % 40] for i in range(23)]
    q_set, g_set = Items(queries, positives, excluded), Items(gallery)
    val = [DataLoader(q_set, batch_size=5), DataLoader(g_set, batch_size=7)]
    model = TheirModel()
    trainer = pl.Trainer(accelerator="cpu", max_epochs=1, limit_train_batches=1, logger=False, enable_progress_bar=False,
                         enable_checkpointing=False, default_root_dir=tmp_path,
                         callbacks=[RetrievalCallback(ks=[1, 5, 10])])
    trainer.fit(model, DataLoader(q_set, batch_size=5), val)
    with torch.no_grad():
        scores = model.encode_query({"x": queries}) @ model.encode_gallery({"x": gallery}).T
    for k in (1, 5, 10):
        hits = 0
        for i, row in enumerate(scores.tolist()):
            order = [j for j in sorted(range(40), key=lambda j, row=row: (-row[j], j)) if j not in excluded[i]]
            hits += any(j in positives[i] for j in order[:k])
        assert trainer.callback_metrics[f"val/Recall@{k}"].item() == pytest.approx(hits / 23, abs=1e-6)
    assert "val/MRR@10" in trainer.callback_metrics


def test_callback_names_what_is_missing(tmp_path):
    class NoEncoders(TheirModel):
        encode_gallery = None

    q_set = Items(torch.randn(3, 6), [[0]] * 3, None)
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, default_root_dir=tmp_path,
                         callbacks=[RetrievalCallback(ks=[1])])
    with pytest.raises(CIRConfigError, match=r"needs `NoEncoders.encode_gallery\(batch\)`"):
        trainer.validate(NoEncoders(), [DataLoader(q_set), DataLoader(Items(torch.randn(4, 6)))], verbose=False)

    class NotCallable(TheirModel):  # isinstance(..., Encoders) passes it: the check reads Encoders' methods
        encode_query = 3

    assert isinstance(NotCallable(), Encoders)
    with pytest.raises(CIRConfigError, match=r"needs `NotCallable.encode_query\(batch\)`, returning"):
        trainer.validate(NotCallable(), [DataLoader(q_set), DataLoader(Items(torch.randn(4, 6)))], verbose=False)
    with pytest.raises(CIRConfigError, match="pairs of dataloaders, got 1"):
        trainer.validate(TheirModel(), [DataLoader(q_set)], verbose=False)


def test_logged_metrics_stay_exact_when_ddp_reduces_them():
    """Every rank logs the same values. Lightning's default reduction of them, the mean, rounds on 3 processes (0.44
    became 0.43999997 in float32); the loop asks for their max, which is each value exactly."""
    from types import SimpleNamespace

    from cir_lightning.retrieval import RetrievalEvaluator, SearchConfig
    from cir_lightning.retrieval.loop import EvaluationLoop

    loop = EvaluationLoop(RetrievalEvaluator(ks=[1], search=SearchConfig(backend="torch")))
    trainer = SimpleNamespace(sanity_checking=False)
    loop.add_batch(trainer, 1, lambda kind: torch.eye(2), torch.arange(2))
    loop.add_batch(trainer, 0, lambda kind: torch.eye(2), torch.arange(2))
    calls = []
    module = SimpleNamespace(log_dict=lambda values, **how: calls.append((sorted(values), how)))
    queries = SimpleNamespace(positives=[(0,), (1,)], excluded=[(), ()])
    loaders = [SimpleNamespace(dataset=queries), SimpleNamespace(dataset=[0, 1])]
    loop.finish(trainer, module, loaders, "val", prog_bar={"val/MRR@1"})
    assert calls == [(["val/Recall@1"], {"sync_dist": True, "reduce_fx": "max"}),
                     (["val/MRR@1"], {"sync_dist": True, "reduce_fx": "max", "prog_bar": True})]
    x = torch.tensor(0.44)
    assert (x + x + x) / 3 != x  # what the mean over 3 ranks would have logged
