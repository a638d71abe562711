"""``EmbeddingWriter``: what ``cir-lightning predict`` leaves on disk, the embeddings of every subset.

A Lightning ``BasePredictionWriter`` for ``CIRModule.predict_step`` (``{"index", "embedding"}`` per
batch; loaders in (queries, gallery) pairs). Each evaluation subset gives two folders in the embedding
cache format (``cir_lightning.retrieval.cache``)::

    <folder>/<split>-<subset>-query/     embeddings.npy (queries x dim), ids.json (query ids), meta.json
    <folder>/<split>-<subset>-gallery/   embeddings.npy (gallery x dim), ids.json (image ids), meta.json

``<folder>`` is ``<log_dir>/predictions`` (``predictions-1``, ... when taken; the name is claimed when predict
starts, never overwritten) or the ``folder`` option; ``<split>`` is ``CIRDataModule.predict_sets``'s (``split_for``:
``test``; ``val`` where the test stage reads the val split, as FashionIQ's); ``<subset>`` is the subset's name
(FashionIQ's ``dress``) or its number. ``meta.json`` identifies the model (fingerprint and trained-weights digest),
the data and the split exactly as an evaluation's ``embedding_cache`` does, so a predicted gallery is a cache that
``cir-lightning test --model.embedding_cache <folder>`` (a ``val`` one: ``validate``) loads instead of embedding.

Nothing is held in memory: ``embeddings.npy`` is preallocated and memory-mapped, and every batch's rows are written
where they belong, by the batch's ``"index"`` (the dataset row), by whichever process embedded them. Under DDP every
rank writes its own rows into the same files (the folder must be visible to every process, as for checkpoints);
Lightning's predict sampler never repeats a row (and a row written twice would land in the same place); a subset
of fewer rows than processes leaves the processes left over an idle row (``data.idle_rows``), which writes nothing. The folder appears
when every rank is done, whole or not at all (a SIGTERM stops it, writing nothing); a subset whose rows were not
all embedded (``limit_predict_batches``) is left out with a warning.

``ImagesProgressBar`` is Lightning's progress bar counting images (``img/s``) rather than batches.
"""

from __future__ import annotations

import contextlib
import shutil
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter, TQDMProgressBar
from lightning.pytorch.utilities import rank_zero_warn
from lightning.pytorch.utilities.exceptions import SIGTERMException

from cir_lightning.data.base import cir_datamodule
from cir_lightning.data.datasets import GalleryDataset, QueryDataset
from cir_lightning.data.idle_rows import unpadded
from cir_lightning.errors import CIRConfigError, CIRFileError
from cir_lightning.files import atomic_folder, check_writable, write_error
from cir_lightning.free_names import reserve_folder
from cir_lightning.paths import path_option
from cir_lightning.retrieval.cache import cache_name
from cir_lightning.retrieval.embedding_folder import (
    finish_embeddings,
    image_files,
    new_embeddings,
    open_embeddings,
    reserve,
)
from cir_lightning.retrieval.ground_truth import check_finite
from cir_lightning.retrieval.subsets import loader_role
from cir_lightning.writable import exists_error

__all__ = ["EmbeddingWriter", "ImagesProgressBar"]

_MASK = "written.npy"  # which rows were written, one byte each; removed before the folder appears


@dataclass
class _Output:
    """One (subset, side) of the predict loaders and its files."""

    name: str
    kind: str
    split: str
    ids: list[str]
    files: Mapping[str, str] = field(default_factory=dict)  # a gallery's `image_files` (before reading), queries' digest
    stamps: Any = None  # a gallery's image stamps by row (its `image_files`'), for stamps.npy
    rows: Any = None  # np.memmap of the embeddings
    mask: Any = None  # np.memmap of uint8, 1 where a row was written


@contextlib.contextmanager
def _writing(target: Path) -> Iterator[None]:
    """A file operation's ``OSError`` (full disk, permissions) as one line naming the folder (then ``on_exception``)."""
    try:
        yield
    except CIRFileError:
        raise
    except OSError as err:
        raise write_error(target, err) from None


def _as_list(loaders: Any) -> list[Any]:
    return list(loaders) if isinstance(loaders, Sequence) else [] if loaders is None else [loaders]


