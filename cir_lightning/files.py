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
umask gives new files, as ``open()`` would (temporary files alone would be private, mode 0600).
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

__all__ = ["atomic_folder", "check_writable", "free_path", "write_atomic"]


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _file_mode() -> int:
    return 0o666 & ~_umask()


def _folder_mode() -> int:
    return 0o777 & ~_umask()


def _reason(err: OSError) -> str:
    if err.errno == errno.ENOSPC:
        return "no space left on the device"
    if err.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    if err.errno == errno.EROFS:
        return "the file system is read-only"
    if err.errno == errno.ENOTDIR:
        return "a file stands where a folder is needed"
    if err.errno == errno.EISDIR:
        return "a folder stands where the file should be"
    return err.strerror or str(err)


def write_error(path: str | Path, err: OSError, what: str = "write") -> CIRFileError:
    """The one-line error for an ``OSError`` raised while writing ``path``.

    Example:
        >>> str(write_error("out/results.json", OSError(errno.ENOSPC, "No space left on device")))
        'cannot write `out/results.json`: no space left on the device'
    """
    return CIRFileError(f"cannot {what} `{path}`: {_reason(err)}")


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
    except OSError as err:
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
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        raise write_error(path, err) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


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
        raise CIRFileError(f"`{option}`: cannot write in `{folder}`: {_reason(err)}") from None
    return folder


# ------------------------------------------------------------------------------------------------------
# Reading annotation files: the one JSON / JSONL reader of every data layout. Whatever is wrong with a
# file is one ``CIRDataError`` line naming the file and, where there is one, the line: a missing file, a
# folder or a broken link given instead of a file, an unreadable file, bytes that are not UTF-8 (a UTF-8
# byte-order mark is accepted, as are Windows line endings), malformed JSON, JSON nested too deeply for
# the parser, and a key given twice in one object (JSON keeps the last one silently).

import codecs  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import reprlib  # noqa: E402
from typing import Any  # noqa: E402

from cir_lightning.errors import CIRDataError  # noqa: E402

__all__ += ["iter_jsonl", "json_type", "read_json", "read_json_list", "read_json_object", "short_repr"]

_REPR = reprlib.Repr()
_REPR.maxstring, _REPR.maxother, _REPR.maxlong = 80, 80, 40
_REPR.maxlist = _REPR.maxtuple = _REPR.maxset = 6
_REPR.maxdict, _REPR.maxlevel = 4, 3
_WHITESPACE = re.compile(r"[ \t\n\r]*")
_BRACKETS = re.compile(r'"(?:[^"\\]|\\.)*"?|[\[\]{}]', re.S)  # strings are skipped whole


def short_repr(value: object) -> str:
    """``repr(value)`` cut to a readable length, for messages that quote what a file holds.

    Example:
        >>> short_repr(["a"] * 100)
        "['a', 'a', 'a', 'a', 'a', 'a', ...]"
        >>> short_repr([[[[[1]]]]])
        '[[[[...]]]]'
    """
    return _REPR.repr(value)


def json_type(value: object) -> str:
    """The type of a parsed JSON value, as messages name it (``dict``, ``list``, ``str``, ``null`` ...).

    Example:
        >>> json_type(None), json_type([1])
        ('null', 'list')
    """
    return "null" if value is None else type(value).__name__


class _DuplicateKey(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) < len(pairs):
        seen: set[str] = set()
        raise _DuplicateKey(next(k for k, _ in pairs if k in seen or seen.add(k)))
    return obj


_DECODER = json.JSONDecoder(object_pairs_hook=_object)


def _with_hint(message: str, hint: str) -> str:
    return f"{message}; {hint}" if hint else message


def _read_error(path: Path, err: OSError | ValueError, what: str, hint: str) -> CIRDataError:
    if isinstance(err, FileNotFoundError) and os.path.islink(path):
        return CIRDataError(f"{what} is a broken symbolic link (to `{os.readlink(path)}`)", path)
    if isinstance(err, FileNotFoundError | NotADirectoryError):
        return CIRDataError(_with_hint(f"{what} does not exist", hint), path)
    if isinstance(err, IsADirectoryError):
        return CIRDataError(_with_hint(f"{what} is a folder, not a file", hint), path)
    if isinstance(err, ValueError):  # a NUL byte or a lone surrogate in the name
        return CIRDataError(f"{what} {short_repr(str(path))} is not a valid file name")
    return CIRDataError(f"{what} cannot be read: {_reason(err)}", path)


