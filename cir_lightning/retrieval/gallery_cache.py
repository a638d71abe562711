"""Gallery embeddings reused across evaluation runs of the same weights (``embedding_cache``).

Evaluating one checkpoint several times (other search settings, other query prompts, val then test)
need not embed the gallery again. ``GalleryCache`` keeps one cache folder per evaluated gallery
(``<folder>/<split>-<subset>-gallery``, the format of ``cir_lightning.retrieval.cache``; ``<split>`` is the split
the data is, ``CIRDataModule.split_for``'s, so FashionIQ's ``validate`` and ``test`` share ``val-dress-gallery``):

- ``lookup`` (when the evaluation loaders are made, after any checkpoint is loaded) loads a cache
  that exists, after checking model, weights, dataset and gallery ids (a mismatch is an error, never a
  silent reuse), and says whether the gallery's images can be skipped;
- ``provide`` hands the loaded embeddings to the evaluator at the start of the epoch (with a sharded
  search, each rank reads only its own rows of the memory-mapped file);
- ``save`` writes, on rank zero, the galleries that were embedded because they were not cached yet.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

from cir_lightning.errors import CIRFileError
from cir_lightning.files import check_writable
from cir_lightning.leftovers import put_back
from cir_lightning.retrieval.cache import cache_name, load_embeddings, save_embeddings, stored_dtype
from cir_lightning.retrieval.embedding_folder import image_files
from cir_lightning.retrieval.evaluator import RetrievalEvaluator
from cir_lightning.retrieval.gather import world


class StoredQueries(Protocol):
    """What a ``GalleryStore`` reads of a subset's query dataset (``data.datasets.QueryDataset`` has it)."""

    @property
    def name(self) -> str:
        """The subset's name ("" for the one unnamed subset), which names its stored gallery."""


class StoredGallery(Protocol):
    """What a ``GalleryStore`` reads of a subset's gallery dataset (``data.datasets.GalleryDataset`` has both)."""

    @property
    def ids(self) -> list[str]:
        """The image ids, in row order."""

    @property
    def paths(self) -> list[str]:
        """The image files, in row order: what a stored gallery is checked against (their size and modification time)."""


@runtime_checkable
class GalleryStore(Protocol):
    """Where a ``CIRModule``'s evaluation loads and saves gallery embeddings: ``GalleryCache`` (the
    ``embedding_cache`` folders) or ``retrieval.memmap.MemmapGalleries`` (BGE-VL's embedding files)."""

    def lookup_sets(self, split: str, sets: Sequence[tuple[StoredQueries, StoredGallery]], *, dataset: str,
                    model: Mapping[str, Any], sharded: bool = False) -> set[int]:
        """Load what is stored for the ``(queries, gallery)`` subsets of an evaluation of ``split`` (the split the
        data is: ``CIRDataModule.split_for``), after any checkpoint is loaded; the subsets loaded, whose gallery
        images are then skipped."""

    def provide(self, evaluator: RetrievalEvaluator) -> None:
        """Give the evaluator the loaded galleries (at the start of every evaluation epoch)."""

    def save(self, evaluator: RetrievalEvaluator) -> list[Path]:
        """Write, on rank zero, the galleries embedded in this run (after ``evaluator.compute``)."""

    def report(self) -> dict[str, Any]:
        """What this run loaded and wrote (for results files): at least ``loaded`` and ``written``, lists of paths."""

    @property
    def location(self) -> Path:
        """Where the store's files are (for messages): ``GalleryCache``'s folder, BGE-VL's ``--save_path``."""


