"""build_backbone: the family comes from the checkpoint's config, one call for every supported kind."""

from __future__ import annotations

import pytest

from cir_lightning.backbones import (
    DualEncoderBackbone,
    HFMultimodalBackbone,
    LoRA,
    Prompts,
    XGenMMBackbone,
    factory,
    make_tiny_dual_encoder,
    make_tiny_xgenmm,
    tiny,
)
from cir_lightning.backbones.factory import build_backbone, detect_family
from cir_lightning.errors import CIRConfigError, CIRModelError


@pytest.fixture(scope="module")
def folders(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("factory")
    return {"hf_mllm": str(tiny_model_dir), "dual_encoder": str(make_tiny_dual_encoder(root / "clip")),
            "xgenmm": str(make_tiny_xgenmm(root / "xgenmm"))}


@pytest.mark.parametrize(("family", "cls"), [("hf_mllm", HFMultimodalBackbone), ("dual_encoder", DualEncoderBackbone),
                                             ("xgenmm", XGenMMBackbone)])
def test_the_family_is_read_from_the_checkpoint(folders, family, cls):
    assert detect_family(folders[family]) == family
    backbone = build_backbone(folders[family], lora=LoRA(r=2, alpha=4))
    assert type(backbone) is cls
    assert any(p.requires_grad for p in backbone.parameters())


def test_family_options_reach_the_class(folders):
    bb = build_backbone(folders["hf_mllm"], prompts=Prompts("e5v"), eos_block_size=0)
    assert (bb.pooling, bb.eos_block_size) == ("last_token", 0)
    assert build_backbone(folders["dual_encoder"], fusion="sum").fusion == "sum"


def test_wrong_combinations_are_clear_errors(folders, tmp_path, monkeypatch):
    with pytest.raises(CIRConfigError, match="not used for it"):
        build_backbone(folders["xgenmm"], trust_remote_code=True)
    with pytest.raises(CIRConfigError, match="take `query_template`, not `prompts`"):
        build_backbone(folders["dual_encoder"], prompts=Prompts("fire"))
    with pytest.raises(CIRModelError, match="has no config.json"):
        build_backbone(str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CIRModelError, match="cannot be fetched from the hub .offline mode is on"):
        build_backbone("someone/not-a-model")


def test_every_tiny_family_is_in_one_registry():
    assert list(tiny.TINY_MODELS) == ["llava_next", "llava", "idefics3", "qwen2_vl", "qwen2_5_vl", "paligemma"]
    assert set(factory.list_backbones()) == set(factory.BACKBONES)
