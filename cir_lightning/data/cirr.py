"""CIRR (Liu et al., ICCV 2021) in its official layout, evaluated with the official protocol.

The DataModule over ``cir_lightning.data.layouts.cirr``, the one home of the layout, its checks, the protocol and
the evaluation server's files (import their names from there). test1 has no public ground
truth: ``test`` ranks it and writes the two evaluation-server files.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from lightning.pytorch.utilities import rank_zero_warn

from cir_lightning.data.base import CIRDataModule
from cir_lightning.data.contract import EvalSets, Rankings, Split
from cir_lightning.data.datasets import TripletDataset
from cir_lightning.data.images import DEFAULT_MAX_PIXELS
from cir_lightning.data.layouts.cirr import (
    CIRRFiles,
    CIRRPair,
    CIRRSplit,
    write_submission,
)
from cir_lightning.data.missing import OnMissing, check_on_missing
from cir_lightning.paths import path_option

__all__ = ["CIRRDataModule"]

SPLIT_FILES: dict[Split, str] = {"val": "val", "test": "test1"}
"""The annotation files' name of each evaluation split."""


class CIRRDataModule(CIRDataModule):
    """CIRR: train triplets, val with ground truth, test1 ranked for the evaluation server.

    ``write_predictions`` writes the two server files after ``test`` (test1) and also after a standalone
    ``validate`` (val, to check a submission pipeline against the val ground truth). The last six
    options are ``CIRDataModule``'s (``batch_size`` ... ``max_image_pixels``).

    Args:
        root: the annotation folder, holding ``captions/`` and ``image_splits/``.
        image_root: the folder holding ``train/ dev/ test1/`` (default: the first of ``root``,
            ``root/img_raw``, ``root/images`` and the folder above ``root`` that has the split's folder).
        on_missing: ``"error"`` (default) lists missing images; ``"drop"`` leaves out the gallery images
            and pairs that need them, with a warning (the numbers are then not comparable).

    Example:
        >>> from cir_lightning.data import CIRRDataModule
        >>> import tempfile
        >>> dm = CIRRDataModule(tempfile.mkdtemp())
        >>> dm.summarize({"Recall@5": 0.75, "Recall_subset@1": 0.25})
        {'Avg': 0.5}
        >>> dm.setup("validate")
        Traceback (most recent call last):
        ...
        cir_lightning.errors.CIRDataError: .../image_splits/split.rc2.val.json: CIRR annotation file does not exist; ...
    """

    def __init__(self, root: str, image_root: str | None = None, on_missing: OnMissing = "error",
                 batch_size: int = 16, eval_batch_size: int | None = None, num_workers: int = 0,
                 max_short_edge: int | None = None, pin_memory: bool = False,
                 max_image_pixels: int | None = DEFAULT_MAX_PIXELS) -> None:
        super().__init__(batch_size, eval_batch_size, num_workers, max_short_edge, pin_memory, max_image_pixels)
        self.root = Path(path_option("root", root))
        self.image_root = Path(image_root) if path_option("image_root", image_root, optional=True) else None
        self.on_missing = check_on_missing(on_missing)
        self.files = CIRRFiles(self.root, self.image_root, on_missing, self.max_short_edge)
        self.splits: dict[str, CIRRSplit] = {}  # "val" / "test1" -> the split as read

    @property
    def pairs(self) -> dict[str, dict[str, CIRRPair]]:
        """Split ("val", "test1") -> pair id -> pair, every pair of the captions file."""
        return {split: read.pairs for split, read in self.splits.items()}

    @property
    def gallery_names(self) -> dict[str, list[str]]:
        """Split -> every image name of its split file, sorted."""
        return {split: read.gallery_names for split, read in self.splits.items()}

    def load_train_set(self) -> TripletDataset:
        return TripletDataset(self.files.train_records(), self.max_short_edge)

    def load_eval_sets(self, split: Split) -> EvalSets:
        read = self.splits[SPLIT_FILES[split]] = self.files.eval_split(SPLIT_FILES[split])
        return [(read.queries, read.gallery)]

    def summarize(self, metrics: Mapping[str, float]) -> dict[str, float]:
        """CIRR's headline number from the metrics (keys without stage prefix): ``{"Avg": ...}``."""
        if "Recall@5" not in metrics or "Recall_subset@1" not in metrics:
            return {}
        return {"Avg": (metrics["Recall@5"] + metrics["Recall_subset@1"]) / 2}

    def write_predictions(self, folder: Path, stage: str, rankings: Rankings, subset_rankings: Rankings) -> list[Path]:
        """Check and write ``cirr-<split>-recall.json`` and ``cirr-<split>-recall_subset.json``.

        Args:
            folder: where the files go; existing files are never overwritten (the pair gets a ``-N``).
                Each file is written completely or not at all; if the second cannot be written, the
                first is removed again.
            stage: ``"test"`` (test1) or ``"validate"`` (val); other stages write nothing.
            rankings: subset name ("") -> pair id -> ranked gallery names (reference excluded, >= 50).
            subset_rankings: subset name ("") -> pair id -> the img_set candidates, ranked.

        Returns:
            the two files; none (with a warning) for other stages, without complete rankings, or when
            ``on_missing: drop`` left pairs or gallery images out (the server needs every pair id, each
            ranked over the whole split).

        Raises:
            CIRDataError: when the server would reject either file; nothing is written then.
            CIRFileError: when a file cannot be written (full disk, permissions); nothing is left then.

        Example:
            >>> from cir_lightning.data import CIRRDataModule
            >>> CIRRDataModule("CIRR").write_predictions(Path("out"), "test", {}, {})  # before `setup("test")`
            []
        """
        split = SPLIT_FILES[self.split_for(stage)] if stage in ("validate", "test") else None
        read = self.splits.get(split)
        if read is None:
            return []
        why = None
        if read.dropped_pairs or read.dropped_images:
            why = (f"`on_missing: drop` left out {read.dropped_pairs} pairs and {read.dropped_images} gallery "
                   "images; the server ranks every pair over the whole split")
        elif "" not in rankings or "" not in subset_rankings:
            why = "the evaluation gave no complete rankings"
        if why:
            rank_zero_warn(f"no CIRR {split} prediction files written: {why}")
            return []
        return write_submission(Path(folder), split, rankings[""], subset_rankings[""], read)
