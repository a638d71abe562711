"""One line for an option value of the wrong type, in place of jsonargparse's nested report.

jsonargparse explains a bad value through every level it passed: the DataModule's ``Union`` with ``None``, the
class path it tried, the argument, the argument's own ``Union``... (10 to 20 lines for ``--model.search.nprobe x``).
``option_error`` keeps what a user acts on: the option, written as the command line accepts it (``init_args``
left out), what it takes and what it got. A message it does not recognise is kept whole, and
``CIR_LIGHTNING_TRACEBACK=1`` keeps every message whole.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any

__all__ = ["not_a_mapping", "option_error", "required_error"]

_KEY = re.compile(r'Parser key "([^"]+)":')
_SUBTYPES = re.compile(r"^\s*Subtypes: \[(.*)\]\s*$")
_EXPECTED = re.compile(r"^\s*(?:- )?Expected an? (.+?)\. Got value: (.*)$")
_GIVEN = re.compile(r"^\s*Given value: (.*?)(?:\. Got value: .*)?$")
_CLASS = re.compile(r"<class '([\w.]+)'>")
_LITERAL = re.compile(r"^typing\.Literal\[(.*)\]$")
_EXPECTED_TYPE = re.compile(r"^Expected an? (<class '[\w.]+'>|typing\.Literal\[.*\]|[\w.]+\[.*\]|dot import path string: .*)"
                            r"(?:\. Got value: .*)?$")
_PATH = re.compile(r"^Expected a path but .* either not accessible or invalid$")
_PROBLEM = re.compile(r"^Problem with given class_path '([\w.]+)':$")
_SUBCLASS = re.compile(r"^Not a valid subclass of (\w+)$")
_SUBCLASS_GOT = re.compile(r"^Not a valid subclass of (\w+)\. Got value: (.*)$")
_DOT_PATH = re.compile(r"^Expected a dot import path string: (.*)$")
_NOT_CONFIG = re.compile(r'^\s*Unable to load config "(.*)"$')  # neither a mapping nor a config file (`model: foo`)
_NOT_MAPPING = re.compile(r"^\s*Not a mapping nor a config file: (.*)$")  # not_a_mapping's (`model: 3`)
_REQUIRED = re.compile(r"^the following arguments are required: (.+)$")
_EXPECTED_FOR = {"data": "a DataModule: a class path, or a mapping with `class_path` (e.g. "
                         "cir_lightning.data.JsonlCIRDataModule) and its `init_args`",
                 "model.backbone": "a Backbone: a class path, or a mapping with `class_path` (e.g. "
                                   "cir_lightning.backbones.HFMultimodalBackbone) and its `init_args`"}
"""What the options CIRLightningCLI requires hold, for ``required_error``."""


def not_a_mapping(key: str, value: Any) -> str:
    """jsonargparse's way of reporting a group's value (``model: 3``, ``trainer: [1]``) that is neither a mapping nor
    the path of a config file, the value as YAML would write it (jsonargparse takes it and then finds the group's
    options missing)."""
    return f'Parser key "{key}": Not a mapping nor a config file: {json.dumps(value, default=str)}'


def required_error(message: str, subcommands: Iterable[str] = ()) -> str | None:
    """``option `<key>` is required ...`` for jsonargparse's ``the following arguments are required: validate.data``:
    the options as written in a config (the subcommand left out), that each is missing or null, and what it takes;
    None for any other message.

    Example:
        >>> from cir_lightning.option_errors import required_error
        >>> required_error("the following arguments are required: validate.data", ["validate"])
        'option `data` is required (not given, or null): a DataModule: a class path, or a mapping with `class_path` (e.g. cir_lightning.data.JsonlCIRDataModule) and its `init_args`'
    """
    match = _REQUIRED.match(message.strip())
    if match is None:
        return None
    keys = [key.strip() for key in match.group(1).split(",")]
    keys = [key.split(".", 1)[1] if key.split(".", 1)[0] in subcommands and "." in key else key for key in keys]
    said = "; ".join(f"`{key}`: {_EXPECTED_FOR[key]}" if key in _EXPECTED_FOR else f"`{key}`" for key in keys)
    if len(keys) == 1:
        return f"option `{keys[0]}` is required (not given, or null)" + (
            f": {_EXPECTED_FOR[keys[0]]}" if keys[0] in _EXPECTED_FOR else "")
    return f"options are required (not given, or null): {said}"


def option_error(message: str) -> str | None:
    r"""``option `<key>`: expected <types>, got <value>`` (a value of the wrong type) or ``option `<key>` (<class>):
    <reason>`` (a class path that cannot be used) for jsonargparse's nested report; None for any other message.

    Example:
        >>> from cir_lightning.option_errors import option_error
        >>> option_error('Parser key "model.pictures":\n  Expected a <class \'int\'>. Got value: x')
        "option `model.pictures`: expected int, got 'x'"
        >>> option_error("Parser key \"config\": File does not exist: 'a.yaml'") is None
        True
    """
    lines = message.splitlines()
    found = [(row, _indent(line), match.group(1)) for row, line in enumerate(lines)
             for match in [_KEY.search(line)] if match]
    if not found:
        return None
    row, depth, _ = max(found, key=lambda item: (item[1], -item[0]))  # the innermost key: the option at fault
    block = [lines[row][_KEY.search(lines[row]).end():]]
    option = '.'.join(_ancestry(found, row))
    if (not_config := _NOT_CONFIG.match(block[0])) or (not_mapping := _NOT_MAPPING.match(block[0])):
        got = _value(not_config.group(1)) if not_config else not_mapping.group(1)
        return (f"option `{option}`: expected a mapping of its options or the path of a config file with them, "
                f"got {got}")
    for line in lines[row + 1:]:
        if line.strip() and _indent(line) <= depth:
            break
        block.append(line)
    reason = _reason(block)
    return None if reason is None else f"option `{option}`{reason}"


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _ancestry(found: list[tuple[int, int, str]], row: int) -> list[str]:
    """The keys enclosing the one on ``row``, outermost first (each less indented than the one inside it); a key
    jsonargparse repeats around itself (``Parser key "model": ... - Parser key "model": ...``) counts once."""
    chain = [item for item in found if item[0] == row]
    for item in reversed([item for item in found if item[0] < row]):
        if item[1] < chain[0][1]:
            chain[:1] = [item] if item[2] == chain[0][2] else [item, chain[0]]
    return [key for _, _, key in chain]


def _branches(lines: list[str]) -> list[list[str]]:
    """Items ``- ...`` (each with the lines under it) among ``lines``, all at the items' indentation."""
    items: list[list[str]] = []
    level = min((_indent(line) for line in lines if line.strip()), default=0)
    for line in lines:
        if line.strip() and _indent(line) == level and line.strip().startswith("- "):
            items.append([line.strip()[2:]])
        elif line.strip() and items:
            items[-1].append(line.strip())
        elif line.strip():
            return []  # text outside the items: not a shape this module knows
    return items


