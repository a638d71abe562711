"""The custom JSONL layout (FiRE release format), the default for users' own data.

The DataModule over ``cir_lightning.data.layouts.jsonl`` (the file format and its checks: import its readers from
there). Anything wrong in a file stops set-up with a ``CIRDataError`` naming the
file and line.
"""

from __future__ import annotations

from pathlib import Path

from cir_lightning.data.base import CIRDataModule
from cir_lightning.data.contract import EvalSets, Split
from cir_lightning.data.datasets import GalleryDataset, QueryDataset, TripletDataset
from cir_lightning.data.images import DEFAULT_MAX_PIXELS
from cir_lightning.data.layouts.jsonl import UnknownExcludeIds, read_gallery, read_queries, read_triplets
from cir_lightning.errors import CIRConfigError, CIRDataError
from cir_lightning.paths import path_option, resolved

__all__ = ["JsonlCIRDataModule"]


class JsonlCIRDataModule(CIRDataModule):
    """Composed image retrieval data in the custom JSONL layout.

    The last six options are ``CIRDataModule``'s (``batch_size`` ... ``max_image_pixels``).

    Args:
        root: the data folder; relative file names below are taken inside it.
        train_file: training triplets (``None``: no training data).
        val_queries_file: validation queries (``None``: no validation).
        gallery_file: the gallery the validation (and, by default, test) queries search.
        test_queries_file: test queries (``None``: ``test`` uses the validation files).
        test_gallery_file: gallery of the test queries (default: ``gallery_file``).
        image_root: folder image paths are relative to (default: ``root``).
        exclude_reference: also remove each query's ``reference_id`` from its ranking.
        with_captions: put ``reference_caption`` / ``target_caption`` into training samples; every
            training line must then have a ``target_caption``.
        check_images: check at set-up that every image file exists (errors list what is missing).
        unknown_exclude_ids: an id in a query's ``exclude_ids`` (or, with ``exclude_reference``, its
            ``reference_id``) that is not in the gallery: ``error`` (default; the message lists the first
            few with their lines) or ``warn`` (one warning with the counts; the ids are ignored).

    Example:
        >>> from cir_lightning.data import JsonlCIRDataModule, make_synthetic_cir
        >>> import tempfile
        >>> root = make_synthetic_cir(tempfile.mkdtemp() + "/data", num_train=20, num_val=10)
        >>> dm = JsonlCIRDataModule(root, batch_size=4)
        >>> dm.setup("fit")
        >>> len(dm.train_set), len(dm.val_sets[0][0]), len(dm.val_sets[0][1])
        (20, 10, 576)
        >>> sorted(next(iter(dm.train_dataloader()))[0])
        ['index', 'modification', 'reference_image', 'target_image', 'target_key']
    """

    def __init__(
        self,
        root: str,
        train_file: str | None = "train.jsonl",
        val_queries_file: str | None = "val_queries.jsonl",
        gallery_file: str = "gallery.jsonl",
        test_queries_file: str | None = None,
        test_gallery_file: str | None = None,
        image_root: str | None = None,
        exclude_reference: bool = False,
        with_captions: bool = False,
        check_images: bool = True,
        unknown_exclude_ids: UnknownExcludeIds = "error",
        batch_size: int = 16, eval_batch_size: int | None = None, num_workers: int = 0,
        max_short_edge: int | None = None, pin_memory: bool = False, max_image_pixels: int | None = DEFAULT_MAX_PIXELS,
    ) -> None:
        super().__init__(batch_size, eval_batch_size, num_workers, max_short_edge, pin_memory, max_image_pixels)
        for name, value in (("train_file", train_file), ("val_queries_file", val_queries_file),
                            ("test_queries_file", test_queries_file), ("test_gallery_file", test_gallery_file),
                            ("image_root", image_root)):
            path_option(name, value, optional=True)  # "" is refused, not taken for "none"
        self.root = Path(path_option("root", root))
        path_option("gallery_file", gallery_file)
        self.train_file = train_file
        self.val_queries_file = val_queries_file
        self.gallery_file = gallery_file
        self.test_queries_file = test_queries_file
        self.test_gallery_file = test_gallery_file
        self.image_root = Path(image_root) if image_root else None
        self.exclude_reference = exclude_reference
        self.with_captions = with_captions
        self.check_images = check_images
        if unknown_exclude_ids not in ("error", "warn"):
            raise CIRConfigError(f"`unknown_exclude_ids` must be 'error' or 'warn', got {unknown_exclude_ids!r}")
        self.unknown_exclude_ids = unknown_exclude_ids

    def _image_root(self) -> Path:
        return resolved(self.image_root or self.root, "image_root" if self.image_root else "root")

    def setup(self, stage: str) -> None:
        if not self._image_root().is_dir():
            raise CIRDataError("the image root is not a folder; set `image_root` (or `root`)", self._image_root())
        super().setup(stage)

    def load_train_set(self) -> TripletDataset | None:
        if not self.train_file:
            return None
        records = read_triplets(self.root / self.train_file, self._image_root(), self.check_images,
                                require_captions=self.with_captions)
        return TripletDataset(records, self.max_short_edge, self.with_captions)

    def split_for(self, stage: str) -> Split:
        """``STAGE_SPLITS[stage]``, except ``val`` for ``test`` / ``predict`` without test files (they read the val
        files then)."""
        if not (self.test_queries_file or self.test_gallery_file):  # load_eval_sets falls back as this reads
            return "val"
        return super().split_for(stage)

    def load_eval_sets(self, split: Split) -> EvalSets:
        """Val: ``val_queries_file`` over ``gallery_file`` (none without it); test: ``test_queries_file``
        (else the val queries) over ``test_gallery_file`` (else ``gallery_file``)."""
        if split == "val":
            queries_file, gallery_file = self.val_queries_file, self.gallery_file
            if not queries_file:
                return []
        else:
            queries_file = self.test_queries_file or self.val_queries_file
            gallery_file = self.test_gallery_file or self.gallery_file
            if queries_file is None:
                raise CIRDataError("no test queries: set `test_queries_file` or `val_queries_file`", self.root)
        image_root = self._image_root()
        gallery = read_gallery(self.root / gallery_file, image_root, self.check_images)
        queries = read_queries(self.root / queries_file, image_root, [g.image_id for g in gallery],
                               self.exclude_reference, self.check_images, self.unknown_exclude_ids)
        return [(QueryDataset(queries, self.max_short_edge), GalleryDataset(gallery, self.max_short_edge))]
