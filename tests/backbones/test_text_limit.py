"""`max_text_tokens`: over-long user text is cut (template, image tokens and EOS block kept), positions checked."""

from __future__ import annotations

import warnings

import pytest
import torch
from PIL import Image

from cir_lightning.backbones import DualEncoderBackbone, HFMultimodalBackbone, XGenMMBackbone
from cir_lightning.backbones.collate import MLLMCollator
from cir_lightning.errors import CIRConfigError, CIRDataError

warnings.filterwarnings("ignore", category=FutureWarning)

LONG = " ".join(("make it red and move the circle to the left " * 1500).split())  # 15,000 words
IMAGES = [Image.new("RGB", (40, 32), "red"), Image.new("RGB", (32, 48), "blue")]


def _collator(backbone, **options) -> MLLMCollator:
    c = backbone.collator
    return MLLMCollator(c.processor, c.prompts, c.eos_token, c.eos_block_size, **options)


def _count(collator, text: str) -> int:
    return len(collator.tokenizer(text, add_special_tokens=False)["input_ids"])


def test_a_15000_word_modification_is_cut_with_one_warning(backbone):
    collator = _collator(backbone, max_positions=1024)
    assert collator.max_text_tokens == 512  # FiRE's text max_length, by default
    n = _count(collator, LONG)
    assert len(LONG.split()) == 15000
    assert n >= 15000
    with pytest.warns(UserWarning, match=rf"1 of 2 text\(s\) .* longer than `max_text_tokens` = 512 tokens .*"
                                         rf"the longest had {n} tokens"):
        cut = collator.query_inputs(IMAGES, [LONG, "make it blue"])
    (kept,) = collator.limit_texts([LONG])
    assert LONG.startswith(kept)  # the exact beginning, cut at a token boundary
    assert _count(collator, kept) == 512
    assert LONG[len(kept)] == " "  # the cut falls between words here: no half word
    whole = collator.query_inputs(IMAGES[:1], [kept])  # the same prompt, built from the cut text directly
    assert torch.equal(cut["input_ids"][0], whole["input_ids"][0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once per collator
        collator.query_inputs(IMAGES[:1], [LONG])


def test_the_template_image_tokens_and_eos_block_survive(backbone):
    collator = _collator(backbone)
    with pytest.warns(UserWarning, match="max_text_tokens"):
        long = collator.query_inputs(IMAGES, [LONG, LONG])
    short = collator.query_inputs(IMAGES, ["make it blue", "x"])
    image_id = collator.tokenizer.convert_tokens_to_ids(collator.image_token)
    ids = long["input_ids"]
    assert (ids[:, -5:] == collator.eos_id).all()
    assert torch.equal((ids == image_id).sum(dim=1), (short["input_ids"] == image_id).sum(dim=1))
    template = collator.tokenizer(collator.prompts.query.split("{modification}")[1], add_special_tokens=False)
    tail = template["input_ids"]  # what follows the modification in the template
    assert ids[0, -5 - len(tail):-5].tolist() == tail
    with torch.no_grad():
        assert backbone(long).shape == (2, 64)


def test_texts_within_the_limit_are_unchanged(backbone):
    texts = ["make it blue", "a much longer modification text with several words in it", "x"]
    limited, unlimited = _collator(backbone), _collator(backbone, max_text_tokens=None)
    images = [*IMAGES, IMAGES[0]]
    a, b = limited.query_inputs(images, texts), unlimited.query_inputs(images, texts)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    a, b = limited.text_inputs(texts), unlimited.text_inputs(texts)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_captions_are_cut_too(backbone):
    collator = _collator(backbone, max_text_tokens=16)
    with pytest.warns(UserWarning, match=r"1 of 2 text\(s\) .*`max_text_tokens` = 16"):
        out = collator.text_inputs([LONG, "a red circle"])
    assert int(out["attention_mask"][0].sum()) < 16 + 10
    assert (out["input_ids"][:, -5:] == collator.eos_id).all()


def test_prompts_longer_than_the_positions_are_refused(tiny_model_dir):
    bb = HFMultimodalBackbone(str(tiny_model_dir), max_text_tokens=1020)  # the tiny model has 1024 positions
    with pytest.raises(CIRDataError, match=r"a prompt of \d+ tokens is longer than the language model's 1024 "
                                           r"positions .*`max_text_tokens` = 1020"), \
            pytest.warns(UserWarning, match="max_text_tokens"):
        bb.collator.query_inputs(IMAGES[:1], [LONG])
    with pytest.raises(CIRConfigError, match=r"`max_text_tokens` = 2048 is more than the 1024 positions"):
        HFMultimodalBackbone(str(tiny_model_dir), max_text_tokens=2048)
    unlimited = HFMultimodalBackbone(str(tiny_model_dir), max_text_tokens=None)
    with pytest.raises(CIRDataError, match=r"`max_text_tokens` = null \(no limit\)"):
        unlimited.collator.text_inputs([LONG])


def test_xgenmm_checks_the_positions_after_splicing_the_images(tmp_path):
    folder = str(tmp_path / "x")  # the tiny xGen-MM has 512 positions
    with pytest.raises(CIRConfigError, match="`max_text_tokens` = 600 is more than the 512 positions"):
        XGenMMBackbone(folder, make_tiny_if_missing=True, max_text_tokens=600)
    bb = XGenMMBackbone(folder, max_text_tokens=470)
    with pytest.warns(UserWarning, match="max_text_tokens"):
        inputs = bb.collator.query_inputs([Image.new("RGB", (90, 30))], [LONG])
    assert inputs["input_ids"].shape[1] <= 512  # the text fits, but each <image> becomes its crops' tokens
    with pytest.raises(CIRDataError, match=r"prompt of \d+ tokens .* 512 positions .*`max_text_tokens` = 470"):
        bb(inputs)
    short = XGenMMBackbone(folder, max_text_tokens=64)
    with pytest.warns(UserWarning, match="max_text_tokens` = 64"):
        assert short.encode_query([Image.new("RGB", (90, 30))], [LONG]).shape == (1, 64)


def test_the_dual_encoder_takes_the_same_option(tmp_path):
    folder = str(tmp_path / "clip")
    bb = DualEncoderBackbone(folder, make_tiny_if_missing=True)
    assert bb.collator.max_length == 77  # default: the text tower's maximum
    with pytest.raises(CIRConfigError, match=r"`max_text_tokens` = 100 is more than the text tower .* \(77 tokens\)"):
        DualEncoderBackbone(folder, max_text_tokens=100)
    short = DualEncoderBackbone(folder, max_text_tokens=8)
    assert short.fingerprint()["max_length"] == 8
    with pytest.warns(UserWarning, match="maximum of 8 tokens"):
        inputs = short.collator.text_inputs([LONG])
    assert inputs["input_ids"].shape == (1, 8)


@pytest.mark.parametrize("value", [0, -3, 1.5, True])
def test_max_text_tokens_is_checked_when_set(value, backbone):
    with pytest.raises(CIRConfigError, match=rf"`max_text_tokens` must be an integer >= 1, got {value!r}"):
        _collator(backbone, max_text_tokens=value)
