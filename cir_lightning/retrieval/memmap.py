"""BGE-VL's embedding files: raw float32 rows its own loader reads, with our identity file beside each.

BGE-VL's evaluation scripts (``--save_embedding``) write the corpus embeddings to ``--save_path`` as a
headerless ``numpy.memmap``: ``count x dim`` values in corpus row order, which ``--load_embedding`` reads
back with ``np.memmap(path, dtype=np.float32, mode="r").reshape(-1, dim)``. ``MemmapGalleries`` writes the
same bytes, one file per evaluated gallery (``memmap_path``; a single gallery may use ``save_path``
itself, as BGE-VL's CIRCO script does), and beside each ``<file>.json``: the model
(fingerprint, weights digest and what the caller adds, e.g. the weights' dtype), the dataset, the gallery
ids, ``count``, ``dim``, ``dtype`` and ``image_stamps`` (each gallery image's ``[size, modification time in
ns]``, taken before it was read). Loading refuses, in one line, a file whose size does not fit the gallery at
the model's dimension in float32, one whose identity differs, and one whose images changed or went since
(naming the first); a file without an identity file (written by BGE-VL's script) is checked for its size
only, and one without ``image_stamps`` (written before they were recorded) not for its images, each with a
warning. Files are never replaced; the embedding file's bytes are BGE-VL's whatever the identity file holds.

It is a drop-in for ``GalleryCache`` in a ``CIRModule``'s evaluation (``lookup_sets``, ``provide``,
``save``, ``report``): loaded galleries are never decoded nor embedded.
"""

from __future__ import annotations

import datetime
import json
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from cir_lightning import __version__
from cir_lightning.errors import CIRConfigError, CIRDataError, CIRFileError
from cir_lightning.files import check_writable, write_atomic
from cir_lightning.messages import first_few
from cir_lightning.retrieval.cache import identity_differences
from cir_lightning.retrieval.gather import world
from cir_lightning.retrieval.image_stamps import changed_line, file_stamp, stamps_array
from cir_lightning.writable import exists_error

if TYPE_CHECKING:
    from cir_lightning.retrieval.gallery_cache import StoredGallery, StoredQueries

__all__ = ["MemmapGalleries", "memmap_path", "read_memmap", "write_memmap"]

FORMAT = "bge-vl-memmap/1"


def memmap_path(save_path: str | Path, name: str) -> Path:
    """The file of gallery ``name``: ``embeddings.memmap`` -> ``embeddings.shirt.memmap`` (``name`` "" keeps it).

    Example:
        >>> from cir_lightning.retrieval.memmap import memmap_path
        >>> memmap_path("out/embeddings.memmap", "shirt").as_posix(), memmap_path("emb", "circo").name
        ('out/embeddings.shirt.memmap', 'emb.circo')
    """
    path = Path(save_path)
    if not name:
        return path
    return path.with_name(f"{path.stem}.{name}{path.suffix}" if path.suffix else f"{path.name}.{name}")


