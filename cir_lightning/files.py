"""Writing files safely: every file cir_lightning writes goes through here.

- ``write_atomic`` writes a file completely or not at all: the bytes go to a temporary file in the same
  folder, are flushed and fsync'ed, then the file is linked into place. A kill, a full disk or a
  crash never leaves a truncated file behind, and an existing file is never replaced unless
  ``overwrite=True`` (then it is replaced in one ``rename``).
- ``atomic_folder`` does the same for a folder of files (model checkpoints, adapters, caches, data).
- ``cir_lightning.free_names`` writes a file or folder under the first name not taken (``results-1.json``).
- ``check_writable`` tells, before any work is done, that a folder can be written.
- ``cir_lightning.leftovers`` removes the temporary files a killed run left (a process's first write into their folder, and again at most once a minute).

A failure to write (no space, no permission, a read-only file system, a file where a folder should be)
is a ``CIRFileError`` naming the path and the reason, one line. Files get the permissions the user's
umask gives new files, as ``open()`` would (temporary files alone would be private, mode 0600). Reading is
``cir_lightning.reading``'s job; its readers, ``short_repr`` and ``json_type`` are re-exported.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from cir_lightning.errors import CIRFileError
from cir_lightning.leftovers import sweep, temp_suffix
from cir_lightning.messages import json_type, os_error_in, os_reason, short_repr
from cir_lightning.reading import iter_jsonl, read_json, read_json_list, read_json_object
from cir_lightning.writable import check_writable, exists_error

__all__ = ["atomic_folder", "check_writable", "write_atomic", "iter_jsonl", "json_type",
           "read_json", "read_json_list", "read_json_object", "short_repr"]


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _file_mode() -> int:
    return 0o666 & ~_umask()


def _folder_mode() -> int:
    return 0o777 & ~_umask()


def write_error(path: str | Path, err: OSError, what: str = "write") -> CIRFileError:
    """The one-line error for an ``OSError`` raised while writing ``path``.

    Example:
        >>> from cir_lightning.files import write_error
        >>> str(write_error("out/results.json", OSError(errno.ENOSPC, "No space left on device")))
        'cannot write `out/results.json`: no space left on the device'
    """
    return CIRFileError(f"cannot {what} `{path}`: {os_reason(err)}")


def _fsync_folder(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not every file system lets a folder be opened for fsync
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _make_parent(path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:  # FileExistsError: a file has the folder's name (`exist_ok` covers folders only)
        err = NotADirectoryError(errno.ENOTDIR, "not a folder") if isinstance(err, FileExistsError) else err
        raise write_error(path.parent, err, "create the folder") from None


def write_atomic(path: str | Path, data: bytes | str, *, overwrite: bool = False) -> Path:
    """Write ``data`` to ``path`` completely or not at all; never replace an existing file unless asked.

    Args:
        path: the file to write; its folder is created if needed.
        data: the contents (``str`` is written as UTF-8).
        overwrite: replace an existing file (atomically); otherwise an existing file is an error.

    Raises:
        CIRFileError: ``path`` exists (and ``overwrite`` is off), or it cannot be written (full disk,
            permissions, read-only file system); nothing is left behind then.

    Example:
        >>> from cir_lightning.files import write_atomic
        >>> import tempfile
        >>> p = Path(tempfile.mkdtemp()) / "a" / "x.json"
        >>> write_atomic(p, '{"a": 1}').read_text()
        '{"a": 1}'
        >>> write_atomic(p, "{}")
        Traceback (most recent call last):
        ...
        cir_lightning.errors.CIRFileError: ...x.json` already exists; it is never overwritten ...
        >>> write_atomic(p, "{}", overwrite=True).read_text()
        '{}'
    """
    path = Path(path)
    raw = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    if path.exists() and not overwrite:
        raise exists_error(path)
    _make_parent(path)
    sweep(path.parent)  # what killed runs left here
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=temp_suffix(), dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _file_mode())
        if overwrite:
            os.replace(tmp, path)
        else:
            _link_new(Path(tmp), path)
        tmp = None
        _fsync_folder(path.parent)
    except CIRFileError:
        raise
    except OSError as err:
        raise write_error(path, err) from None
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
    return path


def _link_new(tmp: Path, path: Path) -> None:
    """Move ``tmp`` to ``path`` only if ``path`` does not exist, atomically where the file system allows."""
    try:
        os.link(tmp, path)  # fails if `path` appeared meanwhile: never replaces a file
    except FileExistsError:
        raise exists_error(path) from None
    except OSError as err:
        if err.errno not in (errno.EPERM, errno.ENOTSUP, errno.EXDEV, errno.EMLINK, errno.ENOSYS):
            raise
        if path.exists():  # no hard links here (some network file systems): check, then rename
            raise exists_error(path) from None
        os.rename(tmp, path)
        return
    os.unlink(tmp)


def _fsync_tree(folder: Path) -> None:
    """fsync every file below ``folder`` (a full disk can first show here: it is raised) and the folders."""
    for root, _, names in os.walk(folder):
        for name in names:
            full = os.path.join(root, name)
            if os.path.islink(full):
                continue
            fd = os.open(full, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_folder(Path(root))


def _normal_permissions(folder: Path) -> None:
    """Folders ``mkdtemp`` made are private (0700), and some writers create private files: give everything
    below ``folder`` the modes a plain ``open()`` / ``mkdir()`` would have given it."""
    os.chmod(folder, _folder_mode())
    for root, dirs, names in os.walk(folder):
        for name in dirs:
            os.chmod(os.path.join(root, name), _folder_mode())
        for name in names:
            full = os.path.join(root, name)
            if not os.path.islink(full):
                os.chmod(full, _file_mode() | (os.stat(full).st_mode & 0o111))


@contextlib.contextmanager
def atomic_folder(path: str | Path, *, overwrite: bool = False, reserved: bool = False) -> Iterator[Path]:
    """Write a folder's files inside the ``with`` block; ``path`` appears complete, or not at all.

    The block writes into a temporary folder beside ``path``, which is renamed to ``path`` when the block
    ends without an error (and removed otherwise). An existing ``path`` is an error unless ``overwrite``;
    then the old folder is swapped out and removed only after the new one is in place. ``reserved``: ``path`` is
    the empty folder ``free_names.reserve_folder`` made for this run, replaced at the end (removed on a failure).

    Example:
        >>> from cir_lightning.files import atomic_folder
        >>> import tempfile
        >>> out = Path(tempfile.mkdtemp()) / "model"
        >>> with atomic_folder(out) as folder:
        ...     _ = (folder / "config.json").write_text("{}")
        >>> sorted(p.name for p in out.iterdir())
        ['config.json']
    """
    path = Path(path)
    if path.exists() and not (overwrite or reserved):
        raise exists_error(path)
    _make_parent(path)
    sweep(path.parent)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=temp_suffix(), dir=path.parent))
    except OSError as err:
        raise write_error(path, err) from None
    try:
        yield tmp
        _normal_permissions(tmp)
        _fsync_tree(tmp)
        os.rename(tmp, path) if reserved else _swap_in(tmp, path, overwrite)  # over an empty folder only
        _fsync_folder(path.parent)
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if reserved:
            with contextlib.suppress(OSError):
                os.rmdir(path)
        reason = err if isinstance(err, OSError) else os_error_in(err)  # safetensors' full disk is its own type
        if reason is None:
            raise
        raise write_error(path, reason) from None


def _rename_new(tmp: Path, path: Path) -> None:
    """Rename the folder ``tmp`` to ``path``, which must not exist: a folder another run renamed there since the
    check is kept, and named as existing (``rename`` replaces only an empty folder; every writer fills its own)."""
    if path.exists() or path.is_symlink():
        raise exists_error(path)
    try:
        os.rename(tmp, path)
    except OSError as err:
        if err.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
            raise exists_error(path) from None
        raise


def _swap_in(tmp: Path, path: Path, overwrite: bool) -> None:
    """Put ``tmp`` at ``path``; with ``overwrite``, the folder there is moved aside first and removed after. Two
    runs replacing the same folder at once: each try that finds another's folder put in meanwhile tries again, so
    the last to finish wins, whole, and no folder moved aside is left."""
    if not overwrite:
        _rename_new(tmp, path)
        return
    for _ in range(100):  # another run's folder came in between: take the turn again
        if not (path.exists() or path.is_symlink()):
            with contextlib.suppress(CIRFileError):
                _rename_new(tmp, path)
                return
            continue
        old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=temp_suffix("old"), dir=path.parent))
        os.rmdir(old)
        try:
            os.rename(path, old)
        except FileNotFoundError:  # another run moved it aside first
            continue
        try:
            os.rename(tmp, path)
        except BaseException as err:  # a Ctrl-C between the renames too: the folder stayed hidden as `.old`
            if not isinstance(err, OSError) or err.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                with contextlib.suppress(OSError):
                    os.rename(old, path)  # put the old one back: the user keeps what they had
                raise
        else:
            shutil.rmtree(old, ignore_errors=True)
            return
        shutil.rmtree(old, ignore_errors=True)  # another run's folder is newer than the one moved aside
    raise exists_error(path)


def write_folder(path: str | Path, write: Callable[[Path], object], *, overwrite: bool = False,
                 reserved: bool = False) -> Path:
    """``write(folder)`` inside ``atomic_folder(path)``; returns ``path``.

    Example:
        >>> from cir_lightning.files import write_folder
        >>> import tempfile
        >>> out = write_folder(Path(tempfile.mkdtemp()) / "x", lambda f: (f / "a.txt").write_text("a"))
        >>> (out / "a.txt").read_text()
        'a'
    """
    with atomic_folder(path, overwrite=overwrite, reserved=reserved) as folder:
        write(folder)
    return Path(path)
