"""Base-checkpoint identity: a digest of the files (not the path) in every fingerprint, and readable folders."""

from __future__ import annotations

import builtins
import hashlib
import os
import shutil
import warnings

import pytest
import torch

from cir_lightning.backbones import (
    DualEncoderBackbone,
    HFMultimodalBackbone,
    XGenMMBackbone,
    build_backbone,
    identity,
    make_tiny_model,
)
from cir_lightning.backbones.identity import check_readable, checkpoint_digest
from cir_lightning.checkpointing import check_and_complete
from cir_lightning.errors import CIRDataError, CIRModelError
from cir_lightning.retrieval.evaluator import RetrievalEvaluator
from cir_lightning.retrieval.gallery_cache import GalleryCache

warnings.filterwarnings("ignore", category=FutureWarning)


@pytest.fixture(autouse=True)
def _private_store(tmp_path, monkeypatch):
    monkeypatch.setenv("CIR_LIGHTNING_CACHE", str(tmp_path / "store"))


def _identity(bb) -> dict:
    return {"fingerprint": bb.fingerprint(), "weights": bb.weights_digest()}


def test_a_replaced_base_model_changes_the_fingerprint_and_the_cache_refuses_it(tmp_path):
    folder = make_tiny_model(tmp_path / "M")
    old = HFMultimodalBackbone(str(folder))
    cache = GalleryCache(tmp_path / "cache")
    assert not cache.lookup("val", 0, "all", ["a", "b"], dataset="toy", model=_identity(old))
    evaluator = RetrievalEvaluator(ks=[1])
    evaluator.galleries[0] = torch.eye(2)
    cache.save(evaluator)

    make_tiny_model(folder, overwrite=True, seed=1)  # the same path, other weights
    new = HFMultimodalBackbone(str(folder))
    assert new.fingerprint()["model"] == old.fingerprint()["model"]
    assert new.fingerprint()["base_digest"] != old.fingerprint()["base_digest"]
    assert new.weights_digest() == old.weights_digest()  # no LoRA: only the base digest tells them apart
    with pytest.raises(CIRDataError, match=r"does not match: model\.fingerprint\.base_digest: cached "):
        GalleryCache(tmp_path / "cache").lookup("val", 0, "all", ["a", "b"], dataset="toy",
                                               model=_identity(new))
    # the digest is taken once, when the model is loaded: the old backbone keeps its own
    assert old.fingerprint()["base_digest"] != checkpoint_digest(folder)


def test_the_same_files_in_another_folder_have_the_same_digest(tiny_model_dir, tmp_path):
    moved = shutil.copytree(tiny_model_dir, tmp_path / "elsewhere")
    (moved / "README.md").write_text("notes do not change the embeddings")
    assert checkpoint_digest(moved) == checkpoint_digest(tiny_model_dir)
    a, b = HFMultimodalBackbone(str(tiny_model_dir)), HFMultimodalBackbone(str(moved))
    assert a.fingerprint()["base_digest"] == b.fingerprint()["base_digest"]
    (moved / "tokenizer_config.json").write_text((moved / "tokenizer_config.json").read_text() + " ")
    assert checkpoint_digest(moved) != checkpoint_digest(tiny_model_dir)  # tokenizer files count


def test_every_family_carries_the_base_digest(tmp_path):
    xgenmm = XGenMMBackbone(str(tmp_path / "x"), make_tiny_if_missing=True)
    dual = DualEncoderBackbone(str(tmp_path / "c"), make_tiny_if_missing=True)
    assert xgenmm.fingerprint()["base_digest"] == checkpoint_digest(tmp_path / "x")
    assert dual.fingerprint()["base_digest"] == checkpoint_digest(tmp_path / "c")
    assert xgenmm.fingerprint()["base_digest"] != dual.fingerprint()["base_digest"]


def test_the_digest_store_hashes_a_large_file_once(tmp_path, monkeypatch):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(os.urandom(4096))
    monkeypatch.setattr(identity, "_REMEMBER_FROM", 1024)  # the weights count as large, config.json not
    reads = []
    real_hash = identity._hash_file
    monkeypatch.setattr(identity, "_hash_file", lambda path: reads.append(os.path.basename(path)) or real_hash(path))
    first = checkpoint_digest(folder)
    assert sorted(reads) == ["config.json", "model.safetensors"]
    assert (tmp_path / "store" / "file-digests.json").is_file()
    reads.clear()
    assert checkpoint_digest(folder) == first
    assert reads == ["config.json"]  # the large file's hash came from the store
    (folder / "model.safetensors").write_bytes(os.urandom(4096))  # same size, new content and mtime
    reads.clear()
    assert checkpoint_digest(folder) != first
    assert "model.safetensors" in reads


