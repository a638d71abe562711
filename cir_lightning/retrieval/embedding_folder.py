"""An embedding folder written row by row (the format of ``retrieval.cache``): ``new_embeddings`` preallocates
``embeddings.npy`` memory-mapped, any process fills its rows (``open_embeddings``), ``finish_embeddings``
writes ``ids.json`` and ``meta.json``; ``image_files`` is what ties a gallery's rows to its image files (digests
in ``meta.json``, each image's stamp in ``stamps.npy``); ``opened_files`` opens a folder's files together, all
from one folder (what ``load_embeddings`` reads).
``cir-lightning predict``, ``index`` and the caches write through it.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import hashlib
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np

from cir_lightning.errors import CIRConfigError
from cir_lightning.leftovers import put_back
from cir_lightning.retrieval.image_stamps import STAMPS_FILE, file_stamp, stamps_array

FORMAT = 1


def _version() -> str:
    """The package's version, which wrote the folder (``format`` is the layout's)."""
    from cir_lightning import __version__

    return __version__


def ids_digest(ids: Sequence[str]) -> str:
    """The SHA-256 of ``ids`` one per line: ids (or paths) recorded in a folder's ``meta.json``."""
    return hashlib.sha256("\n".join(map(str, ids)).encode()).hexdigest()


class ImageFiles(Mapping[str, str]):
    """What ties a gallery's rows to its image files (``image_files``): the digests ``meta.json`` records, which
    this mapping holds (the cache's identity), and each image's stamp by row (``stamps``: ``image_stamps``'
    ``stamps_array``), for ``finish_embeddings(stamps=...)`` to write to ``stamps.npy`` so that a refusal can name
    the image."""

    def __init__(self, digests: Mapping[str, Any], stamps: np.ndarray) -> None:
        self._digests, self.stamps = dict(digests), stamps

    def __getitem__(self, key: str) -> Any:
        return self._digests[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._digests)

    def __len__(self) -> int:
        return len(self._digests)

    def joined(self, extra: Mapping[str, Any] | None) -> ImageFiles:
        """The same record with ``extra``'s keys beside the digests (for ``meta.json``)."""
        return ImageFiles({**(extra or {}), **self._digests}, self.stamps)


def stamps_digest(stamps: np.ndarray) -> str:
    """The digest ``meta.json`` records of a gallery's ``stamps`` (``image_stamps_sha256``)."""
    return ids_digest([f"{size}:{mtime}" if size >= 0 else "-" for size, mtime in stamps.tolist()])


def image_files(images: Sequence[str | Path]) -> ImageFiles:
    """What ties a gallery's embeddings to its image files, for ``meta.json``: digests of the files' paths and of
    their ``file_stamp`` (taken before the files are read: an image made again under the same name is another
    image; a file that cannot be stat'ed counts as changed), and the stamps themselves, for ``stamps.npy``.

    Example:
        >>> from cir_lightning.retrieval.embedding_folder import image_files
        >>> import tempfile
        >>> image = Path(tempfile.mkdtemp()) / "a.png"
        >>> _ = image.write_bytes(b"1")
        >>> before = image_files([image])
        >>> _ = image.write_bytes(b"22")
        >>> after = image_files([image])
        >>> before["images_sha256"] == after["images_sha256"], before["image_stamps_sha256"] == after["image_stamps_sha256"]
        (True, False)
        >>> after.stamps[:, 0].tolist()  # each image's size (and modification time)
        [2]
    """
    stamps = stamps_array([file_stamp(image) for image in images])
    return ImageFiles({"images_sha256": ids_digest(images), "image_stamps_sha256": stamps_digest(stamps)}, stamps)


def check_dtype(dtype: str) -> None:
    if dtype not in ("float32", "float16"):
        raise CIRConfigError(f"cache `dtype` must be float32 or float16, got {dtype!r}")


