"""CIRR's files and protocol (Liu et al., ICCV 2021), and the evaluation server's two files.

Layout: ``root/captions/cap.rc2.{train,val,test1}.json`` (pairs: ``pairid``, ``reference``, ``caption``,
``img_set.members`` and, but in test1, ``target_hard``) and ``root/image_splits/split.rc2.{split}.json``
(``{name: "./dev/dev-244-0-img0.png"}``); an image is ``<image_root>/<that relative path>``.

Protocol: the gallery is every image of the split (sorted by name); each query's reference, and only
it, is removed from its ranking (FiRE's release removed the whole img_set, which holds the target).
``Recall@{1,5,10,50}`` is the hit rate of ``target_hard``; ``Recall_subset@{1,2,3}`` the hit
rate within the img_set members minus the reference (5 candidates); ``Avg`` = (Recall@5 +
Recall_subset@1) / 2. The one subset is unnamed, so the metrics are logged as ``val/Recall@5`` etc.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cir_lightning.data.datasets import (
    GalleryDataset,
    GalleryItem,
    Query,
    QueryDataset,
    Triplet,
    refuse_shared_images,
)
from cir_lightning.data.images import resolve_image_path
from cir_lightning.data.missing import OnMissing, handle_missing
from cir_lightning.errors import CIRDataError
from cir_lightning.files import write_atomic
from cir_lightning.messages import first_few, json_type, short_repr
from cir_lightning.reading import read_json_list, read_json_object

__all__ = ["IMAGE_FOLDERS", "LENGTHS", "MAX_BYTES", "METRICS", "CIRRFiles", "CIRRPair", "CIRRSplit",
           "check_submission", "write_submission"]

METRICS = {"recall": [1, 5, 10, 50], "recall_subset": [1, 2, 3]}
LENGTHS = {"recall": 50, "recall_subset": 3}  # names per pair id in the two server files
MAX_BYTES = 5_000_000  # the server's upload limit
IMAGE_FOLDERS = ("", "img_raw", "images", "..")  # where train/ dev/ test1/ are looked for, from `root`
_HINT = "`root` must hold captions/ and image_splits/"


@dataclass(frozen=True)
class CIRRPair:
    """One caption entry: ``candidates`` are the img_set members minus the reference."""

    pairid: str
    reference: str
    target: str | None
    caption: str
    candidates: tuple[str, ...]
    source: str = ""  # ``<captions file>:<line>: pairid <id>``, put in front of image errors


@dataclass(frozen=True)
class CIRRSplit:
    """An evaluation split as read: its datasets, every pair, every image name, and what ``on_missing: drop``
    left out (the server needs every pair ranked over the whole split)."""

    queries: QueryDataset
    gallery: GalleryDataset
    pairs: dict[str, CIRRPair]
    gallery_names: list[str]
    dropped_pairs: int
    dropped_images: int


def _read_split(path: Path) -> tuple[dict[str, str], dict[str, int]]:
    """``{name: relative path}`` of a split file, and the line of each name."""
    names, lines = {}, {}
    for line, name, rel in read_json_object(path, "CIRR annotation file", _HINT):
        if not isinstance(rel, str):
            raise CIRDataError(f"image {short_repr(name)}: expected {{name: relative path}}, got the value "
                               f"{short_repr(rel)}", path, line)
        names[name], lines[name] = rel, line
    if not names:
        raise CIRDataError("no images: expected {name: relative path, ...}", path)
    return names, lines


def _read_pairs(path: Path, split_file: Path, names: Collection[str], with_target: bool,
                check_sets: bool) -> list[CIRRPair]:
    pairs, seen, absent = [], {}, []
    for i, (line, e) in enumerate(read_json_list(path, "CIRR annotation file", _HINT)):
        where = f"entry {i + 1}"
        if not isinstance(e, dict):
            raise CIRDataError(f"{where}: expected a JSON object, got {json_type(e)}", path, line)
        pid = e.get("pairid")
        if isinstance(pid, bool) or not isinstance(pid, int | str) or (isinstance(pid, str) and not pid.strip()):
            raise CIRDataError(f"{where}: `pairid` must be an integer, got {short_repr(pid)}", path, line)
        where = f"{where} (pairid {pid})"
        if str(pid) in seen:
            raise CIRDataError(f"{where}: `pairid` must be unique; entry {seen[str(pid)][0]} on line "
                               f"{seen[str(pid)][1]} has it too", path, line)
        seen[str(pid)] = (i + 1, line)
        fields = ["reference", "caption", *(["target_hard"] if with_target else [])]
        for key in fields:
            if not isinstance(e.get(key), str) or not e[key].strip():
                raise CIRDataError(f"{where}: `{key}` must be a non-empty string, got {short_repr(e.get(key))}",
                                   path, line)
        ref, target = e["reference"], e.get("target_hard") if with_target else None
        if ref == target:
            raise CIRDataError(f"{where}: `target_hard` is the reference {ref!r}; it could never be retrieved",
                               path, line)
        img_set = e.get("img_set")
        members = img_set.get("members") if isinstance(img_set, dict) else None
        if check_sets:
            if img_set is None:
                raise CIRDataError(f"{where}: `img_set` is missing; Recall_subset needs its `members`", path,
                                   line)
            needed = {ref} | ({target} if target else set())
            if (not isinstance(members, list) or not all(isinstance(m, str) for m in members)
                    or len(set(members)) != 6 or len(members) != 6 or not needed <= set(members)):
                what = "the reference and the target" if target else "the reference"
                raise CIRDataError(f"{where}: `img_set.members` must be 6 distinct names including {what} "
                                   f"({ref!r}{f', {target!r}' if target else ''}), got {short_repr(members)}",
                                   path, line)
        used = [ref, *([target] if target else []), *(members if check_sets else [])]
        absent += [f"{n!r} (pairid {pid}, line {line})" for n in dict.fromkeys(used) if n not in names]
        pairs.append(CIRRPair(str(pid), ref, target, e["caption"],
                              tuple(m for m in members if m != ref) if check_sets else (),
                              f"{path}:{line}: pairid {pid}"))
    if absent:
        raise CIRDataError(f"{len(absent)} image name(s) are not in {split_file}: "
                           f"{first_few(absent, ', ', ' ... and {n} more')}"
                           "; are the captions and the split file of the same release (rc2)?", path)
    if not pairs:
        raise CIRDataError("no pairs", path)
    return pairs


class CIRRFiles:
    """The CIRR annotations under ``root`` and the images of each split, read into datasets.

    Args:
        root: the annotation folder, holding ``captions/`` and ``image_splits/``.
        image_root: the folder holding ``train/ dev/ test1/`` (None: the first of ``IMAGE_FOLDERS``,
            from ``root``, that has the split's folder).
        on_missing: missing images are an ``error``, or with ``drop`` what needs them is left out.
        max_short_edge: shrink images whose short edge is longer than this, when decoded.

    Example:
        >>> from cir_lightning.data.layouts.cirr import CIRRFiles
        >>> [p.name for p in CIRRFiles(Path("CIRR"), None).files("val")]
        ['split.rc2.val.json', 'cap.rc2.val.json']
    """

    def __init__(self, root: Path, image_root: Path | None, on_missing: OnMissing = "error",
                 max_short_edge: int | None = None) -> None:
        self.root, self.image_root, self.on_missing, self.max_short_edge = root, image_root, on_missing, max_short_edge

    def files(self, split: str) -> tuple[Path, Path]:
        """The split file and the captions file of ``split`` (``train``, ``val``, ``test1``)."""
        return (self.root / "image_splits" / f"split.rc2.{split}.json",
                self.root / "captions" / f"cap.rc2.{split}.json")

    def _images(self, split_file: Path, names: dict[str, str], lines: dict[str, int]) -> dict[str, Path]:
        """Each name's image path, under ``image_root`` or the first folder that has the split's folder."""
        top = os.path.normpath(next(iter(names.values()))).split(os.sep)[0]  # "dev"
        searched = [self.image_root] if self.image_root else [self.root / sub for sub in IMAGE_FOLDERS]
        found = next((d for d in searched if (d / top).is_dir()), None)
        if found is None:
            raise CIRDataError(f"no `{top}/` image folder in {', '.join(str(d.resolve()) for d in searched)}; "
                               "set `image_root` to the folder holding train/ dev/ test1/", split_file)
        base = found.resolve()
        return {n: resolve_image_path(base, rel, split_file, lines[n], n) for n, rel in names.items()}

    def train_records(self) -> list[Triplet]:
        """The training triplets (``train`` split), those with missing images dropped if asked."""
        split_file, captions = self.files("train")
        names, lines = _read_split(split_file)
        paths = self._images(split_file, names, lines)
        triplets = [Triplet(paths[p.reference], paths[p.target], p.caption, p.source, p.pairid)
                    for p in _read_pairs(captions, split_file, names, True, False)]
        return handle_missing(triplets, lambda t: [t.reference, t.target], lambda t: t.source,
                              what="train triplets", where=captions, on_missing=self.on_missing)

    def eval_split(self, split: str) -> CIRRSplit:
        """``val`` (with ground truth) or ``test1`` (ranked only), read and checked."""
        split_file, captions = self.files(split)
        names, lines = _read_split(split_file)
        paths = self._images(split_file, names, lines)
        labelled = split != "test1"
        pairs = _read_pairs(captions, split_file, names, labelled, True)
        items = [GalleryItem(n, paths[n], f"{split_file}:{lines[n]}: {n!r}") for n in sorted(names)]
        refuse_shared_images(items)
        listed = len(items)
        items = handle_missing(items, lambda g: [g.path], lambda g: g.image_id, what=f"{split} images",
                               where=split_file, on_missing=self.on_missing)
        row = {g.image_id: i for i, g in enumerate(items)}
        kept = handle_missing(pairs, lambda p: [paths[n] for n in (p.reference, p.target) if n],
                              lambda p: f"pairid {p.pairid}", what=f"{split} pairs", where=captions,
                              on_missing=self.on_missing)
        records = [Query(p.pairid, paths[p.reference], p.caption, (row[p.target],) if p.target else (),
                         p.source, p.reference, (row[p.reference],)) for p in kept]
        candidates = [[row[m] for m in p.candidates if m in row] for p in kept]
        queries = QueryDataset(records, self.max_short_edge, "", {k: list(v) for k, v in METRICS.items()},
                               candidates, depth=LENGTHS["recall"], has_ground_truth=labelled)
        return CIRRSplit(queries, GalleryDataset(items, self.max_short_edge), {p.pairid: p for p in pairs},
                         sorted(names), len(pairs) - len(kept), listed - len(items))


def check_submission(doc: Mapping[str, Any], pairs: Mapping[str, CIRRPair], gallery: Collection[str]) -> None:
    """Raise ``CIRDataError`` listing what the evaluation server would reject in ``doc``.

    Example:
        >>> from cir_lightning.data.layouts.cirr import CIRRPair, check_submission
        >>> pairs = {"7": CIRRPair("7", "a", None, "x", ("b", "c", "d", "e", "f"))}
        >>> check_submission({"version": "rc2", "metric": "recall_subset", "7": ["b", "c", "d"]}, pairs, "abcdef")
        >>> check_submission({"version": "rc2", "metric": "recall_subset", "7": ["a", "b"]}, pairs, "abcdef")
        Traceback (most recent call last):
        ...
        cir_lightning.errors.CIRDataError: the recall_subset submission has 2 problem(s): pair 7: 2 names, need 3; pair 7: lists its reference 'a'
        >>> check_submission({"version": "rc2", "metric": "recall", "7": ["b", "c", "d", "e", "f"]}, pairs, "abcdef")
        Traceback (most recent call last):
        ...
        cir_lightning.errors.CIRDataError: the recall submission needs 50 names per pair besides its reference, but the split has only 6 images ...
    """
    metric = doc.get("metric")
    if doc.get("version") != "rc2" or metric not in LENGTHS:
        raise CIRDataError(f"`version` must be 'rc2' and `metric` one of {sorted(LENGTHS)}, got {metric!r}")
    if metric == "recall" and len(gallery) <= LENGTHS[metric]:
        raise CIRDataError(f"the recall submission needs {LENGTHS[metric]} names per pair besides its reference, but "
                           f"the split has only {len(gallery)} images (the server's file cannot be made from it; "
                           "CIRR's test1 has 2315: is its split file complete?)")
    problems = []
    keys = set(doc) - {"version", "metric"}
    missing = [p for p in pairs if p not in keys]
    if missing:
        problems.append(f"{len(missing)} pair id(s) missing ({first_few(missing, ', ', '')})")
    problems += [f"unknown pair id {p!r}" for p in sorted(keys - set(pairs))]
    for pid in sorted(keys & set(pairs)):
        names, pair = doc[pid], pairs[pid]
        allowed = pair.candidates if metric == "recall_subset" else gallery
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            problems.append(f"pair {pid}: not a list of names")
            continue
        if len(names) != LENGTHS[metric]:
            problems.append(f"pair {pid}: {len(names)} names, need {LENGTHS[metric]}")
        if len(set(names)) != len(names):
            problems.append(f"pair {pid}: duplicate names")
        if pair.reference in names:
            problems.append(f"pair {pid}: lists its reference {pair.reference!r}")
        outside = [n for n in names if n not in allowed and n != pair.reference]
        if outside:
            problems.append(f"pair {pid}: {outside[:3]} not among the "
                            + ("img_set members" if metric == "recall_subset" else "split's images"))
    size = len(json.dumps(doc, separators=(",", ":")).encode())
    if size > MAX_BYTES:
        problems.append(f"{size} bytes, over the server's {MAX_BYTES}")
    if problems:
        raise CIRDataError(f"the {metric} submission has {len(problems)} problem(s): " + first_few(problems))


def write_submission(folder: Path, split: str, rankings: Mapping[str, list[str]],
                     subset_rankings: Mapping[str, list[str]], read: CIRRSplit) -> list[Path]:
    """Check, then write ``cirr-<split>-recall.json`` and ``cirr-<split>-recall_subset.json`` in ``folder``
    from each pair's ranked gallery names (``rankings``) and ranked candidates (``subset_rankings``).

    The two files get the first ``-N`` suffix free for both, so they always belong together; each is
    written completely or not at all, and if the second cannot be written the first is removed again.

    Example:
        >>> import tempfile
        >>> from cir_lightning.data.layouts.cirr import CIRRPair, CIRRSplit, write_submission
        >>> names = [f"img{i}" for i in range(51)]
        >>> pair = CIRRPair("7", "img0", None, "x", ("img1", "img2", "img3", "img4", "img5"))
        >>> read = CIRRSplit(None, None, {"7": pair}, names, 0, 0)  # (no datasets needed here)
        >>> out = write_submission(Path(tempfile.mkdtemp()), "test1", {"7": names[1:]}, {"7": names[1:4]}, read)
        >>> [p.name for p in out]
        ['cirr-test1-recall.json', 'cirr-test1-recall_subset.json']
    """
    docs = {metric: {"version": "rc2", "metric": metric,
                     **{q: list(names[:LENGTHS[metric]]) for q, names in ranked.items()}}
            for metric, ranked in (("recall", rankings), ("recall_subset", subset_rankings))}
    for doc in docs.values():
        check_submission(doc, read.pairs, set(read.gallery_names))

    def name(metric: str, n: int) -> Path:
        return folder / f"cirr-{split}-{metric}{f'-{n}' if n else ''}.json"

    n = 0  # the first suffix free for both files, so the two always belong together
    while any(name(m, n).exists() or name(m, n).is_symlink() for m in docs):
        n += 1
    paths: list[Path] = []
    try:
        for metric, doc in docs.items():
            paths.append(write_atomic(name(metric, n), json.dumps(doc, separators=(",", ":"))))
    except BaseException:
        for path in paths:  # written just now, by us: a lone half of the pair is no submission
            with contextlib.suppress(OSError):
                path.unlink()
        raise
    return paths