def test_a_store_that_cannot_be_written_only_warns(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("CIR_LIGHTNING_CACHE", str(blocker / "sub"))  # a file stands where the folder should be
    monkeypatch.setattr(identity, "_REMEMBER_FROM", 1)
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    with pytest.warns(UserWarning, match="cannot remember checkpoint file digests.*CIR_LIGHTNING_CACHE"):
        digest = checkpoint_digest(folder)
    assert len(digest) == 64


def test_every_model_load_in_one_process_warns_of_a_store_that_cannot_be_written(tiny_model_dir, tmp_path,
                                                                                 monkeypatch):
    """Two runs in one process (tests, notebooks, ``reproduce``) each load their model: each says once why its
    start is slow (a process-wide flag silenced the second run's)."""
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("CIR_LIGHTNING_CACHE", str(blocker / "sub"))
    monkeypatch.setattr(identity, "_REMEMBER_FROM", 1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")  # Python's own: a message once per code location, unless said otherwise
        for _ in range(2):
            HFMultimodalBackbone(str(tiny_model_dir))
    said = [w for w in caught if "cannot remember checkpoint file digests" in str(w.message)]
    assert len(said) == 2


def test_hub_cache_blobs_are_identified_by_their_name_without_reading(tmp_path, monkeypatch):
    content = os.urandom(2048)
    sha = hashlib.sha256(content).hexdigest()
    repo = tmp_path / "hub" / "models--org--tiny"
    (repo / "blobs").mkdir(parents=True)
    (repo / "blobs" / sha).write_bytes(content)
    (repo / "blobs" / "config").write_text("{}")  # small files: git sha1 blob names, read as usual
    snapshot = repo / "snapshots" / "0123abc"
    snapshot.mkdir(parents=True)
    (snapshot / "model.safetensors").symlink_to(repo / "blobs" / sha)
    (snapshot / "config.json").symlink_to(repo / "blobs" / "config")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abc")
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "model.safetensors").write_bytes(content)
    (plain / "config.json").write_text("{}")
    expected = checkpoint_digest(plain)  # a local copy of the snapshot: the content is hashed

    monkeypatch.setattr(identity, "_REMEMBER_FROM", 1)
    real_hash = identity._hash_file

    def no_weights(path: str) -> str:
        assert not path.endswith(sha), "a hub blob was read"
        return real_hash(path)

    monkeypatch.setattr(identity, "_hash_file", no_weights)
    assert checkpoint_digest(snapshot) == expected
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    assert checkpoint_digest("org/tiny") == expected  # a hub name: its downloaded snapshot
    assert checkpoint_digest("org/other", revision="v2") == "name:org/other@v2"  # nothing downloaded


class _Module(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lora = torch.nn.Linear(2, 1)


def _load(fingerprint_then: dict, fingerprint_now: dict) -> list[str]:
    module = _Module()
    checkpoint = {"state_dict": {k: v.clone() for k, v in module.state_dict().items()},
                  "cir_lightning": {"fingerprint": fingerprint_then, "trainable": ["lora.weight", "lora.bias"]}}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_and_complete(module, checkpoint, fingerprint_now)
    return [str(w.message) for w in caught if "base" in str(w.message)]


def test_loading_a_checkpoint_compares_the_base_weights_not_the_path():
    a, b = "a" * 64, "b" * 64
    assert _load({"model": "/old/M", "base_digest": a}, {"model": "/new/M", "base_digest": a}) == []  # moved
    (message,) = _load({"model": "/data/M", "base_digest": a}, {"model": "/data/M", "base_digest": b})
    assert message.startswith("the checkpoint was trained on other base weights: `/data/M` (base digest aaaa")
    assert "`/data/M` (bbbb" in message
    # a checkpoint written before base digests: the paths are all there is to compare
    (message,) = _load({"model": "/old/M"}, {"model": "/new/M", "base_digest": b})
    assert message == "the checkpoint was trained on base model `/old/M`, it is loaded onto `/new/M`"
    assert _load({"model": "/data/M"}, {"model": "/data/M", "base_digest": b}) == []


# ------------------------------------------------------------------ readable folders


def _checkpoint(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    for name in ("config.json", "tokenizer.json"):
        (folder / name).write_text("{}")
    (folder / "model.safetensors").write_bytes(b"x")
    return folder


def test_an_unreadable_file_is_named(tmp_path, monkeypatch):
    folder = _checkpoint(tmp_path)
    real_open = builtins.open

    def fake_open(file, *args, **kwargs):
        if str(file).endswith("model.safetensors"):
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", fake_open)
    with pytest.raises(CIRModelError, match=r"model file `.*model.safetensors` cannot be read: permission denied"):
        check_readable(folder)


def test_folders_links_and_missing_files_are_named(tmp_path):
    folder = _checkpoint(tmp_path)
    check_readable(folder)
    (folder / "tokenizer.json").unlink()
    (folder / "tokenizer.json").mkdir()
    with pytest.raises(CIRModelError, match=r"`.*tokenizer.json` is a folder, not a file"):
        check_readable(folder)
    (folder / "tokenizer.json").rmdir()
    (folder / "tokenizer.json").symlink_to(tmp_path / "blobs" / "abc")
    with pytest.raises(CIRModelError, match=r"`.*tokenizer.json` is a broken symbolic link \(to `.*blobs/abc`\)"):
        check_readable(folder)
    (folder / "tokenizer.json").unlink()
    (folder / "model.safetensors.index.json").write_text('{"weight_map": {"w": "model-00002.safetensors"}}')
    with pytest.raises(CIRModelError, match="names 1 shard.*model-00002.safetensors"):
        check_readable(folder)
    (folder / "model.safetensors.index.json").unlink()
    (folder / "config.json").unlink()
    with pytest.raises(CIRModelError, match=r"has no config.json"):
        check_readable(folder)


@pytest.mark.parametrize("family", ["hf", "xgenmm", "dual", "auto"])
def test_every_family_checks_the_folder_before_loading(family, tmp_path, monkeypatch):
    folder = _checkpoint(tmp_path)
    real_open = builtins.open

    def fake_open(file, *args, **kwargs):
        if str(file).endswith("config.json"):
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", fake_open)
    build = {"hf": HFMultimodalBackbone, "xgenmm": XGenMMBackbone, "dual": DualEncoderBackbone,
             "auto": build_backbone}[family]  # the factory reads config.json to choose the family
    with pytest.raises(CIRModelError, match=r"`.*config.json` cannot be read: permission denied"):
        build(str(folder))
