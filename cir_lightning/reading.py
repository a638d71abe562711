"""Reading annotation files: the one JSON / JSONL reader of every data layout.

Whatever is wrong with a file is one ``CIRDataError`` line naming the file and, where there is one, the
line: a missing file, a folder or a broken link given instead of a file, an unreadable file, bytes that
are not UTF-8 (a UTF-8 byte-order mark is accepted, as are Windows line endings), malformed JSON, JSON
nested too deeply for the parser, and a key given twice in one object (JSON keeps the last one silently).
"""

from __future__ import annotations

import codecs
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cir_lightning.errors import CIRDataError
from cir_lightning.messages import json_type, os_reason, path_problem, short_repr

__all__ = ["iter_jsonl", "read_json", "read_json_list", "read_json_object"]

_WHITESPACE = re.compile(r"[ \t\n\r]*")
_BRACKETS = re.compile(r'"(?:[^"\\]|\\.)*"?|[\[\]{}]', re.S)  # strings are skipped whole


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
    if isinstance(err, ValueError):  # a NUL byte or a lone surrogate in the name
        return CIRDataError(f"{what} {short_repr(str(path))} is not a valid file name")
    problem = path_problem(path)
    if problem is None or problem.startswith("cannot be checked"):  # it is a file, but reading it failed
        return CIRDataError(f"{what} cannot be read: {os_reason(err)}", path)
    if problem.startswith("is a broken symbolic link"):
        return CIRDataError(f"{what} {problem}", path)
    return CIRDataError(_with_hint(f"{what} {problem}", hint), path)


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
        >>> from cir_lightning.reading import read_json
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
        >>> from cir_lightning.reading import read_json_list
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
        >>> from cir_lightning.reading import read_json_object
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
        >>> from cir_lightning.reading import iter_jsonl
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
                raise CIRDataError(f"{what} cannot be read: {os_reason(err)}", path, number + 1) from None
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
