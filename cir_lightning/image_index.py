"""Search over your own images: an index folder written by ``cir-lightning index``, opened and queried.

An index folder holds::

    embeddings.npy  ids.json  meta.json    the embedding cache format (``retrieval.cache``): ids = relative paths
    index.faiss                            the faiss index over those rows (inner product)
    stamps.npy                             each image file's size and modification time when it was embedded
    adapter/                               the model's trained LoRA adapter (peft format), when it has one

``meta.json`` is the cache's (``model`` = backbone fingerprint and weights digest) plus ``image_index``: the
image folder (``root``), the backbone's config (``class_path`` / ``init_args``, what rebuilds it), the image
options, the faiss index type, the images left out as unreadable and what the folder's scan passed over
(``left_out``: hidden files, other types, links reached again). ``ImageIndex.open`` refuses a missing,
unfinished or damaged folder in one line; ``load_backbone`` rebuilds the model that made the index and checks
it; ``query`` refuses any other model, so rows and query are always embedded by the same function.
"""

from __future__ import annotations

import copy
import warnings
import weakref
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from PIL import Image

from cir_lightning.backbones.base import Backbone
from cir_lightning.checks import positive_int
from cir_lightning.data.folder import fit_image
from cir_lightning.errors import CIRConfigError, CIRDataError, CIRModelError, embedded_error
from cir_lightning.index_files import (
    FAISS_FILE,
    STAMPS_FILE,
    read_faiss,
    read_json,
    read_meta,
    read_stamps,
    read_whole,
)
from cir_lightning.leftovers import put_back
from cir_lightning.messages import MISSING, first_few
from cir_lightning.paths import resolved
from cir_lightning.retrieval.cache import identity_differences
from cir_lightning.retrieval.embedding_folder import ids_digest
from cir_lightning.retrieval.image_stamps import file_stamp, stamp_change
from cir_lightning.retrieval.index import search_with_scores
from cir_lightning.retrieval.ties import identical_rows

__all__ = ["CHANGED", "GONE", "Hit", "ImageIndex", "partial_folder"]

GONE, CHANGED = "gone", "changed since indexed"
"""How ``search`` and ``serve`` mark a result whose file is gone, or is another file than was embedded."""


def partial_folder(folder: str | Path) -> Path:
    """Where ``cir-lightning index`` keeps the finished shards of an index still being built.

    Example:
        >>> from cir_lightning.image_index import partial_folder
        >>> partial_folder("out/photos-index").as_posix()
        'out/photos-index.partial'
    """
    folder = Path(folder)
    return folder.with_name(folder.name + ".partial")


@dataclass(frozen=True)
class Hit:
    """One search result.

    Args:
        rank: 1 for the best.
        path: the image file (absolute).
        relpath: its path below the index's image folder, ``/``-separated.
        score: cosine similarity of the query and the image.

    Example:
        >>> from cir_lightning.image_index import Hit
        >>> hit = Hit(rank=1, path=Path("/photos/a.jpg"), relpath="a.jpg", score=0.83)
        >>> hit.path.name, hit.score
        ('a.jpg', 0.83)
    """

    rank: int
    path: Path
    relpath: str
    score: float


