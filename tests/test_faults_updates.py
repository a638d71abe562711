"""Faults in the writers that came after tests/test_faults.py: an index updated in place (``--reuse --overwrite``),
``stamps.npy``, the folders an ``overwrite`` moves aside (``.old``), run folders' version claims, ``reproduce.json``.
A full disk, a read-only folder or a Ctrl-C is one line naming the path (or the Ctrl-C itself), the user's folder is
never lost nor half replaced, nothing partial is left under a final name, and the next run works; a reader never
mixes two folders' files and never misses a folder an ``overwrite`` has just moved aside."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from cir_lightning import files
from cir_lightning.errors import CIRFileError
from cir_lightning.files import write_atomic
from cir_lightning.leftovers import temp_suffix
from cir_lightning.retrieval import embedding_folder
from cir_lightning.retrieval.cache import load_embeddings, save_embeddings
from tests.test_faults import _everything, _fail

NO_SPACE = "no space left on the device"
GALLERY = {"kind": "gallery", "model": {"m": 1}, "dataset": "toy", "split": "val"}


def _cache(path: Path, rows: torch.Tensor, images: list[Path] | None = None) -> Path:
    return save_embeddings(path, rows, ["a", "b"], overwrite=path.exists(), images=images, **GALLERY)


def _interrupt(*args, **kwargs):
    raise KeyboardInterrupt


@pytest.mark.parametrize("fault", ["ctrl-c", "full disk"])
def test_a_fault_between_the_two_renames_of_an_overwrite_puts_the_users_folder_back(fault, tmp_path, monkeypatch):
    """A Ctrl-C there left the folder moved aside as `.cache.<rand>.<pid>-<machine>.old` and its name empty, until a
    later run (another process) swept the folder."""
    path = _cache(tmp_path / "cache", torch.eye(2))
    real, calls = os.rename, []

    def second_fails(src, dst):
        calls.append(dst)
        if len(calls) == 2:  # the new folder into place, after the old one was moved aside
            _interrupt() if fault == "ctrl-c" else _fail(errno.ENOSPC)()
        return real(src, dst)

    monkeypatch.setattr(files.os, "rename", second_fails)
    with pytest.raises(KeyboardInterrupt if fault == "ctrl-c" else CIRFileError) as info:
        _cache(path, 2 * torch.eye(2))
    monkeypatch.undo()
    if fault == "full disk":
        assert str(info.value) == f"cannot write `{path}`: {NO_SPACE}"
    assert _everything(tmp_path) == {"cache", *(f"cache/{n}" for n in ("meta.json", "ids.json", "embeddings.npy"))}
    assert load_embeddings(path, **GALLERY)[0].tolist() == torch.eye(2).tolist()
    assert load_embeddings(_cache(path, 2 * torch.eye(2)), **GALLERY)[0].tolist() == (2 * torch.eye(2)).tolist()


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", ""])
    child.wait()
    return child.pid


def _moved_aside(path: Path, pid: int) -> Path:
    old = path.with_name(f".{path.name}.abcd1234{temp_suffix('old').replace(f'.{os.getpid()}-', f'.{pid}-')}")
    os.rename(path, old)
    return old


def test_a_cache_an_overwrite_moved_aside_is_read_once_back_or_put_back_if_its_run_was_killed(tmp_path):
    """A reader met the moment between an overwrite's two renames (or their aftermath, after a kill) as 'not a
    readable embedding cache (No such file or directory)'; the gallery cache embedded the gallery again."""
    path = _cache(tmp_path / "cache", torch.eye(2))
    old = _moved_aside(path, _dead_pid())  # its run was killed between the renames
    assert load_embeddings(path, **GALLERY)[0].tolist() == torch.eye(2).tolist()
    assert not old.exists()
    old = _moved_aside(path, os.getpid())  # a live run: it puts the new folder in place in a moment
    mover = threading.Timer(0.3, lambda: _cache(tmp_path / "new", 3 * torch.eye(2)) and
                            (os.rename(tmp_path / "new", path), os.rename(old, tmp_path / "gone")))
    mover.start()
    try:
        assert load_embeddings(path, **GALLERY)[0].tolist() == (3 * torch.eye(2)).tolist()
    finally:
        mover.join()


def test_a_gallery_cache_moved_aside_by_a_killed_overwrite_is_loaded_not_embedded_again(tmp_path):
    from cir_lightning.retrieval.gallery_cache import GalleryCache

    path = save_embeddings(tmp_path / "val-dress-gallery", torch.eye(2), ["a", "b"], **{**GALLERY, "split": "val/dress"})
    _moved_aside(path, _dead_pid())
    assert GalleryCache(tmp_path).lookup("val", 0, "dress", ["a", "b"], dataset="toy", model={"m": 1})


@pytest.mark.parametrize("writer", ["stamps.npy", "ids.json", "meta.json"])
def test_a_full_disk_while_a_gallerys_stamps_and_ids_are_written_leaves_no_cache(writer, tmp_path, monkeypatch):
    images = [tmp_path / "a.png", tmp_path / "b.png"]
    for image in images:
        image.write_bytes(b"x")
    if writer == "stamps.npy":
        monkeypatch.setattr(embedding_folder.np, "save", _fail(errno.ENOSPC))
    else:
        real = Path.write_text
        monkeypatch.setattr(Path, "write_text", lambda self, *a, **k: _fail(errno.ENOSPC)() if self.name == writer
                            else real(self, *a, **k))
    with pytest.raises(CIRFileError) as info:
        _cache(tmp_path / "cache", torch.eye(2), images)
    monkeypatch.undo()
    assert str(info.value) == f"cannot write `{tmp_path / 'cache'}`: {NO_SPACE}"
    assert _everything(tmp_path) == {"a.png", "b.png"}
    _cache(tmp_path / "cache", torch.eye(2), images)
    assert np.load(tmp_path / "cache" / "stamps.npy").shape == (2, 2)