def _reason(block: list[str]) -> str | None:
    """``: expected ..., got ...`` or `` (<class>): <reason>`` from the lines under the innermost key."""
    body = [line for line in block[1:] if line.strip()]
    if block[0].strip() and not body:
        return None  # a message of its own on the key's line (a missing file, ...): already one line
    first = min((_indent(line) for line in body), default=0)
    top = [line.strip() for line in body if _indent(line) == first]
    given = next((m.group(1) for line in top if (m := _GIVEN.match(line))), None)
    if top and (got := _SUBCLASS_GOT.match(top[0])):  # a class option given a number or a list (`backbone: 3`)
        return f": expected a class path or a mapping with `class_path` (a {got.group(1)}), got {_value(got.group(2))}"
    if len(top) == 1 and (match := _EXPECTED.match(top[0])):
        return f": expected {_type_name(match.group(1))}, got {_value(match.group(2))}"
    if "Errors:" in top:  # a Union: its subtypes, then one item per subtype
        at = next(i for i, line in enumerate(body) if line.strip() == "Errors:")
        items = _branches([line for line in body[at + 1:] if _indent(line) > first])
        subtypes = next((m.group(1) for line in top if (m := _SUBTYPES.match(line))), None)
    else:  # a class: an item per way of reading the value (a class that is no Union's: its one way, unlisted)
        items, subtypes = _branches(body) or ([[line.strip() for line in body]] if len(top) == 1 else []), None
    items = [item for item in items if not _PATH.match(item[0]) and item != ["Expected a <class 'NoneType'>"]]
    if any(_PROBLEM.match(item[0]) for item in items):  # a class_path was given: its problem, not the other ways
        items = [item for item in items if not _SUBCLASS.match(item[0])]
    subclass = [m.group(1) for item in items if (m := _SUBCLASS.match(item[0]))]
    if items and len(subclass) == len(items) and given is not None:  # neither a class path nor a mapping
        return f": expected a class path or a mapping with `class_path` (a {subclass[0]}), got {_value(given)}"
    dotted = [m.group(1) for item in items if len(item) == 1 and (m := _DOT_PATH.match(item[0]))]
    if items and len(dotted) == len(items) and subtypes is None:  # a class option given a word (`backbone: foo`)
        return f": expected a class path or a mapping with `class_path`, got {_value(dotted[0])}"
    if subtypes is not None and given is not None and items and all(
            len(item) == 1 and _EXPECTED_TYPE.match(item[0]) for item in items):
        path = all(item[0].startswith("Expected a dot import path") for item in items)  # only a class would do
        return f": expected {_type_names(subtypes)}, got {_value(given)}" + (" (not an import path)" if path else "")
    if len(items) == 1 and len(items[0]) == 2 and (match := _PROBLEM.match(items[0][0])):
        return f" ({match.group(1)}): {items[0][1]}"
    return None


def _split_top(text: str) -> list[str]:
    """``a, b[c, d], e`` -> ``["a", "b[c, d]", "e"]``: commas outside brackets and quotes."""
    parts, level, quote, start = [], 0, "", 0
    for i, char in enumerate(text):
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "[(":
            level += 1
        elif char in "])":
            level -= 1
        elif char == "," and level == 0:
            parts.append(text[start:i].strip())
            start = i + 1
    return [*parts, text[start:].strip()]


def _type_names(subtypes: str) -> str:
    """A Union's subtypes in words, its Literals' values merged into one ``one of``."""
    values, names = [], []
    for subtype in _split_top(subtypes):
        literal = _LITERAL.match(subtype.strip())
        if literal:
            values += _split_top(literal.group(1))
        else:
            names.append(_type_name(subtype))
    return " or ".join(([f"one of {', '.join(values)}"] if values else []) + names)


def _type_name(text: str) -> str:
    """``<class 'int'>`` -> ``int``, ``<class 'NoneType'>`` -> ``null``, ``typing.Literal['a', 'b']`` -> one of."""
    text = text.strip()
    if literal := _LITERAL.match(text):
        return "one of " + ", ".join(_split_top(literal.group(1)))
    text = _CLASS.sub(lambda m: m.group(1).rsplit(".", 1)[-1], text)
    text = re.sub(r"\b(?:\w+\.)+(\w+)", r"\1", text)  # list[a.b.Callback] -> list[Callback]
    return "null" if text == "NoneType" else text


def _value(text: str) -> str:
    text = text.strip()
    return text if text[:1] in "[{(" else repr(text)