class ImageIndex:
    """An index folder, opened: its images, identity and faiss index.

    Example:
        >>> from cir_lightning.image_index import ImageIndex
        >>> import tempfile
        >>> ImageIndex.open(tempfile.mkdtemp() + "/nothing")
        Traceback (most recent call last):
        ...
        cir_lightning.errors.CIRDataError: .../nothing: does not exist (build an index with `cir-lightning index IMAGE_FOLDER ...`)
    """

    def __init__(self, folder: Path, meta: dict[str, Any], relpaths: list[str], faiss_index: Any,
                 root: Path | None = None, stamps: np.ndarray | None = None) -> None:
        self.folder = folder
        self.meta = meta
        self.relpaths = relpaths
        self.root = root or Path(meta["image_index"]["root"])  # the images' folder (elsewhere, when moved)
        self._faiss, self._stamps = faiss_index, stamps
        self._rows = {p: i for i, p in enumerate(relpaths)}
        self._checked: weakref.WeakSet[Backbone] = weakref.WeakSet()
        self._identical: Any = "find"  # the identical images (equal scores, lower row first): found once

    @property
    def info(self) -> dict[str, Any]:
        """``meta["image_index"]``: root, backbone config, image options, faiss index type, skipped images."""
        return self.meta["image_index"]

    @classmethod
    def open(cls, folder: str | Path, root: str | Path | None = None) -> ImageIndex:
        """Open the index at ``folder``, after checking it is complete and undamaged (one ``CIRDataError``
        line naming the file otherwise) and that its image folder is there: ``root``, where the images went
        when the indexed folder was moved (the index keeps their paths below it), else the indexed one."""
        return read_whole(Path(folder), lambda whole: cls._read(whole, root))

    @classmethod
    def _read(cls, folder: Path, root: str | Path | None) -> ImageIndex:
        meta, relpaths = cls.read_files(folder)
        info = meta["image_index"]
        images = resolved(root, "--root") if root is not None else Path(info["root"])
        if not images.is_dir():
            raise CIRDataError(f"the image folder `{images}` " + ("(`--root`) " if root is not None else "the index was "
                               "built over ") + "is not there: if the images moved, give their new folder (`--root "
                               "FOLDER`, `ImageIndex.open(..., root=...)`)", folder)
        probes = sorted({relpaths[0], relpaths[len(relpaths) // 2], relpaths[-1]}) if relpaths else []
        if root is not None and probes and not any((images / p).exists() for p in probes):
            raise CIRDataError(f"the image folder `{images}` (`--root`) holds none of the indexed images (looked for "
                               f"{first_few(probes)}): give the folder the index was built over, moved", folder)
        return cls(folder, meta, relpaths, read_faiss(folder / FAISS_FILE, meta["count"], meta["dim"], info), images,
                   read_stamps(folder / STAMPS_FILE, meta["count"]))

    @staticmethod
    def read_files(folder: Path) -> tuple[dict[str, Any], list[str]]:
        """The ``meta.json`` and relative paths of the index at ``folder``, after checking that it is complete and
        that its files agree (one ``CIRDataError`` line naming the file otherwise); its faiss index is not read."""
        folder = Path(folder)
        if not folder.exists():
            put_back(folder)  # moved aside by an update's `--overwrite`: waited for, or put back if it was stopped
        if not folder.is_dir():
            partial = partial_folder(folder)
            if not folder.exists() and partial.is_dir():
                raise CIRDataError(f"{MISSING}: its build is unfinished (finished shards are in `{partial}`); run the "
                                   "same `cir-lightning index` command again to complete it", folder)
            problem = MISSING if not folder.exists() else "is not a folder"
            raise CIRDataError(f"{problem} (build an index with `cir-lightning index IMAGE_FOLDER ...`)", folder)
        meta, _ = read_meta(folder / "meta.json")
        relpaths = read_json(folder / "ids.json", list)
        if meta.get("ids_sha256") != ids_digest(relpaths) or len(relpaths) != meta.get("count"):
            raise CIRDataError("does not match meta.json (changed after the index was written); rebuild the index",
                               folder / "ids.json")
        outside = [p for p in relpaths if not isinstance(p, str) or not p or PurePosixPath(p).is_absolute()
                   or ".." in PurePosixPath(p).parts]
        if outside:  # an index's paths stay below its image folder
            raise CIRDataError(f"holds paths that are not below the image folder ({first_few([repr(p) for p in outside])})"
                               "; it was not written by `cir-lightning index`: rebuild the index", folder / "ids.json")
        try:
            rows = np.load(folder / "embeddings.npy", mmap_mode="r")
            shape_ok = rows.shape == (meta["count"], meta["dim"])
        except (OSError, ValueError, EOFError, KeyError) as err:
            raise CIRDataError(f"cannot be read ({err}): the index is damaged; rebuild it", folder / "embeddings.npy") \
                from None
        if not shape_ok:
            raise CIRDataError(f"holds {rows.shape}, meta.json says ({meta['count']}, {meta['dim']}): the index is "
                               "damaged; rebuild it", folder / "embeddings.npy")
        return meta, relpaths

    def changed(self, relpaths: Iterable[str]) -> list[str]:
        """Those of the indexed ``relpaths`` whose file is gone, or is not the file that was embedded (another size
        or modification time; only another size below a ``--root``, where a copy may have new times). An index
        written without ``stamps.npy`` knows only the gone ones."""
        moved = self.root != Path(self.info["root"])
        found = []
        for relpath in relpaths:
            now = file_stamp(self.root / relpath)
            then = self._stamps[self._rows[relpath]] if self._stamps is not None else None
            if now is None or (then is not None and stamp_change(then, now, times=not moved)):
                found.append(relpath)
        return found

    def marks(self, relpaths: Iterable[str]) -> dict[str, str]:
        """Those of the indexed ``relpaths`` that ``changed``, each with its mark: ``GONE`` (no file there now)
        or ``CHANGED`` (another file under that name: ranked as the one embedded then)."""
        return {p: CHANGED if (self.root / p).exists() else GONE for p in self.changed(relpaths)}

    # ------------------------------------------------------------------ the model
    def load_backbone(self) -> Backbone:
        """The model that built this index, rebuilt from its config with the index's adapter, on the CPU
        (move it with ``.to(device)``), after checking its identity."""
        from jsonargparse import ArgumentParser

        config = copy.deepcopy(self.info["backbone"])
        init = config.setdefault("init_args", {})
        if "make_tiny_if_missing" in init:
            init["make_tiny_if_missing"] = False  # a missing model is an error here, never a new random one
        if self.info.get("adapter"):
            init["lora"] = {**(init.get("lora") or {}), "init_adapter": str(self.folder / self.info["adapter"])}
        parser = ArgumentParser(exit_on_error=False)
        parser.add_argument("--backbone", type=Backbone)
        try:
            with warnings.catch_warnings():  # other base weights: the identity check below says so, in one line
                warnings.filterwarnings("ignore", message=".*was trained on other base weights")
                backbone = parser.instantiate_classes(parser.parse_object({"backbone": config})).backbone
        except Exception as err:  # noqa: BLE001 - jsonargparse wraps what the constructor raised
            ours = embedded_error(err)
            if ours is not None:
                raise ours from None
            raise CIRModelError(f"index `{self.folder}`: cannot rebuild its model from meta.json: "
                                + " ".join(line.strip() for line in str(err).splitlines()[:3])[:300]) from None
        changed = self._differences(backbone)  # (an identity hashes the trained weights: once)
        if changed:
            raise CIRModelError(f"index `{self.folder}`: the model that built it has changed since ({changed}); put "
                                "its files back, or index the images again")
        self._checked.add(backbone)
        return backbone

    def _differences(self, backbone: Backbone) -> str:
        built = {k: v for k, v in self.meta["model"].items() if k != "precision"}  # the gallery's, not the model's
        return "; ".join(identity_differences("model", built, backbone.identity(), ("index has", "this model has")))

    def check_backbone(self, backbone: Backbone) -> None:
        """Refuse a backbone other than the index's (fingerprint or trained weights differ), in one line.
        A backbone that passed is not checked again."""
        changed = "" if backbone in self._checked else self._differences(backbone)
        if changed:
            raise CIRModelError(f"index `{self.folder}` was built by another model ({changed}); search it with "
                                "`ImageIndex.load_backbone()` (the model that built it), or index the images again "
                                "with this one")
        self._checked.add(backbone)

    # ------------------------------------------------------------------ searching
    def query(self, backbone: Backbone, image: Image.Image, text: str, k: int = 10, *,
              exclude: Iterable[str] = ()) -> list[Hit]:
        """The ``k`` indexed images closest to ``image`` changed as ``text`` says, best first.

        Args:
            backbone: the index's model (``load_backbone()``; any other is refused).
            image: the reference image (converted to RGB and shrunk as the indexed images were).
            text: the modification ("make it red").
            k: how many results (fewer when the index is smaller).
            exclude: relpaths to leave out of the results (e.g. the reference itself, when it is indexed).
        """
        positive_int("k", k)
        if not isinstance(text, str):
            raise CIRConfigError(f"the modification text must be a string, got {type(text).__name__}")
        if not isinstance(image, Image.Image):
            raise CIRConfigError(f"the reference must be a PIL image, got {type(image).__name__}")
        self.check_backbone(backbone)
        image = fit_image(image, self.info.get("max_short_edge"), upright=bool(self.info.get("upright")))
        embedding = backbone.encode_query([image], [text]).detach().float().cpu().numpy()
        if not np.isfinite(embedding).all():  # faiss and torch would order its NaN scores each their own way
            raise CIRModelError("the model's embedding of this query is not finite (NaN or inf): a ranking over it "
                                "would be arbitrary (check the model for overflow, e.g. in float16)")
        skip = {self._rows[p] for p in exclude if p in self._rows}
        flat = _flat_rows(self._faiss)
        if flat is not None:  # exact: the evaluation's search (ties to the lower row, also across the cut-off)
            self._identical = identical_rows(flat) if self._identical == "find" else self._identical
            depth = min(k, len(self.relpaths))  # beyond the index: only -1s (`-k 1e12` failed to allocate them)
            ids, scores = search_with_scores(embedding, flat, depth, [sorted(skip)], identical=self._identical)
            found = [(s, r) for s, r in zip(scores[0].tolist(), ids[0].tolist(), strict=True) if r >= 0]
        else:  # approximate (IVF, HNSW, PQ): its own candidates, in score order
            depth = min(k + len(skip), len(self.relpaths))
            scores, rows = self._faiss.search(np.ascontiguousarray(embedding, dtype=np.float32), depth)
            found = sorted(((float(s), int(r)) for s, r in zip(scores[0], rows[0], strict=True)
                            if r >= 0 and int(r) not in skip), key=lambda hit: (-hit[0], hit[1]))
        return [Hit(rank, self.root / self.relpaths[row], self.relpaths[row], score)
                for rank, (score, row) in enumerate(found[:k], start=1)]

    def __repr__(self) -> str:
        return f"ImageIndex({str(self.folder)!r}, {len(self.relpaths)} images below {str(self.root)!r})"


def _flat_rows(index: Any) -> np.ndarray | None:
    """The rows of an exact flat index, a view of its own storage (no copy); None for any other index type."""
    import faiss

    flat = faiss.downcast_index(index)
    if type(flat) not in (faiss.IndexFlatIP, faiss.IndexFlat) or flat.metric_type != faiss.METRIC_INNER_PRODUCT:
        return None
    return faiss.rev_swig_ptr(flat.get_xb(), flat.ntotal * flat.d).reshape(flat.ntotal, flat.d)
