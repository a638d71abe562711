"""The custom JSONL layout's files (the FiRE release format), the default for users' own data.

Training file, one triplet a line::

    {"reference_image": "images/a.png", "target_image": "images/b.png", "modification": "make it red",
     "reference_caption": "...", "target_caption": "...", "reference_id": "a", "target_id": "b",
     "sample_id": "0"}                      # the last five are optional

Evaluation queries and gallery::

    {"query_id": "q0", "reference_image": "images/a.png", "reference_id": "a", "modification": "...",
     "target_id": "b", "exclude_ids": ["a"]}       # or "target_ids": ["b", "c"] for several positives
    {"image_id": "b", "image_path": "images/b.png"}

Image paths are relative to ``image_root`` and may not leave it. Blank lines are skipped (a UTF-8
byte-order mark and Windows line ends are fine); anything else that is wrong is a ``CIRDataError``
naming the file and line: malformed or too deeply nested JSON, a key given twice, a missing or
mistyped field (a misspelt required one is missing; a query's field that looks like a misspelt
``exclude_ids`` or ``target_ids``, which would be ignored and change the metrics, is an error too; other
extra fields are the user's own and ignored), an image path that is missing or a folder, one image under
two gallery ids, a positive or an excluded id that is not in the gallery (see ``read_queries``). A training
triplet whose reference image is its target is kept with one warning counting them (FashionIQ's data has such
pairs). The evaluation path never reads target-side text.
"""

from __future__ import annotations

from difflib import get_close_matches
from pathlib import Path
from typing import Any, Literal

from lightning.pytorch.utilities import rank_zero_warn

from cir_lightning.data.datasets import GalleryItem, Query, Triplet
from cir_lightning.data.images import resolve_image_path
from cir_lightning.data.missing import check_files_exist
from cir_lightning.errors import CIRDataError
from cir_lightning.messages import first_few, short_repr
from cir_lightning.reading import iter_jsonl

__all__ = ["UnknownExcludeIds", "read_gallery", "read_queries", "read_triplets"]

UnknownExcludeIds = Literal["error", "warn"]
# the fields of each kind of line
TRIPLET_FIELDS = ("reference_image", "target_image", "modification", "reference_caption", "target_caption",
                  "reference_id", "target_id", "sample_id")
QUERY_FIELDS = ("query_id", "reference_image", "reference_id", "modification", "target_id", "target_ids", "exclude_ids")
GALLERY_FIELDS = ("image_id", "image_path")
_ALL_FIELDS = frozenset(TRIPLET_FIELDS + QUERY_FIELDS + GALLERY_FIELDS)
# A misspelt required field is reported as missing; these optional ones would be ignored, changing the metrics
# (an excluded image left in the ranking, a positive dropped). Names other datasets use for them, too.
_OPTIONAL = {"exclude_ids": ("excluded", "excluded_ids", "exclusions", "ignore_ids", "ignored_ids"),
             "target_ids": ("positives", "positive_ids", "gt_ids", "ground_truth_ids")}


def _check_optional_fields(obj: dict[str, Any], path: Path, line: int) -> None:
    """A query line's field that looks like a misspelt ``exclude_ids`` or ``target_ids`` (which the line lacks)
    is an error; other fields of the user's own are ignored.

    Example:
        >>> _check_optional_fields({"query_id": "q0", "note": "mine", "exclude_id": ["a"]}, Path("q.jsonl"), 3)
        Traceback (most recent call last):
        ...
        cir_lightning.errors.CIRDataError: q.jsonl:3: unknown field `exclude_id`: did you mean `exclude_ids`? \
Ignored, a misspelt `exclude_ids` would change the metrics; a field of your own needs a name less like it
    """
    for key in obj:
        if key in _ALL_FIELDS:
            continue
        for field, others in _OPTIONAL.items():
            if field not in obj and (key.lower() in others or get_close_matches(key.lower(), [field], cutoff=0.75)):
                raise CIRDataError(f"unknown field `{key}`: did you mean `{field}`? Ignored, a misspelt `{field}` "
                                   "would change the metrics; a field of your own needs a name less like it", path, line)


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
    return _check_id(value, f"field `{key}`", path, line)


def _check_id(value: object, what: str, path: Path, line: int) -> str:
    """``value`` as an id: a non-blank string or an integer (``what`` names it: "`target_ids` item 2")."""
    if isinstance(value, bool) or not isinstance(value, str | int) or (isinstance(value, str) and not value.strip()):
        raise CIRDataError(f"{what} must be a non-empty string or an integer id, got {short_repr(value)}", path, line)
    return str(value)


def _ids(values: list[Any], key: str, path: Path, line: int) -> list[str]:
    return [_check_id(v, f"`{key}` item {i + 1}", path, line) for i, v in enumerate(values)]


