"""CIRCO (Composed Image Retrieval on Common Objects in context): zero-shot evaluation, val and test.

The DataModule over ``cir_lightning.data.layouts.circo``, the one home of the layout, its checks, the protocol and
the evaluation server's file (import their names from there). Val is scored with
mAP@{5,10,25,50}; ``test`` ranks the test queries and ``write_predictions`` writes the server's file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from cir_lightning.data.base import CIRDataModule
from cir_lightning.data.contract import EvalSets, Rankings, Split
from cir_lightning.data.images import DEFAULT_MAX_PIXELS
from cir_lightning.data.layouts.circo import (
    BGE_VL_TEMPLATE,
    CIRCOFiles,
    check_template,
    make_submission,
)
from cir_lightning.data.missing import check_on_missing
from cir_lightning.errors import CIRConfigError, CIRDataError
from cir_lightning.free_names import write_free
from cir_lightning.paths import path_option

__all__ = ["CIRCODataModule"]


class CIRCODataModule(CIRDataModule):
    """CIRCO val (mAP@5/10/25/50) and test (rankings for the evaluation server); no training data.

    The last six options are ``CIRDataModule``'s (``batch_size`` ... ``max_image_pixels``); ``batch_size``
    is unused here (no training data).

    Args:
        root: the CIRCO folder (holding ``annotations/`` and ``COCO2017_unlabeled/``).
        gallery_root: folder of the COCO 2017 unlabeled images (default: the first existing of
            ``<root>/COCO2017_unlabeled/unlabeled2017``, ``<root>/COCO2017_unlabeled/images``,
            ``<root>/unlabeled2017``).
        image_info_file: the COCO image-info JSON listing the gallery (default: the first existing of
            ``<root>/COCO2017_unlabeled/annotations/image_info_unlabeled2017.json``, the same file
            directly in ``COCO2017_unlabeled/`` or in ``<root>/annotations/``).
        query_template: the query text; fields ``{relative_caption}`` (required) and
            ``{shared_concept}``; the default is BGE-VL's. Captions are used as written.
        exclude_reference: remove each query's reference from its ranking (not the protocol).
        on_missing: missing image files are an ``"error"``, or with ``"drop"`` gallery images are
            left out, and so are the queries whose reference or any ground truth is missing.

    Example:
        >>> from cir_lightning.data import CIRCODataModule
        >>> dm = CIRCODataModule("CIRCO")  # nothing is read before `setup`
        >>> print(dm.query_template.format(shared_concept="two men in suits", relative_caption="wear blue ties"))
        Find a picture that also two men in suits, but wear blue ties.
        >>> CIRCODataModule("CIRCO", query_template="{caption}")
        Traceback (most recent call last):
        ...
        cir_lightning.errors.CIRConfigError: `query_template` uses {caption}; allowed: ...
    """

    def __init__(
        self,
        root: str,
        gallery_root: str | None = None,
        image_info_file: str | None = None,
        query_template: str = BGE_VL_TEMPLATE,
        exclude_reference: bool = False,
        on_missing: Literal["error", "drop"] = "error",
        batch_size: int = 16, eval_batch_size: int | None = None, num_workers: int = 0,
        max_short_edge: int | None = None, pin_memory: bool = False, max_image_pixels: int | None = DEFAULT_MAX_PIXELS,
    ) -> None:
        super().__init__(batch_size, eval_batch_size, num_workers, max_short_edge, pin_memory, max_image_pixels)
        self.root = Path(path_option("root", root))
        self.gallery_root = Path(gallery_root) if path_option("gallery_root", gallery_root, optional=True) else None
        self.image_info_file = Path(image_info_file) if path_option("image_info_file", image_info_file,
                                                                    optional=True) else None
        self.query_template = check_template(query_template)
        self.exclude_reference = exclude_reference
        check_on_missing(on_missing)
        self.on_missing = on_missing
        self.files = CIRCOFiles(self.root, self.gallery_root, self.image_info_file, on_missing, self.max_short_edge)

    def load_eval_sets(self, split: Split) -> EvalSets:
        return [self.files.read(split, self.query_template, self.exclude_reference)]

    def write_predictions(self, folder: Path, stage: str, rankings: Rankings, subset_rankings: Rankings) -> list[Path]:
        """Write the server's file after ``test`` (``circo-test.json``, every test query required) and,
        if val rankings are given, the same format after ``validate`` (``circo-val.json``, for the
        official ``evaluation.py``). Checked before writing (``make_submission``); the file is written
        completely or not at all (a full disk raises ``CIRFileError`` and leaves nothing), and an existing
        file is never overwritten (``circo-test-1.json`` ...).

        Args:
            folder: where to write.
            stage: ``"test"`` or ``"validate"``; anything else writes nothing.
            rankings: per subset name (``""`` here), query id -> ranked gallery ids, at least 50.
            subset_rankings: rankings within candidates (CIRCO has none; ignored).

        Returns:
            The files written.

        Example:
            >>> from cir_lightning.data import CIRCODataModule
            >>> CIRCODataModule("CIRCO").write_predictions(Path("out"), "validate", {}, {})
            []
        """
        split = self.split_for(stage) if stage in ("validate", "test") else None
        if split is None or (split == "val" and "" not in rankings):
            return []
        if "" not in rankings:
            raise CIRConfigError("no test rankings to write the CIRCO submission from")
        sets = self.test_sets if split == "test" else self.val_sets
        if not sets:
            raise CIRConfigError(f"CIRCODataModule.write_predictions({stage!r}) before setup({stage!r})")
        expected = self.files.query_ids[split] if split == "test" else sets[0][0].ids
        dropped = len(self.files.query_ids[split]) - len(sets[0][0])
        dropped_images = self.files.dropped_images
        if split == "test" and (dropped or dropped_images):
            raise CIRDataError(f"`on_missing: drop` left out {dropped} test queries and {dropped_images} gallery "
                               "images, but the server needs every query ranked over the whole gallery: "
                               "complete the images to write a submission", self.root / "annotations" / "test.json")
        submission = make_submission(rankings[""], expected)
        return [write_free(Path(folder) / f"circo-{split}.json", json.dumps(submission) + "\n")]