class GalleryCache:
    """One embedding cache per evaluated gallery, under ``folder``.

    Args:
        folder: where the caches live (visible to every process).
        overwrite: embed again and replace existing caches.

    Example:
        >>> import tempfile
        >>> cache = GalleryCache(tempfile.mkdtemp())
        >>> cache.lookup("val", 0, "dress", ["a", "b"], dataset="toy", model={"m": 1})
        False
        >>> ev = RetrievalEvaluator(ks=[1])
        >>> ev.galleries[0] = torch.eye(2)  # what the evaluator gathered after embedding the gallery
        >>> [p.name for p in cache.save(ev)]
        ['val-dress-gallery']
        >>> cache.lookup("val", 0, "dress", ["a", "b"], dataset="toy", model={"m": 1})
        True
    """

    def __init__(self, folder: str | Path, overwrite: bool = False) -> None:
        self.folder = Path(folder)
        self.overwrite = overwrite
        self._hits: dict[int, tuple[Tensor, Tensor]] = {}
        self._misses: dict[int, tuple[Path, dict[str, Any]]] = {}
        self.loaded: list[str] = []
        self.written: list[str] = []
        self.rounded: dict[str, str] = {}  # loaded caches stored in less than float32: path -> dtype

    def lookup(self, split: str, subset: int, name: str, gallery_ids: Sequence[str], *, dataset: str,
               model: Mapping[str, Any], sharded: bool = False, images: Sequence[str] | None = None) -> bool:
        """Load subset ``subset``'s gallery (of ``split``: ``val-<name>-gallery``) from its cache if there is one;
        True if it was loaded."""
        folder, split = cache_name(split, name or str(subset), "gallery")
        path = self.folder / folder
        identity = {"kind": "gallery", "model": dict(model), "dataset": dataset, "split": split}
        self._hits.pop(subset, None)
        self._misses.pop(subset, None)
        if (path.exists() or put_back(path)) and not self.overwrite:  # moved aside by an overwrite: back
            rank, world_size = world()
            rows = slice(rank, None, world_size) if sharded else None
            embeddings, _ = load_embeddings(path, ids=gallery_ids, rows=rows, images=images, **identity)
            indices = torch.arange(len(gallery_ids))[rows] if rows is not None else torch.arange(len(gallery_ids))
            self._hits[subset] = (embeddings, indices)
            self.loaded.append(str(path))
            dtype = stored_dtype(path)
            if dtype != "float32":  # e.g. `predict --predictions.dtype float16`: rounded, near-ties may swap
                self.rounded[str(path)] = dtype
                warnings.warn(f"embedding cache `{path}` stores {dtype} embeddings: the metrics come from rounded "
                              "gallery embeddings, and near-ties may rank otherwise than with float32 ones (store "
                              "float32 to reproduce an evaluation exactly)", stacklevel=2)
            return True
        if world()[0] == 0:  # it will be written after the gallery is embedded: fail now, not after the work
            check_writable(self.folder, "model.embedding_cache")
        files = image_files(images) if images is not None else None  # now, before the images are read
        self._misses[subset] = (path, {**identity, "ids": list(gallery_ids), "images": files})
        return False

    def lookup_sets(self, split: str, sets: Sequence[tuple[StoredQueries, StoredGallery]], *, dataset: str,
                    model: Mapping[str, Any], sharded: bool = False) -> set[int]:
        """``lookup`` for every ``(queries, gallery)`` subset of an evaluation; the subsets loaded from caches."""
        return {s for s, (queries, gallery) in enumerate(sets)
                if self.lookup(split, s, queries.name, gallery.ids, dataset=dataset, model=model, sharded=sharded,
                               images=gallery.paths)}

    def provide(self, evaluator: RetrievalEvaluator) -> None:
        """Give the evaluator the cached galleries (call at the start of every evaluation epoch)."""
        for subset, (embeddings, indices) in self._hits.items():
            evaluator.provide(subset, "gallery", embeddings, indices)

    def save(self, evaluator: RetrievalEvaluator) -> list[Path]:
        """Write the galleries embedded in this run (rank zero; after ``evaluator.compute``)."""
        written = []
        if world()[0] != 0:
            return written
        for subset, (path, identity) in self._misses.items():
            embeddings = evaluator.galleries.get(subset)
            if embeddings is None:  # partial evaluation, or a sharded search: no full gallery here
                if evaluator.search.sharded and world()[1] > 1:
                    warnings.warn(f"embedding cache `{path}` not written: with `search.sharded` no process "
                                  "holds the whole gallery", stacklevel=2)
                continue
            if self._save_one(path, embeddings, identity):
                written.append(path)
                self.written.append(str(path))
        self._misses.clear()
        return written

    def _save_one(self, path: Path, embeddings: Tensor, identity: dict[str, Any]) -> bool:
        """Write one cache; False when another run sharing the folder wrote it since ``lookup`` (it is kept:
        failing here would lose this run's results, and it is checked like any cache when it is loaded)."""
        identity = dict(identity)
        ids = identity.pop("ids")
        try:
            if not path.exists() or self.overwrite:
                save_embeddings(path, embeddings, ids, overwrite=self.overwrite, **identity)
                return True
        except CIRFileError:  # the cache exists (another run wrote it meanwhile) or cannot be written
            if self.overwrite or not path.exists():
                raise
        warnings.warn(f"embedding cache `{path}` was written by another run meanwhile: kept as it is, not written "
                      "again", stacklevel=3)
        return False

    @property
    def location(self) -> Path:
        """The folder the caches live in."""
        return self.folder

    def report(self) -> dict[str, Any]:
        """What this run loaded and wrote (for results files)."""
        return {"folder": str(self.folder), "overwrite": self.overwrite, "loaded": list(self.loaded),
                "written": list(self.written), **({"loaded_rounded": dict(self.rounded)} if self.rounded else {})}
