"""CIRR (Liu et al., ICCV 2021) in its official layout, evaluated with the official protocol.

Layout: ``root/captions/cap.rc2.{train,val,test1}.json`` (pairs: ``pairid``, ``reference``, ``caption``,
``img_set.members`` and, but in test1, ``target_hard``) and ``root/image_splits/split.rc2.{split}.json``
(``{name: "./dev/dev-244-0-img0.png"}``); an image is ``<image_root>/<that relative path>``.

Protocol: the gallery is every image of the split (sorted by name); each query's reference, and only
it, is removed from its ranking (FiRE's release removed the whole img_set, which holds the target).
``Recall@{1,5,10,50}`` is the hit rate of ``target_hard``; ``Recall_subset@{1,2,3}`` the hit
rate within the img_set members minus the reference (5 candidates); ``Avg`` = (Recall@5 +
Recall_subset@1) / 2. The one subset is unnamed, so the metrics are logged as ``val/Recall@5`` etc.
test1 has no public ground truth: ``test`` ranks it and writes the two evaluation-server files.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
from cir_lightning.data.missing import OnMissing, handle_missing
from cir_lightning.errors import CIRDataError
from cir_lightning.files import json_type, read_json_list, read_json_object, short_repr, write_atomic

METRICS = {"recall": [1, 5, 10, 50], "recall_subset": [1, 2, 3]}
LENGTHS = {"recall": 50, "recall_subset": 3}  # names per pair id in the two server files
MAX_BYTES = 5_000_000  # the server's upload limit
IMAGE_FOLDERS = ("", "img_raw", "images", "..")  # where train/ dev/ test1/ are looked for, from `root`
_SHOW = 5


@dataclass(frozen=True)
class CIRRPair:
    """One caption entry: ``candidates`` are the img_set members minus the reference."""

    pairid: str
    reference: str
    target: str | None
    caption: str
    candidates: tuple[str, ...]
    source: str = ""  # ``<captions file>:<line>: pairid <id>``, put in front of image errors


_HINT = "`root` must hold captions/ and image_splits/"


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
        more = f" ... and {len(absent) - _SHOW} more" if len(absent) > _SHOW else ""
        raise CIRDataError(f"{len(absent)} image name(s) are not in {split_file}: {', '.join(absent[:_SHOW])}{more}"
                           "; are the captions and the split file of the same release (rc2)?", path)
    if not pairs:
        raise CIRDataError("no pairs", path)
    return pairs


def check_submission(doc: Mapping[str, Any], pairs: Mapping[str, CIRRPair], gallery: Collection[str]) -> None:
    """Raise ``CIRDataError`` listing what the evaluation server would reject in ``doc``.

    Example:
        >>> pairs = {"7": CIRRPair("7", "a", None, "x", ("b", "c", "d", "e", "f"))}
        >>> check_submission({"version": "rc2", "metric": "recall_subset", "7": ["b", "c", "d"]}, pairs, "abcdef")
        >>> check_submission({"version": "rc2", "metric": "recall_subset", "7": ["a", "b"]}, pairs, "abcdef")
        Traceback (most recent call last):
        ...
        cir_lightning.errors.CIRDataError: the recall_subset submission has 2 problem(s): pair 7: 2 names, need 3; pair 7: lists its reference 'a'
    """
    metric = doc.get("metric")
    if doc.get("version") != "rc2" or metric not in LENGTHS:
        raise CIRDataError(f"`version` must be 'rc2' and `metric` one of {sorted(LENGTHS)}, got {metric!r}")
    problems = []
    keys = set(doc) - {"version", "metric"}
    missing = [p for p in pairs if p not in keys]
    if missing:
        problems.append(f"{len(missing)} pair id(s) missing ({', '.join(missing[:_SHOW])})")
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
        more = f"; ... and {len(problems) - _SHOW} more" if len(problems) > _SHOW else ""
        raise CIRDataError(f"the {metric} submission has {len(problems)} problem(s): "
                           + "; ".join(problems[:_SHOW]) + more)


class CIRRDataModule(CIRDataModule):
    """CIRR: train triplets, val with ground truth, test1 ranked for the evaluation server.

    ``write_predictions`` writes the two server files after ``test`` (test1) and also after a standalone
    ``validate`` (val, to check a submission pipeline against the val ground truth).

    Args:
        root: the annotation folder, holding ``captions/`` and ``image_splits/``.
        image_root: the folder holding ``train/ dev/ test1/`` (default: the first of ``root``,
            ``root/img_raw``, ``root/images`` and the folder above ``root`` that has the split's folder).
        on_missing: ``"error"`` (default) lists missing images; ``"drop"`` leaves out the gallery images
            and pairs that need them, with a warning (the numbers are then not comparable).
        batch_size: training batch size per process.
        eval_batch_size: evaluation batch size (default: ``batch_size``).
        num_workers: DataLoader worker processes.
        max_short_edge: shrink images whose short edge is longer than this, when decoded.
        pin_memory: pin host memory of batches.
        max_image_pixels: refuse images with more pixels than this (read from the header, before decoding);
            ``None``: no limit (default: Pillow's limit).

    Example:
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
        self.save_hyperparameters()
        self.root = Path(root)
        self.image_root = Path(image_root) if image_root else None
        self.on_missing = on_missing
        self.pairs: dict[str, dict[str, CIRRPair]] = {}  # split -> pairid -> pair, all of them
        self.gallery_names: dict[str, list[str]] = {}
        self.dropped: dict[str, int] = {}  # split -> pairs left out by `on_missing: drop`
        self.dropped_images: dict[str, int] = {}  # split -> gallery images left out by `on_missing: drop`

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

    def _files(self, split: str) -> tuple[Path, Path]:
        return (self.root / "image_splits" / f"split.rc2.{split}.json",
                self.root / "captions" / f"cap.rc2.{split}.json")

    def _train(self) -> TripletDataset:
        split_file, captions = self._files("train")
        names, lines = _read_split(split_file)
        paths = self._images(split_file, names, lines)
        triplets = [Triplet(paths[p.reference], paths[p.target], p.caption, p.source, p.pairid)
                    for p in _read_pairs(captions, split_file, names, True, False)]
        kept = handle_missing(triplets, lambda t: [t.reference, t.target], lambda t: t.source,
                              what="train triplets", where=captions, on_missing=self.on_missing)
        return TripletDataset(kept, self.max_short_edge)

    def _eval(self, split: str) -> tuple[QueryDataset, GalleryDataset]:
        split_file, captions = self._files(split)
        names, lines = _read_split(split_file)
        paths = self._images(split_file, names, lines)
        labelled = split != "test1"
        pairs = _read_pairs(captions, split_file, names, labelled, True)
        self.pairs[split] = {p.pairid: p for p in pairs}
        self.gallery_names[split] = sorted(names)
        items = [GalleryItem(n, paths[n], f"{split_file}:{lines[n]}: {n!r}") for n in sorted(names)]
        listed = len(items)
        items = handle_missing(items, lambda g: [g.path], lambda g: g.image_id, what=f"{split} images",
                               where=split_file, on_missing=self.on_missing)
        self.dropped_images[split] = listed - len(items)
        row = {g.image_id: i for i, g in enumerate(items)}
        kept = handle_missing(pairs, lambda p: [paths[n] for n in (p.reference, p.target) if n],
                              lambda p: f"pairid {p.pairid}", what=f"{split} pairs", where=captions,
                              on_missing=self.on_missing)
        self.dropped[split], pairs = len(pairs) - len(kept), kept
        records = [Query(p.pairid, paths[p.reference], p.caption, (row[p.target],) if p.target else (),
                         p.source, p.reference, (row[p.reference],)) for p in pairs]
        candidates = [[row[m] for m in p.candidates if m in row] for p in pairs]
        queries = QueryDataset(records, self.max_short_edge, "", {k: list(v) for k, v in METRICS.items()},
                               candidates, depth=LENGTHS["recall"], has_ground_truth=labelled)
        return queries, GalleryDataset(items, self.max_short_edge)

    def setup(self, stage: str) -> None:
        if stage == "fit" and self.train_set is None:
            self.train_set = self._train()
        if stage in ("fit", "validate") and not self.val_sets:
            self.val_sets = [self._eval("val")]
        if stage in ("test", "predict") and not self.test_sets:
            self.test_sets = [self._eval("test1")]

    def summarize(self, metrics: Mapping[str, float]) -> dict[str, float]:
        """CIRR's headline number from the metrics (keys without stage prefix): ``{"Avg": ...}``."""
        if "Recall@5" not in metrics or "Recall_subset@1" not in metrics:
            return {}
        return {"Avg": (metrics["Recall@5"] + metrics["Recall_subset@1"]) / 2}

    def write_predictions(self, folder: Path, stage: str, rankings: Mapping[str, Mapping[str, list[str]]],
                          subset_rankings: Mapping[str, Mapping[str, list[str]]]) -> list[Path]:
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
        """
        split = {"test": "test1", "validate": "val"}.get(stage)
        if split is None or split not in self.pairs:
            return []
        why = None
        if self.dropped.get(split) or self.dropped_images.get(split):
            why = (f"`on_missing: drop` left out {self.dropped.get(split, 0)} pairs and "
                   f"{self.dropped_images.get(split, 0)} gallery images; the server ranks every pair over "
                   "the whole split")
        elif "" not in rankings or "" not in subset_rankings:
            why = "the evaluation gave no complete rankings"
        if why:
            rank_zero_warn(f"no CIRR {split} prediction files written: {why}")
            return []
        docs = {metric: {"version": "rc2", "metric": metric,
                         **{q: list(names[:LENGTHS[metric]]) for q, names in ranked[""].items()}}
                for metric, ranked in (("recall", rankings), ("recall_subset", subset_rankings))}
        for doc in docs.values():
            check_submission(doc, self.pairs[split], set(self.gallery_names[split]))
        folder = Path(folder)

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
