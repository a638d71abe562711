"""CIRCO's files and protocol (Composed Image Retrieval on Common Objects in context), and the server's file.

The official layout (github.com/miccunifi/CIRCO), below ``root``::

    annotations/val.json, annotations/test.json          the queries (a JSON list each)
    COCO2017_unlabeled/annotations/image_info_unlabeled2017.json    the gallery list (COCO image info)
    COCO2017_unlabeled/unlabeled2017/000000243611.jpg ...           the images (``gallery_root``)

A val query ``{"id", "reference_img_id", "target_img_id", "relative_caption", "shared_concept",
"gt_img_ids", "semantic_aspects"}`` is scored with mAP@{5,10,25,50} against all of its ``gt_img_ids``
(logged ``val/mAP@5`` ...: the subset has no name). Test queries have no ground truth: they are ranked
for the evaluation server's file (``make_submission``). The gallery is every image of the image-info
list (~120K, ids ``str(int)``); the reference is not excluded (the protocol's default).
"""

from __future__ import annotations

import string
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from cir_lightning.data.datasets import GalleryDataset, GalleryItem, Query, QueryDataset, refuse_shared_images
from cir_lightning.data.missing import OnMissing, handle_missing
from cir_lightning.errors import CIRConfigError, CIRDataError
from cir_lightning.messages import first_few, json_type, short_repr
from cir_lightning.reading import read_json, read_json_list

__all__ = ["BGE_VL_TEMPLATE", "IMAGE_FOLDERS", "IMAGE_INFO_FILES", "METRICS", "SUBMISSION_SIZE", "CIRCOFiles",
           "check_template", "make_submission"]

BGE_VL_TEMPLATE = "Find a picture that also {shared_concept}, but {relative_caption}."
METRICS = {"map": [5, 10, 25, 50]}
"""What val reports: CIRCO's mAP@K (``retrieval.metrics.METRIC_FAMILIES["map"]``)."""
SUBMISSION_SIZE = 50
_INFO_NAME = "image_info_unlabeled2017.json"
IMAGE_INFO_FILES = (f"COCO2017_unlabeled/annotations/{_INFO_NAME}", f"COCO2017_unlabeled/{_INFO_NAME}",
                    f"annotations/{_INFO_NAME}")
"""Where the image-info file is looked for, from ``root``, when ``image_info_file`` is not given."""
IMAGE_FOLDERS = ("COCO2017_unlabeled/unlabeled2017", "COCO2017_unlabeled/images", "unlabeled2017")
"""Where the gallery images are looked for, from ``root``, when ``gallery_root`` is not given."""
_FIELDS = {"test": ("id", "reference_img_id", "relative_caption", "shared_concept"),
           "val": ("id", "reference_img_id", "relative_caption", "shared_concept", "gt_img_ids")}
_HINT = "set `root` to the CIRCO folder"


