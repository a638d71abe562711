"""``RetrievalCallback``: retrieval evaluation for any LightningModule, without changing its code.

The contract is small:

- the module has ``encode_query(batch)`` and ``encode_gallery(batch)``, each returning (batch, dim)
  embeddings (normalise them for cosine similarity): ``Encoders``, checked when validation starts; and a
  ``validation_step`` (Lightning runs no validation without one; it may do nothing);
- the validation dataloaders come in (queries, gallery) pairs, queries first, one pair per subset;
- every batch is a mapping with an ``"index"`` entry (the dataset row of each sample), or a list of samples
  each with one (what a cir_lightning DataModule yields without a model's collator: ``encode_*`` get the list);
- the query dataset has ``positives`` (gallery rows per query) and may have ``excluded``, ``name``
  and ``ids``.

After each validation epoch (not in the sanity check) it logs ``val/Recall@K`` and ``val/MRR@K`` (after a
``trainer.test``, whose module needs a ``test_step``: ``test/...``) computed as ``CIRModule`` computes them,
identical under DDP, and what the DataModule's ``summarize(metrics)`` adds, as ``CIRModule`` does (a
cir_lightning DataModule's hook: FashionIQ's ``val/average/Recall@10``).

Example:
    >>> import lightning.pytorch as pl
    >>> trainer = pl.Trainer(callbacks=[RetrievalCallback(ks=[1, 10])], logger=False)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import lightning.pytorch as pl
import torch

from cir_lightning.errors import CIRConfigError
from cir_lightning.retrieval.evaluator import RetrievalEvaluator
from cir_lightning.retrieval.loop import EvaluationLoop
from cir_lightning.retrieval.search_config import SearchConfig
from cir_lightning.summaries import SummarizesMetrics


@runtime_checkable
class Encoders(Protocol):
    """What ``RetrievalCallback`` needs of a LightningModule: an embedding of each side of a validation batch.

    Example:
        >>> from cir_lightning.retrieval import Encoders
        >>> class Model:
        ...     def encode_query(self, batch): return batch["x"]
        ...     def encode_gallery(self, batch): return batch["x"]
        >>> isinstance(Model(), Encoders)
        True
    """

    def encode_query(self, batch: Any) -> torch.Tensor:
        """(batch, dim) embeddings of the queries (reference image and modification text) in ``batch``."""

    def encode_gallery(self, batch: Any) -> torch.Tensor:
        """(batch, dim) embeddings of the gallery images in ``batch``."""


ENCODER_METHODS: tuple[str, ...] = tuple(name for name, member in vars(Encoders).items()
                                         if callable(member) and not name.startswith("_"))
"""The methods ``Encoders`` declares (``encode_query``, ``encode_gallery``), which ``RetrievalCallback`` checks."""


def batch_index(batch: Any) -> torch.Tensor:
    """The dataset rows of a validation batch: its ``"index"`` entry, or each sample's of a list of samples.

    Example:
        >>> from cir_lightning.retrieval.callback import batch_index
        >>> batch_index([{"index": 3, "image": None}, {"index": 4, "image": None}]).tolist()
        [3, 4]
        >>> batch_index({"x": 1})
        Traceback (most recent call last):
        ...
        cir_lightning.errors.CIRConfigError: RetrievalCallback needs every validation batch to be a mapping with an "index" entry (the dataset row of each sample) or a list of samples with one; got a dict with keys ['x']
    """
    if isinstance(batch, Mapping) and "index" in batch:
        return torch.as_tensor(batch["index"])
    if isinstance(batch, list | tuple) and batch and all(isinstance(s, Mapping) and "index" in s for s in batch):
        return torch.as_tensor([s["index"] for s in batch])
    got = f"a {type(batch).__name__} with keys {sorted(map(str, batch))}" if isinstance(batch, Mapping) else (
        f"a {type(batch).__name__}" + (f" of {type(batch[0]).__name__}" if isinstance(batch, list | tuple) and batch
                                       else ""))
    raise CIRConfigError('RetrievalCallback needs every validation batch to be a mapping with an "index" entry (the '
                         f"dataset row of each sample) or a list of samples with one; got {got}")


class RetrievalCallback(pl.Callback):
    """Embed validation queries and galleries with the module's ``encode_*`` and log retrieval metrics.

    Args:
        ks: the cut-offs K of Recall@K (hit rate) and MRR@K (default 1, 5, 10, 50); given, also added to the
            families of a dataset's own protocol (``with_added_ks``).
        search: how the gallery is searched (default: exact faiss ``Flat``).
        prefix: metric name prefix of validation (``trainer.test`` logs ``test/...``).

    Example:
        >>> from cir_lightning.retrieval import RetrievalCallback
        >>> import lightning.pytorch as pl
        >>> import torch
        >>> from torch.utils.data import DataLoader
        >>> class Model(pl.LightningModule):  # any module with `encode_query` and `encode_gallery`
        ...     def encode_query(self, batch): return batch["x"]
        ...     def encode_gallery(self, batch): return batch["x"]
        ...     def validation_step(self, batch, batch_idx, dataloader_idx=0): pass
        >>> class Queries(list):  # a query dataset: its samples, and the gallery rows relevant to each
        ...     positives = [[1], [2]]
        >>> queries = Queries([{"index": 0, "x": torch.tensor([0.1, 0.9, 0.0])},
        ...                    {"index": 1, "x": torch.tensor([1.0, 0.0, 0.2])}])
        >>> gallery = [{"index": i, "x": row} for i, row in enumerate(torch.eye(3))]
        >>> trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False,
        ...                      enable_model_summary=False, callbacks=[RetrievalCallback(ks=[1, 2])])
        >>> _ = trainer.validate(Model(), [DataLoader(queries), DataLoader(gallery)], verbose=False)
        >>> {k: round(float(v), 2) for k, v in trainer.callback_metrics.items()}
        {'val/Recall@1': 0.5, 'val/Recall@2': 1.0, 'val/MRR@1': 0.5, 'val/MRR@2': 0.75}
    """

    def __init__(self, ks: Sequence[int] | None = None, search: SearchConfig | None = None,
                 prefix: str = "val") -> None:
        self.evaluator = RetrievalEvaluator(ks, search)
        self.loop = EvaluationLoop(self.evaluator)
        self.prefix = prefix

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Encoders' own members, each callable: isinstance(pl_module, Encoders) would pass `encode_query = 3` and
        # could not say which method is missing
        missing = [f"`{type(pl_module).__name__}.{name}(batch)`" for name in ENCODER_METHODS
                   if not callable(getattr(pl_module, name, None))]
        if missing:
            raise CIRConfigError(f"RetrievalCallback needs {' and '.join(missing)}, returning (batch, dim) embeddings "
                                 "(`cir_lightning.retrieval.Encoders`)")

    def on_validation_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any,
                                batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        def embed(kind: str) -> torch.Tensor:
            with torch.no_grad():
                return getattr(pl_module, f"encode_{kind}")(batch)

        self.loop.add_batch(trainer, dataloader_idx, embed, batch_index(batch))

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._finish(trainer, pl_module, trainer.val_dataloaders, self.prefix)

    # ``trainer.test`` evaluates the test loaders the same way and logs ``test/Recall@K`` (the module needs a test_step)
    on_test_start = on_validation_start
    on_test_batch_end = on_validation_batch_end

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._finish(trainer, pl_module, trainer.test_dataloaders, "test")

    def _finish(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loaders: Any, prefix: str) -> None:
        datamodule = trainer.datamodule  # a cir_lightning DataModule's summary (FashionIQ's average), declared
        summarize = datamodule.summarize if isinstance(datamodule, SummarizesMetrics) else None
        self.loop.finish(trainer, pl_module, loaders, prefix, summarize=summarize)
        self.loop.reset()