def read_triplets(path: Path, image_root: Path, check_images: bool = True,
                  require_captions: bool = False) -> list[Triplet]:
    """Parse and check a training JSONL file (``target_caption`` on every line if ``require_captions``).

    Example:
        >>> import tempfile
        >>> from cir_lightning.data.layouts.jsonl import read_triplets
        >>> root = Path(tempfile.mkdtemp())
        >>> _ = (root / "t.jsonl").write_text('{"reference_image": "a.png", "target_image": "b.png", '
        ...                                   '"modification": "make it red"}\\n')
        >>> [(t.reference.name, t.modification) for t in read_triplets(root / "t.jsonl", root, check_images=False)]
        [('a.png', 'make it red')]
    """
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
    same = [r.source.rsplit(":", 1)[-1] for r in records if r.reference == r.target]
    if same:  # kept, as FashionIQ's protocol keeps its few such pairs; most likely a mistake in one's own file
        rank_zero_warn(f"{path}: {len(same)} of {len(records)} training triplets have the same reference and target "
                       f"image (line{'s' if len(same) > 1 else ''} {first_few(same, ', ', ', ...')}): each asks the model to find its own reference "
                       "image; they are trained on as they are (FashionIQ's training data has a few such pairs), so "
                       "check the file if it should have none")
    if check_images:
        check_files_exist([(p, r.source) for r in records for p in (r.reference, r.target)])
    return records


def read_gallery(path: Path, image_root: Path, check_images: bool = True) -> list[GalleryItem]:
    """Parse and check a gallery JSONL file; ids must be unique.

    Example:
        >>> import tempfile
        >>> from cir_lightning.data.layouts.jsonl import read_gallery
        >>> root = Path(tempfile.mkdtemp())
        >>> _ = (root / "g.jsonl").write_text('{"image_id": "a", "image_path": "a.png"}\\n' * 2)
        >>> read_gallery(root / "g.jsonl", root, check_images=False)
        Traceback (most recent call last):
        ...
        cir_lightning.errors.CIRDataError: .../g.jsonl:2: duplicate `image_id` 'a' (first on line 1)
    """
    records, seen, files = [], {}, {}
    for line, obj in iter_jsonl(path):
        image_id = _id(obj, "image_id", path, line)
        if image_id in seen:
            raise CIRDataError(f"duplicate `image_id` {image_id!r} (first on line {seen[image_id]})", path, line)
        seen[image_id] = line
        rel = _text(obj, "image_path", path, line)
        image = resolve_image_path(image_root, rel, path, line, "image_path")
        if image in files:  # two ids of one image tie in every ranking: the second can never come first
            first_id, first_line = files[image]
            raise CIRDataError(f"`image_path` {rel!r} is the image of `image_id` {first_id!r} too (line {first_line}): "
                               "its two ids would tie in every ranking, and the second could never come first; "
                               "list each image once", path, line)
        files[image] = (image_id, line)
        records.append(GalleryItem(image_id, image, f"{path}:{line}"))
    if not records:
        raise CIRDataError("the gallery is empty", path)
    if check_images:
        check_files_exist([(r.path, r.source) for r in records])
    return records


def _targets(obj: dict[str, Any], path: Path, line: int) -> list[str]:
    if obj.get("target_ids") is None:
        return [_id(obj, "target_id", path, line)]
    targets = obj["target_ids"]
    if not isinstance(targets, list) or not targets:
        raise CIRDataError(f"`target_ids` must be a non-empty list, got {short_repr(targets)}", path, line)
    targets = _ids(targets, "target_ids", path, line)
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
    warning that counts them (``JsonlCIRDataModule`` checks the option).

    Example:
        >>> import tempfile
        >>> from cir_lightning.data.layouts.jsonl import read_queries
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
    row = {image_id: i for i, image_id in enumerate(gallery_ids)}
    records, seen, absent, unknown = [], {}, [], []
    unknown_ids = 0
    for line, obj in iter_jsonl(path):
        _check_optional_fields(obj, path, line)
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
        excluded_ids = _ids(excluded_ids, "exclude_ids", path, line)
        reference_id = _id(obj, "reference_id", path, line, required=exclude_reference)
        strangers = [f"`exclude_ids` {e!r}" for e in dict.fromkeys(excluded_ids) if e not in row]
        if exclude_reference:
            if reference_id not in row and reference_id not in excluded_ids:
                strangers.append(f"`reference_id` {reference_id!r}")
            excluded_ids.append(reference_id)
        if strangers:
            unknown.append(f"{path}:{line} query {qid!r}: {', '.join(strangers)}")
            unknown_ids += len(strangers)
        missing = [t for t in targets if t not in row]
        if missing:
            absent.append(f"{path}:{line} query {qid!r}: {', '.join(map(repr, missing))}")
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
            "retrieved, so the metrics would be wrong: " + first_few(absent)
        )
    if unknown:
        what = (f"{len(unknown)} query(ies) exclude {unknown_ids} id(s) that are not in the gallery; "
                "a misspelt id leaves that image in the ranking")
        if unknown_exclude_ids != "warn":
            raise CIRDataError(f"{what}, so the metrics would be wrong (set `unknown_exclude_ids: warn` to "
                               "ignore such ids): " + first_few(unknown), path)
        rank_zero_warn(f"{path}: {what}; they are ignored (`unknown_exclude_ids: warn`): "
                       + first_few(unknown))
    if not records:
        raise CIRDataError("no evaluation queries", path)
    if check_images:
        check_files_exist([(r.reference, r.source) for r in records])
    return records