def new_embeddings(folder: str | Path, count: int, dim: int, dtype: str = "float32") -> np.memmap:
    """Preallocate ``folder/embeddings.npy`` (``count`` x ``dim``, zeros) and return it memory-mapped for writing.

    The file is a normal ``.npy``; other processes fill their rows through ``open_embeddings``. Nothing
    is held in memory: written rows go to the file (the operating system's page cache).

    Example:
        >>> from cir_lightning.retrieval.embedding_folder import finish_embeddings, new_embeddings, open_embeddings
        >>> from cir_lightning.retrieval import load_embeddings
        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp())
        >>> rows = new_embeddings(folder, 3, 2)
        >>> rows[[2, 0]] = [[1.0, 0.0], [0.0, 1.0]]  # rows as they arrive, in any order
        >>> other = open_embeddings(folder)            # e.g. another DDP rank
        >>> other[1] = [0.6, 0.8]
        >>> rows.flush(), other.flush()
        (None, None)
        >>> _ = finish_embeddings(folder, ["a", "b", "c"], kind="gallery", model={"m": 1}, dataset="toy",
        ...                       split="val", extra={"note": "made row by row"})
        >>> load_embeddings(folder, kind="gallery", model={"m": 1}, dataset="toy", split="val")[0].tolist()
        [[0.0, 1.0], [0.6000000238418579, 0.800000011920929], [1.0, 0.0]]
    """
    check_dtype(dtype)
    rows = np.lib.format.open_memmap(Path(folder) / "embeddings.npy", mode="w+", dtype=np.dtype(dtype),
                                     shape=(int(count), int(dim)))
    reserve(Path(folder) / "embeddings.npy")
    return rows


def reserve(path: str | Path) -> None:
    """Allocate the disk blocks of the file ``path`` now. A preallocated file is sparse: rows written into it
    through a memory map on a full disk kill the process with SIGBUS ("Bus error", nothing said, nothing
    cleaned up); reserved, a full disk is an ``OSError`` (ENOSPC) here, before any row is embedded. File
    systems that cannot reserve space are left as they are."""
    if not hasattr(os, "posix_fallocate"):  # macOS, Windows: not reserved
        return
    fd = os.open(path, os.O_RDWR)
    try:
        size = os.fstat(fd).st_size
        if size:
            os.posix_fallocate(fd, 0, size)
    except OSError as err:
        if err.errno not in (errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL, errno.ENOSYS):
            raise
    finally:
        os.close(fd)


def open_embeddings(folder: str | Path) -> np.memmap:
    """``folder/embeddings.npy`` (made by ``new_embeddings``) memory-mapped for writing more rows."""
    return np.load(Path(folder) / "embeddings.npy", mmap_mode="r+")


def finish_embeddings(folder: str | Path, ids: Sequence[str], *, kind: str, model: Mapping[str, Any], dataset: str,
                      split: str, extra: Mapping[str, Any] | None = None,
                      stamps: np.ndarray | None = None) -> dict[str, Any]:
    """Write ``ids.json`` and ``meta.json`` (and a gallery's ``stamps.npy``) beside a complete ``embeddings.npy``;
    returns the meta.

    Args:
        folder: the cache folder (usually the temporary folder of ``files.atomic_folder``).
        ids: the item ids, one per row.
        kind, model, dataset, split: the identity, as for ``save_embeddings``.
        extra: more keys for ``meta.json`` (they may not replace the format's own).
        stamps: a gallery's image stamps by row (``ImageFiles.stamps``, taken before its images were read), written
            to ``stamps.npy``; None writes none.

    Example:
        >>> from cir_lightning.retrieval.embedding_folder import finish_embeddings, new_embeddings
        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp())
        >>> _ = new_embeddings(folder, 2, 4, "float16")
        >>> meta = finish_embeddings(folder, ["a", "b"], kind="query", model={}, dataset="toy", split="val")
        >>> meta["count"], meta["dim"], meta["dtype"]
        (2, 4, 'float16')
    """
    folder = Path(folder)
    array = np.load(folder / "embeddings.npy", mmap_mode="r")
    if array.ndim != 2 or len(array) != len(ids):
        raise ValueError(f"embeddings.npy {array.shape} must be 2-d with one row per id ({len(ids)} ids)")
    meta = {"format": FORMAT, "kind": kind, "model": dict(model), "dataset": dataset, "split": split,
            "count": len(ids), "dim": int(array.shape[1]), "dtype": str(array.dtype), "ids_sha256": ids_digest(ids),
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "cir_lightning": _version()}
    clash = sorted(set(meta) & set(extra or {}))
    if clash:
        raise ValueError(f"`extra` may not replace the cache's own keys {clash}")
    meta.update(extra or {})
    if stamps is not None:
        np.save(folder / STAMPS_FILE, stamps)
    (folder / "ids.json").write_text(json.dumps([str(i) for i in ids]))
    (folder / "meta.json").write_text(json.dumps(meta, indent=1, default=str) + "\n")
    return meta


