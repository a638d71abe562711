"""build_backbone: the family comes from the checkpoint's config, one call for every supported kind."""

from __future__ import annotations

import pytest
import torch

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


class MeanPooledCLIP(DualEncoderBackbone):
    """A backbone of the user's own (here: a dual encoder taking fewer options, its towers' states mean-pooled)."""

    def __init__(self, model_name_or_path: str, lora: LoRA | None = None) -> None:
        super().__init__(model_name_or_path, lora=lora)

    def image_features(self, inputs):
        states = self.base_model.vision_model(pixel_values=inputs["pixel_values"]).last_hidden_state
        return self.base_model.visual_projection(states.mean(1)).float()


def test_a_registered_backbone_of_one_s_own_is_built_by_the_factory(folders, monkeypatch):
    monkeypatch.setattr(factory, "BACKBONES", dict(factory.BACKBONES))  # the registry as it was, after the test
    monkeypatch.setattr(factory, "MODEL_TYPE_TO_FAMILY", dict(factory.MODEL_TYPE_TO_FAMILY))
    factory.register_backbone("mean_clip", MeanPooledCLIP, )
    assert factory.list_backbones()["mean_clip"] == "MeanPooledCLIP"
    bb = build_backbone(folders["dual_encoder"], family="mean_clip", lora=LoRA(r=2, alpha=4))
    assert type(bb) is MeanPooledCLIP
    assert any(p.requires_grad for p in bb.parameters())
    from PIL import Image

    gallery = bb.encode_gallery([Image.new("RGB", (32, 32), "red")])
    assert gallery.shape == (1, bb.embedding_dim)
    assert not torch.allclose(gallery, build_backbone(folders["dual_encoder"]).encode_gallery(
        [Image.new("RGB", (32, 32), "red")]))  # its own pooling, not CLIP's
    # the shared options it does not take: their defaults are not passed, anything else is refused by name
    with pytest.raises(CIRConfigError, match=r"MeanPooledCLIP takes no `dtype`; it takes `lora`$"):
        build_backbone(folders["dual_encoder"], family="mean_clip", dtype="bfloat16")
    with pytest.raises(CIRConfigError, match=r"MeanPooledCLIP takes no `fusion`"):
        build_backbone(folders["dual_encoder"], family="mean_clip", fusion="sum")
    with pytest.raises(CIRConfigError, match="'xgenmm' is XGenMMBackbone's already"):
        factory.register_backbone("xgenmm", MeanPooledCLIP)
    with pytest.raises(CIRConfigError, match=r"model types \['clip'\] are built by other families already"):
        factory.register_backbone("mean_clip", MeanPooledCLIP, model_types=["clip"])

    class Local(MeanPooledCLIP):
        pass

    with pytest.raises(CIRConfigError, match="register a class defined at a module's top level"):
        factory.register_backbone("local", Local)
