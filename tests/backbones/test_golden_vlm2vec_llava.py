"""The ``vlm2vec_cirr`` / ``vlm2vec_fashioniq`` presets on VLM2Vec's LLaVA-NeXT backbone, against VLM2Vec's own code.

``tests/goldens/vlm2vec_llava_next`` was written by ``scripts/goldens/make_vlm2vec_llava.py``, which ran
TIGER-AI-Lab/VLM2Vec (commit in its ``provenance.json``) with the transformers it pins (4.52.3) on a tiny random
LLaVA-NeXT in the layout of TIGER-Lab/VLM2Vec-LLaVa-Next (llava-hf LLaVA-1.6 Mistral: CLIP tower, anyres
crops, Mistral decoder, Llama-style tokenizer): MMEB's CIRR / FashionIQ rows through ``data_prepare``,
``MultimodalEvalDataCollator`` + ``Llava_NEXT_process_fn`` (VLM2Vec's vendored ``LlavaNextProcessor``, one call
per item, ``tokenizer.pad``), ``load_processor`` and ``MMEBModel.load`` (vendored
``LlavaNextForConditionalGeneration``; last token, normalised). The images went in as files, in their own
modes (RGB, L, RGBA, P); so do ours here (the collator drops alpha as VLM2Vec's 4.52 processor does).

What is compared, and how tightly (eager attention on both sides, float32):

- token ids and masks, exactly: the prompts, the tokenizer as transformers 5 reads the 4.52-saved files and
  the number of ``<image>`` tokens per image (VLM2Vec's vendored processor counts with integer division,
  transformers 5 with ``round(..., 7)``: equal for these images); the padded rows too (both pad left);
- pixel values (their float32-stored sum per crop), exactly;
- embeddings, BIT-EXACT against VLM2Vec with ``tokenizer.padding_side = "right"`` (``*_right``): the real
  tokens sit at positions 0..n-1 on both sides, the same ops in the same order;
- embeddings against VLM2Vec as the checkpoint is saved (left padding, as llava-hf's tokenizer files set it):
  atol 1e-6 on unit vectors (measured <= 1.5e-7). The only difference is the positions: VLM2Vec's vendored
  model passes no ``position_ids``, so its Mistral numbers a left-padded row's real tokens from the pad count
  on (0..L-1 over the padded row) and ours from 0; RoPE scores depend on position differences only, equal up
  to rounding. ``test_left_padding_differs_only_by_positions`` gives ours VLM2Vec's positions and gets the
  same bits, so nothing else differs.

No old LLaVA-NeXT bug is involved: VLM2Vec's vendored model lays non-square grids out as (rows, columns) and
4.52.3's image processor pads odd differences as transformers 5 does (the wide, tall and square images here
take 1 x 4, 4 x 1 and 2 x 2 crop grids). Not covered by these images: the vendored model unpads with
``int(h * scale)`` where its processor and transformers 5 count ``(h * w') // w`` / ``round(..., 7)``; for rare
sizes (at 336-pixel crops e.g. 88 x 55, 220 x 1056 (height x width)) the float product falls just under an
integer and VLM2Vec's own model yields fewer image features than its processor wrote ``<image>`` tokens.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cir_lightning.backbones import HFMultimodalBackbone, Prompts
from cir_lightning.backbones.pooling import pool
from tests.goldens.backbones import one_model_per_preset
from tests.goldens.exact import assert_golden
from tests.goldens.recipe import GOLDENS, load_images, load_outputs, load_texts, materialize

GOLDEN = GOLDENS / "vlm2vec_llava_next"
PRESETS = {"vlm2vec_cirr": "query_cirr", "vlm2vec_fashioniq": "query_fashioniq"}
KEYS = ["gallery", "text", *PRESETS.values()]
ATOL_LEFT = 1e-6


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return materialize(GOLDEN, tmp_path_factory.mktemp("vlm2vec_llava") / "tiny-vlm2vec-llava-next")


@pytest.fixture(scope="module")
def golden() -> dict[str, np.ndarray]:
    return load_outputs(GOLDEN)


@pytest.fixture(scope="module")
def backbones(checkpoint: Path) -> dict[str, HFMultimodalBackbone]:
    """One eager backbone per preset, sharing one loaded model (the presets differ only in their templates)."""
    return one_model_per_preset(checkpoint, list(PRESETS), attn_implementation="eager")


@pytest.fixture(scope="module")
def ours(backbones: dict[str, HFMultimodalBackbone]) -> dict[str, tuple[dict, torch.Tensor]]:
    """Our inputs and embeddings of every golden key, the images in their own modes."""
    images, texts = load_images(), load_texts()
    out = {}
    for preset, key in PRESETS.items():
        backbone = backbones[preset]
        out[key] = (backbone.collator.query_inputs(images, texts["modifications"]),
                    backbone.encode_query(images, texts["modifications"]))
    backbone = backbones["vlm2vec_cirr"]
    out["gallery"] = backbone.collator.gallery_inputs(images), backbone.encode_gallery(images)
    out["text"] = backbone.collator.text_inputs(texts["captions"]), backbone.encode_text(texts["captions"])
    return out


def test_golden_is_what_the_original_wrote_and_not_degenerate(golden: dict[str, np.ndarray]) -> None:
    provenance = json.loads((GOLDEN / "provenance.json").read_text())
    assert provenance["packages"]["transformers"] == "4.52.3"
    assert "src/model/baseline_backbone/llava_next/" in provenance["files"]
    assert str(golden["padding_side"]) == "left"
    for key in KEYS:
        for emb in (golden[key], golden[f"{key}_right"]):
            assert emb.shape == (5, 64), key
            assert emb.dtype == np.float32, key
            assert np.isfinite(emb).all(), key
            np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5, err_msg=key)
            gaps = torch.cdist(torch.from_numpy(emb), torch.from_numpy(emb)) + torch.eye(5) * 10
            assert float(gaps.min()) > 0.05, f"{key}: two inputs embed (almost) alike"
        lengths = golden[f"{key}_attention_mask"].sum(1)
        assert len(set(lengths.tolist())) == 5, f"{key}: the batch must be padded"  # every row another length
        assert (golden[f"{key}_attention_mask"][:, -1] == 1).all()  # left-padded as saved
        assert (golden[f"{key}_attention_mask_right"][:, 0] == 1).all()  # and right-padded
    assert np.abs(golden["query_cirr"] - golden["query_fashioniq"]).max() > 1e-2  # the instruction matters
    assert np.abs(golden["query_cirr"] - golden["gallery"]).max() > 1e-2
    sizes = golden["gallery_image_sizes"].tolist()
    assert [h > w for h, w in sizes] == [False, True, False, False, True]  # wide, tall, square, wide, tall
    assert golden["gallery_pixel_values_sum"].shape == (5, 5)  # 4 anyres crops + the base image each


@pytest.mark.parametrize("key", KEYS)
def test_token_ids_and_masks_are_the_originals(key: str, golden: dict[str, np.ndarray],
                                               ours: dict[str, tuple[dict, torch.Tensor]],
                                               backbones: dict[str, HFMultimodalBackbone]) -> None:
    inputs, _ = ours[key]
    ids, mask = inputs["input_ids"].numpy(), inputs["attention_mask"].numpy()
    tokenizer = backbones["vlm2vec_cirr"].collator.tokenizer
    for row in range(5):
        mine = ids[row][mask[row].astype(bool)].tolist()
        theirs = golden[f"{key}_input_ids"][row][golden[f"{key}_attention_mask"][row].astype(bool)].tolist()
        assert mine == theirs, (f"{key} row {row}:\n ours {tokenizer.convert_ids_to_tokens(mine)}\n "
                                f"orig {tokenizer.convert_ids_to_tokens(theirs)}")
    np.testing.assert_array_equal(ids, golden[f"{key}_input_ids"])  # same left padding, same pad id
    np.testing.assert_array_equal(mask, golden[f"{key}_attention_mask"])
    if key != "text":
        sums = inputs["pixel_values"].double().sum(dim=(2, 3, 4)).float().numpy()
        np.testing.assert_array_equal(sums, golden[f"{key}_pixel_values_sum"])
        np.testing.assert_array_equal(inputs["image_sizes"].numpy(), golden[f"{key}_image_sizes"])


@pytest.mark.parametrize("key", KEYS)
def test_embeddings_bit_exact_with_right_padding(key: str, golden: dict[str, np.ndarray],
                                                 ours: dict[str, tuple[dict, torch.Tensor]]) -> None:
    assert_golden(ours[key][1].numpy(), golden[f"{key}_right"])


@pytest.mark.parametrize("key", KEYS)
def test_embeddings_match_left_padding(key: str, golden: dict[str, np.ndarray],
                                       ours: dict[str, tuple[dict, torch.Tensor]]) -> None:
    np.testing.assert_allclose(ours[key][1].numpy(), golden[key], rtol=0, atol=ATOL_LEFT)


def test_left_padding_differs_only_by_positions(backbones: dict[str, HFMultimodalBackbone],
                                                golden: dict[str, np.ndarray],
                                                ours: dict[str, tuple[dict, torch.Tensor]]) -> None:
    """Our model on our inputs with VLM2Vec's positions (0..L-1 over the padded row) gives its bits."""
    backbone = backbones["vlm2vec_cirr"]
    body = backbone.base_model.model
    for key in KEYS:
        inputs = ours[key][0]
        positions = torch.arange(inputs["input_ids"].shape[1]).expand_as(inputs["input_ids"])
        with torch.no_grad():
            hidden = body(**inputs, position_ids=positions, use_cache=False).last_hidden_state
        emb = F.normalize(pool(hidden, inputs["attention_mask"], "last_token").float(), dim=-1)
        assert_golden(emb.numpy(), golden[key], err_msg=key)
        assert not np.array_equal(ours[key][1].numpy(), golden[key]), f"{key}: the positions should matter"


def test_images_as_rgb_embed_the_same(backbones: dict[str, HFMultimodalBackbone],
                                      golden: dict[str, np.ndarray]) -> None:
    """RGB copies (alpha dropped, palette and gray expanded) give the bits the files in their own modes give."""
    backbone = backbones["vlm2vec_cirr"]
    assert_golden(backbone.encode_gallery(load_images(convert_rgb=True)).numpy(),
                                  golden["gallery_right"])


def test_default_sdpa_within_tolerance(checkpoint: Path, golden: dict[str, np.ndarray]) -> None:
    """The backbone's default attention (sdpa) sums in another order: 1e-6 on unit vectors."""
    backbone = HFMultimodalBackbone(str(checkpoint), prompts=Prompts("vlm2vec_cirr"))
    images, texts = load_images(), load_texts()
    np.testing.assert_allclose(backbone.encode_query(images, texts["modifications"]).numpy(),
                               golden["query_cirr_right"], rtol=0, atol=1e-6)
    np.testing.assert_allclose(backbone.encode_gallery(images).numpy(), golden["gallery_right"], rtol=0, atol=1e-6)
