"""BGE-VL-base / -large (MMRet CLIP) through ``DualEncoderBackbone``, built as ``configs/bgevl_fashioniq.yaml``
builds it, give the ORIGINAL code's embeddings on the same tiny checkpoints and inputs.

The goldens ``tests/goldens/bgevl_base`` and ``bgevl_large`` (a ViT-B/16-like and a ViT-L/14-like tiny CLIP
in the published layout, seeded weights) hold what FlagOpen/FlagEmbedding ``research/BGE_VL`` computed with
transformers 4.45.2 (``scripts/goldens/make_bgevl_clip.py``; ``provenance.json`` has the commit): the
README's ``model.encode`` of the hub's ``modeling_MMRet_CLIP.py`` (``readme_*``) and the evaluation's
``Flag_mmret`` (``eval_*``: queries = normalize(text + image features), query text cut at 75 tokens by its
``MMIT_Collator``; corpus images; ``encode_text`` cut at 77). Queries and texts carry one extra item longer
than 77 tokens (``long_modification`` with image 0, ``long_caption``), stored in the golden.

Tolerance: none. Both sides run the same torch (2.13, CPU) with their default attention, SDPA, on one thread
(the generator and this test pin it: CPU kernels split their sums by thread count, which moves the last
bit: 1 or 3 threads against 2 moved these embeddings by up to 1.5e-7), so identical inputs must give
identical floats, and they do: token ids, pixels, fusion and normalisation are the same operations. A real
difference moves them far more (the tests below measure two: compositing alpha onto white, > 1e-3; cutting
query text at 77 instead of 75, > 1e-4). With eager attention the two
transformers versions order one op differently (4.45 scales the query before ``q @ k^T``, 5 scales the
product), so that comparison allows 3e-7 (observed: at most 1.2e-7, a few float32 ulps of values near 1).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from cir_lightning.backbones.dual_encoder import DualEncoderBackbone
from cir_lightning.data.images import load_image
from tests.goldens.exact import assert_golden, probe_gallery
from tests.goldens.recipe import GOLDENS, image_paths, load_images, load_outputs, load_texts, materialize

ROOT = Path(__file__).resolve().parents[2]
NAMES = ["bgevl_base", "bgevl_large"]
EAGER_ATOL = 3e-7

warnings.filterwarnings("ignore", category=FutureWarning)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def user_config() -> dict:
    """The backbone's ``init_args`` in BGE-VL's FashionIQ config."""
    config = yaml.safe_load((ROOT / "configs" / "bgevl_fashioniq.yaml").read_text())["model"]["backbone"]
    assert config["class_path"] == "cir_lightning.backbones.DualEncoderBackbone"
    return config["init_args"]


@pytest.fixture(scope="module", params=NAMES)
def golden(request, tmp_path_factory):
    name = request.param
    folder = materialize(GOLDENS / name, tmp_path_factory.mktemp(name) / "BGE-VL-tiny")
    backbone = DualEncoderBackbone(**{**user_config(), "model_name_or_path": str(folder)}).eval()
    return name, folder, backbone, load_outputs(GOLDENS / name)


@pytest.fixture(scope="module")
def uncut(golden):
    """The same checkpoint without ``max_text_tokens``: text cut at the text tower's 77 tokens."""
    return DualEncoderBackbone(str(golden[1]), truncation="silent").eval()


def _inputs(out):
    texts = load_texts()
    images = [load_image(p) for p in image_paths()]  # as the data modules decode the files
    return images, texts["modifications"], texts["captions"], str(out["long_modification"]), str(out["long_caption"])


def _encode(backbone, fn, *args) -> np.ndarray:
    with torch.no_grad():
        return getattr(backbone, fn)(*args).numpy()


def test_the_checkpoint_is_bgevl_s_layout_loaded_without_its_code(golden):
    name, folder, backbone, _ = golden
    assert sorted(p.name for p in folder.iterdir()) == [
        "config.json", "merges.txt", "model.safetensors", "preprocessor_config.json", "special_tokens_map.json",
        "tokenizer.json", "tokenizer_config.json", "vocab.json"]  # the hub's, less modeling_MMRet_CLIP.py
    config = backbone.base_model.config
    assert config.auto_map == {"AutoModel": "modeling_MMRet_CLIP.CLIPModel"}
    assert type(backbone.base_model).__module__ == "transformers.models.clip.modeling_clip"
    assert config.text_config.eos_token_id == 2  # OpenAI CLIP's legacy id: pooling at the largest token id
    assert config.vision_config.patch_size == {"bgevl_base": 16, "bgevl_large": 14}[name]
    # PIL preprocessing, as BGE-VL's transformers 4 did; transformers 5 would take its torchvision image
    # processor (another resize) if torchvision were installed, and these goldens would then not hold
    assert type(backbone.collator.processor.image_processor).__name__ == "CLIPImageProcessorPil"
    assert backbone.fusion == "sum_raw"
    assert backbone.collator.max_length == 75