def check_template(template: str) -> str:
    """``template`` if it only uses ``{relative_caption}`` (required) and ``{shared_concept}``.

    Example:
        >>> from cir_lightning.data.layouts.circo import check_template
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


def _int_id(value: Any, field: str, path: Path | None, where: str, line: int | None = None) -> int:
    text = str(value).strip()
    if isinstance(value, bool) or not isinstance(value, int | str) or not (text.isascii() and text.isdigit()):
        raise CIRDataError(f"{where}: `{field}` must be an integer image id, got {short_repr(value)}", path, line)
    return int(value)


def make_submission(rankings: Mapping[str, list[str]], query_ids: Sequence[str],
                    size: int = SUBMISSION_SIZE) -> dict[str, list[int]]:
    """The server's ``{"<id>": [size int image ids]}`` from ranked gallery ids, checked first.

    Every id of ``query_ids`` must be ranked, and every ranking must hold ``size`` distinct integer ids
    (longer ones are cut, shorter ones are an error: the server takes exactly 50).

    Example:
        >>> from cir_lightning.data.layouts.circo import make_submission
        >>> make_submission({"0": ["7", "3", "9"]}, ["0"], size=2)
        {'0': [7, 3]}
        >>> make_submission({"0": ["7"]}, ["0", "1"], size=1)
        Traceback (most recent call last):
        ...
        cir_lightning.errors.CIRDataError: the submission must rank every query; 1 of 2 missing: '1'
    """
    missing = [q for q in query_ids if q not in rankings]
    if missing:
        raise CIRDataError(f"the submission must rank every query; {len(missing)} of {len(query_ids)} "
                           f"missing: {first_few([repr(q) for q in missing], ', ', ' ...')}")
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


class CIRCOFiles:
    """The CIRCO annotations under ``root`` and the COCO gallery, read into datasets.

    Args:
        root: the CIRCO folder.
        gallery_root: folder of the gallery images (None: the first of ``IMAGE_FOLDERS`` that exists).
        image_info_file: the COCO image-info JSON (None: the first of ``IMAGE_INFO_FILES`` that exists).
        on_missing: missing images are an ``error``, or with ``drop`` gallery images are left out, and so
            are the queries whose reference or any ground truth is missing.
        max_short_edge: shrink images whose short edge is longer than this, when decoded.

    Example:
        >>> from cir_lightning.data.layouts.circo import CIRCOFiles
        >>> CIRCOFiles(Path("CIRCO"), None, None).read("val", BGE_VL_TEMPLATE, False)
        Traceback (most recent call last):
        ...
        cir_lightning.errors.CIRDataError: CIRCO/annotations/val.json: CIRCO val annotation file does not exist; set `root` to the CIRCO folder
    """

    def __init__(self, root: Path, gallery_root: Path | None, image_info_file: Path | None,
                 on_missing: OnMissing = "error", max_short_edge: int | None = None) -> None:
        self.root, self.gallery_root, self.image_info_file = root, gallery_root, image_info_file
        self.on_missing, self.max_short_edge = on_missing, max_short_edge
        self.listed: list[GalleryItem] = []  # every image of the image-info list
        self._gallery: list[GalleryItem] | None = None  # those whose files exist (see `on_missing`)
        self.query_ids: dict[str, list[str]] = {}  # split -> every query id of its annotation file

    @property
    def dropped_images(self) -> int:
        """How many images of the image-info list ``on_missing: drop`` left out of the gallery."""
        return len(self.listed) - len(self._gallery) if self._gallery is not None else 0

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
        info = self._find(self.image_info_file, IMAGE_INFO_FILES, "COCO image-info file", "image_info_file")
        images = self._find(self.gallery_root, IMAGE_FOLDERS, "COCO 2017 unlabeled image folder", "gallery_root")
        if not images.is_dir():
            raise CIRDataError("the gallery image folder is not a folder; set `gallery_root`", images)
        hint = "set `image_info_file` to the COCO file" if self.image_info_file else _HINT
        listing = read_json(info, "COCO image-info file", hint)
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
            if not isinstance(name, str) or "\0" in name or Path(name).name != name or name in (".", ".."):
                raise CIRDataError(f"{where}: `file_name` must be a plain file name, got {short_repr(name)}",
                                   info)
            seen[image_id] = i + 1
            items.append(GalleryItem(image_id, images / name, f"{info}: image {image_id}"))
        refuse_shared_images(items)
        self.listed = items
        self._gallery = handle_missing(items, lambda g: [g.path], lambda g: g.image_id, what="gallery images",
                                       where=images, on_missing=self.on_missing)
        return self._gallery

    def _parse(self, split: str, path: Path, i: int, line: int, row: Any, listed: dict[str, Path],
               template: str) -> tuple:
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
        if not text["relative_caption"].strip():  # the query would be the template's words alone
            raise CIRDataError(f"{where}: `relative_caption` is empty", path, line)
        unknown = ([f"reference {ref}"] if ref not in listed else []) + [g for g in gt if g not in listed]
        return qid, ref, gt, template.format(**text), unknown, line

    def read(self, split: Literal["val", "test"], template: str,
             exclude_reference: bool) -> tuple[QueryDataset, GalleryDataset]:
        """The queries of ``split`` (their text from ``template``) and the gallery, read and checked."""
        path = self.root / "annotations" / f"{split}.json"
        rows = read_json_list(path, f"CIRCO {split} annotation file", _HINT)
        if not rows:
            raise CIRDataError("expected a non-empty JSON list of queries", path)
        gallery = self.gallery()
        listed = {g.image_id: g.path for g in self.listed}
        records = [self._parse(split, path, i, line, row, listed, template) for i, (line, row) in enumerate(rows)]
        first: dict[str, int] = {}
        for i, r in enumerate(records):
            if first.setdefault(r[0], i) != i:
                raise CIRDataError(f"duplicate query id {r[0]} (entries {first[r[0]] + 1} and {i + 1}, lines "
                                   f"{records[first[r[0]]][5]} and {r[5]})", path, r[5])
        absent = [f"query {r[0]} (line {r[5]}): {', '.join(r[4])}" for r in records if r[4]]
        if absent:
            raise CIRDataError(f"{len(absent)} of {len(records)} queries name images that are not in the "
                               "gallery's image-info list, so they could never be retrieved (another COCO "
                               "list?): " + first_few(absent), path)
        if exclude_reference:  # an excluded positive could never be retrieved: its AP would be wrong
            clash = [f"query {r[0]} (line {r[5]})" for r in records if r[1] in r[2]]
            if clash:
                raise CIRDataError(f"{len(clash)} of {len(records)} queries list their reference among `gt_img_ids`, "
                                   "so `exclude_reference` would remove a ground truth from the ranking: "
                                   f"{first_few(clash)}", path)
        self.query_ids[split] = [r[0] for r in records]
        # A query needs its reference and, to keep its AP comparable, every one of its ground truths.
        records = handle_missing(records, lambda r: [listed[r[1]], *(listed[g] for g in r[2])],
                                 lambda r: f"query {r[0]}", what=f"{split} queries", where=path,
                                 on_missing=self.on_missing)
        row = {g.image_id: j for j, g in enumerate(gallery)}
        queries = [Query(qid, listed[ref], text, tuple(row[g] for g in gt), f"{path}:{line}: query {qid}",
                         reference_id=ref, excluded=(row[ref],) if exclude_reference else ())
                   for qid, ref, gt, text, _, line in records]
        if not queries:
            raise CIRDataError(f"no {split} queries left", path)
        return (QueryDataset(queries, self.max_short_edge, name="", metrics=METRICS, depth=SUBMISSION_SIZE,
                             has_ground_truth=split == "val"), GalleryDataset(gallery, self.max_short_edge))
