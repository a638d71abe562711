"""BGE-VL's embedding files: an embedding file and its identity file appear together or not at all, so a failed
write never leaves embeddings that a later `--load_embedding` takes for BGE-VL's own (checked by size only)."""

from __future__ import annotations

import errno
import os

import numpy as np
import pytest

import cir_lightning.retrieval.memmap as memmap
from cir_lightning.errors import CIRFileError


@pytest.mark.parametrize("failing", [".memmap", ".json"])
def test_a_write_that_fails_leaves_neither_file(tmp_path, monkeypatch, failing):
    written = []
    real = memmap.write_atomic

    def full_disk(path, data, **kwargs):
        if str(path).endswith(failing):
            raise CIRFileError(f"cannot write `{path}`: {os.strerror(errno.ENOSPC)}")
        written.append(path.name)
        return real(path, data, **kwargs)

    monkeypatch.setattr(memmap, "write_atomic", full_disk)
    with pytest.raises(CIRFileError):
        memmap.write_memmap(tmp_path / "e.memmap", np.eye(2, 3), {"ids": ["a", "b"], "model": {"m": 1}})
    assert list(tmp_path.iterdir()) == []
    assert written in ([], ["e.memmap.json"])  # the identity first: the embeddings never stand alone
    monkeypatch.setattr(memmap, "write_atomic", real)
    path = memmap.write_memmap(tmp_path / "e.memmap", np.eye(2, 3), {"ids": ["a", "b"], "model": {"m": 1}})
    with pytest.raises(Exception, match="does not match this run"):  # and then the identity is checked
        memmap.read_memmap(path, 2, 3, {"ids": ["a", "b"], "model": {"m": 2}})


def test_an_embedding_file_reads_back_with_its_identity_and_says_when_and_by_what_it_was_written(tmp_path):
    import json

    import numpy as np

    from cir_lightning import __version__
    from cir_lightning.retrieval.memmap import read_memmap, write_memmap

    rows = np.arange(6, dtype=np.float32).reshape(2, 3)
    path = write_memmap(tmp_path / "e.memmap", rows, {"ids": ["a", "b"], "model": {"weights": "ab"}})
    assert read_memmap(path, 2, 3, {"ids": ["a", "b"], "model": {"weights": "ab"}}).numpy().tolist() == rows.tolist()
    meta = json.loads((tmp_path / "e.memmap.json").read_text())  # the identity file beside it
    assert meta["cir_lightning"] == __version__
    assert meta["created"].endswith("+00:00")


def test_images_changed_since_are_named_as_a_cache_names_them_and_malformed_stamps_are_damage(tmp_path):
    """The memmap check and the cache check share one comparison and wording (`image_stamps.changed_line`)."""
    from cir_lightning.errors import CIRDataError
    from cir_lightning.retrieval.image_stamps import file_stamp
    from cir_lightning.retrieval.memmap import read_memmap, write_memmap

    images = [tmp_path / "a.png", tmp_path / "b.png"]
    for image in images:
        image.write_bytes(b"1234")
    identity = {"ids": ["a", "b"], "model": {"m": 1}}
    path = write_memmap(tmp_path / "e.memmap", np.eye(2, 3),
                        {**identity, "image_stamps": [file_stamp(p) for p in images]})
    images[1].write_bytes(b"123456")
    with pytest.raises(CIRDataError, match=rf"e\.memmap: image `{tmp_path}/b\.png` \(id `b`\) changed \(another size: "
                                           r"6 bytes, 4 when embedded\) since these embeddings were saved: they are"):
        read_memmap(path, 2, 3, identity, images)
    bad = write_memmap(tmp_path / "bad.memmap", np.eye(2, 3), {**identity, "image_stamps": [[4, 1, 2], None]})
    with pytest.raises(CIRDataError, match=r"`image_stamps` does not hold one stamp per row: the identity file is "
                                           "damaged"):
        read_memmap(bad, 2, 3, identity, images)
