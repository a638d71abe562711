"""FashionIQ: two relative captions per (reference, target) pair of dresses, shirts and tops/tees.

The DataModule over ``cir_lightning.data.layouts.fashioniq`` (the layout, its checks and its protocol) and
``layouts.fashioniq_summary`` (the averages and summary lines): import their names from there. Training mixes the
selected categories; validation is per category. Test labels are not public, so ``test`` (and ``predict``) use the
val split, as papers do.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from lightning.pytorch.utilities import rank_zero_info

from cir_lightning.data.base import CIRDataModule
from cir_lightning.data.contract import EvalSets, Split
from cir_lightning.data.datasets import TripletDataset
from cir_lightning.data.images import DEFAULT_MAX_PIXELS
from cir_lightning.data.layouts.fashioniq import (
    CATEGORIES,
    Category,
    FashionIQFiles,
    QueryText,
    make_query_text,
)
from cir_lightning.data.layouts.fashioniq_summary import average_over_categories, summary_lines
from cir_lightning.data.missing import OnMissing, check_on_missing
from cir_lightning.errors import CIRConfigError, CIRDataError
from cir_lightning.paths import path_option

__all__ = ["FashionIQDataModule"]


class FashionIQDataModule(CIRDataModule):
    """FashionIQ in its official layout: training on the mixed categories, validation per category.

    Metrics per category (``val/dress/Recall@10``): Recall@K (hit rate) and MRR@K at ``EVAL_KS``;
    ``summarize`` adds their mean over the categories and ``report`` the BGE-VL summary lines. The last
    six options are ``CIRDataModule``'s (``batch_size`` ... ``max_image_pixels``).

    Args:
        root: the FashionIQ folder (``captions/``, ``image_splits/``, ``images/``).
        image_root: the images folder (default ``<root>/images``); ids are looked up as ``<id>.png``,
            ``.jpg`` or ``.jpeg``, in ``<image_root>/<category>/`` first, then in ``<image_root>``.
        categories: the categories to train and validate on.
        query_text: text of a val query from its captions c0, c1: ``clip4cir`` (default, CLIP4Cir / SPRC:
            "C0 and c1" with ``.?, `` stripped, first letter capitalised), ``bge_vl`` ("c0, and c1" as in the
            BGE-VL eval files: punctuation kept; like every form it starts from the captions with stray
            surrounding whitespace removed, as the protocol asks), ``e5v`` ("c0, c1" and "c1, c0", each
            caption stripped of ``.?, ``, as E5-V's ``retrieval.py``; its presets sum the two) or ``both_orders`` (SEARLE: "c0 and c1" and "c1 and c0", stripped, not
            capitalised; the model averages the two embeddings).
        exclude_reference: remove each query's reference from its ranking (CoVR); not the standard.
        train_augment: training text drawn per access among "C0 and c1", "C1 and c0", "C0", "C1"
            (CLIP4Cir), from the training order's seed, epoch and row; off: always "C0 and c1".
        on_missing: images that do not exist: ``error`` (default) or ``drop`` the samples and gallery
            items needing them, with a warning (the numbers are then not comparable).

    Example:
        >>> from cir_lightning.data import FashionIQDataModule
        >>> import tempfile
        >>> from pathlib import Path
        >>> from PIL import Image
        >>> root = Path(tempfile.mkdtemp())
        >>> for sub in ("captions", "image_splits", "images"): (root / sub).mkdir()
        >>> for name in "abc": Image.new("RGB", (8, 8)).save(root / "images" / f"{name}.jpg")
        >>> _ = (root / "image_splits/split.dress.val.json").write_text('["a", "b", "c"]')
        >>> _ = (root / "captions/cap.dress.val.json").write_text(
        ...     '[{"candidate": "a", "target": "b", "captions": ["is red.", " has sleeves "]}]')
        >>> dm = FashionIQDataModule(str(root), categories=["dress"])
        >>> dm.setup("validate")
        >>> queries, gallery = dm.val_sets[0]
        >>> queries.name, queries.records[0].modification, queries.positives, gallery.ids
        ('dress', 'Is red and has sleeves', [(1,)], ['a', 'b', 'c'])
    """

    def __init__(
        self,
        root: str,
        image_root: str | None = None,
        categories: Sequence[Category] = CATEGORIES,
        query_text: QueryText = "clip4cir",
        exclude_reference: bool = False,
        train_augment: bool = True,
        on_missing: OnMissing = "error",
        batch_size: int = 16, eval_batch_size: int | None = None, num_workers: int = 0,
        max_short_edge: int | None = None, pin_memory: bool = False, max_image_pixels: int | None = DEFAULT_MAX_PIXELS,
    ) -> None:
        super().__init__(batch_size, eval_batch_size, num_workers, max_short_edge, pin_memory, max_image_pixels)
        unknown = [c for c in categories if c not in CATEGORIES]
        if not categories or unknown or len(set(categories)) != len(categories):
            raise CIRConfigError(f"`categories` must be distinct names among {list(CATEGORIES)}, "
                                 f"got {list(categories)}")
        make_query_text("", "", query_text)  # an unknown form fails here, not at set-up
        self.root = Path(path_option("root", root))
        self.image_root = Path(image_root) if path_option("image_root", image_root, optional=True) else self.root / "images"
        self.categories = list(categories)
        self.query_text = query_text
        self.exclude_reference = exclude_reference
        self.train_augment = train_augment
        self.on_missing = check_on_missing(on_missing)
        self.files = FashionIQFiles(self.root, self.image_root, on_missing, self.max_short_edge)

    def setup(self, stage: str) -> None:
        if not self.image_root.is_dir():
            problem = "is not a folder" if self.image_root.exists() else "does not exist"
            raise CIRDataError(f"the images folder {problem}; set `image_root` (or `root`)", self.image_root)
        first_test = stage == "test" and not self.test_sets
        super().setup(stage)
        if first_test:
            rank_zero_info("FashionIQ's test labels are not public: `test` evaluates the val split")

    def load_train_set(self) -> TripletDataset:
        return self.files.triplets(self.categories, self.train_augment)

    def load_eval_sets(self, split: Split) -> EvalSets:
        """One ``(queries, gallery)`` pair per category; ``test`` is the val split (the same list)."""
        if split == "test":
            self.val_sets = self.val_sets or self.load_eval_sets("val")
            return self.val_sets
        return [self.files.val_set(cat, self.query_text, self.exclude_reference) for cat in self.categories]

    def split_for(self, stage: str) -> Split:
        """``val`` for every stage: ``test`` (and ``predict``) evaluate the val split, test labels not being public;
        ``validate`` and ``test`` share their caches (``val-dress-gallery``)."""
        return "val"

    def summarize(self, metrics: Mapping[str, float]) -> dict[str, float]:
        """Averages over the categories (``average/Recall@10``, ``average/Recall@10+50``, ...), given the
        per-category metrics without stage prefix; empty unless every selected category is there.

        Example:
            >>> from cir_lightning.data import FashionIQDataModule
            >>> FashionIQDataModule("fiq", categories=["dress"]).summarize({"dress/Recall@10": 0.25,
            ...                                                          "dress/Recall@50": 0.5})
            {'average/Recall@10': 0.25, 'average/Recall@50': 0.5, 'average/Recall@10+50': 0.375}
        """
        return average_over_categories(metrics, self.categories)

    def report(self, metrics: Mapping[str, float]) -> str:
        """The BGE-VL summary block: ``dress: 45.67 / 67.89`` per category, then ``overall`` (R@10 / R@50
        in percent).

        Example:
            >>> from cir_lightning.data import FashionIQDataModule
            >>> print(FashionIQDataModule("fiq", categories=["dress"]).report({"dress/Recall@10": 0.25,
            ...                                                              "dress/Recall@50": 0.5}))
            dress: 25.00 / 50.00
            overall: 25.00 / 50.00
        """
        return "\n".join(summary_lines(metrics, self.categories))