def _interrupt_call(monkeypatch, name: str, n: int) -> None:
    """Ctrl-C at the ``n``-th call of ``os.<name>`` by ``cir_lightning.files``."""
    real, calls = getattr(os, name), []

    def nth(*args, **kwargs):
        calls.append(1)
        return _interrupt() if len(calls) == n else real(*args, **kwargs)

    monkeypatch.setattr(files.os, name, nth)


@pytest.mark.parametrize(("where", "second"), [("fsync", 3), ("link", 2)])  # fsync: the file's, its folder's, ...
def test_a_ctrl_c_inside_a_file_write_leaves_neither_the_file_nor_its_temporary_one(where, second, tmp_path,
                                                                                   monkeypatch):
    """(reproduce.json, BGE-VL's identity and embedding files, pictures: every file goes through write_atomic.)"""
    from cir_lightning.retrieval.memmap import write_memmap

    with monkeypatch.context() as patch:
        _interrupt_call(patch, where, 1)
        with pytest.raises(KeyboardInterrupt):
            write_atomic(tmp_path / "reproduce.json", "{}")
    assert _everything(tmp_path) == set()
    with monkeypatch.context() as patch:
        _interrupt_call(patch, where, second)  # the identity file is written, the embedding file is interrupted
        with pytest.raises(KeyboardInterrupt):
            write_memmap(tmp_path / "e.memmap", np.eye(2), {"ids": ["a", "b"]})
    assert _everything(tmp_path) == set()
    assert write_memmap(tmp_path / "e.memmap", np.eye(2), {"ids": ["a", "b"]}).stat().st_size == 16


def test_a_version_folder_that_cannot_be_made_is_one_line_and_a_ctrl_c_removes_the_empty_claim(tmp_path, monkeypatch):
    import lightning.pytorch as pl
    from lightning.pytorch.loggers import CSVLogger

    from cir_lightning.run_folder import VersionClaims

    def trainer():
        return pl.Trainer(logger=CSVLogger(tmp_path), enable_progress_bar=False, enable_model_summary=False)

    with monkeypatch.context() as patch:
        patch.setattr(Path, "mkdir", lambda self, *a, **k: _fail(errno.EACCES)())
        with pytest.raises(CIRFileError, match=r"^cannot create the folder `.*lightning_logs`: permission denied$"):
            VersionClaims().claim(trainer())
    run = VersionClaims()

    def claimed_then_ctrl_c():
        with run.released_on_failure():
            run.claim(trainer())
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        claimed_then_ctrl_c()
    assert list((tmp_path / "lightning_logs").iterdir()) == []


def test_an_update_in_place_that_meets_a_full_disk_keeps_the_index_whole_and_the_rerun_completes(
        tmp_path, tiny_model_dir, monkeypatch, capsys):
    from cir_lightning.cli import main
    from tests.test_image_index import _photos
    from tests.test_index_update import _args, _edit, _files

    photos, folder = _photos(tmp_path / "photos"), tmp_path / "index"
    main(_args(photos, folder, tiny_model_dir))
    before, update = _files(folder), _args(photos, folder, tiny_model_dir, "--reuse", str(folder), "--overwrite")
    _edit(photos)
    real = files._fsync_tree
    with monkeypatch.context() as patch:  # the updated index is complete, then its files meet the full disk
        patch.setattr(files, "_fsync_tree", lambda tree: _fail(errno.ENOSPC)() if tree.parent == tmp_path
                      else real(tree))
        with pytest.raises(SystemExit) as info:
            main(update)
    assert info.value.code == 2
    assert f"error: cannot write `{folder}`: {NO_SPACE}\n" in capsys.readouterr().err
    assert _files(folder) == before
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".")]
    main(update)  # its shards kept: only assembled again
    assert "reused 2, embedded 4, dropped 3" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == ["index", "photos"]


def test_an_index_replaced_by_an_update_while_it_is_opened_is_read_whole_from_one_folder(tmp_path, tiny_model_dir,
                                                                                          monkeypatch):
    """Its meta.json was read from the index before the update, its ids.json from the update: refused as damaged
    ('does not match meta.json ... rebuild the index'), though both indexes were whole."""
    from cir_lightning import image_index
    from cir_lightning.cli import main
    from cir_lightning.image_index import ImageIndex
    from tests.test_image_index import _photos
    from tests.test_index_update import _args, _edit

    photos, folder = _photos(tmp_path / "photos"), tmp_path / "index"
    main(_args(photos, folder, tiny_model_dir))
    _edit(photos)
    main(_args(photos, tmp_path / "new", tiny_model_dir, "--reuse", str(folder)))
    real = image_index.read_json

    def swapped_first(path, kind):  # between meta.json and ids.json, as `--reuse --overwrite` swaps it in
        if (tmp_path / "new").exists():
            os.rename(folder, tmp_path / "aside")
            os.rename(tmp_path / "new", folder)
        return real(path, kind)

    monkeypatch.setattr(image_index, "read_json", swapped_first)
    index = ImageIndex.open(folder)
    assert index.relpaths == json.loads((folder / "ids.json").read_text())
    assert index.meta["image_index"]["update"]["embedded"] == 4
