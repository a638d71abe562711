"""Embedding caches: embeddings saved once and reused only while they still match.

A cache is a folder::

    embeddings.npy   (count, dim) array in row order, float32 or float16 (numpy .npy, memory-mappable)
    ids.json         the item ids, in row order
    meta.json        {"format": 1, "kind": "gallery" | "query", "model": {...}, "dataset": ..., "split": ...,
                      "count": ..., "dim": ..., "dtype": ..., "ids_sha256": ..., "created": ...}

``model`` is what identifies the embedding function: the backbone's fingerprint (base model, prompts,
pooling) and the digest of its trainable weights. ``load_embeddings`` compares it, the dataset, split,
kind and ids with what the caller expects and refuses any difference with an error that lists them: a
stale cache is never used silently. ``save_embeddings`` never replaces an existing cache unless told to.
"""

from __future__ import annotations

import datetime
import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from cir_lightning.errors import CIRConfigError, CIRDataError
from cir_lightning.files import atomic_folder

FORMAT = 1


def _ids_digest(ids: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(map(str, ids)).encode()).hexdigest()


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:28] + "..." + text[-8:]


def _differences(key: str, cached: Any, expected: Any) -> list[str]:
    """What differs between two identities, down to the nested key that differs.

    Example:
        >>> _differences("model", {"fingerprint": {"base_digest": "ab", "pooling": "x"}}, {"fingerprint": {"base_digest": "cd", "pooling": "x"}})
        ["model.fingerprint.base_digest: cached 'ab', expected 'cd'"]
    """
    if isinstance(cached, dict) and isinstance(expected, dict):
        return [d for k in dict.fromkeys([*cached, *expected])
                for d in _differences(f"{key}.{k}", cached.get(k), expected.get(k))]
    return [] if cached == expected else [f"{key}: cached {_short(cached)}, expected {_short(expected)}"]


def save_embeddings(path: str | Path, embeddings: Tensor | np.ndarray, ids: Sequence[str], *, kind: str,
                    model: Mapping[str, Any], dataset: str, split: str, dtype: str = "float32",
                    overwrite: bool = False) -> Path:
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
    if dtype not in ("float32", "float16"):
        raise CIRConfigError(f"cache `dtype` must be float32 or float16, got {dtype!r}")
    if path.exists() and not overwrite:
        raise CIRConfigError(f"embedding cache `{path}` already exists; pass overwrite=True to replace it")
    meta = {"format": FORMAT, "kind": kind, "model": dict(model), "dataset": dataset, "split": split,
            "count": len(ids), "dim": int(array.shape[1]), "dtype": dtype, "ids_sha256": _ids_digest(ids),
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    # complete or absent: a kill or a full disk never leaves a cache that a later run would trust
    with atomic_folder(path, overwrite=overwrite) as tmp:
        np.save(tmp / "embeddings.npy", np.ascontiguousarray(array, dtype=dtype))
        (tmp / "ids.json").write_text(json.dumps([str(i) for i in ids]))
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1, default=str) + "\n")
    return path


def load_embeddings(path: str | Path, *, kind: str, model: Mapping[str, Any], dataset: str, split: str,
                    ids: Sequence[str] | None = None, rows: slice | None = None) -> tuple[Tensor, list[str]]:
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
    try:
        meta = json.loads((path / "meta.json").read_text())
        cached_ids = json.loads((path / "ids.json").read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise CIRDataError(f"not a readable embedding cache ({err})", path) from None
    expected = {"format": FORMAT, "kind": kind, "model": json.loads(json.dumps(dict(model), default=str)),
                "dataset": dataset, "split": split}
    problems = [problem for key, value in expected.items() for problem in _differences(key, meta.get(key), value)]
    if ids is not None and [str(i) for i in ids] != cached_ids:
        problems.append(f"ids: {len(cached_ids)} cached, {len(ids)} expected, or in another order")
    if meta.get("ids_sha256") != _ids_digest(cached_ids):
        problems.append("ids.json was changed after the cache was written")
    if problems:
        raise CIRDataError("the cache does not match: " + "; ".join(problems) + ". A stale cache is never used: "
                           "re-embed with `overwrite_cache: true` (or delete the folder)", path)
    rebuild = "; re-embed with `overwrite_cache: true` (or delete the folder)"
    try:
        array = np.load(path / "embeddings.npy", mmap_mode="r")
    except (OSError, ValueError, EOFError) as err:  # cut short, not a .npy, missing
        raise CIRDataError(f"embeddings.npy cannot be read ({err}): the cache is damaged or incomplete{rebuild}",
                           path) from None
    if array.shape != (meta["count"], meta["dim"]) or array.dtype != np.dtype(meta.get("dtype", "float32")):
        raise CIRDataError(f"embeddings.npy holds {array.dtype} {array.shape}, meta.json says {meta.get('dtype')} "
                           f"({meta['count']}, {meta['dim']}): the cache is damaged{rebuild}", path)
    if rows is not None:
        array = array[rows]
    return torch.from_numpy(np.array(array, dtype=np.float32)), cached_ids  # a writable float32 copy
