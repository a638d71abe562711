"""Rows of an ``embeddings.npy`` read and written block by block, with plain file reads and writes.

A memory map (``np.load(..., mmap_mode="r")``) is the easy way to reach the rows of a file larger than
memory, but every page it touched stays in the process's resident memory until it is unmapped: copying a
gallery of millions of rows through one holds all of them by the end. ``RowFile`` reads and writes with
``os.pread`` / ``os.pwrite`` instead; what it read is the caller's to keep or drop, and what it wrote is in
the operating system's page cache, not in the process. ``cir-lightning index`` assembles its index with it
(``indexing._assemble``), which keeps the assembly's memory at the faiss index's own size.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from cir_lightning.errors import CIRDataError

__all__ = ["RowFile"]

_IO_BYTES = 2**30

_HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


class RowFile:
    """An existing ``.npy`` file of shape (rows, dim), C order, opened for block reads (and writes).

    Args:
        path: the file (``retrieval.embedding_folder.new_embeddings`` makes an empty one of the right size).
        writable: open it for ``write`` too.

    Example:
        >>> from cir_lightning.retrieval.rowfile import RowFile
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "embeddings.npy"
        >>> np.save(path, np.zeros((4, 2), dtype=np.float32))
        >>> with RowFile(path, writable=True) as rows:
        ...     rows.write(np.array([3, 1, 2]), np.array([[3, 3], [1, 1], [2, 2]], dtype=np.float32))
        ...     rows.shape, rows.read(1, 4).tolist()
        ((4, 2), [[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]])
    """

    def __init__(self, path: str | Path, writable: bool = False) -> None:
        self.path = Path(path)
        with open(self.path, "rb") as f:
            try:
                version = np.lib.format.read_magic(f)
                header = _HEADER_READERS.get(version)
                if header is None:
                    raise ValueError(f"format version {version} is not read here")
                shape, fortran, dtype = header(f)
            except ValueError as err:
                raise CIRDataError(f"is not a .npy file ({err})", self.path) from None
            self.offset = f.tell()
        if fortran or len(shape) != 2 or dtype.hasobject:
            raise CIRDataError(f"holds a {len(shape)}-d {dtype} array{' in Fortran order' if fortran else ''}, "
                               "not rows of numbers", self.path)
        self.shape, self.dtype = (int(shape[0]), int(shape[1])), dtype
        self._row_bytes = self.shape[1] * dtype.itemsize
        self._fd = os.open(self.path, os.O_RDWR if writable else os.O_RDONLY)

    def __len__(self) -> int:
        return self.shape[0]

    def read(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start`` to ``stop`` (exclusive), a new array."""
        start, stop = max(0, start), min(stop, self.shape[0])
        out = np.empty((max(0, stop - start), self.shape[1]), dtype=self.dtype)
        view, done = memoryview(out).cast("B"), 0
        while done < len(view):  # one call reads at most about 2 GiB
            got = os.preadv(self._fd, [view[done:done + _IO_BYTES]], self.offset + start * self._row_bytes + done)
            if got <= 0:
                raise CIRDataError(f"ends early (wanted rows {start}-{stop} of {self.shape[0]}): it is damaged",
                                   self.path)
            done += got
        return out

    def write(self, positions: np.ndarray, rows: np.ndarray) -> None:
        """Write ``rows[i]`` at row ``positions[i]``; consecutive positions go out in one write."""
        positions = np.asarray(positions, dtype=np.int64)
        order = np.argsort(positions, kind="stable")
        positions, rows = positions[order], np.ascontiguousarray(np.asarray(rows)[order], dtype=self.dtype)
        if len(positions) and (positions[0] < 0 or positions[-1] >= self.shape[0]):
            raise IndexError(f"row positions must be in [0, {self.shape[0]})")
        breaks = np.flatnonzero(np.diff(positions) != 1) + 1
        for run in np.split(np.arange(len(positions)), breaks):
            if len(run):
                view, done = memoryview(rows[run[0]:run[-1] + 1]).cast("B"), 0
                at = self.offset + int(positions[run[0]]) * self._row_bytes
                while done < len(view):
                    done += os.pwrite(self._fd, view[done:done + _IO_BYTES], at + done)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> RowFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
