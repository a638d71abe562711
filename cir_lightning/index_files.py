"""Reading the files of an index folder (``cir_lightning.image_index``): each way one can be missing or damaged
is one ``CIRDataError`` line naming the file and saying to rebuild the index."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from cir_lightning.errors import CIRDataError
from cir_lightning.messages import MISSING, short_repr
from cir_lightning.retrieval.image_stamps import STAMPS_FILE, stamps_problem

__all__ = ["FAISS_FILE", "INDEX_VERSION", "STAMPS_FILE", "meta_problem", "read_faiss", "read_json", "read_meta",
           "read_stamps", "read_whole"]

FAISS_FILE = "index.faiss"
"""The faiss index's file name inside an index folder."""
INDEX_VERSION = 1
"""``image_index.version`` in ``meta.json``: the layout of an index folder this code writes and reads."""
_LEFT_OUT_COUNTS = ("hidden", "reached_again", "through_outside_links")  # data.folder.FolderScan.counts()


def read_json(path: Path, kind: type) -> Any:
    """The JSON value of an index's ``path``, refused unless it is a ``kind``."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CIRDataError(f"{MISSING}: the index is incomplete; rebuild it", path) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CIRDataError(f"cannot be read ({err}): the index is damaged; rebuild it", path) from None
    if not isinstance(value, kind):
        raise CIRDataError(f"holds a {type(value).__name__}, not a {kind.__name__}: the index is damaged", path)
    return value


def read_meta(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """An index's ``meta.json`` at ``path`` and its ``image_index`` entry, refused in one line unless this code could
    have written them: an index of another version, a damaged or hand-edited file (``meta_problem``)."""
    meta = read_json(path, dict)
    info = meta.get("image_index")
    if info is None:
        raise CIRDataError("is not an image index written by `cir-lightning index` (no `image_index` entry)", path)
    if not isinstance(info, dict):
        raise CIRDataError(f"`image_index` is {short_repr(info)}, not a mapping: the index is damaged; rebuild it", path)
    version = info.get("version")
    if not (type(version) is int and version == INDEX_VERSION):
        raise CIRDataError(f"`image_index.version` is {short_repr(version) if 'version' in info else 'missing'}, and "
                           f"this cir_lightning reads index version {INDEX_VERSION} only (an index written by another "
                           "one?): rebuild the index with this one", path)
    problem = meta_problem(meta, info)
    if problem:
        raise CIRDataError(f"{problem}: the index is damaged; rebuild it", path)
    return meta, info


def meta_problem(meta: dict[str, Any], info: dict[str, Any]) -> str | None:
    """The first field of ``meta.json`` whose value no index is written with (a hand-edited file), else None.

    Example:
        >>> meta = {"count": 2, "dim": 8, "dtype": "float32", "model": {}}
        >>> meta_problem(meta, {"root": "/photos", "backbone": {}, "search": {"factory": "Flat"}, "adapter": "../x"})
        "`image_index.adapter` is '../x', not the name of a folder in the index"
    """
    search, backbone, left_out = info.get("search", {}), info.get("backbone"), info.get("left_out", {})
    fields = [("count", meta.get("count"), False, 0), ("dim", meta.get("dim"), False, 0),
              ("image_index.max_short_edge", info.get("max_short_edge"), True, 1),  # 0 is never written
              ("image_index.max_image_pixels", info.get("max_image_pixels"), True, 1)]
    fields += [(f"image_index.search.{k}", search.get(k), True, 1) for k in ("nprobe", "ef_search", "asked_nprobe")
               if isinstance(search, dict)]
    fields += [(f"image_index.left_out.{k}", left_out.get(k), True, 0) for k in _LEFT_OUT_COUNTS
               if isinstance(left_out, dict)]
    for name, value, optional, least in fields:
        if not ((value is None and optional) or (type(value) is int and value >= least)):
            return f"`{name}` is {value!r}, not a whole number" + (f" >= {least}" if least else "")
    for name, value in (("model", meta.get("model")), ("image_index.backbone", backbone),
                        ("image_index.search", search), ("image_index.left_out", left_out)):
        if not isinstance(value, dict):
            return f"`{name}` is {short_repr(value)}, not a mapping"
    words = _word_problems(meta, info, search, left_out)
    if words:
        name, value, what = words[0]
        return f"`{name}` is {short_repr(value)}, not {what}"
    if not isinstance(backbone.get("init_args", {}), dict):
        return f"`image_index.backbone.init_args` is {short_repr(backbone['init_args'])}, not a mapping"
    if not isinstance(info.get("upright", False), bool):
        return f"`image_index.upright` is {short_repr(info['upright'])}, not true or false"
    adapter = info.get("adapter")
    if adapter is not None and not (isinstance(adapter, str) and adapter and Path(adapter).name == adapter
                                    and adapter not in (".", "..")):
        return f"`image_index.adapter` is {short_repr(adapter)}, not the name of a folder in the index"
    return None


def _word_problems(meta: dict[str, Any], info: dict[str, Any], search: dict[str, Any],
                   left_out: dict[str, Any]) -> list[tuple[str, Any, str]]:
    """The texts and lists of ``meta.json`` that are not what an index is written with: (field, value, what it is)."""
    skipped, other_types = info.get("skipped", []), left_out.get("other_types", {})
    checks = [("image_index.root", info.get("root"), _text(info.get("root")), "the path of a folder"),
              ("dtype", meta.get("dtype"), meta.get("dtype") in ("float32", "float16"), "float32 or float16"),
              ("image_index.search.factory", search.get("factory"), _text(search.get("factory")),
               "a faiss index_factory string"),
              ("image_index.search.asked", search.get("asked"), search.get("asked") is None or _text(search["asked"]),
               "a faiss index_factory string"),
              ("image_index.skipped", info.get("skipped"), isinstance(skipped, list) and all(
                  isinstance(pair, list) and len(pair) == 2 and all(map(_text, pair)) for pair in skipped),
               "a list of [path, reason] pairs"),
              ("image_index.left_out.other_types", other_types, isinstance(other_types, dict) and all(
                  type(n) is int and n >= 0 for n in other_types.values()), "a mapping of file suffixes to counts")]
    return [(name, value, what) for name, value, fine, what in checks if not fine]


def _text(value: Any) -> bool:
    return isinstance(value, str) and value != ""


def read_faiss(path: Path, count: int, dim: int, info: dict[str, Any]) -> Any:
    """The faiss index at ``path``, checked to hold ``count`` rows of ``dim``, with its recorded search settings."""
    import faiss

    if not path.is_file():
        raise CIRDataError(f"{MISSING}: the index is incomplete; rebuild it", path)
    try:
        index = faiss.read_index(str(path))
    except RuntimeError as err:
        raise CIRDataError(f"cannot be read as a faiss index ({str(err).strip().splitlines()[-1]}): the index is "
                           "damaged; rebuild it", path) from None
    if index.ntotal != count or index.d != dim:
        raise CIRDataError(f"holds {index.ntotal} vectors of dimension {index.d}, meta.json says {count} of {dim}: "
                           "the index is damaged; rebuild it", path)
    search = info.get("search") or {}
    space = faiss.ParameterSpace()
    for name, key in (("nprobe", "nprobe"), ("efSearch", "ef_search")):
        if search.get(key) is not None:
            space.set_index_parameter(index, name, int(search[key]))
    return index


def read_stamps(path: Path, count: int) -> np.ndarray | None:
    """The ``[size, modification time in ns]`` of each indexed image's file when it was embedded (``stamps.npy``,
    one row per image; ``-1`` where the file could not be stat'ed); None for an index written without them."""
    if not path.exists():
        return None
    try:
        stamps = np.load(path)
    except (OSError, ValueError, EOFError) as err:
        raise CIRDataError(f"cannot be read ({err}): the index is damaged; rebuild it", path) from None
    problem = stamps_problem(stamps, count)
    if problem:
        raise CIRDataError(f"{problem}: the index is damaged; rebuild it", path)
    return stamps


_T = TypeVar("_T")


def _identity(folder: Path) -> tuple[int, int] | None:
    try:
        stat = os.stat(folder)
    except OSError:
        return None
    return stat.st_dev, stat.st_ino


def read_whole(folder: Path, read: Callable[[Path], _T], tries: int = 3) -> _T:
    """``read(folder)``, its files all of one folder: an update replacing the index meanwhile (``--reuse
    --overwrite`` swaps in a whole new folder) made a read mix two indexes' files (refused as damaged: ids.json
    'does not match meta.json'); a read during which the folder was swapped is done again."""
    for _ in range(tries - 1):
        before = _identity(folder)
        try:
            value = read(folder)
        except CIRDataError:
            if _identity(folder) == before:
                raise
            continue
        if _identity(folder) == before:
            return value
    return read(folder)