class EmbeddingWriter(BasePredictionWriter):
    """Writes the embeddings ``predict`` makes into embedding-cache folders, row by row (see the module).

    Args:
        folder: where to write (must not exist); default: ``predictions`` in the run's log folder.
        dtype: storage of the embeddings, ``"float32"`` or ``"float16"`` (half the disk).

    Example:
        >>> from cir_lightning.predictions import EmbeddingWriter
        >>> writer = EmbeddingWriter(dtype="float16")
        >>> writer.folder, writer.dtype, writer.interval.on_batch
        (None, 'float16', True)
        >>> EmbeddingWriter(dtype="int8")
        Traceback (most recent call last):
        ...
        cir_lightning.errors.CIRConfigError: `predictions.dtype` must be float32 or float16, got 'int8'
    """

    def __init__(self, folder: str | None = None, dtype: Literal["float32", "float16"] = "float32") -> None:
        super().__init__("batch")
        if dtype not in ("float32", "float16"):
            raise CIRConfigError(f"`predictions.dtype` must be float32 or float16, got {dtype!r}")
        self.folder, self.dtype = path_option("predictions.folder", folder, optional=True), dtype
        self.written: Path | None = None
        self._outputs: dict[int, _Output] = {}
        self._stack: contextlib.ExitStack | None = None
        self._tmp: Path | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if stage == "predict" and self.folder and Path(self.folder).exists():  # before anything is embedded
            raise exists_error(self.folder, "predictions.folder")
        if stage == "predict" and self.folder:  # a file in the way, a read-only disk: now, not after embedding
            check_writable(Path(self.folder).absolute().parent, "predictions.folder")

    # ------------------------------------------------------------------ the files, before the first batch
    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        backbone = getattr(pl_module, "backbone", None)
        dim = getattr(backbone, "embedding_dim", None) or getattr(pl_module, "embedding_dim", None)
        if not dim:
            raise CIRConfigError("EmbeddingWriter needs the embedding size before the first batch: the module "
                                 "must have `backbone.embedding_dim` (CIRModule has) or `embedding_dim`")
        self._outputs = self._plan(trainer)
        log_dir = Path(trainer.log_dir or trainer.default_root_dir)  # a collective: every rank asks
        target, self.written = Path(self.folder or log_dir / "predictions"), None
        if trainer.is_global_zero:
            target = target if self.folder else reserve_folder(target)  # a free name, claimed now: no other run's
            self._stack = contextlib.ExitStack()
            self._tmp = self._stack.enter_context(atomic_folder(target, reserved=not self.folder))
            with _writing(target):
                self._make_files(int(dim))
        self._tmp, self._target = (Path(trainer.strategy.broadcast(str(p))) for p in (self._tmp, target))
        with _writing(self._target):
            for out in self._outputs.values():  # every rank writes into the same files
                folder = self._tmp / cache_name(out.split, out.name, out.kind)[0]
                out.rows, out.mask = open_embeddings(folder), np.load(folder / _MASK, mmap_mode="r+")

    def _make_files(self, dim: int) -> None:
        for out in self._outputs.values():
            folder = self._tmp / cache_name(out.split, out.name, out.kind)[0]
            folder.mkdir()
            new_embeddings(folder, len(out.ids), dim, self.dtype).flush()
            np.lib.format.open_memmap(folder / _MASK, mode="w+", dtype=np.uint8, shape=(len(out.ids),)).flush()
            reserve(folder / _MASK)

    def _plan(self, trainer: pl.Trainer) -> dict[int, _Output]:
        datamodule = cir_datamodule(trainer)
        split = datamodule.predict_sets()[0] if datamodule is not None else "predict"
        loaders = _as_list(trainer.predict_dataloaders)
        outputs = {}
        for i, loader in enumerate(loaders):
            subset, kind = loader_role(i)
            queries = unpadded(loaders[2 * subset].dataset)  # a subset of fewer rows than processes: its own rows
            dataset = unpadded(loader.dataset)
            ids = [str(x) for x in getattr(dataset, "ids", None) or range(len(dataset))]
            gallery = isinstance(dataset, GalleryDataset) and trainer.is_global_zero
            files = image_files(dataset.paths) if gallery \
                else {"queries_sha256": dataset.digest()} if isinstance(dataset, QueryDataset) else {}
            if ids:
                outputs[i] = _Output(getattr(queries, "name", "") or str(subset), kind, split, ids, files,
                                     files.stamps if gallery else None)
        return outputs

    # ------------------------------------------------------------------ each batch: its rows, where they belong
    def write_on_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, prediction: Any,
                           batch_indices: Sequence[int] | None, batch: Any, batch_idx: int,
                           dataloader_idx: int = 0) -> None:
        if trainer.received_sigterm:  # Lightning's predict loop carries on after it; the folder is never written half
            raise SIGTERMException  # `cli.main` says so in one line and exits 143
        out = self._outputs.get(dataloader_idx)
        rows = np.asarray(prediction["index"].cpu(), dtype=np.int64)
        if out is None or not len(rows):
            return
        embeddings = prediction["embedding"].detach().float().cpu().numpy()
        if embeddings.shape != (len(rows), out.rows.shape[1]):
            raise CIRConfigError(f"predict_step returned embeddings of shape {embeddings.shape} for {len(rows)} rows; "
                                 f"expected ({len(rows)}, {out.rows.shape[1]})")
        check_finite(torch.from_numpy(embeddings), f"{out.kind} embeddings of subset {out.name!r}",  # before a cache
                     torch.from_numpy(rows), ids=out.ids)  # holds them: the run stops, nothing is written
        out.rows[rows] = embeddings
        out.mask[rows] = 1

    # ------------------------------------------------------------------ the end: one folder, complete
    def on_predict_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for out in self._outputs.values():
            out.rows.flush()
            out.mask.flush()
        trainer.strategy.barrier()  # every rank's rows are in the files
        if not trainer.is_global_zero:
            self._release()
            return
        backbone = getattr(pl_module, "backbone", None)
        model = backbone.identity(trainer.precision) if backbone is not None else {"module": type(pl_module).__name__}
        datamodule = cir_datamodule(trainer)
        dataset = datamodule.gallery_identity() if datamodule is not None else type(trainer.datamodule).__name__
        with _writing(self._target):
            done, left_out = self._finish_files(model, dataset)
        if left_out:
            rank_zero_warn("predict did not embed every row (limit_predict_batches?): left out " + ", ".join(left_out))
        if not done:
            self._abort(None)
            return
        self._stack.close()  # the folder appears, complete
        self._stack, self.written = None, self._target
        print(f"embeddings written to {self._target}: " + ", ".join(done))

    def _finish_files(self, model: dict[str, Any], dataset: str) -> tuple[list[str], list[str]]:
        """Each subset's ``ids.json`` and ``meta.json``; the subsets written and those left out, for messages."""
        done, left_out = [], []
        for out in self._outputs.values():
            folder = self._tmp / cache_name(out.split, out.name, out.kind)[0]
            missing = int(len(out.ids) - np.count_nonzero(out.mask))
            out.rows = out.mask = None
            (folder / _MASK).unlink()
            if missing:
                shutil.rmtree(folder)
                left_out.append(f"{folder.name} ({missing} of {len(out.ids)} rows not embedded)")
                continue
            finish_embeddings(folder, out.ids, kind=out.kind, model=model, dataset=dataset,
                              split=cache_name(out.split, out.name, out.kind)[1], extra=out.files, stamps=out.stamps)
            done.append(f"{folder.name} ({len(out.ids)} x {self._dim(folder)})")
        return done, left_out

    @staticmethod
    def _dim(folder: Path) -> int:
        return int(np.load(folder / "embeddings.npy", mmap_mode="r").shape[1])

    def _release(self) -> None:
        for out in self._outputs.values():
            out.rows = out.mask = None

    def _abort(self, exception: BaseException | None) -> None:
        self._release()
        if self._stack is not None:
            stack, self._stack = self._stack, None
            with contextlib.suppress(BaseException):
                error = exception or RuntimeError("nothing to write")
                stack.__exit__(type(error), error, error.__traceback__)  # removes the temporary folder

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._abort(exception)


