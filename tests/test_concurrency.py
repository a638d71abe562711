"""Two runs at once on the same files: every check-then-act window of the writers, opened on purpose (the other
run's step is played inside it, or two processes meet at a barrier), must end in a whole file or folder of one
run, one clear line, or the next free name; a reader never mixes two runs' files."""

from __future__ import annotations

import multiprocessing
import os
from pathlib import Path

import pytest
import torch

from cir_lightning import files
from cir_lightning.errors import CIRDataError, CIRFileError
from cir_lightning.files import atomic_folder, write_folder
from cir_lightning.retrieval import cache
from cir_lightning.retrieval.cache import load_embeddings, save_embeddings


def _once(monkeypatch, module, name, before=None, after=None):
    """Patch ``module.name`` so that its first call runs ``before()`` first and ``after()`` after: the other run's
    step, inside this run's window."""
    real, done = getattr(module, name), []

    def patched(*args, **kwargs):
        first = not done
        done.append(1)
        if first and before:
            before()
        result = real(*args, **kwargs)
        if first and after:
            after()
        return result

    monkeypatch.setattr(module, name, patched)


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


# ---------------------------------------------------------------------------------------------------------- folders
def test_a_folder_another_run_renamed_into_place_first_is_kept_and_named_in_one_line(tmp_path, monkeypatch):
    path = tmp_path / "val-dress-gallery"
    theirs = lambda: write_folder(path, lambda f: (f / "a.txt").write_text("theirs"))  # noqa: E731
    with pytest.raises(CIRFileError, match=r"already exists; it is never overwritten"):
        with atomic_folder(path) as tmp:
            (tmp / "a.txt").write_text("mine")
            _once(monkeypatch, files.os, "rename", before=theirs)  # between the check and the rename
    assert (path / "a.txt").read_text() == "theirs"
    assert _leftovers(tmp_path) == []


def test_two_overwrites_at_once_end_with_the_last_one_whole_and_leave_nothing(tmp_path, monkeypatch):
    path = tmp_path / "cache"
    write_folder(path, lambda f: (f / "a.txt").write_text("old"))
    theirs = lambda: write_folder(path, lambda f: (f / "a.txt").write_text("theirs"), overwrite=True)  # noqa: E731
    with atomic_folder(path, overwrite=True) as tmp:
        (tmp / "a.txt").write_text("mine")
        _once(monkeypatch, files.os, "rename", after=theirs)  # the old folder moved aside: theirs goes in first
    assert (path / "a.txt").read_text() == "mine"
    assert _leftovers(tmp_path) == []  # no `.cache.*.old` left behind


# ---------------------------------------------------------------------------------------------------------- caches
IDENTITY = {"kind": "gallery", "dataset": "toy", "split": "val"}


def test_a_cache_replaced_while_it_is_read_is_never_mixed_from_two_runs(tmp_path, monkeypatch):
    path = tmp_path / "val-dress-gallery"
    mine, theirs = torch.eye(3), torch.full((3, 3), 7.0)
    save_embeddings(path, mine, ["a", "b", "c"], model={"weights": "mine"}, **IDENTITY)
    # another run, `overwrite_cache: true` with other weights, after this one checked meta.json
    other = lambda: save_embeddings(path, theirs, ["a", "b", "c"], model={"weights": "theirs"}, overwrite=True,  # noqa: E731
                                    **IDENTITY)
    _once(monkeypatch, cache, "ids_digest", before=other)
    embeddings, _ = load_embeddings(path, model={"weights": "mine"}, **IDENTITY)
    assert torch.equal(embeddings, mine)  # the rows the checked meta.json describes, not the other run's
    with pytest.raises(CIRDataError, match="cached 'theirs', expected 'mine'"):  # read again: the new one is refused
        load_embeddings(path, model={"weights": "mine"}, **IDENTITY)
