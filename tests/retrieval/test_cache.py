"""Embedding caches: round trip, refusal of anything stale, never overwriting."""

from __future__ import annotations

import json

import pytest
import torch

from cir_lightning.errors import CIRDataError, CIRFileError
from cir_lightning.retrieval.cache import load_embeddings, save_embeddings

MODEL = {"fingerprint": {"model": "tiny", "pooling": "eos_block"}, "weights": "abc123"}
WHERE = {"kind": "gallery", "dataset": "synthetic", "split": "val"}


@pytest.fixture
def cache(tmp_path):
    emb = torch.nn.functional.normalize(torch.randn(5, 3), dim=-1)
    path = save_embeddings(tmp_path / "gallery", emb, ["a", "b", "c", "d", "e"], model=MODEL, **WHERE)
    return path, emb


def test_round_trip_keeps_rows_ids_and_metadata(cache):
    path, emb = cache
    got, ids = load_embeddings(path, model=MODEL, ids=["a", "b", "c", "d", "e"], **WHERE)
    assert torch.equal(got, emb)
    assert ids == ["a", "b", "c", "d", "e"]
    meta = json.loads((path / "meta.json").read_text())
    assert (meta["count"], meta["dim"], meta["dtype"], meta["kind"]) == (5, 3, "float32", "gallery")


def test_float16_storage(tmp_path):
    emb = torch.randn(4, 8)
    path = save_embeddings(tmp_path / "g16", emb, list("abcd"), model=MODEL, dtype="float16", **WHERE)
    got, _ = load_embeddings(path, model=MODEL, **WHERE)
    assert got.dtype == torch.float32
    assert torch.allclose(got, emb, atol=1e-2)


@pytest.mark.parametrize(("change", "message"), [
    ({"model": {**MODEL, "weights": "other"}}, "model.weights: cached"),
    ({"dataset": "cirr"}, "dataset: cached 'synthetic', expected 'cirr'"),
    ({"split": "test"}, "split: cached 'val', expected 'test'"),
    ({"kind": "query"}, "kind: cached 'gallery', expected 'query'"),
    ({"ids": ["a", "b", "c", "e", "d"]}, "ids: 5 cached, 5 expected, or in another order"),
])
def test_any_mismatch_is_refused_with_what_differs(cache, change, message):
    path, _ = cache
    args = {"model": MODEL, **WHERE, **change}
    with pytest.raises(CIRDataError, match=message):
        load_embeddings(path, **args)


def test_edited_ids_file_is_detected(cache):
    path, _ = cache
    (path / "ids.json").write_text(json.dumps(["a", "b", "c", "d", "x"]))
    with pytest.raises(CIRDataError, match="ids.json was changed"):
        load_embeddings(path, model=MODEL, **WHERE)


def test_existing_cache_is_never_overwritten_unless_asked(cache):
    path, emb = cache
    with pytest.raises(CIRFileError) as info:
        save_embeddings(path, torch.zeros(5, 3), list("abcde"), model=MODEL, **WHERE)
    assert str(info.value) == (f"`{path}` already exists; it is never overwritten unless asked (choose another name, "
                               "or pass `overwrite=True` to replace it)")
    assert torch.equal(load_embeddings(path, model=MODEL, **WHERE)[0], emb)
    save_embeddings(path, torch.zeros(5, 3), list("abcde"), model=MODEL, overwrite=True, **WHERE)
    assert load_embeddings(path, model=MODEL, **WHERE)[0].abs().sum() == 0


def test_not_a_cache_is_a_clear_error(tmp_path):
    with pytest.raises(CIRDataError, match="not a readable embedding cache"):
        load_embeddings(tmp_path, model=MODEL, **WHERE)


def _edit_meta(**changes):
    def edit(path):
        meta = json.loads((path / "meta.json").read_text())
        meta.update(changes)
        (path / "meta.json").write_text(json.dumps({k: v for k, v in meta.items() if v is not None}))
    return edit