def _decode(raw: bytes, path: Path, line: int | None = None) -> str:
    """UTF-8 bytes (a leading byte-order mark dropped) as text; ``line``: the bytes are that one line."""
    if raw.startswith(codecs.BOM_UTF8):
        raw = raw[len(codecs.BOM_UTF8):]
    elif raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)) and line in (None, 1):
        raise CIRDataError("the file is UTF-16 encoded; save it as UTF-8", path, line)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        column = err.start - (raw.rfind(b"\n", 0, err.start) + 1) + 1
        where = line if line is not None else raw.count(b"\n", 0, err.start) + 1
        raise CIRDataError(f"not valid UTF-8 (byte {column} of the line)", path, where) from None


def _read_text(path: str | Path, what: str, hint: str) -> tuple[Path, str]:
    path = Path(path)
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except (OSError, ValueError) as err:
        raise _read_error(path, err, what, hint) from None
    return path, _decode(raw, path)


def _deepest(text: str, start: int = 0) -> tuple[int, int]:
    """``(depth, position)`` of the deepest bracket of the JSON value starting at ``start``."""
    depth = best = 0
    at = start
    for m in _BRACKETS.finditer(text, start):
        token = m.group()
        if token in "[{":
            depth += 1
            if depth > best:
                best, at = depth, m.start()
        elif token in "]}":
            depth -= 1
            if depth <= 0:
                break
    return best, at


def _value(text: str, pos: int, path: Path, line: int | None = None, whole: bool = False) -> tuple[Any, int]:
    """The JSON value at ``pos`` and the position after it (``whole``: the only value of ``text``).

    ``line`` is the line ``text`` starts on when it is one line of a JSONL file, else None."""
    def where(at: int) -> int:
        return text.count("\n", 0, at) + (line or 1)

    try:
        if whole:
            return _DECODER.decode(text), len(text)
        return _DECODER.raw_decode(text, pos)
    except json.JSONDecodeError as err:
        raise CIRDataError(f"malformed JSON ({err.msg} at column {err.colno})", path, where(err.pos)) from None
    except RecursionError:
        depth, at = _deepest(text, pos)
        raise CIRDataError(f"JSON nested too deeply ({depth} levels of brackets)", path, where(at)) from None
    except _DuplicateKey as err:
        raise CIRDataError(f"key {short_repr(err.key)} appears twice in one object (JSON would keep only "
                           "the last)", path, where(pos) if line is not None or not whole else None) from None
    except ValueError as err:  # an integer of more digits than Python converts
        raise CIRDataError(f"malformed JSON ({str(err).split(':')[0]})", path, where(pos)) from None


def read_json(path: str | Path, what: str = "file", hint: str = "") -> Any:
    """The one JSON value ``path`` holds.

    Args:
        path: the file.
        what: what the file is, for messages ("COCO image-info file").
        hint: what to do when it does not exist ("set `root` to the CIRCO folder").

    Raises:
        CIRDataError: naming the file (and the line) when it cannot be read or is not JSON.

    Example:
        >>> import tempfile
        >>> p = Path(tempfile.mkdtemp()) / "x.json"
        >>> _ = p.write_bytes(b'\\xef\\xbb\\xbf{"a": [1, 2]}\\r\\n')  # a byte-order mark, Windows line end
        >>> read_json(p)
        {'a': [1, 2]}
        >>> _ = p.write_text('{"a": 1,\\n "a": 2}')
        >>> read_json(p)
        Traceback (most recent call last):
        ...
        cir_lightning.errors.CIRDataError: .../x.json: key 'a' appears twice in one object (JSON would keep only the last)
    """
    path, text = _read_text(path, what, hint)
    if not text.strip():
        raise CIRDataError(f"{what} is empty; expected JSON", path)
    return _value(text, 0, path, whole=True)[0]


def _skip(text: str, pos: int) -> int:
    return _WHITESPACE.match(text, pos).end()


def _malformed(text: str, pos: int, message: str, path: Path) -> CIRDataError:
    err = json.JSONDecodeError(message, text, pos)
    return CIRDataError(f"malformed JSON ({message} at column {err.colno})", path, err.lineno)


