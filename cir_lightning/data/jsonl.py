"""The custom JSONL layout (FiRE release format), the default for users' own data.

Training file, one triplet a line::

    {"reference_image": "images/a.png", "target_image": "images/b.png", "modification": "make it red",
     "reference_caption": "...", "target_caption": "...", "reference_id": "a", "target_id": "b",
     "sample_id": "0"}                      # the last five are optional

Evaluation queries and gallery::

    {"query_id": "q0", "reference_image": "images/a.png", "reference_id": "a", "modification": "...",
     "target_id": "b", "exclude_ids": ["a"]}       # or "target_ids": ["b", "c"] for several positives
    {"image_id": "b", "image_path": "images/b.png"}

Image paths are relative to ``image_root`` and may not leave it. Blank lines are skipped; anything else
that is wrong stops set-up with a ``CIRDataError`` naming the file and line. The evaluation path never
reads target-side text.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cir_lightning.data.base import CIRDataModule
from cir_lightning.data.datasets import (
    GalleryDataset,
    GalleryItem,
    Query,
    QueryDataset,
    Triplet,
    TripletDataset,
)
from cir_lightning.data.images import resolve_image_path
from cir_lightning.errors import CIRDataError

_SHOW = 5  # how many offending lines an error lists before summarising


def iter_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line_number, object)`` for each non-blank line; malformed lines raise ``CIRDataError``.

    Example:
        >>> import tempfile
        >>> p = Path(tempfile.mkdtemp()) / "x.jsonl"
        >>> _ = p.write_text('{"a": 1}\\n\\n[2]\\n')
        >>> next(iter_jsonl(p))
        (1, {'a': 1})
        >>> list(iter_jsonl(p))
        Traceback (most recent call last):
        ...
        cir_lightning.errors.CIRDataError: ...x.jsonl:3: expected a JSON object, got list
    """
    if not path.is_file():
        raise CIRDataError("annotation file does not exist", path)
    with path.open("rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise CIRDataError(f"not valid UTF-8 (byte {err.start + 1} of the line)", path, number) from None
            if not text.strip():
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as err:
                raise CIRDataError(f"malformed JSON ({err.msg} at column {err.colno})", path, number) from None
            if not isinstance(obj, dict):
                raise CIRDataError(f"expected a JSON object, got {type(obj).__name__}", path, number)
            yield number, obj


def _text(obj: dict[str, Any], key: str, path: Path, line: int, required: bool = True) -> str | None:
    value = obj.get(key)
    if value is None:
        if required:
            raise CIRDataError(f"missing field `{key}`", path, line)
        return None
    if not isinstance(value, str) or (required and not value.strip()):
        raise CIRDataError(f"field `{key}` must be a non-empty string, got {value!r}", path, line)
    return value


def _id(obj: dict[str, Any], key: str, path: Path, line: int, required: bool = True) -> str | None:
    value = obj.get(key)
    if value is None:
        if required:
            raise CIRDataError(f"missing field `{key}`", path, line)
        return None
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise CIRDataError(f"field `{key}` must be a string or an integer id, got {value!r}", path, line)
    return str(value)


def _check_files_exist(items: list[tuple[Path, str]]) -> None:
    missing = [(p, src) for p, src in items if not p.is_file()]
    if missing:
        shown = "\n".join(f"  {src}: {p}" for p, src in missing[:_SHOW])
        more = f"\n  ... and {len(missing) - _SHOW} more" if len(missing) > _SHOW else ""
        raise CIRDataError(f"{len(missing)} image file(s) do not exist:\n{shown}{more}")


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


def read_queries(path: Path, image_root: Path, gallery_ids: list[str], exclude_reference: bool = False,
                 check_images: bool = True) -> list[Query]:
    """Parse and check an evaluation query JSONL file against its gallery.

    Every positive (``target_id`` or ``target_ids``) must be in the gallery; queries whose positives are
    not are listed in one error rather than silently counted as misses. Excluded ids that are not in the
    gallery are harmless and ignored.
    """
    row = {image_id: i for i, image_id in enumerate(gallery_ids)}
    records, seen, absent = [], {}, []
    for line, obj in iter_jsonl(path):
        qid = _id(obj, "query_id", path, line)
        if qid in seen:
            raise CIRDataError(f"duplicate `query_id` {qid!r} (first on line {seen[qid]})", path, line)
        seen[qid] = line
        if "target_ids" in obj:
            targets = obj["target_ids"]
            if not isinstance(targets, list) or not targets:
                raise CIRDataError(f"`target_ids` must be a non-empty list, got {targets!r}", path, line)
            targets = [_id({"target_ids": t}, "target_ids", path, line) for t in targets]
        else:
            targets = [_id(obj, "target_id", path, line)]
        excluded_ids = obj.get("exclude_ids", [])
        if not isinstance(excluded_ids, list):
            raise CIRDataError(f"`exclude_ids` must be a list, got {excluded_ids!r}", path, line)
        excluded_ids = [_id({"exclude_ids": e}, "exclude_ids", path, line) for e in excluded_ids]
        reference_id = _id(obj, "reference_id", path, line, required=exclude_reference)
        if exclude_reference:
            excluded_ids.append(reference_id)
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
        more = f"\n  ... and {len(absent) - _SHOW} more" if len(absent) > _SHOW else ""
        raise CIRDataError(
            f"{len(absent)} query(ies) have positives that are not in the gallery; they could never be "
            "retrieved, so the metrics would be wrong:\n" + "\n".join(absent[:_SHOW]) + more
        )
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
        batch_size: training batch size per process.
        eval_batch_size: evaluation batch size (default: ``batch_size``).
        num_workers: DataLoader worker processes.
        max_short_edge: shrink images whose short edge is longer than this, when decoded.
        pin_memory: pin host memory of batches.

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
        batch_size: int = 16,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        max_short_edge: int | None = None,
        pin_memory: bool = False,
    ) -> None:
        super().__init__(batch_size, eval_batch_size, num_workers, max_short_edge, pin_memory)
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

    def _path(self, name: str) -> Path:
        return self.root / name

    def _eval_set(self, queries_file: str, gallery_file: str) -> tuple[QueryDataset, GalleryDataset]:
        image_root = (self.image_root or self.root).resolve()
        gallery = read_gallery(self._path(gallery_file), image_root, self.check_images)
        queries = read_queries(self._path(queries_file), image_root, [g.image_id for g in gallery],
                               self.exclude_reference, self.check_images)
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
