"""The custom JSONL layout (FiRE release format), the default for users' own data.

Training file, one triplet a line::

    {"reference_image": "images/a.png", "target_image": "images/b.png", "modification": "make it red",
     "reference_caption": "...", "target_caption": "...", "reference_id": "a", "target_id": "b",
     "sample_id": "0"}                      # the last five are optional

Evaluation queries and gallery::

    {"query_id": "q0", "reference_image": "images/a.png", "reference_id": "a", "modification": "...",
     "target_id": "b", "exclude_ids": ["a"]}       # or "target_ids": ["b", "c"] for several positives
    {"image_id": "b", "image_path": "images/b.png"}

Image paths are relative to ``image_root`` and may not leave it. Blank lines are skipped (a UTF-8
byte-order mark and Windows line ends are fine); anything else that is wrong stops set-up with a
``CIRDataError`` naming the file and line: malformed or too deeply nested JSON, a key given twice, a
missing or mistyped field, an image path that is missing or a folder, a positive or an excluded id that
is not in the gallery (see ``unknown_exclude_ids``). The evaluation path never reads target-side text.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from lightning.pytorch.utilities import rank_zero_warn

from cir_lightning.data.base import CIRDataModule
from cir_lightning.data.datasets import (
    GalleryDataset,
    GalleryItem,
    Query,
    QueryDataset,
    Triplet,
    TripletDataset,
)
from cir_lightning.data.images import DEFAULT_MAX_PIXELS, resolve_image_path
from cir_lightning.data.missing import MISSING, file_problem
from cir_lightning.errors import CIRConfigError, CIRDataError
from cir_lightning.files import iter_jsonl, short_repr

__all__ = ["JsonlCIRDataModule", "iter_jsonl", "read_gallery", "read_queries", "read_triplets"]

UnknownExcludeIds = Literal["error", "warn"]
_SHOW = 5  # how many offending lines an error lists before summarising


def _text(obj: dict[str, Any], key: str, path: Path, line: int, required: bool = True) -> str | None:
    value = obj.get(key)
    if value is None:
        if required:
            raise CIRDataError(f"missing field `{key}`", path, line)
        return None
    if not isinstance(value, str) or (required and not value.strip()):
        raise CIRDataError(f"field `{key}` must be a non-empty string, got {short_repr(value)}", path, line)
    return value


def _id(obj: dict[str, Any], key: str, path: Path, line: int, required: bool = True) -> str | None:
    value = obj.get(key)
    if value is None:
        if required:
            raise CIRDataError(f"missing field `{key}`", path, line)
        return None
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise CIRDataError(f"field `{key}` must be a string or an integer id, got {short_repr(value)}", path,
                           line)
    return str(value)


def _check_files_exist(items: list[tuple[Path, str]]) -> None:
    """Every path must be an image file; the error lists the first few that are not (absent, a folder,
    a broken symbolic link ...) with the line that names each."""
    checked: dict[Path, str | None] = {}
    bad = []
    for p, src in items:
        if p not in checked:
            checked[p] = file_problem(p)
            if checked[p] is not None:
                bad.append((p, src, checked[p]))
    if bad:
        shown = "; ".join(f"{src}: {p}" + ("" if why == MISSING else f" {why}") for p, src, why in bad[:_SHOW])
        more = f"; ... and {len(bad) - _SHOW} more" if len(bad) > _SHOW else ""
        head = "do not exist" if all(why == MISSING for _, _, why in bad) else "are missing or not image files"
        raise CIRDataError(f"{len(bad)} image file(s) {head}: {shown}{more}")


def read_triplets(path: Path, image_root: Path, check_images: bool = True,
                  require_captions: bool = False) -> list[Triplet]:
    """Parse and check a training JSONL file (``target_caption`` on every line if ``require_captions``)."""
    records = []
    for line, obj in iter_jsonl(path):
        src = f"{path}:{line}"
        records.append(Triplet(
            reference=resolve_image_path(image_root, _text(obj, "reference_image", path, line), path, line,
                                         "reference_image"),
            target=resolve_image_path(image_root, _text(obj, "target_image", path, line), path, line,
                                      "target_image"),
            modification=_text(obj, "modification", path, line),
            source=src,
            sample_id=_id(obj, "sample_id", path, line, required=False),
            reference_caption=_text(obj, "reference_caption", path, line, required=False),
            target_caption=_text(obj, "target_caption", path, line, required=require_captions),
        ))
    if not records:
        raise CIRDataError("no training samples", path)
    if check_images:
        _check_files_exist([(p, r.source) for r in records for p in (r.reference, r.target)])
    return records


def read_gallery(path: Path, image_root: Path, check_images: bool = True) -> list[GalleryItem]:
    """Parse and check a gallery JSONL file; ids must be unique."""
    records, seen = [], {}
    for line, obj in iter_jsonl(path):
        image_id = _id(obj, "image_id", path, line)
        if image_id in seen:
            raise CIRDataError(f"duplicate `image_id` {image_id!r} (first on line {seen[image_id]})", path, line)
        seen[image_id] = line
        rel = _text(obj, "image_path", path, line)
        records.append(GalleryItem(image_id, resolve_image_path(image_root, rel, path, line, "image_path"),
                                   f"{path}:{line}"))
    if not records:
        raise CIRDataError("the gallery is empty", path)
    if check_images:
        _check_files_exist([(r.path, r.source) for r in records])
    return records


def _listed(lines: list[str], total: int) -> str:
    """The first offenders and a count of the rest, on one line."""
    more = f"; ... and {total - _SHOW} more" if total > _SHOW else ""
    return "; ".join(line.strip() for line in lines[:_SHOW]) + more


def _targets(obj: dict[str, Any], path: Path, line: int) -> list[str]:
    if obj.get("target_ids") is None:
        return [_id(obj, "target_id", path, line)]
    targets = obj["target_ids"]
    if not isinstance(targets, list) or not targets:
        raise CIRDataError(f"`target_ids` must be a non-empty list, got {short_repr(targets)}", path, line)
    targets = [_id({"target_ids": t}, "target_ids", path, line) for t in targets]
    twice = sorted({t for t in targets if targets.count(t) > 1})
    if twice:  # each positive would count twice in Recall (BGE-VL's) and mAP
        raise CIRDataError(f"`target_ids` lists {', '.join(map(repr, twice))} more than once", path, line)
    single = _id(obj, "target_id", path, line, required=False)
    if single is not None and single not in targets:
        raise CIRDataError(f"`target_id` {single!r} is not among `target_ids` {short_repr(targets)}; give one "
                           "of the two, or make them agree", path, line)
    return targets


def read_queries(path: Path, image_root: Path, gallery_ids: list[str], exclude_reference: bool = False,
                 check_images: bool = True, unknown_exclude_ids: UnknownExcludeIds = "error") -> list[Query]:
    """Parse and check an evaluation query JSONL file against its gallery.

    Every positive (``target_id`` or ``target_ids``) must be in the gallery; queries whose positives are
    not are listed in one error rather than silently counted as misses. So must every id the query
    excludes (``exclude_ids``, and ``reference_id`` with ``exclude_reference``): a misspelt id would
    leave that image in the ranking. With ``unknown_exclude_ids="warn"`` such ids are ignored after one
    warning that counts them.

    Example:
        >>> import tempfile
        >>> root = Path(tempfile.mkdtemp())
        >>> _ = (root / "q.jsonl").write_text('{"query_id": "q0", "reference_image": "a.png", '
        ...     '"modification": "m", "target_id": "b", "exclude_ids": ["a", "scene-536"]}\\n')
        >>> read_queries(root / "q.jsonl", root, ["a", "b"], check_images=False)
        Traceback (most recent call last):
        ...
        cir_lightning.errors.CIRDataError: .../q.jsonl: 1 query(ies) exclude 1 id(s) that are not in the gallery; ...
        >>> import warnings
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     warnings.simplefilter("always")
        ...     [q.excluded for q in read_queries(root / "q.jsonl", root, ["a", "b"], check_images=False,
        ...                                       unknown_exclude_ids="warn")]
        [(0,)]
        >>> len(caught)
        1
    """
    if unknown_exclude_ids not in ("error", "warn"):
        raise CIRConfigError(f"`unknown_exclude_ids` must be 'error' or 'warn', got {unknown_exclude_ids!r}")
    row = {image_id: i for i, image_id in enumerate(gallery_ids)}
    records, seen, absent, unknown = [], {}, [], []
    unknown_ids = 0
    for line, obj in iter_jsonl(path):
        qid = _id(obj, "query_id", path, line)
        if qid in seen:
            raise CIRDataError(f"duplicate `query_id` {qid!r} (first on line {seen[qid]})", path, line)
        seen[qid] = line
        targets = _targets(obj, path, line)
        excluded_ids = obj.get("exclude_ids")
        if excluded_ids is None:
            excluded_ids = []
        if not isinstance(excluded_ids, list):
            raise CIRDataError(f"`exclude_ids` must be a list, got {short_repr(excluded_ids)}", path, line)
        excluded_ids = [_id({"exclude_ids": e}, "exclude_ids", path, line) for e in excluded_ids]
        reference_id = _id(obj, "reference_id", path, line, required=exclude_reference)
        strangers = [f"`exclude_ids` {e!r}" for e in dict.fromkeys(excluded_ids) if e not in row]
        if exclude_reference:
            if reference_id not in row and reference_id not in excluded_ids:
                strangers.append(f"`reference_id` {reference_id!r}")
            excluded_ids.append(reference_id)
        if strangers:
            unknown.append(f"  {path}:{line} query {qid!r}: {', '.join(strangers)}")
            unknown_ids += len(strangers)
        missing = [t for t in targets if t not in row]
        if missing:
            absent.append(f"  {path}:{line} query {qid!r}: {', '.join(map(repr, missing))}")
            continue
        clash = set(targets) & set(excluded_ids)
        if clash:
            raise CIRDataError(f"query {qid!r} excludes its own positive(s) {sorted(clash)}", path, line)
        rel = _text(obj, "reference_image", path, line)
        records.append(Query(
            query_id=qid,
            reference=resolve_image_path(image_root, rel, path, line, "reference_image"),
            modification=_text(obj, "modification", path, line),
            positives=tuple(row[t] for t in targets),
            source=f"{path}:{line}",
            reference_id=reference_id,
            excluded=tuple(sorted({row[e] for e in excluded_ids if e in row})),
        ))
    if absent:
        raise CIRDataError(
            f"{len(absent)} query(ies) have positives that are not in the gallery; they could never be "
            "retrieved, so the metrics would be wrong: " + _listed(absent, len(absent))
        )
    if unknown:
        what = (f"{len(unknown)} query(ies) exclude {unknown_ids} id(s) that are not in the gallery; "
                "a misspelt id leaves that image in the ranking")
        if unknown_exclude_ids == "error":
            raise CIRDataError(f"{what}, so the metrics would be wrong (set `unknown_exclude_ids: warn` to "
                               "ignore such ids): " + _listed(unknown, len(unknown)), path)
        rank_zero_warn(f"{path}: {what}; they are ignored (`unknown_exclude_ids: warn`): "
                       + _listed(unknown, len(unknown)))
    if not records:
        raise CIRDataError("no evaluation queries", path)
    if check_images:
        _check_files_exist([(r.reference, r.source) for r in records])
    return records


class JsonlCIRDataModule(CIRDataModule):
    """Composed image retrieval data in the custom JSONL layout.

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
        batch_size: training batch size per process.
        eval_batch_size: evaluation batch size (default: ``batch_size``).
        num_workers: DataLoader worker processes.
        max_short_edge: shrink images whose short edge is longer than this, when decoded.
        pin_memory: pin host memory of batches.
        max_image_pixels: refuse images with more pixels than this (read from the header, before decoding);
            ``None``: no limit (default: Pillow's limit).

    Example:
        >>> import tempfile
        >>> from cir_lightning.data.synthetic import make_synthetic_cir
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

    def _path(self, name: str) -> Path:
        return self.root / name

    def _eval_set(self, queries_file: str, gallery_file: str) -> tuple[QueryDataset, GalleryDataset]:
        image_root = (self.image_root or self.root).resolve()
        gallery = read_gallery(self._path(gallery_file), image_root, self.check_images)
        queries = read_queries(self._path(queries_file), image_root, [g.image_id for g in gallery],
                               self.exclude_reference, self.check_images, self.unknown_exclude_ids)
        return QueryDataset(queries, self.max_short_edge), GalleryDataset(gallery, self.max_short_edge)

    def setup(self, stage: str) -> None:
        image_root = (self.image_root or self.root).resolve()
        if not image_root.is_dir():
            raise CIRDataError("the image root is not a folder; set `image_root` (or `root`)", image_root)
        if stage == "fit" and self.train_file and self.train_set is None:
            records = read_triplets(self._path(self.train_file), image_root, self.check_images,
                                    require_captions=self.with_captions)
            self.train_set = TripletDataset(records, self.max_short_edge, self.with_captions)
        if stage in ("fit", "validate") and self.val_queries_file and not self.val_sets:
            self.val_sets = [self._eval_set(self.val_queries_file, self.gallery_file)]
        if stage in ("test", "predict") and not self.test_sets:
            queries_file = self.test_queries_file or self.val_queries_file
            if queries_file is None:
                raise CIRDataError("no test queries: set `test_queries_file` or `val_queries_file`", self.root)
            self.test_sets = [self._eval_set(queries_file, self.test_gallery_file or self.gallery_file)]
