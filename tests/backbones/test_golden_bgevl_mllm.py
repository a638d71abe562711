"""Preset ``bge_vl`` against BGE-VL-MLLM's own embedding code, on a tiny random checkpoint.

``tests/goldens/bgevl_mllm`` was written by ``scripts/goldens/make_bgevl_mllm.py`` in a side environment with
transformers 4.45.2 (the version BGE-VL's README pins): the hub's ``modeling_llavanext_for_embedding.py``
(``LLaVANextForEmbedding``, ``set_processor``, ``data_process``) embedded the shared inputs as its README
does (``model(**inputs)[:, -1, :]``, L2-normalised). Here the same checkpoint (same files, same seeded weights)
goes through OUR backbone exactly as a config would build it: ``HFMultimodalBackbone`` with
``Prompts("bge_vl")`` and every other option at its default (float32, sdpa attention).

What is compared, and how tightly:

- token ids and attention masks, exactly: the prompts (``prepare_text_input``'s spaces, ``\\n``, where the
  image goes), the tokenizer as transformers 5 loads the 4.45-saved files, the number of ``<image>`` tokens
  (``data_process`` resizes every image to 512 x 512 before the processor; the processor must count the CLIP
  CLS token) and left padding;
- the pixel values (their sum per crop), to 1e-4 relative: the 512 x 512 resize in the image's own mode, then
  RGB (alpha dropped, palette looked up) and the anyres crops;
- the embeddings: gallery rows EXACTLY (batched, yet unpadded on both sides since every image becomes
  512 x 512: the same ops in the same order, so the same bits); query and caption rows to 1e-6 absolute on
  unit vectors. Those rows differ in the last bits only: the original runs the batched queries with positions
  0..n-1 over the padded row (ours count real tokens only; RoPE scores depend on position differences, equal
  up to rounding) and embeds captions one at a time (its ``data_process`` cannot batch texts), ours in a
  left-padded batch (masked attention over padding). Measured: 9e-8. Any real difference (one token of a
  prompt, another resize, another pooled token) moves them by 1e-3 or more.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from cir_lightning.backbones import HFMultimodalBackbone, Prompts
from tests.goldens.exact import assert_golden
from tests.goldens.recipe import load_images, load_outputs, load_texts, materialize

GOLDEN = Path(__file__).resolve().parents[1] / "goldens" / "bgevl_mllm"
ATOL = 1e-6


@pytest.fixture(scope="module")
def golden() -> dict[str, np.ndarray]:
    return load_outputs(GOLDEN)


@pytest.fixture(scope="module")
def backbone(tmp_path_factory: pytest.TempPathFactory) -> HFMultimodalBackbone:
    folder = materialize(GOLDEN, tmp_path_factory.mktemp("bgevl_mllm") / "checkpoint")
    return HFMultimodalBackbone(str(folder), prompts=Prompts("bge_vl"))


@pytest.fixture(scope="module")
def ours(backbone: HFMultimodalBackbone) -> dict[str, dict[str, torch.Tensor]]:
    images, texts = load_images(), load_texts()
    collator = backbone.collator
    return {
        "gallery": {"inputs": collator.gallery_inputs(images), "embeddings": backbone.encode_gallery(images)},
        "query": {"inputs": collator.query_inputs(images, texts["modifications"]),
                  "embeddings": backbone.encode_query(images, texts["modifications"])},
        "text": {"inputs": collator.text_inputs(texts["captions"]), "embeddings": backbone.encode_text(texts["captions"])},
    }


def test_golden_is_what_the_original_wrote_and_not_degenerate(golden: dict[str, np.ndarray]) -> None:
    provenance = json.loads((GOLDEN / "provenance.json").read_text())
    assert provenance["packages"]["transformers"] == "4.45.2"
    assert provenance["files"] == ["modeling_llavanext_for_embedding.py"]
    for side in ("gallery", "query", "text"):
        embeddings = golden[side]
        assert embeddings.shape == (5, 64)
        assert embeddings.dtype == np.float32
        assert np.isfinite(embeddings).all()
        np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)
        cosine = embeddings @ embeddings.T
        assert cosine[~np.eye(5, dtype=bool)].max() < 0.999  # five different rows, not one vector five times
    assert np.abs(golden["query"] - golden["gallery"]).max() > 1e-2  # the text changes the query
    # the query batch was padded (the tests below see padding), the gallery rows all 512 x 512 (same length)
    assert len(set(golden["query_attention_mask"].sum(1).tolist())) > 1
    assert golden["gallery_attention_mask"].all()


@pytest.mark.parametrize("side", ["gallery", "query", "text"])
def test_token_ids_and_masks_are_the_originals(side: str, golden: dict[str, np.ndarray],
                                               ours: dict[str, dict[str, torch.Tensor]],
                                               backbone: HFMultimodalBackbone) -> None:
    inputs = ours[side]["inputs"]
    ids, mask = inputs["input_ids"].numpy(), inputs["attention_mask"].numpy()
    assert not mask[:, -1].tolist().count(0), "our rows must be left-padded"
    tokenizer = backbone.collator.tokenizer
    for row in range(5):
        mine = ids[row][mask[row].astype(bool)].tolist()
        theirs = golden[f"{side}_input_ids"][row][golden[f"{side}_attention_mask"][row].astype(bool)].tolist()
        assert mine == theirs, (f"{side} row {row}:\n ours {tokenizer.convert_ids_to_tokens(mine)}\n "
                                f"orig {tokenizer.convert_ids_to_tokens(theirs)}")
    if side != "text":  # the original padded its batch (left) the way ours does
        np.testing.assert_array_equal(ids, golden[f"{side}_input_ids"])
        np.testing.assert_array_equal(mask, golden[f"{side}_attention_mask"])


@pytest.mark.parametrize("side", ["gallery", "query"])
def test_pixel_values_are_the_originals(side: str, golden: dict[str, np.ndarray],
                                        ours: dict[str, dict[str, torch.Tensor]]) -> None:
    sums = ours[side]["inputs"]["pixel_values"].double().sum(dim=(2, 3, 4)).numpy()
    np.testing.assert_allclose(sums, golden[f"{side}_pixel_values_sum"], rtol=1e-4, atol=1e-3)


def test_gallery_embeddings_are_bit_exact(golden: dict[str, np.ndarray],
                                          ours: dict[str, dict[str, torch.Tensor]]) -> None:
    assert_golden(ours["gallery"]["embeddings"].numpy(), golden["gallery"])


@pytest.mark.parametrize("side", ["query", "text"])
def test_query_and_text_embeddings_match(side: str, golden: dict[str, np.ndarray],
                                         ours: dict[str, dict[str, torch.Tensor]]) -> None:
    mine = ours[side]["embeddings"]
    assert mine.dtype == torch.float32
    assert mine.shape == (5, 64)
    np.testing.assert_allclose(mine.numpy(), golden[side], rtol=0, atol=ATOL)


def test_without_the_512_resize_the_embeddings_differ(backbone: HFMultimodalBackbone,
                                                      golden: dict[str, np.ndarray]) -> None:
    """The resize is what makes the gallery equal: images at their own sizes give other anyres grids."""
    saved = backbone.collator.prompts
    backbone.collator.prompts = replace(saved, resize_to=None)
    try:
        embeddings = backbone.encode_gallery(load_images(convert_rgb=True)).numpy()
    finally:
        backbone.collator.prompts = saved
    assert np.abs(embeddings - golden["gallery"]).max() > 1e-3