def _members(path: str | Path, kind: type, what: str, hint: str) -> list[tuple[int, str | None, Any]]:
    """``(line, key, value)`` for each top-level member of a file holding one JSON list (key None) or
    object, each with the line it starts on (``json.JSONDecoder.raw_decode`` member by member)."""
    path, text = _read_text(path, what, hint)
    name, opening, closing = ("list", "[", "]") if kind is list else ("object", "{", "}")
    pos = _skip(text, 0)
    if pos == len(text):
        raise CIRDataError(f"{what} is empty; expected a JSON {name}", path)
    if text[pos] != opening:
        value = _value(text, 0, path, whole=True)[0]  # malformed JSON gets the parser's message
        raise CIRDataError(f"expected a JSON {name}, got {json_type(value)}", path)
    members, seen = [], {}
    line, counted = 1, 0
    pos = _skip(text, pos + 1)
    while not (not members and text.startswith(closing, pos)):
        line += text.count("\n", counted, pos)
        counted = pos
        key = None
        if kind is dict:
            if not text.startswith('"', pos):
                raise _malformed(text, pos, "Expecting property name enclosed in double quotes", path)
            key, pos = _value(text, pos, path)
            if key in seen:
                raise CIRDataError(f"key {short_repr(key)} appears twice (first on line {seen[key]}; JSON "
                                   "would keep only the last)", path, line)
            seen[key] = line
            pos = _skip(text, pos)
            if not text.startswith(":", pos):
                raise _malformed(text, pos, "Expecting ':' delimiter", path)
            pos = _skip(text, pos + 1)
        value, pos = _value(text, pos, path, None)
        members.append((line, key, value))
        pos = _skip(text, pos)
        if text.startswith(",", pos):
            pos = _skip(text, pos + 1)
            continue
        if not text.startswith(closing, pos):
            raise _malformed(text, pos, "Expecting ',' delimiter", path)
        break
    pos = _skip(text, pos + 1)
    if pos != len(text):
        raise _malformed(text, pos, "Extra data", path)
    return members


def read_json_list(path: str | Path, what: str = "file", hint: str = "") -> list[tuple[int, Any]]:
    """``(line, element)`` for each element of the JSON list ``path`` holds, ``line`` being where the
    element starts (the official FashionIQ, CIRR and CIRCO files are lists of objects).

    Args:
        path: the file.
        what: what the file is, for messages.
        hint: what to do when it does not exist.

    Raises:
        CIRDataError: naming the file and line when it cannot be read, is not JSON or not a list.

    Example:
        >>> import tempfile
        >>> p = Path(tempfile.mkdtemp()) / "cap.json"
        >>> _ = p.write_text('[\\n {"id": 1},\\n {"id": 2,\\n  "x": 3}\\n]\\n')
        >>> read_json_list(p)
        [(2, {'id': 1}), (3, {'id': 2, 'x': 3})]
        >>> _ = p.write_text('[\\n {"id": 1},\\n ' + '[' * 100000 + ']' * 100000 + '\\n]')
        >>> read_json_list(p)
        Traceback (most recent call last):
        ...
        cir_lightning.errors.CIRDataError: .../cap.json:3: JSON nested too deeply (100000 levels of brackets)
    """
    return [(line, value) for line, _, value in _members(path, list, what, hint)]


def read_json_object(path: str | Path, what: str = "file", hint: str = "") -> list[tuple[int, str, Any]]:
    """``(line, key, value)`` for each member of the JSON object ``path`` holds, in file order; a key
    given twice is an error (CIRR's split files map image names to paths).

    Example:
        >>> import tempfile
        >>> p = Path(tempfile.mkdtemp()) / "split.json"
        >>> _ = p.write_text('{\\n "a": "./dev/a.png",\\n "b": "./dev/b.png"\\n}')
        >>> read_json_object(p)
        [(2, 'a', './dev/a.png'), (3, 'b', './dev/b.png')]
    """
    return [(line, str(key), value) for line, key, value in _members(path, dict, what, hint)]


def iter_jsonl(path: str | Path, what: str = "annotation file",
               hint: str = "") -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line_number, object)`` for each non-blank line of a JSONL file; anything else is an error.

    Args:
        path: the file.
        what: what the file is, for messages.
        hint: what to do when it does not exist.

    Raises:
        CIRDataError: naming the file and line of the first problem.

    Example:
        >>> import tempfile
        >>> p = Path(tempfile.mkdtemp()) / "x.jsonl"
        >>> _ = p.write_text('{"a": 1}\\n\\n[2]\\n')
        >>> next(iter_jsonl(p))
        (1, {'a': 1})
        >>> list(iter_jsonl(p))
        Traceback (most recent call last):
        ...
        cir_lightning.errors.CIRDataError: ...x.jsonl:3: expected a JSON object, got list
    """
    path = Path(path)
    try:
        f = open(path, "rb")  # read line by line below, closed by the `with`
    except (OSError, ValueError) as err:
        raise _read_error(path, err, what, hint) from None
    with f:
        number = 0
        while True:
            try:
                raw = f.readline()
            except OSError as err:  # e.g. a folder on some systems, an I/O error
                raise CIRDataError(f"{what} cannot be read: {_reason(err)}", path, number + 1) from None
            if not raw:
                return
            number += 1
            text = _decode(raw, path, number)
            if not text.strip():
                continue
            obj = _value(text, 0, path, number, whole=True)[0]
            if not isinstance(obj, dict):
                raise CIRDataError(f"expected a JSON object, got {json_type(obj)}", path, number)
            yield number, obj
