"""docs/architecture.md stays exact: every package file is named in one row of its tables (a file added, moved
or renamed without its row fails here), and every file it names exists."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "cir_lightning"
DOC = ROOT / "docs" / "architecture.md"
_NAMED = re.compile(r"`([\w./-]+\.(?:py|typed|html|css|js|md|yaml))`")


def _package_files() -> set[str]:
    return {p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("*")
            if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"}


def _rows() -> list[str]:
    return [line for line in DOC.read_text().splitlines() if line.startswith("|")]


def test_every_package_file_is_in_one_row():
    named = Counter(name for row in _rows() for name in set(_NAMED.findall(row)))
    files = _package_files()
    assert sorted(files - set(named)) == []  # add the file to the row of its layer
    assert sorted(name for name in files if named[name] > 1) == []  # each file in one row only


def test_every_named_file_exists():
    """A name in backquotes ending like a file is a package file (relative to cir_lightning/) or a file of the
    repository (``scripts/eval_circo.py``, ``tests/test_layers.py``); placeholders such as ``<name>.py`` are
    not matched."""
    named = set(_NAMED.findall(DOC.read_text()))
    stale = sorted(name for name in named if not (PACKAGE / name).is_file() and not (ROOT / name).is_file())
    assert stale == []


def test_cited_docs_exist():
    """Every ``docs/<name>.md`` a package file, test, script or config cites is in the repository."""
    cited = {(path.relative_to(ROOT).as_posix(), name) for folder in ("cir_lightning", "tests", "scripts", "configs")
             for path in (ROOT / folder).rglob("*") if path.suffix in (".py", ".yaml", ".sh", ".sbatch")
             for name in re.findall(r"\bdocs/[\w.-]+?\.md\b", path.read_text(errors="replace"))}
    assert sorted((path, name) for path, name in cited if not (ROOT / name).is_file()) == []
