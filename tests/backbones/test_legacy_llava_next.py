"""``legacy_llava_next: true``: transformers 4.41.2's LLaVA-NeXT, bugs included (E5-V's published numbers).

With the switch, our backbone equals E5-V's code run AS PINNED (the golden's plain arrays, not ``fixed_*``)
for all five images, the transposed-grid and odd-padding ones included, at the golden test's tolerance
(see ``test_golden_e5v.py``). The switch only changes the classes of the objects one backbone owns, so
other backbones in the process keep transformers' fixed behaviour, and the collator pickles with it.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from cir_lightning.backbones import HFMultimodalBackbone, Prompts
from cir_lightning.backbones.legacy_llava_next import LegacyLlavaNextProcessor
from cir_lightning.backbones.tiny import make_tiny_model
from cir_lightning.cli import main
from cir_lightning.errors import CIRConfigError
from tests.backbones.test_golden_e5v import ATOL, BUGGY, GOLDEN, PRESETS, modifications, queries
from tests.goldens.recipe import load_images, load_outputs, load_texts, materialize

CONFIGS = sorted((Path(__file__).parents[2] / "configs" / "zeroshot" / "e5v").glob("*.yaml"))


@pytest.fixture(scope="module")
def golden() -> dict[str, np.ndarray]:
    return load_outputs(GOLDEN)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(materialize(GOLDEN, tmp_path_factory.mktemp("e5v_legacy") / "tiny-e5v"))


@pytest.mark.parametrize("preset", PRESETS)
def test_legacy_equals_e5vs_pinned_code_for_every_image(preset: str, checkpoint: str, golden: dict) -> None:
    backbone, texts = HFMultimodalBackbone(checkpoint, prompts=Prompts(preset), legacy_llava_next=True), load_texts()
    images = load_images()  # in their own modes (RGBA, palette, grey), as E5-V's run had them
    ours = {"gallery": backbone.encode_gallery(images).numpy(),
            "query": queries(backbone, images, modifications(preset, texts)).numpy()}
    for side, embedded in ours.items():
        np.testing.assert_allclose(embedded, golden[f"{side}_{preset}"], rtol=0, atol=ATOL, err_msg=f"{preset} {side}")
        # and so no longer equal to the fixed code where the bugs apply
        assert (np.abs(embedded[BUGGY] - golden[f"fixed_{side}_{preset}"][BUGGY]).max(axis=1) > 1e-2).all()
    np.testing.assert_allclose(backbone.encode_text(texts["captions"]).numpy(), golden["text"], rtol=0, atol=ATOL)


def test_legacy_counts_as_many_image_tokens_as_it_packs_features(checkpoint: str) -> None:
    """The processor expands ``<image>`` to the legacy layout's feature count: transformers 5 refuses a
    batch whose count differs from the model's features (one image a batch, so no two errors cancel)."""
    backbone = HFMultimodalBackbone(checkpoint, prompts=Prompts("e5v"), legacy_llava_next=True)
    image_id = backbone.collator.processor.image_token_id
    counts = []
    for width, height in [(45, 117), (117, 45), (128, 40), (40, 128), (33, 51), (51, 33), (7, 200), (200, 7),
                          (31, 64), (64, 31), (97, 53), (16, 16), (300, 299)]:
        inputs = backbone.collator.gallery_inputs([Image.new("RGB", (width, height), (width, height, 7))])
        counts.append(int((inputs["input_ids"] == image_id).sum()))
        with torch.no_grad():
            assert torch.isfinite(backbone(inputs)).all()
    assert len(set(counts)) > 3, counts  # the sizes exercise different grids and unpadding


def test_legacy_stays_with_its_backbone_and_pickles(checkpoint: str, golden: dict) -> None:
    legacy = HFMultimodalBackbone(checkpoint, prompts=Prompts("e5v"), legacy_llava_next=True)
    plain = HFMultimodalBackbone(checkpoint, prompts=Prompts("e5v"))
    rgb = load_images(convert_rgb=True)
    # a backbone built after the legacy one, in the same process, is transformers' fixed LLaVA-NeXT
    np.testing.assert_allclose(plain.encode_gallery(rgb).numpy(), golden["fixed_gallery_e5v"], rtol=0, atol=ATOL)
    assert type(plain.collator.processor).__name__ == "LlavaNextProcessor"
    # the collator goes to DataLoader workers by pickle: its copy pads and counts as 4.41.2 did
    copy = pickle.loads(pickle.dumps(legacy.collator))
    assert isinstance(copy.processor, LegacyLlavaNextProcessor)
    ours, theirs = legacy.collator.gallery_inputs(rgb), copy.gallery_inputs(rgb)
    assert ours.keys() == theirs.keys()
    for key in ours:
        assert torch.equal(ours[key], theirs[key]), key
    assert not torch.equal(ours["pixel_values"], plain.collator.gallery_inputs(rgb)["pixel_values"])
    # saved, the processor names transformers' own classes (AutoProcessor loads it anywhere)
    assert copy.processor.to_dict()["processor_class"] == "LlavaNextProcessor"
    assert copy.processor.image_processor.to_dict()["image_processor_type"] == "LlavaNextImageProcessorPil"


def test_legacy_is_in_the_fingerprint_only_when_on(checkpoint: str) -> None:
    on = HFMultimodalBackbone(checkpoint, prompts=Prompts("e5v"), legacy_llava_next=True).fingerprint()
    off = HFMultimodalBackbone(checkpoint, prompts=Prompts("e5v")).fingerprint()
    assert on.pop("legacy_llava_next") is True
    assert "legacy_llava_next" not in off
    assert on == off


def test_legacy_is_refused_on_other_model_types(tmp_path: Path) -> None:
    folder = make_tiny_model(tmp_path / "qwen", family="qwen2_vl")
    with pytest.raises(CIRConfigError, match=r"legacy_llava_next: true.*`qwen2_vl` model: remove the option"):
        HFMultimodalBackbone(str(folder), legacy_llava_next=True)


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.stem)
def test_e5v_configs_turn_it_on(config: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # --print_config only parses: nothing is loaded or written
    with pytest.raises(SystemExit) as exit_info:
        main(["validate", "--config", str(config), "--print_config"])
    assert exit_info.value.code in (0, None)
    assert yaml.safe_load(capsys.readouterr().out)["model"]["backbone"]["init_args"]["legacy_llava_next"] is True
