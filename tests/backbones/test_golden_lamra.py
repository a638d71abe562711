"""The ``lamra`` preset against LamRA's own embedding code (golden ``tests/goldens/lamra``).

``scripts/goldens/make_lamra.py`` ran Code-kunkun/LamRA's ``Qwen2VLRetForConditionalGeneration``
(``forward(..., inference=True)``: the hidden state just before the first ``<emb>``), its
``EvalDataCollator`` (Qwen2-VL chat template, ``process_vision_info``, processor) and the CIRCO messages of
``dataset/datasets_circo.py`` in transformers 4.45 on a tiny random Qwen2-VL checkpoint; see the golden's
``provenance.json``. Here the same checkpoint (rebuilt from ``recipe.json``) goes through our
``HFMultimodalBackbone`` with ``Prompts("lamra")``, as a config would build it, on the same inputs: the
five shared images (as RGB, as our image loader and LamRA's ``fetch_image`` both decode them), the five
queries (image i + modification i) and the five captions, each kind in one padded batch; and one
640 x 480 gallery image, above the 300 x 28 x 28 pixels LamRA's ``process_vision_info`` shrinks images to.

Tolerances:

- eager attention on both sides: bit-exact (``atol=0``). The prompts tokenize to the same ids, the
  pixels come out identical, and every op of the vision tower and the language model is the same op in
  the same order, so any difference at all is a real one.
- sdpa (transformers' default, which LamRA's scripts get, and our default): ``atol=1e-6`` on unit
  vectors. transformers 4.45 runs the vision tower's sdpa as one block-masked call over all images and
  5.x as one call per image, so float32 sums run in another order; the measured gap is under 2e-7
  (about one ulp of 1.0 per element), while the smallest real error seen here (M-RoPE instead of
  LamRA's 1-D positions) is above 5e-3.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cir_lightning.backbones import HFMultimodalBackbone, Prompts
from tests.goldens.exact import assert_golden
from tests.goldens.recipe import _draw, load_images, load_outputs, load_texts, materialize

GOLDEN = Path(__file__).resolve().parents[1] / "goldens" / "lamra"
KINDS = ("gallery", "query", "text")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return materialize(GOLDEN, tmp_path_factory.mktemp("lamra") / "checkpoint")


@pytest.fixture(scope="module")
def eager(checkpoint: Path) -> HFMultimodalBackbone:
    return HFMultimodalBackbone(str(checkpoint), prompts=Prompts("lamra"), attn_implementation="eager")


@pytest.fixture(scope="module")
def expected() -> dict[str, np.ndarray]:
    return load_outputs(GOLDEN)


def _inputs(backbone: HFMultimodalBackbone, kind: str) -> dict[str, torch.Tensor]:
    texts, images = load_texts(), load_images(convert_rgb=True)
    if kind == "gallery":
        return backbone.collator.gallery_inputs(images)
    if kind == "query":
        return backbone.collator.query_inputs(images, texts["modifications"])
    return backbone.collator.text_inputs(texts["captions"])


def _encode(backbone: HFMultimodalBackbone, kind: str) -> np.ndarray:
    texts, images = load_texts(), load_images(convert_rgb=True)
    if kind == "gallery":
        out = backbone.encode_gallery(images)
    elif kind == "query":
        out = backbone.encode_query(images, texts["modifications"])
    else:
        out = backbone.encode_text(texts["captions"])
    assert out.dtype == torch.float32
    return out.numpy()


def test_golden_is_not_degenerate(expected: dict[str, np.ndarray]) -> None:
    for kind in KINDS:
        emb, raw = expected[kind], expected[f"{kind}_raw"]
        assert emb.shape == (5, 64)
        assert emb.dtype == np.float32
        assert np.isfinite(raw).all()
        np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-6)
        assert np.linalg.norm(raw, axis=1).min() > 0.1  # not a vector of zeros that normalises to noise
        gaps = np.linalg.norm(emb[:, None] - emb[None], axis=-1)[~np.eye(5, dtype=bool)]
        assert gaps.min() > 1e-3, f"{kind}: two inputs embed alike"
    assert np.abs(expected["query"] - expected["gallery"]).max() > 1e-3  # the modification counts
    # one <emb> per row, well inside it; right padding (LamRA's) made the rows of a batch differ in length
    emb_id = json.loads((GOLDEN / "checkpoint" / "config.json").read_text())["emb_token_ids"][0]
    for kind in KINDS:
        ids, mask = expected[f"{kind}_input_ids"], expected[f"{kind}_attention_mask"]
        assert ((ids == emb_id) & (mask == 1)).sum(1).tolist() == [1] * 5
        assert len(set(mask.sum(1).tolist())) > 1
    assert len({tuple(g) for g in expected["gallery_image_grid_thw"]}) == 5


def test_prompts_tokenize_as_lamra_renders_them(eager: HFMultimodalBackbone,
                                                expected: dict[str, np.ndarray]) -> None:
    for kind in KINDS:
        inputs = _inputs(eager, kind)
        ours = [row[mask.bool()].tolist()
                for row, mask in zip(inputs["input_ids"], inputs["attention_mask"], strict=True)]
        theirs = [row[mask.astype(bool)].tolist()
                  for row, mask in zip(expected[f"{kind}_input_ids"], expected[f"{kind}_attention_mask"], strict=True)]
        assert ours == theirs, f"{kind}: our prompt differs from LamRA's chat-template rendering"
        if kind != "text":
            assert inputs["image_grid_thw"].tolist() == expected[f"{kind}_image_grid_thw"].tolist()


def test_embeddings_match_lamra_bit_exactly_with_eager_attention(eager: HFMultimodalBackbone,
                                                                 expected: dict[str, np.ndarray]) -> None:
    assert eager.pooling == "before_marker"
    assert not eager.mrope  # LamRA's 1-D positions
    for kind in KINDS:
        assert_golden(_encode(eager, kind), expected[kind], err_msg=kind)
    # the check has teeth: Qwen2-VL's M-RoPE positions (what the model would compute by itself) instead
    # of LamRA's 1-D positions change every image row
    eager.mrope = True
    try:
        for kind in ("gallery", "query"):
            assert np.abs(_encode(eager, kind) - expected[kind]).max(1).min() > 1e-3
    finally:
        eager.mrope = False


def test_embeddings_match_lamra_with_default_sdpa_attention(checkpoint: Path,
                                                            expected: dict[str, np.ndarray]) -> None:
    backbone = HFMultimodalBackbone(str(checkpoint), prompts=Prompts("lamra"))  # our default: sdpa
    for kind in KINDS:
        np.testing.assert_allclose(_encode(backbone, kind), expected[f"{kind}_sdpa"], rtol=0, atol=1e-6,
                                   err_msg=kind)


def test_large_image_is_capped_at_300_tokens_as_lamra_does(eager: HFMultimodalBackbone,
                                                          expected: dict[str, np.ndarray]) -> None:
    large = _draw("RGB", 640, 480, seed=2000)  # as make_lamra.py drew it (LARGE)
    inputs = eager.collator.gallery_inputs([large])
    assert inputs["image_grid_thw"].tolist() == expected["large_image_grid_thw"].tolist() == [[1, 30, 40]]
    assert inputs["input_ids"][0].tolist() == expected["large_input_ids"][0].tolist()
    assert_golden(eager.encode_gallery([large]).numpy(), expected["large"])
