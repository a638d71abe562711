"""The E5-V presets against E5-V's own evaluation code (golden ``tests/goldens/e5v``).

``scripts/goldens/make_e5v.py`` ran kongds/E5-V's ``retrieval.py`` (``main(use_e5v=True)``: its prompts,
``LlavaNextProcessor`` + ``LlavaNextForConditionalGeneration``, ``hidden_states[-1][:, -1, :]``,
``F.normalize``) with transformers 4.41.2, as E5-V pins, on a tiny LLaVA-NeXT checkpoint. Here our
``HFMultimodalBackbone`` with ``Prompts(<preset>)``, built as a user's config builds it, embeds the same
images and texts from the same checkpoint and weights.

What is compared:

- the prompts: our templates, filled, are the exact strings E5-V gave its processor;
- texts and every query / gallery item whose image does not meet transformers 4.41.2's LLaVA-NeXT bugs
  (``EXACT``: the 96 x 64 RGB and 70 x 70 grey images, square anyres grids, even padding): equal to E5-V's;
- the other images (``BUGGY``) differ, and only because of three things our transformers (5.x) does
  otherwise: 4.41.2 laid the features of non-square anyres grids out transposed (45 x 117, 128 x 40),
  padded anyres crops one pixel short when the padding was odd (33 x 51). Alpha is dropped on both sides
  (the collator converts images to RGB, as 4.41.2's processor did; 5.x's alone would composite it on
  white). ``fixed_*`` outputs are E5-V's code with
  transformers' own later fixes of the first two and the images as RGB: ours equals them for every image.
  With ``legacy_llava_next: true`` ours equals the pinned run for every image too
  (``test_legacy_llava_next.py``).
- the golden checkpoint's processor is as transformers 4.41.2 saved it, without ``patch_size`` (like
  ``royokong/e5-v``'s): the backbone completes it from the model's config (``complete_legacy_processor``).

Tolerance: ``atol = 1e-6`` on unit-norm float32 embeddings, no rtol. Not bit-exact: both sides run SDPA
attention (E5-V's default; ``eager`` is no closer), but transformers 4.41.2 builds the merged sequence,
the float attention mask and the rotary tables with other ops than 5.x, which changes the last bits:
the largest difference seen is 1.1e-7 (about one float32 ulp at these magnitudes). 1e-6 keeps a 9x
margin and is still 30000x below the smallest real discrepancy found (3e-2, the odd-padding image).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cir_lightning.backbones import HFMultimodalBackbone, Prompts
from cir_lightning.backbones.processors import load_processor
from cir_lightning.data.layouts.fashioniq import make_query_text
from tests.goldens.recipe import GOLDENS, load_images, load_outputs, load_texts, materialize

GOLDEN = GOLDENS / "e5v"
PRESETS = ["e5v", "e5v_cirr", "e5v_fashioniq_dress", "e5v_fashioniq_shirt"]
ATOL = 1e-6
EXACT = [0, 2]  # rgb_wide, gray: no 4.41.2 bug applies
BUGGY = [1, 3, 4]  # rgb_tall, rgba (non-square: transposed grids), palette (odd padding)


@pytest.fixture(scope="module")
def golden() -> dict[str, np.ndarray]:
    return load_outputs(GOLDEN)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(materialize(GOLDEN, tmp_path_factory.mktemp("e5v") / "tiny-e5v"))


@pytest.fixture(scope="module")
def embeddings(checkpoint: str) -> dict[str, dict[str, np.ndarray]]:
    """Our embeddings per preset: gallery / query of the images as they are and as RGB, and the texts."""
    images, rgb, texts = load_images(), load_images(convert_rgb=True), load_texts()
    out = {}
    for preset in PRESETS:
        backbone = HFMultimodalBackbone(checkpoint, prompts=Prompts(preset))
        mods = modifications(preset, texts)
        out[preset] = {key: value.numpy() for key, value in {
            "gallery": backbone.encode_gallery(images), "gallery_rgb": backbone.encode_gallery(rgb),
            "query": queries(backbone, images, mods), "query_rgb": queries(backbone, rgb, mods),
            "text": backbone.encode_text(texts["captions"])}.items()}
    return out


def modifications(preset: str, texts: dict[str, list[str]]) -> list[str | tuple[str, str]]:
    """The query texts: on FashionIQ, query i has two captions (modification i, caption i), which our data
    module turns into E5-V's two orders (``query_text: e5v``: stripped of ``.?, ``, joined with ``, ``)."""
    if "fashioniq" not in preset:
        return list(texts["modifications"])
    return [make_query_text(m, c, "e5v") for m, c in zip(texts["modifications"], texts["captions"], strict=True)]


@torch.no_grad()
def queries(backbone: HFMultimodalBackbone, images: list, mods: list, combine_raw: bool | None = None) -> torch.Tensor:
    """Query embeddings through the evaluation path: the collator's query batch (one row per text, with
    ``query_groups``) and ``embed_batch``, which combines the two orders as the preset says (E5-V: raw sum)."""
    samples = [{"index": i, "reference_image": im, "modification": m}
               for i, (im, m) in enumerate(zip(images, mods, strict=True))]
    backbone.eval()
    if combine_raw is not None:
        backbone.combine_raw = combine_raw
    try:
        return backbone.embed_batch(backbone.collator.queries(samples), "query")
    finally:
        backbone.combine_raw = backbone.collator.prompts.combine_texts == "raw"


