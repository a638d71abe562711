"""An index updated from an earlier one (``cir-lightning index ROOT --out NEW --reuse OLD``): only new or changed
images are embedded.

OLD's rows are a source of finished rows beside the build's own shards (``index_shards.current_rows``): a row is
taken when its file has the same relative path, size and modification time as when OLD embedded it (OLD's
``stamps.npy``); every other image is embedded, and OLD's rows of files that are gone are dropped. So NEW holds
exactly the ids, order and rows a build from scratch would, and its faiss index is built over them as a build from
scratch builds it (a trained type, IVF or PQ, is trained again on NEW's rows). OLD is only read. It is refused,
in one line, when its rows are not what this build would embed: another model (weights, prompts, precision),
another ``dtype`` or ``max_short_edge``, another image folder (unless ``moved``), or no stamps (an older index).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cir_lightning.errors import CIRConfigError, CIRDataError, CIRFileError
from cir_lightning.image_index import ImageIndex
from cir_lightning.index_files import STAMPS_FILE, read_stamps, read_whole
from cir_lightning.paths import resolved
from cir_lightning.retrieval.cache import identity_differences
from cir_lightning.retrieval.search_config import SearchConfig
from cir_lightning.writable import exists_error

__all__ = ["OldIndex", "check_out", "open_old", "update_counts"]

_FROM_SCRATCH = "or index without `--reuse`"


@dataclass(frozen=True)
class OldIndex:
    """The index an update reuses: its folder, ``meta.json``, relative paths and each file's stamp when embedded.

    Example:
        >>> from cir_lightning.index_update import OldIndex
        >>> old = OldIndex(Path("old"), {"image_index": {"search": {"factory": "IVF1,Flat", "asked": "IVF8,Flat",
        ...                "nprobe": 2, "ef_search": None}}}, ["a.png"], {"a.png": [3, 10]})
        >>> old.source()[1:], old.search_config().factory, old.search_config().nprobe
        ((['a.png'], {'a.png': [3, 10]}), 'IVF8,Flat', 2)
    """

    folder: Path
    meta: dict[str, Any]
    relpaths: list[str]
    stamps: dict[str, list[int]]

    def source(self) -> tuple[Path, list[str], dict[str, list[int]]]:
        """OLD as ``index_shards.read_shards`` gives a shard: folder (with ``embeddings.npy``), ids, stamps."""
        return self.folder, self.relpaths, self.stamps

    def search_config(self) -> SearchConfig:
        """The faiss index type OLD was asked for, with its search settings (``auto``: made concrete again, with the
        ``nprobe`` given to it, kept for when ``auto`` builds an IVF index)."""
        search = self.meta["image_index"]["search"]
        asked = search.get("asked") or search["factory"]
        if str(asked).strip() == "auto":  # its recorded nprobe may be the one `auto` chose for OLD's count, or none (Flat)
            return SearchConfig(factory="auto", nprobe=search.get("asked_nprobe"))
        return SearchConfig(factory=asked, nprobe=search.get("nprobe"), ef_search=search.get("ef_search"))


def open_old(folder: str | Path, root: Path, *, moved: bool = False, dtype: str | None = None) -> OldIndex:
    """The index at ``folder`` (``--reuse``), refused in one line when it is missing, damaged, written without
    stamps, of another image folder than ``root`` (unless ``moved``: its images are now below ``root``) or stored
    in another ``dtype``. Only ``meta.json``, ``ids.json`` and ``stamps.npy`` are read."""
    folder = resolved(folder, "--reuse")
    meta, relpaths, stamps = read_whole(folder, _read_old)  # of one folder, if an update replaces it meanwhile
    info = meta["image_index"]
    if stamps is None:
        raise CIRDataError(f"`--reuse`: `{folder}` has no {STAMPS_FILE} (written before indexes recorded each "
                           "file's size and modification time), so its rows cannot be matched to unchanged files; "
                           "index the folder without `--reuse`")
    if Path(info["root"]) != root and not moved:
        raise CIRDataError(f"`--reuse`: `{folder}` indexes the images below `{info['root']}`, not `{root}`; if "
                           "they moved there, add `--reuse-moved` (rows of files with the same path below it, size "
                           f"and modification time are reused), {_FROM_SCRATCH}")
    if dtype is not None and meta.get("dtype", "float32") != dtype:
        raise CIRDataError(f"`--reuse`: `{folder}` holds {meta.get('dtype', 'float32')} embeddings and this index is "
                           f"{dtype} (`--dtype`); give `--dtype {meta.get('dtype', 'float32')}`, {_FROM_SCRATCH}")
    return OldIndex(folder, meta, relpaths, {p: s for p, s in zip(relpaths, stamps.tolist(), strict=True)})


def _read_old(folder: Path) -> tuple[dict[str, Any], list[str], np.ndarray | None]:
    meta, relpaths = ImageIndex.read_files(folder)
    return meta, relpaths, read_stamps(folder / STAMPS_FILE, meta["count"])


def check_same_rows(old: OldIndex, identity: Mapping[str, Any], max_short_edge: int | None) -> None:
    """Refuse OLD when this build would embed its images otherwise: another model (fingerprint with its prompts,
    trained weights, precision), another ``max_short_edge``, or photos not turned upright."""
    info = old.meta["image_index"]
    problems = identity_differences("model", old.meta.get("model"), identity, ("it has", "this build has"))
    if info.get("max_short_edge") != max_short_edge:
        problems.append(f"max_short_edge (`--max-short-edge`): it has {info.get('max_short_edge')}, this build has "
                        f"{max_short_edge}")
    if not info.get("upright"):
        problems.append("its photos were embedded before EXIF orientation was applied")
    if problems:
        raise CIRDataError(f"`--reuse`: `{old.folder}` was embedded otherwise than this build embeds "
                           f"({'; '.join(problems)}), so its rows are not this build's; reuse an index made with "
                           f"this model and options, {_FROM_SCRATCH}")


def check_out(out: Path, reuse: str | Path | None, overwrite: bool) -> bool:
    """Whether ``out`` (``--out``) is the ``--reuse`` index, replaced when the update is complete: refused unless
    ``overwrite`` (``--overwrite``), which means only that. An ``out`` that exists otherwise is refused."""
    same = reuse is not None and resolved(out, "--out") == resolved(reuse, "--reuse")
    if overwrite and not same:
        raise CIRConfigError("`--overwrite` replaces the `--reuse` index with its update (`--out` the same folder) "
                             "and nothing else; an index is never overwritten otherwise")
    if same and not overwrite:
        raise CIRFileError(f"`--out`: `{out}` is the `--reuse` index, which is never replaced unless asked; write the "
                           "update to a new folder, or add `--overwrite` to replace it once the update is complete")
    if out.exists() and not same:
        raise exists_error(out, "--out")
    return same


def update_counts(old: OldIndex, done: Mapping[str, tuple[Path, int]], keep: list[str]) -> dict[str, Any]:
    """What an update did, for ``meta.json``: rows ``reused`` from OLD, images ``embedded`` (new or changed files)
    and OLD's rows ``dropped`` (files gone or changed): reused + embedded = NEW's rows, reused + dropped = OLD's.

    Example:
        >>> from cir_lightning.index_update import OldIndex, update_counts
        >>> old = OldIndex(Path("/old"), {}, ["a.png", "b.png", "c.png"], {})
        >>> done = {"a.png": (Path("/old"), 0), "b.png": (Path("shard"), 0), "d.png": (Path("shard"), 1)}
        >>> update_counts(old, done, ["a.png", "b.png", "d.png"])
        {'from': '/old', 'reused': 1, 'embedded': 2, 'dropped': 2}
    """
    reused = sum(done[p][0] == old.folder for p in keep)
    return {"from": str(old.folder), "reused": reused, "embedded": len(keep) - reused,
            "dropped": len(old.relpaths) - reused}


def update_line(counts: Mapping[str, Any]) -> str:
    """The line an update ends with (stderr), from its ``update_counts``."""
    return (f"updated from {counts['from']}: reused {counts['reused']}, embedded {counts['embedded']}, dropped "
            f"{counts['dropped']}")
