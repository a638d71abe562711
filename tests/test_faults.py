"""Faults in the middle of a run never leave a result a later run takes as valid: a full disk or a read-only folder
while each kind of output is written is one line naming the path and the reason, nothing is left (under the final
name or as a temporary file) and the run with space writes it; images changed during a run make its cache stale;
a model's NaN embeddings are refused with their ids before anything holds them; a Ctrl-C ends with status 130,
one line, and only finished files kept (tests/test_faults_interrupts.py); the writers that came later:
tests/test_faults_updates.py."""

from __future__ import annotations

import errno
import json
import os
import tempfile
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cir_lightning.cli import main
from cir_lightning.errors import CIRDataError, CIRFileError
from tests.test_cli import CONF

# where a write meets the operating system, and how it fails there
FAULTS = {
    "full disk when flushed": (os, "fsync", errno.ENOSPC, "no space left on the device"),
    "full disk when reserved": (os, "posix_fallocate", errno.ENOSPC, "no space left on the device"),
    "read-only file system": (tempfile, "mkstemp", errno.EROFS, "the file system is read-only"),
    "read-only folder": (tempfile, "mkdtemp", errno.EACCES, "permission denied"),
}


def _fail(code: int):
    def fail(*args, **kwargs):
        raise OSError(code, os.strerror(code))
    return fail


def _gallery_cache(folder: Path) -> Path:
    from cir_lightning.retrieval.evaluator import RetrievalEvaluator
    from cir_lightning.retrieval.gallery_cache import GalleryCache

    cache = GalleryCache(folder)
    cache.lookup("val", 0, "dress", ["a", "b"], dataset="toy", model={"m": 1})
    evaluator = RetrievalEvaluator(ks=[1])
    evaluator.galleries[0] = torch.eye(2)
    cache.save(evaluator)
    return folder / "val-dress-gallery"


def _index_shard(folder: Path) -> Path:
    from cir_lightning.index_shards import ShardWriter

    writer = ShardWriter(folder, ["a.png", "b.png"], 2, {"m": 1}, "/photos")
    writer._token = "t"
    trainer = types.SimpleNamespace(received_sigterm=False, global_rank=0)
    prediction = {"index": torch.tensor([0, 1]), "embedding": torch.eye(2)}
    writer.write_on_batch_end(trainer, None, prediction, None, {"index": torch.tensor([0, 1])}, 0)
    return folder / "t-r000-00000"


def _results(folder: Path) -> Path:  # with rankings and scores: they are part of the one file
    from cir_lightning.retrieval.results import write_results

    return write_results(folder / "results-validate.json", {"Recall@1": 0.5}, stage="validate", subsets={}, model={},
                         config={}, rankings={"": {"q": ["a"]}}, scores={"": {"q": [0.9]}})


def _picture(folder: Path) -> Path:
    from cir_lightning.pictures import save_picture

    return save_picture(Image.new("RGB", (8, 8), "red"), folder / "retrievals-validate.png")


def _server_files(folder: Path) -> Path:
    from cir_lightning.data.layouts.cirr import CIRRPair, CIRRSplit, write_submission

    names = [f"img{i}" for i in range(51)]
    pair = CIRRPair("7", "img0", None, "x", ("img1", "img2", "img3", "img4", "img5"))
    write_submission(folder, "test1", {"7": names[1:]}, {"7": names[1:4]}, CIRRSplit(None, None, {"7": pair}, names,
                                                                                   0, 0))
    return folder / "cirr-test1-recall.json"


def _adapter(folder: Path, backbone) -> Path:
    return backbone.save_adapter(folder / "adapter") or folder / "adapter"


def _bgevl_memmap(folder: Path) -> Path:
    from cir_lightning.retrieval.memmap import write_memmap

    return write_memmap(folder / "embeddings.dress.memmap", np.eye(2, 3), {"ids": ["a", "b"]})


OUTPUTS = {"gallery cache": _gallery_cache, "index shard": _index_shard, "results and rankings": _results,
           "picture": _picture, "server files": _server_files, "adapter export": _adapter,
           "BGE-VL memmap": _bgevl_memmap}