def orders(mods: list) -> list[str]:
    """The texts in E5-V's batch order: every query's first order, then every query's second (FashionIQ)."""
    return [m[0] for m in mods] + [m[1] for m in mods] if isinstance(mods[0], tuple) else mods


@pytest.mark.parametrize("preset", PRESETS)
def test_prompts_are_e5vs(preset: str, golden: dict[str, np.ndarray]) -> None:
    templates, texts = Prompts(preset).resolve(), load_texts()
    assert [templates.gallery] * 5 == golden[f"gallery_{preset}_prompts"].tolist()
    mods = orders(modifications(preset, texts))
    assert [templates.query.format(modification=m) for m in mods] == golden[f"query_{preset}_prompts"].tolist()
    assert [templates.text.format(text=c) for c in texts["captions"]] == golden["text_prompts"].tolist()
    assert (templates.pooling, templates.eos_block_size) == ("last_token", 0)


@pytest.mark.parametrize("preset", PRESETS)
def test_embeddings_equal_e5vs(preset: str, golden: dict[str, np.ndarray], embeddings: dict) -> None:
    ours = embeddings[preset]
    np.testing.assert_allclose(ours["text"], golden["text"], rtol=0, atol=ATOL)
    for side in ("gallery", "query"):
        np.testing.assert_allclose(ours[side][EXACT], golden[f"{side}_{preset}"][EXACT], rtol=0, atol=ATOL,
                                   err_msg=f"{preset} {side}")


@pytest.mark.parametrize("preset", PRESETS)
def test_other_images_differ_only_by_transformers_4_41_bugs(preset: str, golden: dict[str, np.ndarray],
                                                            embeddings: dict) -> None:
    ours = embeddings[preset]
    for side in ("gallery", "query"):
        # E5-V's code with transformers' later LLaVA-NeXT fixes, images as RGB: equal for every image
        np.testing.assert_allclose(ours[f"{side}_rgb"], golden[f"fixed_{side}_{preset}"], rtol=0, atol=ATOL,
                                   err_msg=f"{preset} {side}")
        # E5-V's code as pinned: the images that meet 4.41.2's bugs come out otherwise (documented, kept)
        gap = np.abs(ours[side][BUGGY] - golden[f"{side}_{preset}"][BUGGY]).max(axis=1)
        assert (gap > 1e-2).all(), (preset, side, gap)
        # alpha: dropped, as 4.41.2 and our RGB decoding drop it (5.x's processor alone would composite it)
        np.testing.assert_array_equal(ours[side], ours[f"{side}_rgb"])


@pytest.mark.parametrize("preset", ["e5v_fashioniq_dress", "e5v_fashioniq_shirt"])
def test_fashioniq_sums_the_two_orders_before_normalising(preset: str, checkpoint: str, golden: dict) -> None:
    """E5-V adds the last-token states of "c0, c1" and "c1, c0", then normalises (``combine_texts: raw``);
    averaging the normalised embeddings instead (our default for other presets) is measurably different."""
    backbone, texts = HFMultimodalBackbone(checkpoint, prompts=Prompts(preset)), load_texts()
    mods, rgb = modifications(preset, texts), load_images(convert_rgb=True)
    raw, mean = queries(backbone, rgb, mods), queries(backbone, rgb, mods, combine_raw=False)
    np.testing.assert_allclose(raw.numpy(), golden[f"fixed_query_{preset}"], rtol=0, atol=ATOL)
    # the tiny model gives both orders' states nearly the same norm, so the gap is small (4.8e-6), yet 40x the
    # largest difference seen between the two transformers versions (1.1e-7)
    assert np.abs(mean.numpy() - golden[f"fixed_query_{preset}"]).max() > 3 * ATOL


def test_legacy_processor_is_completed(checkpoint: str, golden: dict[str, np.ndarray]) -> None:
    assert load_processor(checkpoint).patch_size is None  # as transformers 4.41.2 saved it
    processor = HFMultimodalBackbone(checkpoint, prompts=Prompts("e5v")).collator.processor
    assert (processor.patch_size, processor.vision_feature_select_strategy,
            processor.num_additional_image_tokens) == (4, "default", 1)


def test_golden_is_not_degenerate(golden: dict[str, np.ndarray]) -> None:
    embedded = {k: v for k, v in golden.items() if not k.endswith("_prompts")}
    for key, value in embedded.items():
        assert value.shape == (5, 64), key
        assert value.dtype == np.float32, key
        np.testing.assert_allclose(np.linalg.norm(value, axis=1), 1, atol=1e-5, err_msg=key)
        rows = np.abs(value[:, None] - value[None]).max(axis=-1) + np.eye(5)
        assert rows.min() > 1e-2, f"{key}: two inputs embed alike"
    for a, b in [("gallery_e5v", "gallery_e5v_cirr"), ("query_e5v", "query_e5v_cirr"),
                 ("query_e5v_fashioniq_dress", "query_e5v_fashioniq_shirt"), ("gallery_e5v", "query_e5v"),
                 ("gallery_e5v", "text")]:
        assert np.abs(golden[a] - golden[b]).max() > 1e-2, (a, b)
