"""The ``vlm2vec_cirr`` / ``vlm2vec_fashioniq`` presets against VLM2Vec's own embedding code.

``tests/goldens/vlm2vec`` was written by ``scripts/goldens/make_vlm2vec.py``, which ran TIGER-AI-Lab/VLM2Vec
(commit in its ``provenance.json``) in a side environment with the transformers it pins (4.52.3): MMEB's
CIRR / FashionIQ instruction rows through ``data_prepare`` (image_i2i_vg), ``MultimodalEvalDataCollator`` +
``Qwen2_VL_process_fn``, ``load_processor`` and ``MMEBModel.load`` (pooling ``last``, normalised) on a tiny
random Qwen2-VL, the backbone of VLM2Vec's published Qwen2-VL models (VLM2Vec-V2.0, VLM2Vec-Qwen2VL-2B/7B)
that ``HFMultimodalBackbone`` loads natively. Here the same checkpoint goes through ``HFMultimodalBackbone``
with the preset, as a config would build it, and must give the same token ids and embeddings.

Tolerance: bit-exact (atol 0) with eager attention on both sides: same tokens, same pixel values, same
vision tower and decoder ops in float32. With sdpa (the backbone's default) the attention kernel sums in
another order: atol 1e-6 (observed ~2e-7 on unit vectors).

What it took (each would fail ``test_embeddings_bit_exact``):
- the gallery prompt has no "\\n" after "Represent the given image." (only queries get one, MMEB's rule);
- ``text_positions``: VLM2Vec's Qwen2-VL (4.4x-era code) finds images by ``<|vision_start|>``, which its
  prompts lack, so every token gets 1-D positions; transformers 5 would give image tokens 3-D M-RoPE ones.

Images in other modes (``test_images_in_every_mode_embed_as_vlm2vec``): VLM2Vec's transformers 4.52
processor drops alpha (PIL's ``convert("RGB")``), where transformers 5's would composite it onto white; the
collator converts to RGB first, so RGBA, L and P images handed straight to ``encode_*`` embed as VLM2Vec's.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from cir_lightning.backbones import HFMultimodalBackbone, Prompts
from tests.goldens.backbones import one_model_per_preset
from tests.goldens.exact import assert_golden
from tests.goldens.recipe import GOLDENS, load_images, load_outputs, load_texts, materialize

GOLDEN = GOLDENS / "vlm2vec"
PRESETS = {"vlm2vec_cirr": "query_cirr", "vlm2vec_fashioniq": "query_fashioniq"}
RGBA = 3  # index of the RGBA image among the shared inputs


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return materialize(GOLDEN, tmp_path_factory.mktemp("vlm2vec") / "tiny-vlm2vec-qwen2vl")


@pytest.fixture(scope="module")
def golden() -> dict[str, np.ndarray]:
    return load_outputs(GOLDEN)


@pytest.fixture(scope="module")
def backbones(checkpoint: Path) -> dict[str, HFMultimodalBackbone]:
    """One eager backbone per preset, sharing one loaded model (the presets differ only in their templates)."""
    return one_model_per_preset(checkpoint, list(PRESETS), attn_implementation="eager")


def _rows(ids, mask) -> list[list[int]]:
    """Each row's real tokens (VLM2Vec pads on the tokenizer's side, right here; we pad left)."""
    return [np.asarray(r)[np.asarray(m).astype(bool)].tolist() for r, m in zip(ids, mask, strict=True)]


def test_token_ids_match(backbones: dict[str, HFMultimodalBackbone], golden: dict[str, np.ndarray]) -> None:
    images, texts = load_images(convert_rgb=True), load_texts()
    for preset, key in PRESETS.items():
        inputs = backbones[preset].collator.query_inputs(images, texts["modifications"])
        assert _rows(inputs["input_ids"], inputs["attention_mask"]) == \
            _rows(golden[f"{key}_input_ids"], golden[f"{key}_attention_mask"]), preset
    collator = backbones["vlm2vec_cirr"].collator
    inputs = collator.gallery_inputs(images)
    assert _rows(inputs["input_ids"], inputs["attention_mask"]) == \
        _rows(golden["gallery_input_ids"], golden["gallery_attention_mask"])
    assert inputs["image_grid_thw"].tolist() == golden["gallery_image_grid_thw"].tolist()
    inputs = collator.text_inputs(texts["captions"])
    assert _rows(inputs["input_ids"], inputs["attention_mask"]) == \
        _rows(golden["text_input_ids"], golden["text_attention_mask"])


def test_embeddings_bit_exact(backbones: dict[str, HFMultimodalBackbone], golden: dict[str, np.ndarray]) -> None:
    images, texts = load_images(convert_rgb=True), load_texts()
    for preset, key in PRESETS.items():
        ours = backbones[preset].encode_query(images, texts["modifications"]).numpy()
        assert_golden(ours, golden[key], err_msg=preset)
    backbone = backbones["vlm2vec_cirr"]
    assert_golden(backbone.encode_gallery(images).numpy(), golden["gallery"])
    assert_golden(backbone.encode_text(texts["captions"]).numpy(), golden["text"])


def test_default_sdpa_within_tolerance(checkpoint: Path, golden: dict[str, np.ndarray]) -> None:
    backbone = HFMultimodalBackbone(str(checkpoint), prompts=Prompts("vlm2vec_cirr"))  # attn: sdpa
    images, texts = load_images(convert_rgb=True), load_texts()
    np.testing.assert_allclose(backbone.encode_query(images, texts["modifications"]).numpy(), golden["query_cirr"],
                               rtol=0, atol=1e-6)
    np.testing.assert_allclose(backbone.encode_gallery(images).numpy(), golden["gallery"], rtol=0, atol=1e-6)


def test_images_in_every_mode_embed_as_vlm2vec(backbones: dict[str, HFMultimodalBackbone],
                                               golden: dict[str, np.ndarray]) -> None:
    images = load_images()  # in their own modes: RGB, RGB, L, RGBA, P
    assert images[RGBA].mode == "RGBA"
    ours = backbones["vlm2vec_cirr"].encode_gallery(images).numpy()
    assert_golden(ours, golden["gallery"])  # alpha dropped, as VLM2Vec's processor does


def test_golden_is_not_degenerate(golden: dict[str, np.ndarray]) -> None:
    keys = ["gallery", "text", *PRESETS.values()]
    for key in keys:
        emb = torch.from_numpy(golden[key])
        assert emb.shape == (5, 64), key
        assert torch.allclose(emb.norm(dim=-1), torch.ones(5), atol=1e-5), key
        gaps = torch.cdist(emb, emb) + torch.eye(5) * 10
        assert float(gaps.min()) > 0.05, f"{key}: two inputs embed (almost) alike"
    assert np.abs(golden["query_cirr"] - golden["query_fashioniq"]).max() > 1e-2  # the instruction matters
    assert np.abs(golden["query_cirr"] - golden["gallery"]).max() > 1e-2
