"""A gallery cache whose images changed is refused naming the first changed or gone image, its id and how it
changed, from the cache's ``stamps.npy`` (it said only "image files changed since it was written")."""

from __future__ import annotations

import json
import os
import re
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from cir_lightning.errors import CIRDataError
from cir_lightning.retrieval.cache import load_embeddings, save_embeddings
from cir_lightning.retrieval.embedding_folder import array_of, opened_files

WHERE = {"kind": "gallery", "model": {"m": 1}, "dataset": "toy", "split": "val"}
IDS = ["a", "b", "c", "d"]
GENERIC = "images: image files changed since it was written (size or modification time: the images were made or " \
          "copied again)"


@pytest.fixture
def cached(tmp_path):
    """A cache of four images, written with their stamps; the images' paths."""
    images = [tmp_path / f"{name}.png" for name in IDS]
    for k, image in enumerate(images):
        image.write_bytes(b"x" * (10 + k))
    save_embeddings(tmp_path / "cache", torch.eye(4), IDS, images=images, **WHERE)
    return tmp_path / "cache", images


def _refusal(folder, images) -> str:
    with pytest.raises(CIRDataError) as refused:
        load_embeddings(folder, ids=IDS, images=images, **WHERE)
    text = str(refused.value)
    assert "\n" not in text
    assert text.startswith(f"{folder}: the cache does not match: ")
    assert text.endswith(". A stale cache is never used: re-embed with `overwrite_cache: true` (or delete the folder)")
    return text[len(f"{folder}: the cache does not match: "):text.index(". A stale cache")]


def _touch(image, seconds=5):
    stat = image.stat()
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns + seconds * 10**9))


def test_the_cache_records_each_image_s_stamp_by_row(cached):
    folder, images = cached
    stamps = np.load(folder / "stamps.npy")
    assert stamps.dtype == np.int64
    assert stamps.tolist() == [[p.stat().st_size, p.stat().st_mtime_ns] for p in images]
    assert load_embeddings(folder, ids=IDS, images=images, **WHERE)[1] == IDS  # unchanged: loaded


def test_a_touched_image_is_named_with_its_id_and_its_new_modification_time(cached):
    folder, images = cached
    _touch(images[1])
    line = _refusal(folder, images)
    assert re.fullmatch(rf"images: image `{re.escape(str(images[1]))}` \(id `b`\) changed \(same size, another "
                        r"modification time: \S+ \S+, \S+ \S+ when embedded\) since it was written", line), line


def test_an_image_replaced_by_one_of_another_size_is_named_with_both_sizes(cached):
    folder, images = cached
    images[2].write_bytes(b"y" * 99)
    assert _refusal(folder, images) == (f"images: image `{images[2]}` (id `c`) changed (another size: 99 bytes, 12 "
                                        "when embedded) since it was written")


def test_a_gone_image_is_named(cached):
    folder, images = cached
    images[3].unlink()
    assert _refusal(folder, images) == f"images: image `{images[3]}` (id `d`) is gone since it was written"


def test_several_changed_images_name_the_first_and_count_the_others(cached):
    folder, images = cached
    _touch(images[3])
    images[1].unlink()
    images[2].write_bytes(b"z")
    assert _refusal(folder, images) == (f"images: image `{images[1]}` (id `b`) is gone since it was written; 2 more "
                                        "changed or gone")


def test_a_cache_written_before_stamps_says_only_that_images_changed(cached):
    folder, images = cached
    (folder / "stamps.npy").unlink()  # as a cache of an earlier version: its meta.json digests alone
    _touch(images[0])
    assert _refusal(folder, images) == GENERIC


@pytest.mark.parametrize(("damage", "said"), [
    (lambda path: path.write_bytes(b"not a .npy"), r"cannot be read \(.+\)"),
    (lambda path: np.save(path, np.zeros((3, 2), dtype=np.int64)), r"holds int64 \(3, 2\), not int64 \(4, 2\)"),
    (lambda path: np.save(path, np.zeros((4, 2), dtype=np.float64)), r"holds float64 \(4, 2\), not int64 \(4, 2\)"),
    (lambda path: np.save(path, np.zeros((4, 2), dtype=np.int64)), "holds other stamps than meta.json records"),
])
def test_a_damaged_stamps_file_is_said_in_the_one_line(cached, damage, said):
    folder, images = cached
    damage(folder / "stamps.npy")
    _touch(images[0])
    line = _refusal(folder, images)
    assert re.fullmatch(re.escape(GENERIC) + rf"; its stamps.npy, which would name them, {said}: it is damaged",
                        line), line


def _truncate(path):
    path.write_bytes(path.read_bytes()[:-9])


