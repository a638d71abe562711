"""Every backbone option that changes the embeddings changes the fingerprint, so that a cache, an index to `--reuse`
or a prediction folder made with another value is refused, never taken for this model's."""

from __future__ import annotations

import warnings

import pytest
import torch
from PIL import Image

from cir_lightning.backbones import HFMultimodalBackbone, Prompts, XGenMMBackbone
from cir_lightning.errors import CIRDataError
from cir_lightning.retrieval.evaluator import RetrievalEvaluator
from cir_lightning.retrieval.gallery_cache import GalleryCache

warnings.filterwarnings("ignore", category=FutureWarning)


def _cached_by(first, then, folder) -> None:
    """A gallery cached with ``first``'s identity, then looked up with ``then``'s (raises when refused)."""
    cache = GalleryCache(folder)
    assert not cache.lookup("val", 0, "all", ["a"], dataset="toy", model=first.identity())
    evaluator = RetrievalEvaluator(ks=[1])
    evaluator.galleries[0] = first.encode_gallery([Image.new("RGB", (32, 32), "red")])
    cache.save(evaluator)
    GalleryCache(folder).lookup("val", 0, "all", ["a"], dataset="toy", model=then.identity())


def test_another_eos_token_is_another_fingerprint(tiny_model_dir, tmp_path):
    default = HFMultimodalBackbone(str(tiny_model_dir), prompts=Prompts("fire"))
    other = HFMultimodalBackbone(str(tiny_model_dir), prompts=Prompts("fire"), eos_token="<pad>")
    image = Image.new("RGB", (32, 32), "red")
    assert not torch.allclose(default.encode_gallery([image]), other.encode_gallery([image]))  # it embeds otherwise
    with pytest.raises(CIRDataError, match=r"model\.fingerprint\.eos_token: cached None, expected '<pad>'"):
        _cached_by(default, other, tmp_path / "cache")
    # the tokenizer's own EOS, named or not, is the default: its fingerprint (and caches) keep their keys
    named = HFMultimodalBackbone(str(tiny_model_dir), prompts=Prompts("fire"), eos_token=default.collator.eos_token)
    assert "eos_token" not in default.fingerprint()
    assert named.identity() == default.identity()


def test_anyres_off_is_another_fingerprint(tmp_path):
    tiled = XGenMMBackbone(str(tmp_path / "x"), make_tiny_if_missing=True)
    squashed = XGenMMBackbone(str(tmp_path / "x"), anyres=False)
    image = Image.new("RGB", (60, 30), "red")  # tiled into crops with anyres
    assert not torch.allclose(tiled.encode_gallery([image]), squashed.encode_gallery([image]))
    assert "anyres" not in tiled.fingerprint()  # the default: caches keep their keys
    with pytest.raises(CIRDataError, match=r"model\.fingerprint\.anyres: cached None, expected False"):
        _cached_by(tiled, squashed, tmp_path / "cache")
