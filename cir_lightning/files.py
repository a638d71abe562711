"""Writing files safely: every file cir_lightning writes goes through here.

- ``write_atomic`` writes a file completely or not at all: the bytes go to a temporary file in the same
  folder, are flushed and fsync'ed, then the file is linked into place. A kill, a full disk or a
  crash never leaves a truncated file behind, and an existing file is never replaced unless
  ``overwrite=True`` (then it is replaced in one ``rename``).
- ``atomic_folder`` does the same for a folder of files (model checkpoints, adapters, caches, data).
- ``free_path`` finds a name that is not taken (``results-validate-1.json``).
- ``check_writable`` tells, before any work is done, that a folder can be written.

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
from cir_lightning.messages import json_type, os_error_in, os_reason, short_repr
from cir_lightning.reading import iter_jsonl, read_json, read_json_list, read_json_object

__all__ = ["atomic_folder", "check_writable", "free_path", "write_atomic", "iter_jsonl", "json_type",
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
        raise CIRFileError(f"`{path}` already exists; it is never overwritten (choose another name, or remove it)")
    _make_parent(path)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
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
        raise CIRFileError(f"`{path}` already exists; it is never overwritten (choose another name, or remove it)") \
            from None
    except OSError as err:
        if err.errno not in (errno.EPERM, errno.ENOTSUP, errno.EXDEV, errno.EMLINK, errno.ENOSYS):
            raise
        if path.exists():  # no hard links here (some network file systems): check, then rename
            raise CIRFileError(f"`{path}` already exists; it is never overwritten") from None
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
def atomic_folder(path: str | Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Write a folder's files inside the ``with`` block; ``path`` appears complete, or not at all.

    The block writes into a temporary folder beside ``path``, which is renamed to ``path`` when the block
    ends without an error (and removed otherwise). An existing ``path`` is an error unless ``overwrite``;
    then the old folder is swapped out and removed only after the new one is in place.

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
    if path.exists() and not overwrite:
        raise CIRFileError(f"`{path}` already exists; it is never overwritten (choose another name, or remove it)")
    _make_parent(path)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    except OSError as err:
        raise write_error(path, err) from None
    try:
        yield tmp
        _normal_permissions(tmp)
        _fsync_tree(tmp)
        _swap_in(tmp, path, overwrite)
        _fsync_folder(path.parent)
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        reason = err if isinstance(err, OSError) else os_error_in(err)  # safetensors' full disk is its own type
        if reason is None:
            raise
        raise write_error(path, reason) from None


def _swap_in(tmp: Path, path: Path, overwrite: bool) -> None:
    if not (overwrite and path.exists()):
        if path.exists():
            raise CIRFileError(f"`{path}` already exists; it is never overwritten")
        os.rename(tmp, path)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
    os.rmdir(old)
    os.rename(path, old)
    try:
        os.rename(tmp, path)
    except OSError:
        os.rename(old, path)  # put the old one back: the user keeps what they had
        raise
    shutil.rmtree(old, ignore_errors=True)


def write_folder(path: str | Path, write: Callable[[Path], object], *, overwrite: bool = False) -> Path:
    """``write(folder)`` inside ``atomic_folder(path)``; returns ``path``.

    Example:
        >>> from cir_lightning.files import write_folder
        >>> import tempfile
        >>> out = write_folder(Path(tempfile.mkdtemp()) / "x", lambda f: (f / "a.txt").write_text("a"))
        >>> (out / "a.txt").read_text()
        'a'
    """
    with atomic_folder(path, overwrite=overwrite) as folder:
        write(folder)
    return Path(path)


def free_path(path: str | Path) -> Path:
    """``path`` if nothing is there, else the first free ``<stem>-N<suffix>`` beside it.

    Example:
        >>> from cir_lightning.files import free_path
        >>> import tempfile
        >>> p = Path(tempfile.mkdtemp()) / "results.json"
        >>> _ = p.write_text("{}")
        >>> free_path(p).name
        'results-1.json'
    """
    path = Path(path)
    n, candidate = 0, path
    while candidate.exists() or candidate.is_symlink():
        n += 1
        candidate = path.with_name(f"{path.stem}-{n}{path.suffix}")
    return candidate


def check_writable(folder: str | Path, option: str) -> Path:
    """Make sure files can be written in ``folder`` (creating it if needed), before any work is done.

    Args:
        folder: the output folder.
        option: the option that names it, for the message (e.g. ``trainer.default_root_dir``).

    Raises:
        CIRFileError: naming the option, the folder and why it cannot be written.

    Example:
        >>> from cir_lightning.files import check_writable
        >>> import tempfile
        >>> check_writable(Path(tempfile.mkdtemp()) / "new", "model.embedding_cache").is_dir()
        True
        >>> f = Path(tempfile.mkdtemp()) / "file"
        >>> _ = f.write_text("")
        >>> check_writable(f / "sub", "trainer.default_root_dir")
        Traceback (most recent call last):
        ...
        cir_lightning.errors.CIRFileError: `trainer.default_root_dir`: cannot write in `.../file/sub`: a file stands where a folder is needed
    """
    folder = Path(folder)
    try:
        if folder.exists() and not folder.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, "not a folder", str(folder))
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".cir_lightning-write-check-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise CIRFileError(f"`{option}`: cannot write in `{folder}`: {os_reason(err)}") from None
    return folder

