"""CIRCO (Composed Image Retrieval on Common Objects in context): zero-shot evaluation, val and test.

The official layout (github.com/miccunifi/CIRCO), below ``root``::

    annotations/val.json, annotations/test.json          the queries (a JSON list each)
    COCO2017_unlabeled/annotations/image_info_unlabeled2017.json    the gallery list (COCO image info)
    COCO2017_unlabeled/unlabeled2017/000000243611.jpg ...           the images (``gallery_root``)

A val query ``{"id", "reference_img_id", "target_img_id", "relative_caption", "shared_concept",
"gt_img_ids", "semantic_aspects"}`` is scored with mAP@{5,10,25,50} against all of its ``gt_img_ids``
(logged ``val/mAP@5`` ...: the subset has no name). Test queries have no ground truth: ``test`` ranks
them and ``write_predictions`` writes the evaluation server's file. The gallery is every image of the
image-info list (~120K, ids ``str(int)``); the reference is not excluded (the protocol's default).
"""

from __future__ import annotations

import json
import string
from pathlib import Path
from typing import Any, Literal

from cir_lightning.data.base import CIRDataModule
from cir_lightning.data.datasets import GalleryDataset, GalleryItem, Query, QueryDataset
from cir_lightning.data.images import DEFAULT_MAX_PIXELS
from cir_lightning.data.missing import OnMissing, handle_missing
from cir_lightning.errors import CIRConfigError, CIRDataError
from cir_lightning.files import free_path, json_type, read_json, read_json_list, short_repr, write_atomic

BGE_VL_TEMPLATE = "Find a picture that also {shared_concept}, but {relative_caption}."
METRICS = {"map": [5, 10, 25, 50]}
"""What val reports: CIRCO's mAP@K (``cir_lightning.retrieval.FAMILIES["map"]``)."""
SUBMISSION_SIZE = 50
_INFO_NAME = "image_info_unlabeled2017.json"
_IMAGE_INFO = (f"COCO2017_unlabeled/annotations/{_INFO_NAME}", f"COCO2017_unlabeled/{_INFO_NAME}",
               f"annotations/{_INFO_NAME}")
_IMAGES = ("COCO2017_unlabeled/unlabeled2017", "COCO2017_unlabeled/images", "unlabeled2017")
_FIELDS = {"test": ("id", "reference_img_id", "relative_caption", "shared_concept"),
           "val": ("id", "reference_img_id", "relative_caption", "shared_concept", "gt_img_ids")}
_SHOW = 5


def check_template(template: str) -> str:
    """``template`` if it only uses ``{relative_caption}`` (required) and ``{shared_concept}``.

    Example:
        >>> check_template("a photo of $ that {relative_caption}")
        'a photo of $ that {relative_caption}'
        >>> check_template("{shared_concept} {caption}")
        Traceback (most recent call last):
        ...
        cir_lightning.errors.CIRConfigError: `query_template` uses {caption}; allowed: ...
    """
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as err:
        raise CIRConfigError(f"`query_template` {template!r} is not a valid format string: {err}") from None
    allowed = ("relative_caption", "shared_concept")
    bad = [f for f in fields if f not in allowed]
    if bad:
        raise CIRConfigError(f"`query_template` uses {{{bad[0]}}}; allowed: {{relative_caption}}, "
                             "{shared_concept}")
    if "relative_caption" not in fields:
        raise CIRConfigError(f"`query_template` {template!r} must contain {{relative_caption}}")
    return template


_HINT = "set `root` to the CIRCO folder"


def _int_id(value: Any, field: str, path: Path | None, where: str, line: int | None = None) -> int:
    text = str(value).strip()
    if isinstance(value, bool) or not isinstance(value, int | str) or not (text.isascii() and text.isdigit()):
        raise CIRDataError(f"{where}: `{field}` must be an integer image id, got {short_repr(value)}", path, line)
    return int(value)