FOLDERS = ("gallery cache", "index shard", "adapter export")  # written as a folder (mkdtemp), the others as files
PREALLOCATED = ("gallery cache", "index shard")  # embeddings.npy is reserved before rows are written
CASES = [(output, fault) for output in OUTPUTS for fault in FAULTS
         if (fault != "full disk when reserved" or output in PREALLOCATED)
         and (FAULTS[fault][1] != ("mkstemp" if output in FOLDERS else "mkdtemp"))]


def _everything(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


@pytest.mark.parametrize(("output", "fault"), CASES)
def test_a_failed_write_is_one_line_naming_the_path_leaves_nothing_and_the_next_run_writes_it(
        output, fault, tmp_path, monkeypatch, backbone):
    write = (lambda folder: _adapter(folder, backbone)) if output == "adapter export" else OUTPUTS[output]
    module, name, code, reason = FAULTS[fault]
    folder = tmp_path / "out"
    folder.mkdir()
    with monkeypatch.context() as patch:
        patch.setattr(module, name, _fail(code))
        with pytest.raises(CIRFileError) as info:
            write(folder)
    assert str(info.value).endswith(f"`: {reason}")  # `cannot write `<path>`: ...`, or the option's early check
    assert f"`{folder}" in str(info.value)
    assert "\n" not in str(info.value)
    assert _everything(folder) == set()  # no partial file under the final name, no temporary file
    written = write(folder)  # with space: written whole, under the name it was meant to have
    assert written.exists()
    assert not [p for p in _everything(folder) if Path(p).name.startswith(".")]


def test_a_full_disk_between_the_two_files_of_a_pair_leaves_neither(tmp_path, monkeypatch):
    """BGE-VL's embedding file and its identity file; CIRR's two submission files: a lone half is never left."""
    import cir_lightning.data.layouts.cirr as cirr
    import cir_lightning.retrieval.memmap as memmap
    from cir_lightning.files import write_atomic

    def second_fails(path, data, **kwargs):
        if str(path).endswith((".memmap", "recall_subset.json")):
            raise CIRFileError(f"cannot write `{path}`: no space left on the device")
        return write_atomic(path, data, **kwargs)

    for module, write in ((memmap, _bgevl_memmap), (cirr, _server_files)):
        monkeypatch.setattr(module, "write_atomic", second_fails)
        with pytest.raises(CIRFileError, match="no space left on the device"):
            write(tmp_path)
        assert _everything(tmp_path) == set()


@pytest.mark.parametrize("fault", ["full disk when flushed", "read-only file system"])
def test_a_checkpoint_that_cannot_be_saved_leaves_the_previous_one_whole(fault, tmp_path, monkeypatch):
    """``last.ckpt`` is replaced at every save: a failed save keeps the one a resumed run would load."""
    from cir_lightning.checkpointing import SafeCheckpointIO
    from cir_lightning.torch_files import load_torch_file

    io, path = SafeCheckpointIO(), tmp_path / "last.ckpt"
    io.save_checkpoint({"global_step": 1}, path)
    module, name, code, reason = FAULTS[fault]
    with monkeypatch.context() as patch:
        patch.setattr(module, name, _fail(code))
        with pytest.raises(CIRFileError, match=f"cannot write `{path}`: {reason}$"):
            io.save_checkpoint({"global_step": 2}, path)
    assert _everything(tmp_path) == {"last.ckpt"}
    assert load_torch_file(path)["global_step"] == 1


def test_an_identity_file_left_by_a_killed_bgevl_write_is_named_as_such(tmp_path):
    """A kill between BGE-VL's identity file and its embedding file leaves the identity file alone: the rerun said
    it "already exists ... reuse it with `--load_embedding`", which then found no embedding file."""
    (tmp_path / "embeddings.dress.memmap.json").write_text("{}")
    with pytest.raises(CIRFileError, match=r"memmap.json` is left from a `--save_embedding` that did not finish \(its "
                                           r"embedding file `.*embeddings.dress.memmap` was never written\): remove it"):
        _bgevl_memmap(tmp_path)


def test_an_image_changed_while_the_gallery_is_embedded_makes_the_cache_stale(tmp_path):
    """The files are stamped before they are read: the cache records what was there then, and a later run sees
    the change (size or modification time) and refuses the cache rather than reuse embeddings of the old image."""
    from cir_lightning.retrieval.evaluator import RetrievalEvaluator
    from cir_lightning.retrieval.gallery_cache import GalleryCache

    images = [tmp_path / "a.png", tmp_path / "b.png"]
    for image in images:
        Image.new("RGB", (4, 4), "red").save(image)
    cache = GalleryCache(tmp_path / "cache")
    identity = {"dataset": "toy", "model": {"m": 1}, "images": [str(p) for p in images]}
    assert not cache.lookup("val", 0, "", ["a", "b"], **identity)  # listed and stamped
    Image.new("RGB", (8, 8), "blue").save(images[1])  # changed before (or while) the model reads it
    evaluator = RetrievalEvaluator(ks=[1])
    evaluator.galleries[0] = torch.eye(2)
    assert cache.save(evaluator)
    with pytest.raises(CIRDataError, match=r"image `.*b\.png` \(id `b`\) changed \(another size: .*\) since it was "
                                           r"written\. A stale"):
        GalleryCache(tmp_path / "cache").lookup("val", 0, "", ["a", "b"], **identity)
    images[0].unlink()  # deleted since: refused as well
    with pytest.raises(CIRDataError, match=r"image `.*a\.png` \(id `a`\) is gone since it was written; 1 more changed"):
        GalleryCache(tmp_path / "cache").lookup("val", 0, "", ["a", "b"], **identity)
    swapped = {**identity, "images": identity["images"][::-1]}  # the annotation file now maps the ids the other way
    with pytest.raises(CIRDataError, match="the ids name other image files than when it was written"):
        GalleryCache(tmp_path / "cache").lookup("val", 0, "", ["a", "b"], **swapped)
    with pytest.raises(CIRDataError, match=r"ids: 2 cached, 3 expected"):  # an id added to the gallery file
        GalleryCache(tmp_path / "cache").lookup("val", 0, "", ["a", "b", "c"], **identity)


def test_an_index_refuses_non_finite_embeddings_naming_the_images_before_any_shard_holds_them(tmp_path):
    from cir_lightning.index_shards import ShardWriter

    writer = ShardWriter(tmp_path / "shards", ["a.png", "b.png", "c.png"], 1, {"m": 1}, "/photos")
    trainer = types.SimpleNamespace(received_sigterm=False, global_rank=0)
    embeddings = torch.eye(2)
    embeddings[1, 0] = float("nan")
    prediction = {"index": torch.tensor([2, 1]), "embedding": embeddings}
    with pytest.raises(CIRDataError, match=r"1 of the .* are not finite \(NaN or inf\): rows 1 \(ids b.png\)"):
        writer.write_on_batch_end(trainer, None, prediction, None, {"index": torch.tensor([2, 1])}, 0)
    assert not (tmp_path / "shards").exists()


def _nan_gallery(monkeypatch):
    from cir_lightning.backbones.base import Backbone

    embed = Backbone.embed_batch

    def nan_for_row_3(self, batch, side):
        out = embed(self, batch, side)
        if side == "gallery":
            out[batch["index"] == 3] = float("nan")
        return out

    monkeypatch.setattr(Backbone, "embed_batch", nan_for_row_3)


def _common(tiny_model_dir: Path, root: Path) -> list[str]:
    return ["--config", str(CONF), "--model.backbone.init_args.model_name_or_path", str(tiny_model_dir),
            "--data.init_args.root", str(root / "data"), "--trainer.default_root_dir", str(root / "run")]


def test_predict_refuses_non_finite_embeddings_naming_their_ids_and_writes_nothing(tiny_model_dir, tmp_path,
                                                                                  monkeypatch, capsys):
    _nan_gallery(monkeypatch)
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", *_common(tiny_model_dir, tmp_path), "--predictions.folder", str(tmp_path / "embedded")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    gallery_id = json.loads((tmp_path / "data" / "gallery.jsonl").read_text().splitlines()[3])["image_id"]
    assert f"1 of the gallery embeddings of subset '0' are not finite (NaN or inf): rows 3 (ids {gallery_id})" in err
    assert "Traceback" not in err
    assert not (tmp_path / "embedded").exists()
    assert not [p for p in _everything(tmp_path) if Path(p).name.startswith(".predictions")]