def _identity_file(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def write_memmap(path: str | Path, embeddings: Tensor | np.ndarray, identity: Mapping[str, Any]) -> Path:
    """Write ``embeddings`` as raw float32 rows at ``path`` and ``identity`` (plus count, dim, dtype) beside
    it, each file completely or not at all, never over an existing one.

    Example:
        >>> from cir_lightning.retrieval.memmap import write_memmap
        >>> import tempfile
        >>> import numpy as np
        >>> path = write_memmap(Path(tempfile.mkdtemp()) / "e.memmap", np.eye(2, 3), {"ids": ["a", "b"]})
        >>> np.memmap(path, dtype=np.float32, mode="r").reshape(-1, 3).tolist()  # BGE-VL's own loader
        [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]
    """
    path = Path(path)
    array = embeddings.detach().float().cpu().numpy() if isinstance(embeddings, Tensor) else np.asarray(embeddings)
    if array.ndim != 2:
        raise ValueError(f"`embeddings` must be 2-d (rows, dim), got shape {array.shape}")
    _check_free(path)
    meta = {"format": FORMAT, **identity, "count": len(array), "dim": int(array.shape[1]), "dtype": "float32",
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "cir_lightning": __version__}  # when and by which version: not compared when read
    # the identity first: an embedding file without one is taken as BGE-VL's own (its size alone checked), so a
    # failure or a kill between the two writes must never leave the embeddings alone
    identity_file = write_atomic(_identity_file(path), json.dumps(meta, indent=1, default=str) + "\n")
    try:
        write_atomic(path, np.ascontiguousarray(array, dtype=np.float32).tobytes())
    except BaseException:
        identity_file.unlink(missing_ok=True)  # written just now, by us
        raise
    return path


def _check_free(path: Path) -> None:
    """Refuse an embedding file (or its identity file) that exists: BGE-VL's `--save_embedding` never replaces."""
    if _identity_file(path).exists() and not path.exists():  # killed between the two writes (SIGKILL, power loss)
        raise CIRFileError(f"`{_identity_file(path)}` is left from a `--save_embedding` that did not finish (its "
                           f"embedding file `{path}` was never written): remove it and embed again (unless another "
                           "run with this `--save_path` is writing it now)")
    for target in (path, _identity_file(path)):
        if target.exists():
            raise exists_error(target, "--save_path", other="reuse it with `--load_embedding`")


def read_memmap(path: str | Path, count: int, dim: int, identity: Mapping[str, Any] | None = None,
                images: Sequence[str | Path] | None = None) -> Tensor:
    """The (count, dim) float32 rows of an embedding file, after checking its size and, where it has one,
    its identity file against ``identity`` (each key given is compared; any difference is refused) and the
    ``images`` of its rows against the stamps it recorded (one changed or gone since is refused).

    Example:
        >>> from cir_lightning.retrieval.memmap import read_memmap, write_memmap
        >>> import tempfile
        >>> import numpy as np
        >>> path = write_memmap(Path(tempfile.mkdtemp()) / "e.memmap", np.eye(2, 3), {"ids": ["a", "b"]})
        >>> read_memmap(path, 2, 3, {"ids": ["a", "b"]}).shape
        torch.Size([2, 3])
        >>> read_memmap(path, 3, 3)
        Traceback (most recent call last):
        ...
        cir_lightning.errors.CIRDataError: .../e.memmap: holds 24 bytes, but 3 embeddings of dimension 3 in float32 take 36: ...
    """
    path = Path(path)
    if not path.is_file():
        raise CIRDataError("the embedding file does not exist (or is not a file); write it first with "
                           "`--save_embedding` (without `--load_embedding`)", path)
    size, needed = path.stat().st_size, count * dim * 4
    redo = "it was written for another gallery, model or dtype: embed again with `--save_embedding` into a new file"
    if size != needed:
        raise CIRDataError(f"holds {size} bytes, but {count} embeddings of dimension {dim} in float32 take "
                           f"{needed}: {redo}", path)
    meta_path = _identity_file(path)
    if meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError) as err:
            raise CIRDataError(f"the identity file cannot be read ({err}); remove both files and embed again",
                               meta_path) from None
        if not isinstance(meta, dict):
            raise CIRDataError("the identity file is not a JSON object; remove both files and embed again", meta_path)
        expected = {"format": FORMAT, "count": count, "dim": dim, "dtype": "float32", **(identity or {})}
        problems = [p for key, value in expected.items()
                    for p in identity_differences(key, meta.get(key), value, ("stored", "expected"))]
        if problems:
            raise CIRDataError(f"does not match this run ({first_few(problems)}): {redo}", path)
        if images is not None:
            _check_stamps(path, meta.get("image_stamps"), images, list((identity or {}).get("ids") or []))
    else:
        warnings.warn(f"`{path}` has no identity file `{meta_path.name}` (BGE-VL's script writes none): only its "
                      "size was checked, not which model or images it holds, nor whether they changed since",
                      stacklevel=2)
    array = np.fromfile(path, dtype=np.float32).reshape(count, dim)
    return torch.from_numpy(array)


def _check_stamps(path: Path, then: Any, images: Sequence[str | Path], ids: list[str]) -> None:
    """Refuse, in one line naming the first, images changed (another size or modification time) or gone since
    their embeddings were saved; warn when the identity file recorded no stamps."""
    if then is None:
        warnings.warn(f"`{path}`'s identity file records no `image_stamps` (written before they were recorded): its "
                      "images were not checked for changes since they were embedded", stacklevel=3)
        return
    try:
        then = stamps_array(then) if isinstance(then, list) and len(then) == len(images) else None
    except (TypeError, ValueError):  # not [size, time] pairs
        then = None
    if then is None:
        raise CIRDataError("`image_stamps` does not hold one stamp per row: the identity file is damaged; remove "
                           "both files and embed again", _identity_file(path))
    stale = changed_line(images, ids, then, [file_stamp(image) for image in images], "these embeddings were saved")
    if stale:
        raise CIRDataError(f"{stale}: they are stale; embed again with `--save_embedding` into a new file", path)


