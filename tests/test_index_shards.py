"""The unfinished build of an index (``<index>.partial/``) that a crash, a full disk or a hand left damaged: each
damaged shard or list of unreadable images is one line naming it, never a library error while assembling."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from cir_lightning.errors import CIRDataError
from cir_lightning.index_shards import SHARD_SPLIT, read_shards, read_unreadable
from cir_lightning.retrieval.cache import save_embeddings

MODEL = {"fingerprint": {"model": "tiny"}, "weights": "abc"}


@pytest.fixture
def partial(tmp_path):
    partial = tmp_path / "index.partial"
    for n, ids in enumerate([["a.png", "b.png", "c.png"], ["d.png"]]):
        save_embeddings(partial / "shards" / f"tok-r000-{n:05d}", np.eye(len(ids), 4), ids, kind="gallery",
                        model=MODEL, dataset="/photos", split=SHARD_SPLIT, extra={"stamps": {}})
    return partial


def _first(partial):
    return partial / "shards" / "tok-r000-00000"


@pytest.mark.parametrize(("damage", "message"), [
    (lambda s: (s / "embeddings.npy").write_bytes((s / "embeddings.npy").read_bytes()[:140]), "cannot be read"),
    (lambda s: (s / "embeddings.npy").unlink(), "cannot be read"),
    (lambda s: np.save(s / "embeddings.npy", np.zeros((1, 4), np.float32)), "do not agree"),
    (lambda s: (s / "meta.json").write_text("[]"), "do not agree"),
    (lambda s: (s / "meta.json").write_text("{"), "cannot be read"),
    (lambda s: (s / "ids.json").write_text(json.dumps(["b.png", "a.png", "c.png"])), "do not agree"),
    (lambda s: (s / "ids.json").write_bytes(b"\xff"), "cannot be read"),
])
def test_a_damaged_shard_is_one_line_naming_it_and_removing_it_resumes(partial, damage, message):
    damage(_first(partial))
    with pytest.raises(CIRDataError) as info:
        read_shards(partial / "shards", MODEL, partial)
    text = str(info.value)
    assert text.startswith(f"{_first(partial)}: a shard of the unfinished index")
    assert message in text
    assert "remove it (its images are embedded again)" in text
    assert "\n" not in text
    shutil.rmtree(_first(partial))  # what the message says: the other shards are kept
    assert [ids for _, ids, _ in read_shards(partial / "shards", MODEL, partial)] == [["d.png"]]


def test_a_damaged_list_of_unreadable_images_is_one_line(partial):
    (partial / "unreadable-tok-r000.json").write_text(json.dumps({"x.png": "truncated"}))
    assert read_unreadable(partial) == {"x.png": "truncated"}
    (partial / "unreadable-tok-r001.json").write_text('{"y.png": "cut')
    with pytest.raises(CIRDataError, match=r"unreadable-tok-r001\.json:1: malformed JSON"):
        read_unreadable(partial)
    (partial / "unreadable-tok-r001.json").write_text("[1]")
    with pytest.raises(CIRDataError, match=r"unreadable-tok-r001\.json: is damaged .*remove it: its images are tried"):
        read_unreadable(partial)
