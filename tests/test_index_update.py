"""``cir-lightning index ROOT --out NEW --reuse OLD``: an index updated from an earlier one embeds only new or changed
images and equals a build from scratch, ids, rows and faiss index, bit for bit; OLD is never modified; what OLD
cannot give (another model, options, folder, no stamps) and an in-place update not asked for are one line."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cir_lightning.cli import main
from tests.test_faults_interrupts import _ctrl_c_after
from tests.test_image_index import _index_args, _photos

INDEX_FILES = ("ids.json", "embeddings.npy", "stamps.npy", "index.faiss")


def _args(photos: Path, out: Path, model: Path, *more: str) -> list[str]:
    """``index`` embedding one image per batch: a row then does not depend on which images share its batch (this
    model's rows differ in their last bit between batch sizes, in two builds from scratch as well)."""
    return _index_args(photos, out, model, "--batch-size", "1", *more)


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _edit(photos: Path) -> None:
    """Two photos added, one changed under its name, one deleted, one renamed (its size and time kept)."""
    Image.new("RGB", (20, 20), "orange").save(photos / "new.png")
    (photos / "sub" / "more").mkdir()
    Image.new("RGB", (16, 24), "purple").save(photos / "sub" / "more" / "violet.png")
    Image.new("RGB", (30, 20), "navy").save(photos / "green.jpg")  # another photo, same name
    (photos / "grey.png").unlink()
    os.rename(photos / "red.png", photos / "sub" / "red.png")


def _same_as_fresh(new: Path, fresh: Path, reused: Path) -> None:
    for name in INDEX_FILES:  # the ids, their order, each row, stamps and the faiss index, bit for bit
        assert (new / name).read_bytes() == (fresh / name).read_bytes(), name
    meta, scratch = json.loads((new / "meta.json").read_text()), json.loads((fresh / "meta.json").read_text())
    for entry in (meta, scratch):
        entry.pop("created", None)
        entry["image_index"].pop("source")
    assert meta["image_index"].pop("update")["from"] == str(reused)
    assert meta == scratch


@pytest.fixture
def old(tmp_path, tiny_model_dir):
    photos = _photos(tmp_path / "photos")
    main(_args(photos, tmp_path / "old", tiny_model_dir))
    return tmp_path / "old", photos


def test_an_update_embeds_only_new_or_changed_images_and_equals_a_build_from_scratch(old, tmp_path, tiny_model_dir,
                                                                                      capsys):
    folder, photos = old
    before = _files(folder)
    _edit(photos)
    capsys.readouterr()
    main(_args(photos, tmp_path / "new", tiny_model_dir, "--reuse", str(folder)))
    err = capsys.readouterr().err
    assert f"`--reuse` {folder}: 2 of its 5 rows are of unchanged files and are reused; 4 images are new or changed" \
        in err
    assert f"updated from {folder}: reused 2, embedded 4, dropped 3" in err
    update = json.loads((tmp_path / "new" / "meta.json").read_text())["image_index"]["update"]
    assert update == {"from": str(folder), "reused": 2, "embedded": 4, "dropped": 3}
    assert _files(folder) == before  # OLD is only read
    main(_args(photos, tmp_path / "fresh", tiny_model_dir, ))
    _same_as_fresh(tmp_path / "new", tmp_path / "fresh", folder)
    # the reused rows are OLD's, as stored
    ids, old_ids = (json.loads((f / "ids.json").read_text()) for f in (tmp_path / "new", folder))
    rows, old_rows = (np.load(f / "embeddings.npy") for f in (tmp_path / "new", folder))
    for kept in ("sub/blue.png", "sub/deeper/yellow.webp"):
        assert rows[ids.index(kept)].tobytes() == old_rows[old_ids.index(kept)].tobytes()
    # nothing changed since: everything reused, nothing embedded (no trainer is even made)
    main(_args(photos, tmp_path / "again", tiny_model_dir, "--reuse", str(tmp_path / "new")))
    assert "reused 6, embedded 0, dropped 0" in capsys.readouterr().err
    _same_as_fresh(tmp_path / "again", tmp_path / "fresh", tmp_path / "new")


def test_an_update_keeps_its_trained_faiss_type_retrained_on_the_new_rows(tmp_path, tiny_model_dir):
    photos = _photos(tmp_path / "photos")
    ivf = ("--factory", "IVF2,Flat", "--nprobe", "2")
    with pytest.warns(UserWarning, match="fewer than faiss's advised"):
        main(_args(photos, tmp_path / "ivf", tiny_model_dir, *ivf))
    _edit(photos)
    with pytest.warns(UserWarning, match="fewer than faiss's advised"):
        main(_args(photos, tmp_path / "new", tiny_model_dir, "--reuse", str(tmp_path / "ivf")))  # no --factory
    with pytest.warns(UserWarning, match="fewer than faiss's advised"):
        main(_args(photos, tmp_path / "fresh", tiny_model_dir, *ivf))
    search = json.loads((tmp_path / "new" / "meta.json").read_text())["image_index"]["search"]
    assert search == {"factory": "IVF2,Flat", "nprobe": 2, "ef_search": None}
    for name in INDEX_FILES:
        assert (tmp_path / "new" / name).read_bytes() == (tmp_path / "fresh" / name).read_bytes(), name


def test_an_update_of_an_auto_index_keeps_the_nprobe_given_to_auto(tmp_path, tiny_model_dir, monkeypatch):
    """`auto` chose Flat for OLD (no nprobe to record) and IVF for the grown folder: the nprobe given to OLD's `auto`
    is the IVF's, not auto's own choice (it was dropped with OLD's resolved settings)."""
    from cir_lightning.retrieval import search_config

    photos = _photos(tmp_path / "photos")
    main(_args(photos, tmp_path / "small", tiny_model_dir, "--factory", "auto", "--nprobe", "3"))
    small = json.loads((tmp_path / "small" / "meta.json").read_text())["image_index"]["search"]
    assert small == {"factory": "Flat", "nprobe": None, "ef_search": None, "asked": "auto", "asked_nprobe": 3}
    Image.new("RGB", (20, 20), "orange").save(photos / "new.png")
    monkeypatch.setattr(search_config, "AUTO_EXACT_ROWS", 6)  # the folder grew to where `auto` builds IVF
    for old, new in (("small", "big"), ("big", "again")):  # and from that IVF index again
        with pytest.warns(UserWarning, match="too few to train"):
            main(_args(photos, tmp_path / new, tiny_model_dir, "--reuse", str(tmp_path / old)))
        search = json.loads((tmp_path / new / "meta.json").read_text())["image_index"]["search"]
        assert search["factory"].startswith("IVF")
        assert search["nprobe"] == 3  # auto's own would be 8
        assert search["asked_nprobe"] == 3
    with pytest.warns(UserWarning, match="too few to train"):  # one given to the update wins
        main(_args(photos, tmp_path / "four", tiny_model_dir, "--reuse", str(tmp_path / "big"), "--nprobe", "4"))
    assert json.loads((tmp_path / "four" / "meta.json").read_text())["image_index"]["search"]["nprobe"] == 4


def test_an_update_in_place_only_when_asked_and_then_whole(old, tmp_path, tiny_model_dir, capsys):
    folder, photos = old
    _edit(photos)
    main(_args(photos, tmp_path / "fresh", tiny_model_dir))
    main(_args(photos, folder, tiny_model_dir, "--reuse", str(folder), "--overwrite"))
    assert "reused 2, embedded 4, dropped 3" in capsys.readouterr().err
    for name in INDEX_FILES:
        assert (folder / name).read_bytes() == (tmp_path / "fresh" / name).read_bytes(), name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fresh", "old", "photos"]  # nothing moved aside is left


def test_a_killed_update_continues_where_it_stopped(old, tmp_path, tiny_model_dir, monkeypatch, capsys):
    from cir_lightning.backbones.base import Backbone

    folder, photos = old
    _edit(photos)
    args = _args(photos, tmp_path / "new", tiny_model_dir, "--shard-size", "1",
                       "--reuse", str(folder))
    with monkeypatch.context() as patch:
        _ctrl_c_after(patch, Backbone, "embed_batch", calls=2)
        with pytest.raises(SystemExit) as exit_info:
            main(args)
    assert exit_info.value.code == 130
    assert not (tmp_path / "new").exists()
    capsys.readouterr()
    main(args)
    captured = capsys.readouterr()
    assert "resuming: 1 of 4 images were embedded by an earlier run" in captured.out
    assert "reused 2, embedded 4, dropped 3" in captured.err  # the update's, both runs together
    main(_args(photos, tmp_path / "fresh", tiny_model_dir))
    _same_as_fresh(tmp_path / "new", tmp_path / "fresh", folder)


@pytest.fixture(scope="module")
def refused(tmp_path_factory, tiny_model_dir):
    """An index, its images, a copy of them elsewhere and a copy of it written before stamps.npy (never changed)."""
    tmp = tmp_path_factory.mktemp("refused")
    photos = _photos(tmp / "photos")
    main(_args(photos, tmp / "old", tiny_model_dir))
    shutil.copytree(photos, tmp / "copy")
    shutil.copytree(tmp / "old", tmp / "older")
    (tmp / "older" / "stamps.npy").unlink()
    return tmp


@pytest.mark.parametrize(("images", "out", "more", "message"), [
    ("photos", "new", ["--dtype", "float16"], "`--reuse`: `{old}` holds float32 embeddings and this index is float16 "
     "(`--dtype`); give `--dtype float32`, or index without `--reuse`"),
    ("photos", "new", ["--max-short-edge", "16"], "`--reuse`: `{old}` was embedded otherwise than this build embeds "
     "(max_short_edge (`--max-short-edge`): it has None, this build has 16)"),
    ("photos", "new", ["--trainer.precision", "bf16-mixed"], "(model.precision: it has None, this build has "
     "'bf16-mixed')"),
    ("photos", "new", ["--model.backbone.init_args.prompts.preset", "e5v"], "model.fingerprint.prompts.gallery: it "
     "has '<image>', this build has '<|start_header_id|>"),
    ("photos", "new", ["--model.backbone.init_args.lora.r", "2"], "was embedded otherwise than this build embeds "
     "(model.weights: it has '"),
    ("photos", "old", [], "`--out`: `{old}` is the `--reuse` index, which is never replaced unless asked; write the "
     "update to a new folder, or add `--overwrite` to replace it once the update is complete"),
    ("photos", "new", ["--overwrite"], "`--overwrite` replaces the `--reuse` index with its update (`--out` the same "
     "folder) and nothing else"),
    ("photos", "new", ["--reuse", "{tmp}/nowhere"], "{tmp}/nowhere: does not exist (build an index with "),
    ("photos", "new", ["--reuse", "{tmp}/photos"], "{tmp}/photos/meta.json: does not exist: the index is incomplete"),
    ("photos", "new", ["--reuse", "{tmp}/older"], "`--reuse`: `{tmp}/older` has no stamps.npy (written before indexes "
     "recorded each file's size and modification time), so its rows cannot be matched to unchanged files"),
    ("copy", "new", [], "`--reuse`: `{old}` indexes the images below `{tmp}/photos`, not `{tmp}/copy`; if they moved "
     "there, add `--reuse-moved`"),
])
def test_what_an_update_cannot_reuse_is_one_line_and_nothing_is_written(images, out, more, message, refused,
                                                                         tiny_model_dir, capsys):
    tmp_path, folder = refused, refused / "old"
    fill = {"old": str(folder), "tmp": str(tmp_path)}
    before = _files(folder)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:  # the last --reuse given wins
        main(_args(tmp_path / images, tmp_path / out, tiny_model_dir, "--reuse", str(folder),
                         *[m.format(**fill) for m in more]))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("cir-lightning: error: ")
    assert message.format(**fill) in err
    assert len(err.strip().splitlines()) == 2  # the line, and how to see where it was raised
    assert _files(folder) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy", "old", "older", "photos"]  # refused before any work


def test_an_index_of_a_moved_folder_is_reused_when_asked(old, tmp_path, tiny_model_dir, capsys):
    folder, photos = old
    shutil.copytree(photos, tmp_path / "moved")  # copy2: sizes and modification times kept
    with pytest.raises(SystemExit):
        main(_args(tmp_path / "moved", tmp_path / "new", tiny_model_dir, "--reuse-moved"))
    assert "`--reuse-moved` says the `--reuse` index was built over another folder, and no `--reuse` is given" in \
        capsys.readouterr().err
    main(_args(tmp_path / "moved", tmp_path / "new", tiny_model_dir, "--reuse", str(folder), "--reuse-moved"))
    assert "reused 5, embedded 0, dropped 0" in capsys.readouterr().err
    assert (tmp_path / "new" / "embeddings.npy").read_bytes() == (folder / "embeddings.npy").read_bytes()
    assert json.loads((tmp_path / "new" / "meta.json").read_text())["image_index"]["root"] == \
        str((tmp_path / "moved").resolve())