DAMAGES = [
    (lambda path: path.write_bytes(b"not a .npy"), r"cannot be read \(.+\)"),
    (_truncate, r"cannot be read \(.+\)"),
    (lambda path: np.save(path, np.zeros((3, 2), dtype=np.int64)), r"holds int64 \(3, 2\), not int64 \(4, 2\)"),
    (lambda path: np.save(path, np.zeros((4, 3), dtype=np.int64)), r"holds int64 \(4, 3\), not int64 \(4, 2\)"),
    (lambda path: np.save(path, np.zeros((4, 2), dtype=np.float64)), r"holds float64 \(4, 2\), not int64 \(4, 2\)"),
    (lambda path: np.save(path, np.zeros((4, 2), dtype=np.int64)), "holds other stamps than meta.json records"),
]


@pytest.mark.parametrize("given_images", [True, False])
@pytest.mark.parametrize(("damage", "said"), DAMAGES)
def test_a_damaged_stamps_file_of_a_matching_cache_refuses_it(cached, damage, said, given_images):
    """Its images unchanged (the meta.json digests match), the cache was used with a damaged stamps.npy without a
    word: the file was read only to name changed images. A cache is trusted whole or refused, as the index is."""
    folder, images = cached
    damage(folder / "stamps.npy")
    with pytest.raises(CIRDataError) as refused:
        load_embeddings(folder, ids=IDS, images=images if given_images else None, **WHERE)
    assert re.fullmatch(re.escape(f"{folder}: stamps.npy ") + said + re.escape(
        ": the cache is damaged; re-embed with `overwrite_cache: true` (or delete the folder)"), str(refused.value))


def test_a_matching_cache_s_stamps_are_compared_not_digested(cached, monkeypatch):
    """Digesting a million stamps takes seconds: a load given its images compares the stamps with theirs."""
    import cir_lightning.retrieval.cache_stamps as cache_stamps

    folder, images = cached
    monkeypatch.setattr(cache_stamps, "stamps_digest", lambda stamps: pytest.fail("the stored stamps were digested"))
    assert load_embeddings(folder, ids=IDS, images=images, **WHERE)[1] == IDS
    (folder / "stamps.npy").unlink()  # a cache written before stamps.npy: loaded on its meta.json digests
    assert load_embeddings(folder, ids=IDS, images=images, **WHERE)[1] == IDS


def test_the_stamps_are_read_from_the_folder_the_other_files_are_read_from(cached, tmp_path):
    """A cache replaced while it is read (another run's `overwrite_cache`) is read whole from one folder."""
    folder, images = cached
    before = np.load(folder / "stamps.npy")
    with opened_files(folder) as files:
        _touch(images[0])
        save_embeddings(tmp_path / "other", torch.eye(4), IDS, images=images, **WHERE)
        shutil.rmtree(folder)
        (tmp_path / "other").rename(folder)  # the cache now there holds the new stamps
        assert np.array_equal(array_of(files["stamps.npy"]), before)
    assert not np.array_equal(np.load(folder / "stamps.npy"), before)


def test_a_gallery_cache_records_the_stamps_taken_before_its_images_were_read(tmp_path):
    from cir_lightning.data.datasets import GalleryDataset, GalleryItem
    from cir_lightning.retrieval import RetrievalEvaluator
    from cir_lightning.retrieval.gallery_cache import GalleryCache

    images = [tmp_path / "a.png", tmp_path / "b.png"]
    for image in images:
        image.write_bytes(b"12345")
    gallery = GalleryDataset([GalleryItem(i, p, f"g.jsonl:{k + 1}")
                              for k, (i, p) in enumerate(zip("ab", images, strict=True))])
    sets = [(SimpleNamespace(name="dress"), gallery)]
    cache = GalleryCache(tmp_path / "caches")
    assert cache.lookup_sets("val", sets, dataset="toy", model={"m": 1}) == set()
    stamps = [[p.stat().st_size, p.stat().st_mtime_ns] for p in images]
    _touch(images[1])  # read (embedded) after the lookup: the cache holds the stamp it was listed with
    evaluator = RetrievalEvaluator(ks=[1])
    evaluator.galleries[0] = torch.eye(2)
    [written] = cache.save(evaluator)
    assert np.load(written / "stamps.npy").tolist() == stamps
    assert json.loads((written / "meta.json").read_text())["count"] == 2
    with pytest.raises(CIRDataError, match=rf"images: image `{re.escape(str(images[1]))}` \(id `b`\) changed \(same "
                                           r"size, another modification time: .* since it was written\. A stale"):
        GalleryCache(tmp_path / "caches").lookup_sets("val", sets, dataset="toy", model={"m": 1})
