"""A user's text that holds an image (or video) placeholder is refused, with the text, on every path that takes one:
otherwise a query's image count goes wrong (a library error far from the data) or a text-only item silently
embeds the image token's vector."""

from __future__ import annotations

import warnings

import pytest
from PIL import Image

from cir_lightning.backbones import XGenMMBackbone
from cir_lightning.backbones.xgenmm import make_tiny_xgenmm
from cir_lightning.errors import CIRDataError

warnings.filterwarnings("ignore", category=FutureWarning)

IMAGE = Image.new("RGB", (40, 30), "red")


@pytest.fixture(scope="module", params=["llava", "xgenmm", "xgenmm-release"])
def collator(request, backbone, tmp_path_factory):
    if request.param == "llava":
        return backbone.collator
    folder = make_tiny_xgenmm(tmp_path_factory.mktemp("xgenmm") / "tiny")
    return XGenMMBackbone(str(folder), release_compatible=request.param == "xgenmm-release").collator


@pytest.mark.parametrize("placeholder", ["<image>", "own"])
def test_modifications_texts_and_captions_holding_the_placeholder_are_refused(collator, placeholder):
    token = collator.image_token if placeholder == "own" else placeholder
    bad = f"make it {token} red"
    with pytest.raises(CIRDataError, match=rf"^the modification {bad!r} holds {token!r}, a placeholder the model "):
        collator.query_inputs([IMAGE, IMAGE], ["make it blue", bad])
    with pytest.raises(CIRDataError, match=rf"^the text {bad!r} holds {token!r}"):
        collator.text_inputs(["a dress", bad])
    with pytest.raises(CIRDataError, match=rf"^the caption {bad!r} holds"):  # FiRE's stage 1
        collator.caption_inputs([IMAGE], ["<image> describe it:"], [bad])


def test_texts_without_it_pass_and_the_image_tokens_come_from_the_template_only(collator):
    query = collator.query_inputs([IMAGE], ["make it an image of a dress, <imag e> is not the token"])
    image_id = collator.tokenizer.convert_tokens_to_ids(collator.image_token)
    template_images = collator.prompts.query.count("<image>")
    per_image = int((query["input_ids"][0] == image_id).sum()) // template_images
    assert per_image >= 1
    text = collator.text_inputs(["an image of a red dress"])
    assert not bool((text["input_ids"] == image_id).any())


def test_a_slow_tokenizer_s_cut_is_the_longest_prefix_within_the_limit():
    from cir_lightning.backbones.user_text import cut_to_tokens

    words = "one two three four five six"
    count = lambda s: len(s.split())  # noqa: E731 - a stand-in tokenizer: one token per word
    cut = cut_to_tokens(words, [], 3, count)  # no offsets: bisection on characters
    assert words.startswith(cut)
    assert count(cut) == 3
    assert count(words[:len(cut) + 1]) == 4  # one character more is one token too many


def test_qwen_s_video_token_is_refused_too(tmp_path):
    """Qwen2-VL's processor expands ``<|video_pad|>`` too: in a text item it embedded silently, in a query it
    failed in transformers (a ValueError the server did not answer as a bad request)."""
    from cir_lightning.backbones import HFMultimodalBackbone, Prompts, make_tiny_model

    folder = make_tiny_model(tmp_path / "qwen", family="qwen2_vl")
    collator = HFMultimodalBackbone(str(folder), prompts=Prompts(preset="gme")).collator
    assert "<|video_pad|>" in collator.placeholders
    with pytest.raises(CIRDataError, match=r"^the text 'a <\|video_pad\|> dress' holds '<\|video_pad\|>', a "
                                           r"placeholder the model fills with a video"):
        collator.text_inputs(["a <|video_pad|> dress"])
    with pytest.raises(CIRDataError, match="fills with a video"):
        collator.query_inputs([IMAGE], ["a <|video_pad|> dress"])


def test_a_stage_one_modification_holding_it_is_refused(backbone):
    """FiRE's stage 1 puts the modification into the instruction, whose ``<image>`` becomes the image."""
    from cir_lightning.stage1 import CaptionBatches

    batches = CaptionBatches(backbone.collator)
    sample = {"index": 7, "reference_image": IMAGE, "target_image": IMAGE, "target_caption": "a red dress"}
    assert batches.triplets([{**sample, "modification": "make it red"}])["caption_labels"].shape[0] == 1
    with pytest.raises(CIRDataError, match=r"^the modification 'make it <image> red' holds '<image>'"):
        batches.triplets([{**sample, "modification": "make it <image> red"}])
