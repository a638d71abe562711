"""Embedding caches: embeddings saved once and reused only while they still match.

A cache is a folder::

    embeddings.npy   (count, dim) array in row order, float32 or float16 (numpy .npy, memory-mappable)
    ids.json         the item ids, in row order
    stamps.npy       a gallery's: each image file's [size, modification time in ns] by row (int64; -1: none)
    meta.json        {"format": 1, "kind": "gallery" | "query", "model": {...}, "dataset": ..., "split": ...,
                      "count": ..., "dim": ..., "dtype": ..., "ids_sha256": ..., "created": ...,
                      "cir_lightning": the version that wrote it}

``model`` is what identifies the embedding function: the backbone's fingerprint (base model, prompts,
pooling) and the digest of its trainable weights. ``load_embeddings`` compares it, the dataset, split,
kind and ids (and, for a gallery, its image files: which, and their sizes and modification times) with
what the caller expects and refuses any difference with an error that lists them: a stale cache is never
used silently. A gallery whose images changed is refused naming the first changed or gone image, its id and
how it changed (``stamps.npy``, ``cache_stamps``; a cache written before it says only that images changed); a
damaged ``stamps.npy`` is a damaged cache. ``save_embeddings`` never replaces an existing cache unless told to.

Rows too many to hold in memory (a gallery of millions) are written where they land, through
``retrieval.embedding_folder`` (``new_embeddings``, ``open_embeddings``, ``finish_embeddings``); used inside
``files.atomic_folder`` the folder still appears complete or not at all.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from torch import Tensor

from cir_lightning.errors import CIRDataError
from cir_lightning.files import atomic_folder
from cir_lightning.messages import json_type
from cir_lightning.retrieval.cache_stamps import changed_images, read_cache_stamps
from cir_lightning.retrieval.embedding_folder import (
    FORMAT,
    ImageFiles,
    array_of,
    check_dtype,
    finish_embeddings,
    ids_digest,
    image_files,
    json_of,
    new_embeddings,
    opened_files,
)
from cir_lightning.retrieval.image_stamps import STAMPS_FILE
from cir_lightning.writable import exists_error


def _shorts(cached: Any, expected: Any) -> tuple[str, str]:
    """Both values for a message, long ones cut around where they first differ (never two equal-looking cuts).

    Example:
        >>> from cir_lightning.retrieval.cache import _shorts
        >>> _shorts("SyntheticCIRDataModule(root=/data, max_short_edge=32:lanczos-floor)",
        ...         "SyntheticCIRDataModule(root=/data, max_short_edge=16:lanczos-floor)")
        ('...t=/data, max_short_edge=32:lanczos-floor...', '...t=/data, max_short_edge=16:lanczos-floor...')
    """
    texts = repr(cached), repr(expected)
    if max(map(len, texts)) <= 40:
        return texts
    first = next((i for i, (x, y) in enumerate(zip(*texts, strict=False)) if x != y), min(map(len, texts)))
    start = max(0, first - 24)
    return tuple(("..." if start else "") + t[start:start + 40] + ("..." if start + 40 < len(t) else "")
                 for t in texts)


def _differences(key: str, cached: Any, expected: Any, labels: tuple[str, str] = ("cached", "expected")) -> list[str]:
    """What differs between two identities, down to the nested key that differs (``labels`` name the two sides).

    Example:
        >>> _differences("model", {"fingerprint": {"base_digest": "ab", "pooling": "x"}}, {"fingerprint": {"base_digest": "cd", "pooling": "x"}})
        ["model.fingerprint.base_digest: cached 'ab', expected 'cd'"]
    """
    if isinstance(cached, dict) and isinstance(expected, dict):
        return [d for k in dict.fromkeys([*cached, *expected])
                for d in _differences(f"{key}.{k}", cached.get(k), expected.get(k), labels)]
    if cached == expected:
        return []
    if isinstance(cached, list) and isinstance(expected, list):  # ids, paths: their count says more than a prefix
        return [f"{key}: {len(cached)} {labels[0]}, {len(expected)} {labels[1]}, or in another order"]
    shown = _shorts(cached, expected)
    return [f"{key}: {labels[0]} {shown[0]}, {labels[1]} {shown[1]}"]


def cache_name(split: str, subset: str, kind: str) -> tuple[str, str]:
    """The folder name of a subset's embedding cache and the ``split`` its identity records: what
    ``validate``'s gallery caches and ``predict``'s folders share, so that a predicted gallery loads as a cache.

    Example:
        >>> from cir_lightning.retrieval.cache import cache_name
        >>> cache_name("val", "dress", "gallery")
        ('val-dress-gallery', 'val/dress')
    """
    return f"{split}-{subset}-{kind}", f"{split}/{subset}"


def save_embeddings(path: str | Path, embeddings: Tensor | np.ndarray, ids: Sequence[str], *, kind: str,
                    model: Mapping[str, Any], dataset: str, split: str, dtype: str = "float32",
                    overwrite: bool = False, images: Sequence[str | Path] | ImageFiles | None = None,
                    extra: Mapping[str, Any] | None = None) -> Path:
    """Write a cache folder at ``path``.

    Args:
        path: the folder (must not exist unless ``overwrite``).
        embeddings: (count, dim) embeddings in the order of ``ids``.
        ids: the item ids.
        kind: ``"gallery"`` or ``"query"``.
        model: what identifies the embedding function (fingerprint + weights digest).
        dataset: the dataset's name or root.
        split: the split ("val", "test", ...).
        dtype: ``"float32"`` or ``"float16"`` storage.
        overwrite: replace an existing cache.
        images: the image file of each id (a gallery's), or their ``image_files`` taken before they were read: a
            later load given other files, or the same files changed since, refuses the cache.
        extra: more keys for ``meta.json`` (as ``finish_embeddings``'s).

    Example:
        >>> from cir_lightning.retrieval import load_embeddings, save_embeddings
        >>> import tempfile
        >>> from pathlib import Path
        >>> import torch
        >>> folder = Path(tempfile.mkdtemp()) / "gallery"
        >>> _ = save_embeddings(folder, torch.eye(2), ["a", "b"], kind="gallery", model={"m": 1},
        ...                     dataset="toy", split="val")
        >>> emb, ids = load_embeddings(folder, kind="gallery", model={"m": 1}, dataset="toy", split="val")
        >>> emb.shape, ids
        (torch.Size([2, 2]), ['a', 'b'])
        >>> load_embeddings(folder, kind="gallery", model={"m": 2}, dataset="toy", split="val")
        Traceback (most recent call last):
        ...
        cir_lightning.errors.CIRDataError: ...: the cache does not match: model.m: cached 1, expected 2. ...
    """
    path = Path(path)
    array = embeddings.detach().float().cpu().numpy() if isinstance(embeddings, Tensor) else np.asarray(embeddings)
    if array.ndim != 2 or len(array) != len(ids):
        raise ValueError(f"`embeddings` {array.shape} must be 2-d with one row per id ({len(ids)} ids)")
    check_dtype(dtype)
    if path.exists() and not overwrite:
        raise exists_error(path, replace="`overwrite=True`")
    # complete or absent: a kill or a full disk never leaves a cache that a later run would trust
    with atomic_folder(path, overwrite=overwrite) as tmp:
        rows = new_embeddings(tmp, len(array), int(array.shape[1]), dtype)
        rows[:] = array
        rows.flush()
        del rows
        files = images if images is None or isinstance(images, ImageFiles) else image_files(images)
        finish_embeddings(tmp, ids, kind=kind, model=model, dataset=dataset, split=split,
                          extra=extra if files is None else files.joined(extra),
                          stamps=None if files is None else files.stamps)
    return path


def identity_differences(key: str, cached: Any, expected: Any,
                         labels: tuple[str, str] = ("cached", "expected")) -> list[str]:
    """What differs between a stored identity and the expected one, down to the nested keys (for messages;
    ``labels`` name the two sides).

    Example:
        >>> from cir_lightning.retrieval.cache import identity_differences
        >>> identity_differences("model", {"weights": "ab"}, {"weights": "cd"})
        ["model.weights: cached 'ab', expected 'cd'"]
        >>> identity_differences("index", {"dtype": "float16"}, {"dtype": "float32"}, ("begun with", "now"))
        ["index.dtype: begun with 'float16', now 'float32'"]
    """
    return _differences(key, json.loads(json.dumps(cached, default=str)), json.loads(json.dumps(expected, default=str)),
                        labels)


def stored_dtype(path: str | Path) -> str:
    """The dtype a cache's embeddings are stored in (``meta.json``; float32 for caches that do not say)."""
    return str(json.loads((Path(path) / "meta.json").read_text()).get("dtype", "float32"))


def _read_cache(path: Path, files: Mapping[str, IO[bytes] | OSError]) -> tuple[dict[str, Any], list[Any]]:
    """A cache's ``meta.json`` and ``ids.json``, after checking they hold what a cache is written with."""
    try:
        meta, cached_ids = json_of(files["meta.json"]), json_of(files["ids.json"])
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CIRDataError(f"not a readable embedding cache ({err})", path) from None
    damaged = "; re-embed with `overwrite_cache: true` (or delete the folder)"
    if not isinstance(meta, dict) or not isinstance(cached_ids, list):
        raise CIRDataError(f"not an embedding cache (meta.json holds {json_type(meta)}, ids.json "
                           f"{json_type(cached_ids)}; a cache has an object and a list){damaged}", path)
    for key in ("count", "dim"):
        if type(meta.get(key)) is not int or meta[key] < 0:
            raise CIRDataError(f"meta.json: `{key}` is {meta.get(key)!r}, not a whole number: the cache is "
                               f"damaged{damaged}", path)
    if meta.get("dtype", "float32") not in ("float32", "float16"):
        raise CIRDataError(f"meta.json: `dtype` is {meta.get('dtype')!r}, not float32 or float16: the cache is "
                           f"damaged{damaged}", path)
    return meta, cached_ids


def load_embeddings(path: str | Path, *, kind: str, model: Mapping[str, Any], dataset: str, split: str,
                    ids: Sequence[str] | None = None, rows: slice | None = None,
                    images: Sequence[str] | None = None) -> tuple[Tensor, list[str]]:
    """Read a cache, after checking it was made by ``model`` for this dataset, split, kind (and ``ids``).

    Returns the (count, dim) float32 embeddings and the ids. Any mismatch raises ``CIRDataError``
    listing every difference. With ``rows`` only those rows are read (the file is memory-mapped), e.g.
    ``slice(rank, None, world_size)`` for one rank's share of a large gallery; ids are still all ids.

    Example:
        >>> from cir_lightning.retrieval import load_embeddings, save_embeddings
        >>> import tempfile
        >>> import torch
        >>> folder = save_embeddings(tempfile.mkdtemp() + "/gallery", torch.arange(6.0).view(3, 2), ["a", "b", "c"],
        ...                          kind="gallery", model={"m": 1}, dataset="toy", split="val")
        >>> emb, ids = load_embeddings(folder, kind="gallery", model={"m": 1}, dataset="toy", split="val",
        ...                            rows=slice(1, None, 2))  # rank 1 of 2: rows 1, 3, ...
        >>> emb.tolist(), ids
        ([[2.0, 3.0]], ['a', 'b', 'c'])
        >>> load_embeddings(folder, kind="query", model={"m": 1}, dataset="toy", split="val")
        Traceback (most recent call last):
        ...
        cir_lightning.errors.CIRDataError: ...: the cache does not match: kind: cached 'gallery', expected 'query'. ...
    """
    path = Path(path)
    with opened_files(path) as files:
        return _load(path, files, kind=kind, model=model, dataset=dataset, split=split, ids=ids, rows=rows, images=images)


def _load(path: Path, files: Mapping[str, IO[bytes] | OSError], *, kind: str, model: Mapping[str, Any], dataset: str,
          split: str, ids: Sequence[str] | None, rows: slice | None,
          images: Sequence[str] | None) -> tuple[Tensor, list[str]]:
    meta, cached_ids = _read_cache(path, files)
    expected = {"format": FORMAT, "kind": kind, "model": json.loads(json.dumps(dict(model), default=str)),
                "dataset": dataset, "split": split}
    problems = [problem for key, value in expected.items() for problem in _differences(key, meta.get(key), value)]
    if ids is not None:
        problems += _differences("ids", cached_ids, [str(i) for i in ids])
    if meta.get("ids_sha256") != ids_digest(cached_ids):
        problems.append("ids.json was changed after the cache was written")
    now = image_files(images) if images is not None else {}  # caches written without the record are not checked
    same = bool(now) and meta.get("image_stamps_sha256") == now["image_stamps_sha256"]
    then, damage = read_cache_stamps(meta, files[STAMPS_FILE], meta["count"], now.stamps if same else None)
    if "images_sha256" in meta and now and meta["images_sha256"] != now["images_sha256"]:
        problems.append("images: the ids name other image files than when it was written (another gallery file, or "
                        "changed image paths)")
    elif "image_stamps_sha256" in meta and now and not same:
        problems.append("images: " + changed_images(then, damage, images or [], cached_ids, now.stamps))
    if problems:
        raise CIRDataError("the cache does not match: " + "; ".join(problems) + ". A stale cache is never used: "
                           "re-embed with `overwrite_cache: true` (or delete the folder)", path)
    rebuild = "; re-embed with `overwrite_cache: true` (or delete the folder)"
    if damage:  # a cache is trusted whole: its stamps would name the images changed by the time it is loaded again
        raise CIRDataError(f"{STAMPS_FILE} {damage}: the cache is damaged{rebuild}", path)
    try:
        array = array_of(files["embeddings.npy"])
    except (OSError, ValueError, EOFError) as err:  # cut short, not a .npy, missing
        raise CIRDataError(f"embeddings.npy cannot be read ({err}): the cache is damaged or incomplete{rebuild}",
                           path) from None
    if array.shape != (meta["count"], meta["dim"]) or array.dtype != np.dtype(meta.get("dtype", "float32")):
        raise CIRDataError(f"embeddings.npy holds {array.dtype} {array.shape}, meta.json says {meta.get('dtype')} "
                           f"({meta['count']}, {meta['dim']}): the cache is damaged{rebuild}", path)
    if rows is not None:
        array = array[rows]
    return torch.from_numpy(np.array(array, dtype=np.float32)), cached_ids  # a writable float32 copy
