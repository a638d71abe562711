"""BGE-VL-base / -large's checkpoint layout loads through DualEncoderBackbone without their own code, with
BGE-VL's query fusion and its evaluation's 75-token query text."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from cir_lightning.backbones.dual_encoder import DualEncoderBackbone
from cir_lightning.data.layouts.bgevl import QUERY_MAX_TOKENS
from tests.data.fake_bgevl import make_bgevl_clip

warnings.filterwarnings("ignore", category=FutureWarning)


@pytest.fixture(scope="module")
def bge_dir(tmp_path_factory):
    return make_bgevl_clip(tmp_path_factory.mktemp("bgevl") / "BGE-VL-tiny")


def _features(out):
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def test_the_published_layout_loads_without_the_checkpoints_own_code(bge_dir):
    names = sorted(p.name for p in bge_dir.iterdir())
    assert names == ["config.json", "merges.txt", "model.safetensors", "modeling_MMRet_CLIP.py",
                     "preprocessor_config.json", "special_tokens_map.json", "tokenizer.json",
                     "tokenizer_config.json", "vocab.json"]
    bb = DualEncoderBackbone(str(bge_dir), max_text_tokens=QUERY_MAX_TOKENS)  # the modeling file raises if run
    assert type(bb.base_model).__module__.startswith("transformers.models.clip")
    assert bb.fusion == "sum_raw"
    assert bb.collator.max_length == 75


def test_query_and_gallery_embeddings_are_bge_vls_math(bge_dir):
    from transformers import CLIPImageProcessor, CLIPModel, CLIPTokenizer

    bb = DualEncoderBackbone(str(bge_dir), max_text_tokens=QUERY_MAX_TOKENS)
    images = [Image.new("RGB", (40, 32), "red"), Image.new("RGB", (32, 48), "navy")]
    texts = ["is darker, and has stripes", "is plain"]
    model = CLIPModel.from_pretrained(bge_dir).eval()  # what BGE-VL's eval loads, and its own processors
    tokens = CLIPTokenizer.from_pretrained(bge_dir)(texts, padding=True, truncation=True, max_length=75,
                                                    return_tensors="pt")
    pixels = CLIPImageProcessor.from_pretrained(bge_dir)(images, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        text, image = _features(model.get_text_features(**tokens)), _features(model.get_image_features(pixels))
    assert torch.allclose(bb.encode_query(images, texts), F.normalize(text + image, dim=-1), atol=1e-6)
    assert torch.allclose(bb.encode_gallery(images), F.normalize(image, dim=-1), atol=1e-6)


def test_query_text_is_cut_at_75_tokens_keeping_the_end_token(bge_dir):
    bb = DualEncoderBackbone(str(bge_dir), max_text_tokens=QUERY_MAX_TOKENS, truncation="silent")
    full = DualEncoderBackbone(str(bge_dir))
    long = " ".join(["red"] * 120)
    ids = bb.collator.query_inputs([Image.new("RGB", (32, 32))], [long])["input_ids"]
    assert ids.shape == (1, 75)
    assert ids[0, -1] == bb.collator.tokenizer.eos_token_id
    with pytest.warns(UserWarning, match="maximum of 77"):
        assert full.collator.query_inputs([Image.new("RGB", (32, 32))], [long])["input_ids"].shape == (1, 77)
