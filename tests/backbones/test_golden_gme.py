"""GME (prompt preset ``gme``) gives the embeddings of GME's own code, on a tiny random Qwen2-VL checkpoint.

The golden ``tests/goldens/gme`` was written by ``scripts/goldens/make_gme.py`` running the ORIGINAL
``GmeQwen2VL`` (``gme_inference.py`` of Alibaba-NLP/gme-Qwen2-VL-2B-Instruct; copy, commit and versions in
``provenance.json``) in float32 with eager attention, at its defaults (min / max image tokens 256 / 1280):
gallery = ``get_image_embeddings(images, is_query=False)``, query = ``get_fused_embeddings(modifications,
images, instruction=<the preset's CIR instruction>)``, text = ``get_text_embeddings(captions)``. Here the
same checkpoint is rebuilt from the recipe and ``HFMultimodalBackbone(prompts=Prompts("gme"))`` (eager
attention, as the golden) embeds the same inputs through ``encode_gallery`` / ``encode_query`` /
``encode_text``.

Compared: each row's real token ids and the image grids exactly (the prompt, the tokenizer, GME's
``fetch_image`` resize to multiples of 28 and the processor's min / max pixels), then the embeddings:

- text rows bit for bit: same tokens, same decoder ops, same 1-D positions; our left padding against the
  original's right padding changes nothing that is not masked;
- rows with images to ``atol = 1e-6`` on unit vectors (seen: 1.5e-7, about one float32 ulp of 1.0). The
  pixel values are bit-identical and one image alone gets bit-identical vision features on both sides, but
  transformers 4.51 (the original's) runs the eager vision attention of a batch as one masked attention over
  all images' patches, 5.24 (ours) runs each image's patches on their own, so float32 sums of the batch's
  images are ordered differently. 1e-6 is far below the 0.1-0.5 the rules below each make.

The last test undoes each GME rule of the preset in turn (1-D positions, ``fetch_image``'s resize, the
processor's pixel limits) and shows the golden then fails: each one is needed to match the original.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from cir_lightning.backbones import HFMultimodalBackbone, Prompts
from tests.goldens.exact import assert_golden
from tests.goldens.recipe import load_images, load_outputs, load_texts, materialize

GOLDEN = Path(__file__).resolve().parents[1] / "goldens" / "gme"
IMAGE_ATOL = 1e-6


@pytest.fixture(scope="module")
def golden() -> dict[str, np.ndarray]:
    return load_outputs(GOLDEN)


@pytest.fixture(scope="module")
def backbone(tmp_path_factory) -> HFMultimodalBackbone:
    folder = materialize(GOLDEN, tmp_path_factory.mktemp("gme") / "checkpoint")
    return HFMultimodalBackbone(str(folder), prompts=Prompts("gme"), attn_implementation="eager").eval()


def _inputs(backbone: HFMultimodalBackbone, kind: str) -> dict[str, torch.Tensor]:
    texts, collator = load_texts(), backbone.collator
    if kind == "gallery":
        return collator.gallery_inputs(load_images())
    if kind == "query":
        return collator.query_inputs(load_images(), texts["modifications"])
    return collator.text_inputs(texts["captions"])


@pytest.mark.parametrize("kind", ["gallery", "query", "text"])
def test_tokens_and_image_grids_are_the_originals(backbone, golden, kind):
    inputs = _inputs(backbone, kind)
    ours = [ids[mask.bool()].tolist() for ids, mask in zip(inputs["input_ids"], inputs["attention_mask"], strict=True)]
    assert ours == [row[row >= 0].tolist() for row in golden[f"{kind}_ids"]]
    if kind != "text":
        np.testing.assert_array_equal(inputs["image_grid_thw"].numpy(), golden[f"{kind}_grid"])


def test_embeddings_are_the_originals(backbone, golden):
    images, texts = load_images(), load_texts()
    with torch.no_grad():
        gallery = backbone.encode_gallery(images).numpy()
        query = backbone.encode_query(images, texts["modifications"]).numpy()
        text = backbone.encode_text(texts["captions"]).numpy()
    assert gallery.dtype == query.dtype == text.dtype == np.float32
    assert_golden(text, golden["text"])
    assert_golden(gallery, golden["gallery"], atol=IMAGE_ATOL)
    assert_golden(query, golden["query"], atol=IMAGE_ATOL)


def test_default_attention_stays_within_the_tolerance(golden, tmp_path):
    """A user's config leaves ``attn_implementation`` at its default (SDPA): the composed queries still
    match (seen: 2.5e-7; SDPA sums in another order than eager attention). Two queries of different
    lengths keep it short and still pad one of them."""
    folder = materialize(GOLDEN, tmp_path / "checkpoint")
    backbone = HFMultimodalBackbone(str(folder), prompts=Prompts("gme")).eval()
    with torch.no_grad():
        query = backbone.encode_query(load_images()[:2], load_texts()["modifications"][:2]).numpy()
    np.testing.assert_allclose(query, golden["query"][:2], rtol=0, atol=IMAGE_ATOL)


def test_the_golden_is_not_degenerate(golden):
    for kind in ("gallery", "query", "text"):
        rows = golden[kind]
        assert rows.shape == (5, 64)
        assert np.isfinite(rows).all()
        np.testing.assert_allclose(np.linalg.norm(rows, axis=1), 1.0, atol=1e-5)
        gaps = np.linalg.norm(rows[:, None] - rows[None], axis=-1)[~np.eye(5, dtype=bool)]
        assert gaps.min() > 1e-2, f"{kind}: two inputs gave (nearly) the same embedding"
    assert np.abs(golden["query"] - golden["gallery"]).max(1).min() > 1e-2  # the modification counts
    assert len({int((row >= 0).sum()) for row in golden["gallery_ids"]}) > 1  # the images' token counts differ


@pytest.mark.parametrize("undo", [{"text_positions": False}, {"pre_resize": None}, {"image_pixels": None}])
def test_each_gme_rule_is_needed(backbone, golden, undo):
    """Without any one of the preset's GME rules an image's embedding leaves the golden by far."""
    keep = backbone.collator.prompts, backbone.mrope
    try:
        backbone.collator.prompts = dataclasses.replace(keep[0], **undo)
        backbone.mrope = not backbone.collator.prompts.text_positions  # as the constructor sets it
        with torch.no_grad():
            gallery = backbone.encode_gallery(load_images()[3:4]).numpy()
    finally:
        backbone.collator.prompts, backbone.mrope = keep
    assert np.abs(gallery - golden["gallery"][3:4]).max() > 1e-2