def make_submission(rankings: dict[str, list[str]], query_ids: list[str],
                    size: int = SUBMISSION_SIZE) -> dict[str, list[int]]:
    """The server's ``{"<id>": [size int image ids]}`` from ranked gallery ids, checked first.

    Every id of ``query_ids`` must be ranked, and every ranking must hold ``size`` distinct integer ids
    (longer ones are cut, shorter ones are an error: the server takes exactly 50).

    Example:
        >>> make_submission({"0": ["7", "3", "9"]}, ["0"], size=2)
        {'0': [7, 3]}
        >>> make_submission({"0": ["7"]}, ["0", "1"], size=1)
        Traceback (most recent call last):
        ...
        cir_lightning.errors.CIRDataError: the submission must rank every query; 1 of 2 missing: '1'
    """
    missing = [q for q in query_ids if q not in rankings]
    if missing:
        more = " ..." if len(missing) > _SHOW else ""
        raise CIRDataError(f"the submission must rank every query; {len(missing)} of {len(query_ids)} "
                           f"missing: {', '.join(map(repr, missing[:_SHOW]))}{more}")
    out = {}
    for q in query_ids:
        ranked = [_int_id(g, "ranked id", None, f"query {q!r}") for g in rankings[q][:size]]
        if len(ranked) < size:
            raise CIRDataError(f"query {q!r} has only {len(ranked)} ranked images; the server needs {size} "
                               "(is the gallery complete?)")
        if len(set(ranked)) < size:
            raise CIRDataError(f"query {q!r} ranks an image twice in its top {size}")
        out[q] = ranked
    return out


