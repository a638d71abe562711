"""The synthetic benchmark: deterministic, correct targets, hard negatives, never overwrites."""

from __future__ import annotations

import json

import pytest

from cir_lightning.data.synthetic import (
    ATTRIBUTES,
    SCENES,
    SyntheticCIRDataModule,
    make_synthetic_cir,
    scene_id,
)
from cir_lightning.errors import CIRDataError, CIRFileError

_BY_ID = {scene_id(s): s for s in SCENES}


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_same_seed_same_data_other_seed_other_split(tmp_path):
    a = make_synthetic_cir(tmp_path / "a", seed=3, num_train=50, num_val=10, image_size=32)
    b = make_synthetic_cir(tmp_path / "b", seed=3, num_train=50, num_val=10, image_size=32)
    c = make_synthetic_cir(tmp_path / "c", seed=4, num_train=50, num_val=10, image_size=32)
    for name in ("train.jsonl", "val_queries.jsonl", "gallery.jsonl"):
        assert (a / name).read_text() == (b / name).read_text()
    assert (a / "images" / "scene_007.png").read_bytes() == (b / "images" / "scene_007.png").read_bytes()
    assert (a / "train.jsonl").read_text() != (c / "train.jsonl").read_text()


def test_targets_differ_from_references_in_exactly_one_named_attribute(synthetic_root):
    for row in _rows(synthetic_root / "train.jsonl"):
        ref, tgt = _BY_ID[row["reference_id"]], _BY_ID[row["target_id"]]
        changed = [a for a, r, t in zip(ATTRIBUTES, ref, tgt, strict=True) if r != t]
        assert len(changed) == 1
        attr = changed[0]
        value = tgt[ATTRIBUTES.index(attr)]
        word = {"small": ("small", "smaller"), "large": ("large", "bigger")}.get(value, (value,))
        assert any(w in row["modification"] for w in word), row
    val = _rows(synthetic_root / "val_queries.jsonl")
    train_pairs = {(r["reference_id"], r["target_id"]) for r in _rows(synthetic_root / "train.jsonl")}
    assert all((q["reference_id"], q["target_id"]) not in train_pairs for q in val)  # held out
    assert all(q["exclude_ids"] == [q["reference_id"]] for q in val)


def test_gallery_holds_every_scene_so_every_one_attribute_neighbour_is_a_hard_negative(synthetic_root):
    ids = [r["image_id"] for r in _rows(synthetic_root / "gallery.jsonl")]
    assert len(ids) == len(set(ids)) == 576


def test_generator_never_overwrites_and_checks_sizes(tmp_path):
    (tmp_path / "x").mkdir()
    with pytest.raises(CIRFileError, match="x` already exists; it is never overwritten"):
        make_synthetic_cir(tmp_path / "x")
    with pytest.raises(CIRDataError, match="exceeds"):
        make_synthetic_cir(tmp_path / "y", num_train=11000, num_val=500)


def test_datamodule_generates_once_and_refuses_foreign_or_mismatching_folders(tmp_path):
    dm = SyntheticCIRDataModule(str(tmp_path / "d"), num_train=20, num_val=5, image_size=16)
    dm.prepare_data()
    stamp = (tmp_path / "d" / "train.jsonl").stat().st_mtime_ns
    dm.prepare_data()  # reused, not rewritten
    assert (tmp_path / "d" / "train.jsonl").stat().st_mtime_ns == stamp
    with pytest.raises(CIRDataError, match="not with"):
        SyntheticCIRDataModule(str(tmp_path / "d"), num_train=21, num_val=5, image_size=16).prepare_data()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("user data")
    with pytest.raises(CIRDataError, match="not written by the synthetic generator"):
        SyntheticCIRDataModule(str(tmp_path / "mine")).prepare_data()
    assert (tmp_path / "mine" / "notes.txt").read_text() == "user data"


def test_a_failing_write_leaves_no_folder_and_raises_one_line(tmp_path, monkeypatch):
    import errno

    from PIL import Image

    from cir_lightning.errors import CIRFileError

    real_save = Image.Image.save
    saved = []

    def save(self, *args, **kwargs):
        saved.append(1)
        if len(saved) == 100:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(self, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", save)
    with pytest.raises(CIRFileError) as info:
        make_synthetic_cir(tmp_path / "d", num_train=5, num_val=3, image_size=8)
    assert str(info.value) == f"cannot write `{tmp_path / 'd'}`: no space left on the device"
    assert list(tmp_path.iterdir()) == []  # neither the folder nor its temporary twin


def test_an_existing_folder_is_never_touched(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "train.jsonl").write_text("mine")
    with pytest.raises(CIRFileError) as info:
        make_synthetic_cir(tmp_path / "d", num_train=5, num_val=3, image_size=8)
    assert str(info.value) == f"`{tmp_path / 'd'}` already exists; it is never overwritten (choose another name, or remove it)"
    assert (tmp_path / "d" / "train.jsonl").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]


def test_a_folder_made_meanwhile_with_the_same_arguments_is_reused(tmp_path, monkeypatch):
    from cir_lightning.data import synthetic

    args = {"num_train": 5, "num_val": 3, "image_size": 8}
    make_synthetic_cir(tmp_path / "other", **args)
    real = synthetic.make_synthetic_cir

    def racing(out, **kwargs):  # another process finishes first
        real(out, **kwargs)
        return real(out, **kwargs)

    monkeypatch.setattr(synthetic, "make_synthetic_cir", racing)
    SyntheticCIRDataModule(str(tmp_path / "d"), **args).prepare_data()  # no error: same arguments
    assert (tmp_path / "d" / "train.jsonl").read_text() == (tmp_path / "other" / "train.jsonl").read_text()


def test_a_broken_marker_is_reported_not_a_traceback(tmp_path):
    root = make_synthetic_cir(tmp_path / "d", num_train=5, num_val=3, image_size=8)
    (root / "synthetic.json").write_text('{"seed": 0,')
    with pytest.raises(CIRDataError, match=r"synthetic\.json:1: malformed JSON"):
        SyntheticCIRDataModule(str(root), num_train=5, num_val=3, image_size=8).prepare_data()