FILES = ("meta.json", "ids.json", "embeddings.npy", STAMPS_FILE)


@contextlib.contextmanager
def opened_files(path: Path) -> Iterator[dict[str, IO[bytes] | OSError]]:
    """A cache's ``FILES``, opened together from one folder (what could not be, its error): another run replacing the
    cache meanwhile (``overwrite_cache``) moves the whole folder, so the files read are all of one run's cache. A folder
    found moved aside as ``.old`` (``leftovers.put_back``) is waited for while its run puts the new one in place, and
    put back when that run was stopped between its renames."""
    for _ in range(3):  # the folder was swapped between opening it and its files: open the one now there
        files: dict[str, IO[bytes] | OSError] = {}
        try:
            folder = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        except OSError as err:
            files = dict.fromkeys(FILES, err)
            if isinstance(err, FileNotFoundError) and put_back(path):  # moved aside by an overwrite: now back
                continue
            break
        try:
            for name in FILES:
                try:
                    files[name] = os.fdopen(os.open(name, os.O_RDONLY, dir_fd=folder), "rb")
                except OSError as err:
                    files[name] = err
            swapped = any(isinstance(f, FileNotFoundError) for f in files.values()) and _moved(path, folder)
        finally:
            os.close(folder)
        if not swapped:
            break
        _close_all(files)
    try:
        yield files
    finally:
        _close_all(files)


def _close_all(files: Mapping[str, IO[bytes] | OSError]) -> None:
    for file in files.values():
        if not isinstance(file, OSError):
            file.close()


def _moved(path: Path, folder: int) -> bool:
    """Whether ``path`` is no longer the folder open as ``folder`` (another folder took its name, or none)."""
    try:
        now, then = os.stat(path), os.fstat(folder)
    except OSError:
        return True
    return (now.st_dev, now.st_ino) != (then.st_dev, then.st_ino)


def json_of(file: IO[bytes] | OSError) -> Any:
    """The JSON value of a file ``opened_files`` opened (its error, raised)."""
    if isinstance(file, OSError):
        raise file
    return json.loads(file.read().decode("utf-8"))


def array_of(file: IO[bytes] | OSError) -> np.ndarray:
    """The array of an open ``.npy`` file, memory-mapped (as ``np.load(..., mmap_mode="r")``)."""
    if isinstance(file, OSError):
        raise file
    version = np.lib.format.read_magic(file)
    header = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}.get(version)
    if header is None:
        raise ValueError(f"unsupported .npy format version {version}")
    shape, fortran, dtype = header(file)
    if dtype.hasobject:  # pickled Python objects, which np.load refuses without allow_pickle: never embeddings
        raise ValueError(f"holds Python objects ({dtype}), not numbers")
    return np.memmap(file, dtype=dtype, mode="r", shape=shape, order="F" if fortran else "C", offset=file.tell())