class MemmapGalleries:
    """Gallery embeddings in BGE-VL's files, for a ``CIRModule``'s evaluation (a drop-in for ``GalleryCache``).

    Args:
        save_path: BGE-VL's ``--save_path``; gallery ``name`` lives at ``memmap_path(save_path, name)``.
        dim: the model's embedding dimension (what a file's size is checked against).
        save: write each gallery embedded in this run (never over an existing file: checked before work).
        load: read every gallery from its file instead of embedding it (``save`` is then ignored).
        identity: more of the model's identity to store and compare (e.g. ``{"dtype": "float16"}``).
        single: one gallery, in ``save_path`` itself, as BGE-VL's CIRCO script writes it (more than one is refused).

    Example:
        >>> from cir_lightning.retrieval.memmap import MemmapGalleries
        >>> import tempfile
        >>> import torch
        >>> from types import SimpleNamespace
        >>> folder = Path(tempfile.mkdtemp())
        >>> sets = [(SimpleNamespace(name="shirt"), SimpleNamespace(ids=["a", "b"], paths=["a.png", "b.png"]))]
        >>> writer = MemmapGalleries(folder / "e.memmap", dim=2, save=True)
        >>> writer.lookup_sets("val", sets, dataset="toy", model={"m": 1})
        set()
        >>> [p.name for p in writer.save(SimpleNamespace(galleries={0: torch.eye(2)}))]
        ['e.shirt.memmap']
        >>> reader = MemmapGalleries(folder / "e.memmap", dim=2, load=True)
        >>> reader.lookup_sets("val", sets, dataset="toy", model={"m": 1})
        {0}
        >>> reader.lookup_sets("val", sets, dataset="toy", model={"m": 2})
        Traceback (most recent call last):
        ...
        cir_lightning.errors.CIRDataError: .../e.shirt.memmap: does not match this run (model.m: stored 1, expected 2): ...
    """

    def __init__(self, save_path: str | Path, dim: int, *, save: bool = False, load: bool = False,
                 identity: Mapping[str, Any] | None = None, single: bool = False) -> None:
        self.save_path, self.dim, self.single = Path(save_path), int(dim), single
        self.saving, self.loading = save and not load, load
        self.identity = dict(identity or {})
        self._hits: dict[int, Tensor] = {}
        self._misses: dict[int, tuple[Path, dict[str, Any]]] = {}
        self.loaded: list[str] = []
        self.written: list[str] = []

    def lookup_sets(self, split: str, sets: Sequence[tuple[StoredQueries, StoredGallery]], *, dataset: str,
                    model: Mapping[str, Any], sharded: bool = False) -> set[int]:
        """Load the galleries of ``sets`` (``load``) or check that theirs can be written (``save``); the
        subsets loaded, whose gallery images are then skipped. ``split`` names no file: BGE-VL's are per gallery."""
        if sharded and (self.loading or self.saving):
            raise CIRConfigError("BGE-VL's embedding files hold whole galleries: turn `search.sharded` off")
        if self.single and len(sets) > 1 and (self.loading or self.saving):
            raise CIRConfigError(f"`save_path` `{self.save_path}` holds one gallery; this run evaluates {len(sets)}")
        self._hits.clear()
        self._misses.clear()
        for s, (queries, gallery) in enumerate(sets):
            name = queries.name or str(s)
            path = self.save_path if self.single else memmap_path(self.save_path, name)
            identity = {"model": {**model, **self.identity}, "dataset": dataset, "gallery": name,
                        "ids": list(gallery.ids)}
            images = gallery.paths  # each row's image file (StoredGallery): their stamps tell stale embeddings
            if self.loading:
                self._hits[s] = read_memmap(path, len(gallery.ids), self.dim, identity, images)
                self.loaded.append(str(path))
            elif self.saving:  # fail now, not after embedding the gallery (every rank sees the same files)
                _check_free(path)
                if world()[0] == 0:
                    check_writable(path.parent, "save_path")
                stamps = {"image_stamps": [file_stamp(p) for p in images]}  # taken before the images are read
                self._misses[s] = (path, {**identity, **stamps})
        return set(self._hits)

    def provide(self, evaluator: Any) -> None:
        """Give the evaluator the loaded galleries (every rank holds each whole gallery)."""
        for subset, embeddings in self._hits.items():
            evaluator.provide(subset, "gallery", embeddings)

    def save(self, evaluator: Any) -> list[Path]:
        """Write, on rank zero, the galleries embedded in this run (after ``evaluator.compute``)."""
        written = []
        if world()[0] == 0:
            for subset, (path, identity) in self._misses.items():
                embeddings = evaluator.galleries.get(subset)
                if embeddings is not None:  # None: a partial evaluation (limit_val_batches ...)
                    written.append(write_memmap(path, embeddings, identity))
                    self.written.append(str(path))
        self._misses.clear()
        return written

    @property
    def location(self) -> Path:
        """BGE-VL's ``--save_path``: the embedding file itself with ``single`` (CIRCO's), else the stem of each
        gallery's file (``memmap_path(location, name)``, FashionIQ's per category)."""
        return self.save_path

    def report(self) -> dict[str, Any]:
        """What this run loaded and wrote."""
        return {"save_path": str(self.save_path), "loaded": list(self.loaded), "written": list(self.written)}