def test_the_golden_is_not_degenerate(golden):
    _, _, _, out = golden
    for key in ("eval_gallery", "eval_query", "eval_text", "readme_gallery", "readme_query", "readme_text"):
        assert np.isfinite(out[key]).all()
        np.testing.assert_allclose(np.linalg.norm(out[key], axis=1), 1, atol=1e-5)
    for key in ("eval_gallery", "eval_query", "eval_text"):
        rows = out[key]
        gaps = np.linalg.norm(rows[:, None] - rows[None], axis=-1)[np.triu_indices(len(rows), 1)]
        assert gaps.min() > 1e-2, key  # every image / query / text has its own embedding
    # the query is a fusion: neither its image's nor its text's embedding alone
    assert np.linalg.norm(out["eval_query"][:5] - out["eval_gallery"], axis=1).min() > 0.1
    ids = out["eval_query_input_ids"]
    eos = ids.max()  # <|endoftext|>, the largest id, also the padding
    assert ids.shape[1] == 75  # the long one was cut, keeping its end token
    assert ids[5, -1] == eos
    assert (ids[5, :-1] != eos).all()
    assert out["eval_text_input_ids"].shape[1] == 77


def test_tokens_are_the_originals(golden, uncut):
    _, _, backbone, out = golden
    images, modifications, captions, long_modification, long_caption = _inputs(out)
    query = backbone.collator.query_inputs(images + images[:1], modifications + [long_modification])
    np.testing.assert_array_equal(query["input_ids"].numpy(), out["eval_query_input_ids"])
    text = uncut.collator.text_inputs(captions + [long_caption])  # as encode_text(max_length=77)
    np.testing.assert_array_equal(text["input_ids"].numpy(), out["eval_text_input_ids"])


def test_the_kernel_probe_is_our_computation(tmp_path):
    """``probe_gallery`` (stock transformers) decides whether goldens must hold bit for bit; it only can if it
    is the very computation ours is: equal to the last bit on any machine."""
    folder = materialize(GOLDENS / "bgevl_base", tmp_path / "BGE-VL-tiny")
    backbone = DualEncoderBackbone(**{**user_config(), "model_name_or_path": str(folder)}).eval()
    ours = _encode(backbone, "encode_gallery", [load_image(p) for p in image_paths()])  # one thread (fixture)
    np.testing.assert_array_equal(ours, probe_gallery())


def test_embeddings_are_the_originals_bit_for_bit(golden):
    _, _, backbone, out = golden
    images, modifications, captions, long_modification, _ = _inputs(out)
    gallery = _encode(backbone, "encode_gallery", images)
    assert_golden(gallery, out["eval_gallery"])
    assert_golden(gallery, out["readme_gallery"])
    # the evaluation's batch: five queries and the long one (cut at 75), padded together
    queries = _encode(backbone, "encode_query", images + images[:1], modifications + [long_modification])
    assert_golden(queries, out["eval_query"])
    # the README's batch: the five queries alone (its processor cannot take text over 77 tokens)
    assert_golden(_encode(backbone, "encode_query", images, modifications), out["readme_query"])
    assert_golden(_encode(backbone, "encode_text", captions), out["readme_text"])
    np.testing.assert_array_equal(out["readme_text"], out["eval_text"][:5])


def test_images_in_their_own_modes_are_converted_as_bgevl_does(golden):
    """RGBA, grey and palette images handed to the backbone directly: alpha dropped (PIL convert), as BGE-VL
    and transformers 4 do; transformers 5's processor alone would composite it onto white."""
    _, _, backbone, out = golden
    images = load_images()
    assert {im.mode for im in images} == {"RGB", "L", "RGBA", "P"}
    assert_golden(_encode(backbone, "encode_gallery", images), out["eval_gallery"])
    rgba = images[3]
    white = Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba).convert("RGB")
    shift = np.abs(_encode(backbone, "encode_gallery", [white]) - out["eval_gallery"][3]).max()
    assert shift > 1e-3  # what compositing would have cost: the comparison above sees such a difference


def test_the_75_token_cut_is_bgevl_s_and_matters(golden, uncut):
    _, _, backbone, out = golden
    images, _, _, long_modification, _ = _inputs(out)
    at_77 = _encode(uncut, "encode_query", images[:1], [long_modification])[0]
    assert np.abs(at_77 - out["eval_query"][5]).max() > 1e-4  # the test would see a wrong cut
    at_75 = _encode(backbone, "encode_query", images[:1], [long_modification])[0]
    np.testing.assert_allclose(at_75, out["eval_query"][5], atol=1e-6)  # alone: no padding, same cut


def test_long_text_items_follow_max_text_tokens_not_bgevl_s_77(golden, uncut):
    """Known difference: ``max_text_tokens`` cuts query AND text items; BGE-VL cuts only query text at 75
    (``encode_text`` at 77). Its evaluations embed no text items; a caption over 75 tokens differs under
    the BGE-VL config and equals the original with ``max_text_tokens`` unset."""
    _, _, backbone, out = golden
    _, _, captions, _, long_caption = _inputs(out)
    ours = _encode(backbone, "encode_text", captions + [long_caption])
    assert_golden(ours[:5], out["eval_text"][:5])
    assert np.abs(ours[5] - out["eval_text"][5]).max() > 1e-4
    assert_golden(_encode(uncut, "encode_text", captions + [long_caption]), out["eval_text"])


def test_eager_attention_agrees_within_float_rounding(golden):
    _, _, backbone, out = golden
    images, modifications, _, long_modification, _ = _inputs(out)
    backbone.base_model.set_attn_implementation("eager")
    try:
        gallery = _encode(backbone, "encode_gallery", images)
        queries = _encode(backbone, "encode_query", images + images[:1], modifications + [long_modification])
    finally:
        backbone.base_model.set_attn_implementation("sdpa")
    np.testing.assert_allclose(gallery, out["eval_gallery_eager"], rtol=0, atol=EAGER_ATOL)
    np.testing.assert_allclose(queries, out["eval_query_eager"], rtol=0, atol=EAGER_ATOL)