@pytest.mark.parametrize(("damage", "message"), [
    (lambda p: (p / "meta.json").write_text("[]"), "not an embedding cache (meta.json holds list, ids.json list"),
    (lambda p: (p / "ids.json").write_text("null"), "meta.json holds dict, ids.json null"),
    (lambda p: (p / "ids.json").write_bytes(b"\xff\xfe"), "not a readable embedding cache ('utf-8' codec"),
    (_edit_meta(count=None), "meta.json: `count` is None, not a whole number: the cache is damaged"),
    (_edit_meta(dim="3"), "meta.json: `dim` is '3', not a whole number"),
    (_edit_meta(dtype="bogus"), "meta.json: `dtype` is 'bogus', not float32 or float16"),
])
def test_a_damaged_cache_is_one_line_naming_it(cache, damage, message):
    path, _ = cache
    damage(path)
    with pytest.raises(CIRDataError) as info:
        load_embeddings(path, model=MODEL, **WHERE)
    assert message in str(info.value)
    assert str(info.value).startswith(f"{path}: ")


def test_a_float16_gallery_cache_used_for_evaluation_is_said_and_recorded(tmp_path):
    """`predict --predictions.dtype float16` folders are valid caches, but their rounded embeddings can swap
    near-ties: the evaluation says so and the results record it; float32 caches load without a word."""
    import warnings

    from cir_lightning.retrieval.gallery_cache import GalleryCache

    identity = {"kind": "gallery", "model": {"m": 1}, "dataset": "toy"}
    gallery = torch.nn.functional.normalize(torch.randn(3, 4), dim=1)
    save_embeddings(tmp_path / "val-dress-gallery", gallery, ["a", "b", "c"], split="val/dress", dtype="float16",
                    **identity)
    save_embeddings(tmp_path / "val-shirt-gallery", gallery, ["a", "b", "c"], split="val/shirt", **identity)
    cache = GalleryCache(tmp_path)
    with pytest.warns(UserWarning, match=r"val-dress-gallery` stores float16 embeddings: the metrics come from "
                                         r"rounded gallery embeddings"):
        assert cache.lookup("val", 0, "dress", ["a", "b", "c"], dataset="toy", model={"m": 1})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert cache.lookup("val", 1, "shirt", ["a", "b", "c"], dataset="toy", model={"m": 1})
    assert cache.report()["loaded_rounded"] == {str(tmp_path / "val-dress-gallery"): "float16"}
    assert "loaded_rounded" not in GalleryCache(tmp_path).report()


def test_a_gallery_cache_is_refused_when_its_ids_name_other_image_files(tmp_path):
    """Another gallery file with the same ids (or two swapped paths) reused the stale embeddings silently."""
    identity = {"kind": "gallery", "model": {"m": 1}, "dataset": "toy", "split": "val"}
    gallery = torch.eye(3)
    save_embeddings(tmp_path / "g", gallery, ["a", "b", "c"], images=["/d/a.png", "/d/b.png", "/d/c.png"], **identity)
    emb, _ = load_embeddings(tmp_path / "g", ids=["a", "b", "c"], images=["/d/a.png", "/d/b.png", "/d/c.png"],
                             **identity)
    assert torch.equal(emb, gallery)
    with pytest.raises(CIRDataError, match=r"the cache does not match: images: the ids name other image files"):
        load_embeddings(tmp_path / "g", ids=["a", "b", "c"], images=["/d/b.png", "/d/a.png", "/d/c.png"], **identity)
    save_embeddings(tmp_path / "old", gallery, ["a", "b", "c"], **identity)  # written without the record
    load_embeddings(tmp_path / "old", ids=["a", "b", "c"], images=["/x.png", "/y.png", "/z.png"], **identity)


def test_gallery_cache_lookup_checks_the_gallery_s_image_files(tmp_path):
    from types import SimpleNamespace

    from cir_lightning.data.datasets import GalleryDataset, GalleryItem
    from cir_lightning.retrieval import RetrievalEvaluator
    from cir_lightning.retrieval.gallery_cache import GalleryCache

    def gallery(*names):
        return GalleryDataset([GalleryItem(i, tmp_path / n, f"g.jsonl:{k + 1}") for k, (i, n) in
                               enumerate(zip("ab", names, strict=True))])

    cache, queries = GalleryCache(tmp_path / "cache"), SimpleNamespace(name="")
    assert cache.lookup_sets("val", [(queries, gallery("a.png", "b.png"))], dataset="toy", model={"m": 1}) == set()
    evaluator = RetrievalEvaluator(ks=[1])
    evaluator.galleries[0] = torch.eye(2)
    cache.save(evaluator)
    assert cache.lookup_sets("val", [(queries, gallery("a.png", "b.png"))], dataset="toy", model={"m": 1}) == {0}
    with pytest.raises(CIRDataError, match="images: the ids name other image files"):
        cache.lookup_sets("val", [(queries, gallery("b.png", "a.png"))], dataset="toy", model={"m": 1})


