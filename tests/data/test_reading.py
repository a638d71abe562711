"""The one JSON / JSONL reader of the data layouts (``cir_lightning.reading``): every bad file is one
``CIRDataError`` naming the file and line, never a library traceback."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest

from cir_lightning import files, messages, reading
from cir_lightning.errors import CIRDataError
from cir_lightning.reading import iter_jsonl, read_json, read_json_list, read_json_object

DEEP = "[" * 100_000 + "]" * 100_000


def jsonl(path: Path) -> list:
    return list(iter_jsonl(path))


READERS = {"json": read_json, "list": read_json_list, "object": read_json_object, "jsonl": jsonl}


@pytest.mark.parametrize(("reader", "text", "line"), [
    ("jsonl", '{"a": 1}\n' + DEEP + "\n", 2),
    ("jsonl", '{"a": ' + "[" * 100_000 + "\n", 1),  # unclosed as well: still "too deep", on its line
    ("list", '[\n {"a": 1},\n {"b":\n  ' + DEEP + "}\n]", 4),
    ("object", '{\n "a": "x",\n "b": ' + DEEP + "\n}", 3),
    ("json", '{"images":\n [' + DEEP + "]}", 2),
])
def test_deeply_nested_json_names_file_and_line(tmp_path, reader, text, line):
    path = tmp_path / "deep.json"
    path.write_text(text)
    with pytest.raises(CIRDataError, match=r"JSON nested too deeply \(\d+ levels of brackets\)") as info:
        READERS[reader](path)
    assert str(info.value).startswith(f"{path}:{line}: ")
    assert (info.value.file, info.value.line) == (str(path), line)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("reader", list(READERS))
def test_a_byte_order_mark_and_windows_line_ends_are_accepted(tmp_path, reader):
    path = tmp_path / "bom.json"
    body = {"list": '[\r\n {"a": 1},\r\n {"a": 2}\r\n]\r\n', "object": '{\r\n "a": 1,\r\n "b": 2\r\n}\r\n',
            "json": '{"a": 1}\r\n', "jsonl": '{"a": 1}\r\n\r\n{"a": 2}\r\n'}[reader]
    path.write_bytes(b"\xef\xbb\xbf" + body.encode())
    expected = {"list": [(2, {"a": 1}), (3, {"a": 2})], "object": [(2, "a", 1), (3, "b", 2)],
                "json": {"a": 1}, "jsonl": [(1, {"a": 1}), (3, {"a": 2})]}[reader]
    assert READERS[reader](path) == expected


@pytest.mark.parametrize("reader", list(READERS))
def test_missing_file_folder_broken_link_and_unreadable_file(tmp_path, reader, monkeypatch):
    read = READERS[reader]
    with pytest.raises(CIRDataError, match=r"nope\.json: annotations file does not exist; set `root`$"):
        read(tmp_path / "nope.json", "annotations file", "set `root`") if reader != "jsonl" else \
            list(iter_jsonl(tmp_path / "nope.json", "annotations file", "set `root`"))
    (tmp_path / "folder.json").mkdir()
    with pytest.raises(CIRDataError, match=r"folder\.json: file is a folder, not a file"):
        read(tmp_path / "folder.json") if reader != "jsonl" else list(iter_jsonl(tmp_path / "folder.json", "file"))
    (tmp_path / "link.json").symlink_to(tmp_path / "gone.json")
    with pytest.raises(CIRDataError, match=r"link\.json: .* is a broken symbolic link \(to `.*gone\.json`\)"):
        read(tmp_path / "link.json")
    (tmp_path / "locked.json").write_text("{}")

    def refuse(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(reading, "open", refuse, raising=False)  # root can read any file: make one unreadable
    with pytest.raises(CIRDataError, match=r"locked\.json: .* cannot be read: permission denied$"):
        read(tmp_path / "locked.json")


@pytest.mark.parametrize(("reader", "raw", "message", "line"), [
    ("list", b"", "file is empty; expected a JSON list", None),
    ("object", b"  \n\n", "file is empty; expected a JSON object", None),
    ("json", b"\n", "file is empty; expected JSON", None),
    ("list", b'[\n "a",\n "\xff"\n]', r"not valid UTF-8 \(byte 3 of the line\)", 3),
    ("jsonl", b'{"a": 1}\n{"b": "\xe9"}\n', r"not valid UTF-8 \(byte 8 of the line\)", 2),
    ("list", "[1]".encode("utf-16"), "the file is UTF-16 encoded; save it as UTF-8", None),
    ("list", b'{"a": [1]}', "expected a JSON list, got dict", None),
    ("object", b'["a"]', "expected a JSON object, got list", None),
    ("list", b'[\n 1,\n 2,\n]', r"malformed JSON \(Expecting value at column 1\)", 4),
    ("list", b'[\n 1\n 2\n]', r"malformed JSON \(Expecting ',' delimiter at column 2\)", 3),
    ("list", b'[1]\n[2]', r"malformed JSON \(Extra data at column 1\)", 2),
    ("list", b'[\n {"id": 1},\n {"id": 2, "id": 3}\n]', "key 'id' appears twice in one object", 3),
    ("object", b'{\n "a": 1,\n "a": 2\n}', r"key 'a' appears twice \(first on line 2", 3),
    ("object", b'{\n "a": 1,\n 2: 3\n}', r"malformed JSON \(Expecting property name", 3),
    ("jsonl", b'\n{"target_id": "a", "target_id": "b"}\n', "key 'target_id' appears twice in one object", 2),
    ("jsonl", b'{"a": 1}\n{"a": ' + b"1" * 5000 + b"}\n", r"malformed JSON \(Exceeds the limit", 2),
    ("jsonl", b'{"a": 1}\n{"a": 1} {"b": 2}\n', r"malformed JSON \(Extra data at column 10\)", 2),
    ("jsonl", b'{"a": 1}\n"text"\n', "expected a JSON object, got str", 2),
    ("jsonl", b'null\n', "expected a JSON object, got null", 1),
])
def test_bad_files_are_one_line_naming_file_and_line(tmp_path, reader, raw, message, line):
    path = tmp_path / "bad.json"
    path.write_bytes(raw)
    with pytest.raises(CIRDataError, match=message) as info:
        READERS[reader](path)
    where = f"{path}:{line}: " if line else f"{path}: "
    assert str(info.value).startswith(where)
    assert "\n" not in str(info.value)


def test_list_lines_are_where_each_element_starts(tmp_path):
    path = tmp_path / "cap.json"
    entries = [{"candidate": f"B{i}", "captions": ["a", "b"]} for i in range(4)]
    path.write_text(json.dumps(entries, indent=4))
    lines = [line for line, _ in read_json_list(path)]
    text = path.read_text().splitlines()
    assert [text[n - 1].strip() for n in lines] == ["{"] * 4
    assert [e for _, e in read_json_list(path)] == entries
    path.write_text(json.dumps(entries))  # one line, as some copies are
    assert [line for line, _ in read_json_list(path)] == [1] * 4
    path.write_text("[]")
    assert read_json_list(path) == []


def test_the_readers_can_still_be_imported_from_files():
    for name in ("iter_jsonl", "read_json", "read_json_list", "read_json_object"):
        assert getattr(files, name) is getattr(reading, name)
    assert (files.short_repr, files.json_type) == (messages.short_repr, messages.json_type)