class ImagesProgressBar(TQDMProgressBar):
    """Lightning's progress bar, counting this process's images (``img/s``) instead of batches.

    Example:
        >>> from cir_lightning.predictions import ImagesProgressBar
        >>> ImagesProgressBar().predict_description
        'Embedding images'
    """

    @property
    def predict_description(self) -> str:
        return "Embedding images"

    def init_predict_tqdm(self) -> Any:
        from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm

        return Tqdm(desc=self.predict_description, position=2 * self.process_position, disable=self.is_disabled,
                    leave=True, dynamic_ncols=True, file=sys.stdout, smoothing=0, bar_format=self.BAR_FORMAT, unit="img")

    def on_predict_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int,
                               dataloader_idx: int = 0) -> None:
        if not self.has_dataloader_changed(dataloader_idx):
            return
        loaders = trainer.predict_dataloaders
        size = len((loaders[dataloader_idx] if isinstance(loaders, list) else loaders).dataset)
        share = range(trainer.global_rank, size, trainer.world_size)  # this process's, under the unrepeated sampler
        self.predict_progress_bar.reset(total=len(share))
        self.predict_progress_bar.set_description(self.predict_description)
        self._images = 0

    def on_predict_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                             batch_idx: int, dataloader_idx: int = 0) -> None:
        self._images += len(batch["index"]) + len(batch.get("unreadable", ()))
        bar = self.predict_progress_bar
        if not bar.disable and self._should_update(batch_idx + 1, self.total_predict_batches_current_dataloader):
            bar.n = self._images
            bar.refresh()
