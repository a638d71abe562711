"""BGE-VL's evaluation data (FlagOpen/FlagEmbedding ``research/BGE_VL/eval/data``) as a DataModule.

The DataModule over ``cir_lightning.data.layouts.bgevl`` (the files, their checks and BGE-VL's protocol: import
their names from there). ``scripts/eval_fashioniq.py`` and ``scripts/eval_circo.py``
run it with BGE-VL's flags; ``cir-lightning validate`` runs it from a config (``configs/bgevl_fashioniq.yaml``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cir_lightning.data.base import CIRDataModule
from cir_lightning.data.contract import EvalSets, Rankings, Split
from cir_lightning.data.images import DEFAULT_MAX_PIXELS
from cir_lightning.data.layouts.bgevl import (
    CATEGORIES,
    Category,
    Task,
    bgevl_files,
    console_report,
    cutoffs_within,
    read_eval_set,
)
from cir_lightning.data.layouts.fashioniq_summary import average_over_categories
from cir_lightning.data.missing import OnMissing, check_on_missing
from cir_lightning.errors import CIRConfigError, CIRDataError
from cir_lightning.files import check_writable, write_atomic
from cir_lightning.free_names import write_free
from cir_lightning.paths import path_option
from cir_lightning.writable import exists_error

__all__ = ["BGEVLDataModule"]


class BGEVLDataModule(CIRDataModule):
    """BGE-VL's FashionIQ files (per category, MRR@K and BGE-VL's Recall@K) or its CIRCO files (rankings only).

    Metrics per category (``val/shirt/MRR@10``, ``val/shirt/PositiveRecall@10``: "Recall@10" in BGE-VL's
    output) at K in 1, 5, 10, 20, 50, 100; ``summarize`` adds their means (``average/...``) and ``report``
    returns BGE-VL's console text. ``validate`` and ``test`` evaluate the same files. With ``task: circo``
    the queries have no ground truth: each is ranked and ``write_predictions`` writes BGE-VL's results file
    ``{"<id>": [top-50 corpus contents]}``. The last six options are ``CIRDataModule``'s.

    Args:
        data_dir: the folder of BGE-VL's evaluation files (its scripts read ``./eval/data``).
        image_dir: the folder the files' image paths are relative to (FashionIQ: the one holding
            ``images/``; CIRCO: the COCO images' folder).
        task: ``"fashioniq"`` or ``"circo"``.
        categories: the FashionIQ categories, evaluated and printed in this order (the script's:
            shirt, dress, toptee).
        k: neighbours retrieved per query (BGE-VL's ``--k``): metrics at K > k equal those at k.
        on_missing: missing images are an ``"error"``, or ``"drop"`` leaves out the corpus images and
            queries needing them, with a warning (the numbers are then not comparable).
        results_file: CIRCO: the results file to write (never over an existing one); default
            ``circo-bgevl.json`` in the run's log folder.

    Example:
        >>> from cir_lightning.data import BGEVLDataModule
        >>> import pathlib, tempfile, PIL.Image
        >>> root = pathlib.Path(tempfile.mkdtemp())
        >>> (root / "images").mkdir()
        >>> PIL.Image.new("RGB", (8, 8)).save(root / "images" / "a.png")
        >>> PIL.Image.new("RGB", (8, 8), "red").save(root / "images" / "b.png")
        >>> _ = (root / "fashioniq_dress_corpus.jsonl").write_text(
        ...     '{"content": "a", "image": "./images/a.png"}\\n{"content": "b", "image": "./images/b.png"}\\n')
        >>> _ = (root / "fashioniq_dress_query_val.jsonl").write_text('{"q_img": "./images/a.png", '
        ...     '"q_text": "is red, and longer", "positive_key": "b", "positive_value": "./images/b.png", '
        ...     '"hn_image": ["./images/a.png"]}\\n')
        >>> dm = BGEVLDataModule(str(root), str(root), categories=["dress"])
        >>> dm.setup("validate")
        >>> queries, gallery = dm.val_sets[0]
        >>> queries.name, queries.records[0].modification, queries.positives, gallery.ids
        ('dress', 'is red, and longer', [(1,)], ['a', 'b'])
    """

    GALLERY_OPTIONS = ("data_dir", "image_dir", "max_short_edge")

    def __init__(
        self,
        data_dir: str = "eval/data",
        image_dir: str = ".",
        task: Task = "fashioniq",
        categories: Sequence[Category] = CATEGORIES,
        k: int = 100,
        on_missing: OnMissing = "error",
        results_file: str | None = None,
        batch_size: int = 256, eval_batch_size: int | None = None, num_workers: int = 0,
        max_short_edge: int | None = None, pin_memory: bool = False, max_image_pixels: int | None = DEFAULT_MAX_PIXELS,
    ) -> None:
        super().__init__(batch_size, eval_batch_size, num_workers, max_short_edge, pin_memory, max_image_pixels)
        bgevl_files(Path(data_dir), task, "")  # an unknown task fails here, not at set-up
        unknown = [c for c in categories if c not in CATEGORIES]
        if task == "fashioniq" and (not categories or unknown or len(set(categories)) != len(categories)):
            raise CIRConfigError(f"`categories` must be distinct names among {list(CATEGORIES)}, got {list(categories)}")
        check_on_missing(on_missing)
        self.ks = sorted(set(cutoffs_within(k).values()))
        self.data_dir, self.image_dir = Path(path_option("data_dir", data_dir)), Path(path_option("image_dir", image_dir))
        self.task, self.categories, self.k, self.on_missing = task, list(categories), k, on_missing
        self.results_file = Path(results_file) if path_option("results_file", results_file, optional=True) else None
        self.contents: dict[str, dict[str, Any]] = {}

    def setup(self, stage: str) -> None:
        for option, folder in (("data_dir", self.data_dir), ("image_dir", self.image_dir)):
            if not folder.is_dir():
                raise CIRDataError(f"`{option}` is not a folder", folder)
        if self.task == "circo" and self.results_file is not None:  # before any work: never over a file
            if self.results_file.exists():
                raise exists_error(self.results_file, "results_file")
            check_writable(self.results_file.parent, "results_file")
        super().setup(stage)

    def load_eval_sets(self, split: Split) -> EvalSets:
        """One ``(queries, corpus)`` pair per category (or CIRCO's one); ``val`` and ``test`` are the same."""
        other = self.test_sets if split == "val" else self.val_sets
        if other:
            return other
        names = self.categories if self.task == "fashioniq" else ["circo"]
        sets = []
        for name in names:
            queries, gallery, self.contents[name] = read_eval_set(
                self.data_dir, self.image_dir.resolve(), self.task, name, self.ks, self.on_missing, self.max_short_edge)
            sets.append((queries, gallery))
        return sets

    def split_for(self, stage: str) -> Split:
        """``val`` for every stage: ``validate`` and ``test`` evaluate the same sets (BGE-VL's val data)."""
        return "val"

    def summarize(self, metrics: Mapping[str, float]) -> dict[str, float]:
        """The means over the categories (``average/MRR@10``, ``average/PositiveRecall@10``, ...), given the
        per-category metrics without stage prefix; empty unless every category is there.

        Example:
            >>> from cir_lightning.data import BGEVLDataModule
            >>> BGEVLDataModule(categories=["shirt", "dress"]).summarize({"shirt/MRR@1": 0.5, "dress/MRR@1": 0.25})
            {'average/MRR@1': 0.375}
        """
        return average_over_categories(metrics, self.categories) if self.task == "fashioniq" else {}

    def report(self, metrics: Mapping[str, float]) -> str:
        """BGE-VL's console text (see ``console_report``); "" for CIRCO or when a category is not evaluated.

        Example:
            >>> from cir_lightning.data import BGEVLDataModule
            >>> m = {f"dress/{n}@{k}": 0.25 for n in ("MRR", "PositiveRecall") for k in (1, 5, 10, 20, 50, 100)}
            >>> print(BGEVLDataModule(categories=["dress"]).report(m).splitlines()[-1])
            overall: 25.00 / 25.00
        """
        needed = [f"{c}/{n}@{k}" for c in self.categories for n in ("MRR", "PositiveRecall") for k in self.ks]
        if self.task != "fashioniq" or any(name not in metrics for name in needed):
            return ""
        return console_report(metrics, self.categories, self.k)

    def write_predictions(self, folder: Path, stage: str, rankings: Rankings, subset_rankings: Rankings) -> list[Path]:
        """CIRCO: BGE-VL's results file, ``{"<id>": [the top 50 corpus contents]}`` (contents as the corpus
        file gives them), written completely or not at all, never over an existing file; FashionIQ: none.

        Example:
            >>> from cir_lightning.data import BGEVLDataModule
            >>> BGEVLDataModule().write_predictions(Path("out"), "validate", {}, {})
            []
        """
        if self.task != "circo" or "circo" not in rankings:
            return []
        sets = self.test_sets or self.val_sets
        contents = self.contents["circo"]
        missing = [q for q in sets[0][0].ids if q not in rankings["circo"]]
        if missing:
            raise CIRDataError(f"{len(missing)} CIRCO queries were not ranked (first: {missing[0]!r})")
        depth = min(50, self.k)  # the script keeps the top 50 of its top k
        results = {q: [contents[g] for g in rankings["circo"][q][:depth]] for q in sets[0][0].ids}
        if self.results_file:
            return [write_atomic(self.results_file, json.dumps(results))]
        return [write_free(Path(folder) / "circo-bgevl.json", json.dumps(results))]