def test_a_full_disk_is_one_line_before_any_row_is_written_never_a_bus_error(tmp_path, monkeypatch):
    """A preallocated file is sparse: rows written through a memory map on a full disk were a SIGBUS (the process
    killed without a word, the temporary folder left). The blocks are reserved first (simulated here; on a
    256 KB tmpfs the unreserved write of 2 MB of rows was `Bus error`)."""
    import errno
    import os

    from cir_lightning.errors import CIRFileError
    from cir_lightning.retrieval.embedding_folder import reserve

    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "posix_fallocate", full)
    with pytest.raises(CIRFileError, match="cannot write `.*gallery`: no space left on the device"):
        save_embeddings(tmp_path / "gallery", torch.ones(8, 4), list("abcdefgh"), model=MODEL, **WHERE)
    assert list(tmp_path.iterdir()) == []  # nothing left behind, no temporary folder

    def unsupported(fd, offset, length):
        raise OSError(errno.EOPNOTSUPP, os.strerror(errno.EOPNOTSUPP))

    monkeypatch.setattr(os, "posix_fallocate", unsupported)  # a file system that cannot reserve: written as before
    (tmp_path / "f").write_bytes(b"123")
    reserve(tmp_path / "f")
    assert (tmp_path / "f").read_bytes() == b"123"
    monkeypatch.delattr(os, "posix_fallocate")  # macOS and Windows have none: written as before
    reserve(tmp_path / "f")
    assert (tmp_path / "f").read_bytes() == b"123"


def test_two_runs_sharing_a_cache_folder_both_finish_and_the_first_cache_is_kept(tmp_path, monkeypatch):
    """Both looked the gallery up before either wrote it: the second used to fail after its whole evaluation
    (`already exists; pass overwrite=True`), before writing its results."""
    import shutil

    import cir_lightning.retrieval.gallery_cache as gallery_cache
    from cir_lightning.retrieval.evaluator import RetrievalEvaluator
    from cir_lightning.retrieval.gallery_cache import GalleryCache

    folder = tmp_path / "caches"
    first, second, third = (GalleryCache(folder) for _ in range(3))
    for cache in (first, second, third):
        assert not cache.lookup("val", 0, "", ["a", "b"], dataset="toy", model=MODEL)
    evaluator = RetrievalEvaluator(ks=[1])
    evaluator.galleries[0] = torch.eye(2)
    assert [p.name for p in first.save(evaluator)] == ["val-0-gallery"]
    kept = shutil.copytree(folder / "val-0-gallery", tmp_path / "kept")
    evaluator.galleries[0] = torch.eye(2) * 2
    with pytest.warns(UserWarning, match="was written by another run meanwhile: kept as it is"):
        assert second.save(evaluator) == []
    real = gallery_cache.save_embeddings

    def raced(path, *args, **kwargs):  # the other run's cache appears while this one writes its own
        shutil.copytree(kept, path)
        return real(path, *args, **kwargs)

    shutil.rmtree(folder / "val-0-gallery")
    monkeypatch.setattr(gallery_cache, "save_embeddings", raced)
    with pytest.warns(UserWarning, match="was written by another run meanwhile"):
        assert third.save(evaluator) == []
    got, _ = load_embeddings(folder / "val-0-gallery", model=MODEL, dataset="toy", split="val/0", kind="gallery")
    assert torch.equal(got, torch.eye(2))


def test_an_npy_file_of_python_objects_is_never_memory_mapped_as_embeddings(tmp_path):
    """np.memmap read the pickle bytes of an object array as if they were numbers (np.load refuses them)."""
    import numpy as np

    from cir_lightning.retrieval.embedding_folder import array_of

    np.save(tmp_path / "objects.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    with (tmp_path / "objects.npy").open("rb") as file, pytest.raises(ValueError, match="holds Python objects"):
        array_of(file)
    np.save(tmp_path / "numbers.npy", np.eye(2, dtype=np.float32))
    with (tmp_path / "numbers.npy").open("rb") as file:
        assert array_of(file).tolist() == [[1.0, 0.0], [0.0, 1.0]]
