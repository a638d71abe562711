"""What a standalone ``validate`` / ``test`` leaves behind (``RunOutputs``): the gallery caches, the results
file and table, the benchmark's server files and the retrieval pictures (``cir_lightning.pictures``; optionally
after every validation inside ``fit`` too), written through ``cir_lightning.files`` (atomically, never over an
existing file).
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from lightning.pytorch import Trainer
from lightning.pytorch.cli import SaveConfigCallback
from torch.utils.data import DataLoader

from cir_lightning.data.base import CIRDataModule
from cir_lightning.data.datasets import CachedGallery, GalleryDataset, QueryDataset
from cir_lightning.errors import CIRDataError
from cir_lightning.retrieval.embedding_folder import ids_digest
from cir_lightning.retrieval.evaluator import RetrievalEvaluator
from cir_lightning.retrieval.gallery_cache import GalleryStore
from cir_lightning.retrieval.loop import EpochResults
from cir_lightning.retrieval.results import ranked_ids, ranked_scores, report_results, split_subsets

__all__ = ["RunOutputs", "data_identity", "dataset_pairs"]


class RunOutputs:
    """The files of a standalone evaluation run.

    Args:
        write_results: write ``results-<stage>.json`` and print the table.
        save_rankings: put every query's top-K gallery ids (and their scores) into the results file.
        cache: the gallery embedding caches (``None``: none).
        pictures: queries (a fixed, seeded sample) per retrieval picture, one PNG per subset beside the results
            file, also sent to the loggers that take images; 0: none (checked by ``EvaluationOptions``).
        pictures_during_fit: draw them after every validation inside ``fit`` too.

    Example:
        >>> from cir_lightning.run_outputs import RunOutputs
        >>> RunOutputs(write_results=True, save_rankings=False, cache=None).keep_rankings(None)
        False
    """

    def __init__(self, write_results: bool, save_rankings: bool, cache: GalleryStore | None, pictures: int = 0,
                 pictures_during_fit: bool = False) -> None:
        self.write_results = write_results
        self.save_rankings = save_rankings
        self.cache = cache
        self.pictures = pictures
        self.pictures_in_fit = pictures_during_fit and self.pictures > 0

    def keep_rankings(self, datamodule: CIRDataModule | None) -> bool:
        """Whether the evaluator must keep every query's ranking: for the results file, server files or pictures."""
        return self.save_rankings or self.pictures > 0 or (datamodule is not None and datamodule.writes_predictions)

    def write(self, trainer: Trainer, stage: str, prefix: str, epoch: EpochResults, evaluator: RetrievalEvaluator,
              datamodule: CIRDataModule | None, model: Mapping[str, Any],
              config: Callable[[], Mapping[str, Any]], loaders: Any = None) -> None:
        """Save the caches, then, on rank zero, the results file (and table), the server files and the pictures
        (of the evaluation ``loaders``' subsets). Every rank must call it (the log folder is a collective)."""
        folder = Path(trainer.log_dir or trainer.default_root_dir)  # broadcast from rank zero: ask on every rank
        written = self.cache.save(evaluator) if self.cache is not None else []
        if not trainer.is_global_zero:
            return
        for path in self.cache.report()["loaded"] if self.cache is not None else ():  # on stderr: BGE-VL's
            print(f"gallery embeddings read from the cache {path}", file=sys.stderr)  # scripts' stdout stays theirs
        for path in written:
            print(f"gallery embeddings cached in {path}", file=sys.stderr)
        wanted = self.save_rankings or (datamodule is not None and datamodule.writes_predictions)
        ranked = ranked_ids(epoch.subsets, evaluator.rankings) if wanted else {}
        files = {"config": [saved.config_filename for saved in getattr(trainer, "callbacks", ())  # the CLI's
                            if isinstance(saved, SaveConfigCallback) and (folder / saved.config_filename).is_file()]}
        failed, messages, data = None, [], data_identity(datamodule, stage, loaders)
        try:  # the server files and pictures first, so that the results file names them: the run's files
            if datamodule is not None and datamodule.writes_predictions:
                within = ranked_ids(epoch.subsets, evaluator.subset_rankings)
                for path in datamodule.write_predictions(folder, stage, ranked, within):
                    files.setdefault("server_files", []).append(path.name)
                    messages.append(f"predictions written to {path}")
            if self.pictures and loaders is not None:
                for path in self.draw(trainer, stage, prefix, epoch, evaluator, loaders, folder, about=model):
                    files.setdefault("pictures", []).append(path.name)
                    messages.append(f"picture written to {path}")
        except Exception as err:  # a server file refused: the results are still written, then the error raised
            failed = err
        if self.write_results and (epoch.metrics or (self.save_rankings and ranked)):  # a test split: rankings only
            scores = ranked_scores(epoch.subsets, evaluator.rankings, evaluator.scores) if self.save_rankings else None
            report_results(folder, stage, prefix, epoch.metrics, epoch.subsets, model=model, config=config(),
                           rankings=ranked if self.save_rankings else None, scores=scores,
                           report=datamodule.report(epoch.metrics) if datamodule is not None and epoch.metrics else "",
                           default_ks=evaluator.ks, data=data, files=files)
        for message in messages:
            print(message)
        if failed is not None:
            raise failed

    def draw(self, trainer: Trainer, label: str, prefix: str, epoch: EpochResults, evaluator: RetrievalEvaluator,
             loaders: Any, folder: Path | None = None, about: Mapping[str, Any] | None = None) -> list[Path]:
        """On rank zero, the retrieval picture of each ranked subset of the evaluation ``loaders``:
        ``retrievals-<label>-<subset>.png`` in the log folder (never over an existing file; its PNG text says
        what drew it: ``picture_info``, with the model's identity ``about``), also sent to the loggers that take
        images (tag ``<prefix>/retrievals[/<subset>]``). Every rank must call it."""
        folder = folder or Path(trainer.log_dir or trainer.default_root_dir)  # a collective: ask on every rank
        if not trainer.is_global_zero:
            return []
        from cir_lightning.pictures import (
            log_picture,
            picture_info,
            picture_name,
            save_picture,
            subset_pictures,
        )

        pairs = [(q, g) for q, g in dataset_pairs(loaders)  # someone else's datasets: nothing declared to draw
                 if isinstance(q, QueryDataset) and isinstance(g, GalleryDataset)]
        try:
            pictures = subset_pictures(pairs, evaluator.rankings, evaluator.scores, self.pictures, label,
                                       split_subsets(epoch.metrics))
        except CIRDataError as err:  # an image that cannot be read now: the run's results stand
            warnings.warn(f"retrieval pictures not drawn: {err}", stacklevel=2)
            return []
        paths = []
        for name, image in pictures.items():
            info = picture_info(label, name, about, step=trainer.global_step)
            paths.append(save_picture(image, folder / picture_name(label, name), info=info))
            log_picture(trainer.loggers, f"{prefix}/retrievals" + (f"/{name}" if name else ""), image,
                        trainer.global_step)
        return paths