class CIRCODataModule(CIRDataModule):
    """CIRCO val (mAP@5/10/25/50) and test (rankings for the evaluation server); no training data.

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
        batch_size: unused (no training data); kept for the shared interface.
        eval_batch_size: evaluation batch size (default: ``batch_size``).
        num_workers: DataLoader worker processes.
        max_short_edge: shrink images whose short edge is longer than this, when decoded.
        pin_memory: pin host memory of batches.
        max_image_pixels: refuse images with more pixels than this (read from the header, before decoding);
            ``None``: no limit (default: Pillow's limit).

    Example:
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
        batch_size: int = 16,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        max_short_edge: int | None = None,
        pin_memory: bool = False,
        max_image_pixels: int | None = DEFAULT_MAX_PIXELS,
    ) -> None:
        super().__init__(batch_size, eval_batch_size, num_workers, max_short_edge, pin_memory, max_image_pixels)
        self.save_hyperparameters()
        self.root = Path(root)
        self.gallery_root = Path(gallery_root) if gallery_root else None
        self.image_info_file = Path(image_info_file) if image_info_file else None
        self.query_template = check_template(query_template)
        self.exclude_reference = exclude_reference
        if on_missing not in ("error", "drop"):
            raise CIRConfigError(f"`on_missing` must be 'error' or 'drop', got {on_missing!r}")
        self.on_missing: OnMissing = on_missing
        self._listed: list[GalleryItem] = []  # every image of the image-info list
        self._gallery: list[GalleryItem] | None = None  # those whose files exist (see `on_missing`)
        self.query_ids: dict[str, list[str]] = {}  # split -> every query id of its annotation file

    def _find(self, given: Path | None, candidates: tuple[str, ...], kind: str, option: str) -> Path:
        if given is not None:
            return given
        found = [self.root / c for c in candidates if (self.root / c).exists()]
        if not found:
            searched = ", ".join(f"`{self.root / c}`" for c in candidates)
            raise CIRDataError(f"no {kind} found; searched {searched}. Set `{option}` to where it is")
        return found[0]

    def gallery(self) -> list[GalleryItem]:
        """Every image of the image-info list whose file exists, checked once (see ``on_missing``)."""
        if self._gallery is not None:
            return self._gallery
        info = self._find(self.image_info_file, _IMAGE_INFO, "COCO image-info file", "image_info_file")
        images = self._find(self.gallery_root, _IMAGES, "COCO 2017 unlabeled image folder", "gallery_root")
        if not images.is_dir():
            raise CIRDataError("the gallery image folder is not a folder; set `gallery_root`", images)
        listing = read_json(info, "COCO image-info file", _HINT)
        entries = listing.get("images") if isinstance(listing, dict) else None
        if not isinstance(entries, list) or not entries:
            raise CIRDataError('expected a COCO image-info object {"images": [{"id", "file_name"}, ...]}',
                               info)
        items, seen = [], {}
        for i, entry in enumerate(entries):
            where = f"`images` entry {i + 1}"
            if not isinstance(entry, dict):
                raise CIRDataError(f"{where}: expected a JSON object, got {json_type(entry)}", info)
            image_id = str(_int_id(entry.get("id"), "id", info, where))
            where = f"{where} (id {image_id})"
            name = entry.get("file_name") or f"{int(image_id):012d}.jpg"
            if image_id in seen:
                raise CIRDataError(f"{where}: duplicate image id (first: entry {seen[image_id]})", info)
            if not isinstance(name, str) or Path(name).name != name or name in (".", ".."):
                raise CIRDataError(f"{where}: `file_name` must be a plain file name, got {short_repr(name)}",
                                   info)
            seen[image_id] = i + 1
            items.append(GalleryItem(image_id, images / name, f"{info}: image {image_id}"))
        self._listed = items
        self._gallery = handle_missing(items, lambda g: [g.path], lambda g: g.image_id, what="gallery images",
                                       where=images, on_missing=self.on_missing)
        return self._gallery

    def _parse(self, split: str, path: Path, i: int, line: int, row: Any, listed: dict[str, Path]) -> tuple:
        """``(id, reference id, gt ids, text, ids not in the image-info list, line)`` of entry ``i``."""
        where = f"entry {i + 1}"
        if not isinstance(row, dict):
            raise CIRDataError(f"{where}: expected a JSON object, got {json_type(row)}", path, line)
        if row.get("id") is not None:
            where = f"{where} (id {_int_id(row['id'], 'id', path, where, line)})"
        lacking = [f for f in _FIELDS[split] if row.get(f) is None]
        if lacking:
            raise CIRDataError(f"{where} lacks field(s) {', '.join(f'`{f}`' for f in lacking)}", path, line)
        qid = str(_int_id(row["id"], "id", path, where, line))
        ref = str(_int_id(row["reference_img_id"], "reference_img_id", path, where, line))
        gt = row.get("gt_img_ids")
        gt = [] if gt is None else gt
        if not isinstance(gt, list) or (split == "val" and not gt):
            raise CIRDataError(f"{where}: `gt_img_ids` must be a non-empty list, got {short_repr(gt)}", path, line)
        gt = tuple(str(_int_id(g, "gt_img_ids", path, where, line)) for g in gt)
        if len(set(gt)) != len(gt):  # AP@K divides by the number of ground truths: duplicates would change it
            twice = sorted({g for g in gt if gt.count(g) > 1})
            raise CIRDataError(f"{where}: `gt_img_ids` lists {', '.join(twice)} more than once", path, line)
        text = {k: row[k] for k in ("relative_caption", "shared_concept")}
        bad = [k for k, v in text.items() if not isinstance(v, str)]
        if bad:
            raise CIRDataError(f"{where}: `{bad[0]}` must be a string, got {short_repr(text[bad[0]])}", path, line)
        unknown = ([f"reference {ref}"] if ref not in listed else []) + [g for g in gt if g not in listed]
        return qid, ref, gt, self.query_template.format(**text), unknown, line

    def _read(self, split: Literal["val", "test"]) -> tuple[QueryDataset, GalleryDataset]:
        path = self.root / "annotations" / f"{split}.json"
        rows = read_json_list(path, f"CIRCO {split} annotation file", _HINT)
        if not rows:
            raise CIRDataError("expected a non-empty JSON list of queries", path)
        gallery = self.gallery()
        listed = {g.image_id: g.path for g in self._listed}
        records = [self._parse(split, path, i, line, row, listed) for i, (line, row) in enumerate(rows)]
        first: dict[str, int] = {}
        for i, r in enumerate(records):
            if first.setdefault(r[0], i) != i:
                raise CIRDataError(f"duplicate query id {r[0]} (entries {first[r[0]] + 1} and {i + 1}, lines "
                                   f"{records[first[r[0]]][5]} and {r[5]})", path, r[5])
        ids = [r[0] for r in records]
        absent = [f"query {r[0]} (line {r[5]}): {', '.join(r[4])}" for r in records if r[4]]
        if absent:
            more = f"; ... and {len(absent) - _SHOW} more" if len(absent) > _SHOW else ""
            raise CIRDataError(f"{len(absent)} of {len(records)} queries name images that are not in the "
                               "gallery's image-info list, so they could never be retrieved (another COCO "
                               "list?): " + "; ".join(absent[:_SHOW]) + more, path)
        self.query_ids[split] = ids
        # A query needs its reference and, to keep its AP comparable, every one of its ground truths.
        records = handle_missing(records, lambda r: [listed[r[1]], *(listed[g] for g in r[2])],
                                 lambda r: f"query {r[0]}", what=f"{split} queries", where=path,
                                 on_missing=self.on_missing)
        row = {g.image_id: j for j, g in enumerate(gallery)}
        queries = [Query(qid, listed[ref], text, tuple(row[g] for g in gt), f"{path}:{line}: query {qid}",
                         reference_id=ref, excluded=(row[ref],) if self.exclude_reference else ())
                   for qid, ref, gt, text, _, line in records]
        if not queries:
            raise CIRDataError(f"no {split} queries left", path)
        return (QueryDataset(queries, self.max_short_edge, name="", metrics=METRICS, depth=SUBMISSION_SIZE,
                             has_ground_truth=split == "val"), GalleryDataset(gallery, self.max_short_edge))

    def setup(self, stage: str) -> None:
        if stage in ("fit", "validate") and not self.val_sets:
            self.val_sets = [self._read("val")]
        if stage in ("test", "predict") and not self.test_sets:
            self.test_sets = [self._read("test")]

    def write_predictions(self, folder: Path, stage: str, rankings: dict[str, dict[str, list[str]]],
                          subset_rankings: dict[str, dict[str, list[str]]]) -> list[Path]:
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
            >>> CIRCODataModule("CIRCO").write_predictions(Path("out"), "validate", {}, {})
            []
        """
        split = {"test": "test", "validate": "val"}.get(stage)
        if split is None or (split == "val" and "" not in rankings):
            return []
        if "" not in rankings:
            raise CIRConfigError("no test rankings to write the CIRCO submission from")
        sets = self.test_sets if split == "test" else self.val_sets
        if not sets:
            raise CIRConfigError(f"CIRCODataModule.write_predictions({stage!r}) before setup({stage!r})")
        expected = self.query_ids[split] if split == "test" else sets[0][0].ids
        dropped = len(self.query_ids[split]) - len(sets[0][0])
        dropped_images = len(self._listed) - len(self._gallery) if self._gallery is not None else 0
        if split == "test" and (dropped or dropped_images):
            raise CIRDataError(f"`on_missing: drop` left out {dropped} test queries and {dropped_images} gallery "
                               "images, but the server needs every query ranked over the whole gallery: "
                               "complete the images to write a submission", self.root / "annotations" / "test.json")
        submission = make_submission(rankings[""], expected)
        return [write_atomic(free_path(Path(folder) / f"circo-{split}.json"), json.dumps(submission) + "\n")]