def dataset_pairs(loaders: Any) -> list[tuple[Any, Any]]:
    """The (queries, gallery) datasets of evaluation ``loaders`` (queries, gallery, ...: loaders or datasets), a
    cached gallery's images (``CachedGallery.gallery``) in place of its stand-in.

    Example:
        >>> from cir_lightning.run_outputs import dataset_pairs
        >>> from cir_lightning.data.datasets import CachedGallery, GalleryDataset
        >>> gallery = GalleryDataset([])
        >>> dataset_pairs([DataLoader(["q"]), DataLoader(CachedGallery(gallery))]) == [(["q"], gallery)]
        True
    """
    loaders = list(loaders) if isinstance(loaders, list | tuple) else [] if loaders is None else [loaders]
    datasets = [loader.dataset if isinstance(loader, DataLoader) else loader for loader in loaders]
    return [(queries, gallery.gallery if isinstance(gallery, CachedGallery) else gallery)
            for queries, gallery in zip(datasets[0::2], datasets[1::2], strict=False)]  # pairs: others were refused


def data_identity(datamodule: CIRDataModule | None, stage: str, loaders: Any) -> dict[str, Any]:
    """What a results file says of the data evaluated: the split (``split_for``), the gallery's identity and, per
    subset of the evaluation ``loaders`` (queries, gallery, ...), digests of its queries (id, reference, text,
    ground truth, exclusions, candidates), of its gallery ids and of its image paths: two runs on data edited in
    place, or on other data under the same options, differ here.

    Example:
        >>> from cir_lightning.run_outputs import data_identity
        >>> from cir_lightning.data.datasets import GalleryDataset, GalleryItem, Query, QueryDataset
        >>> queries = QueryDataset([Query("q0", Path("r.png"), "make it red", (0,), "q.jsonl")])
        >>> gallery = GalleryDataset([GalleryItem("a", Path("a.png"), "g.jsonl")])
        >>> sorted(data_identity(None, "validate", [queries, gallery])["subsets"][""])
        ['gallery_ids_sha256', 'images_sha256', 'queries_sha256']
    """
    subsets = {}
    for queries, gallery in dataset_pairs(loaders):
        if not isinstance(queries, QueryDataset):
            continue  # someone else's queries: nothing declared to digest
        entry = {"queries_sha256": queries.digest()}
        if isinstance(gallery, GalleryDataset):
            entry.update(gallery_ids_sha256=ids_digest(gallery.ids), images_sha256=ids_digest(gallery.paths))
        subsets[queries.name] = entry
    split = datamodule.split_for(stage) if datamodule is not None and stage in ("validate", "test") else None
    return {"split": split, "gallery": datamodule.gallery_identity() if datamodule is not None else None,
            "subsets": subsets}
