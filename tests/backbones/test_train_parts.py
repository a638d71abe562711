"""``lora.train_parts``: the vision tower / projector (xGen-MM: resampler) trained fully beside LoRA."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from cir_lightning.backbones import HFMultimodalBackbone, XGenMMBackbone
from cir_lightning.backbones.lora import LoRA
from cir_lightning.errors import CIRConfigError


def _trained_modules(bb) -> set[str]:
    """Which top-level parts own a full (non-LoRA) trainable copy."""
    names = [n for n, p in bb.named_parameters() if p.requires_grad and "lora_" not in n]
    return {n.split(".modules_to_save.")[0].rsplit(".", 1)[-1] for n in names}


def _step(bb) -> dict[str, torch.Tensor]:
    """One optimizer step on an embedding loss; returns the trainable weights before it."""
    before = {n: p.detach().clone() for n, p in bb.named_parameters() if p.requires_grad}
    opt = torch.optim.SGD([p for p in bb.parameters() if p.requires_grad], lr=1.0)
    images = [Image.new("RGB", (32 + 16 * i, 32), c) for i, c in enumerate(["red", "blue"])]
    q = bb(bb.collator.query_inputs(images, ["make it green", "add a stripe"]))
    t = bb(bb.collator.gallery_inputs(images[::-1]))
    (q @ t.T).diagonal().sum().backward()
    opt.step()
    return before


def test_projector_and_vision_tower_train_fully_and_travel_with_the_adapter(tiny_model_dir, tmp_path):
    torch.manual_seed(0)
    bb = HFMultimodalBackbone(str(tiny_model_dir), lora=LoRA(r=2, alpha=4, dropout=0.0, train_parts=["projector"]))
    assert _trained_modules(bb) == {"multi_modal_projector"}
    frozen_vision = [p for n, p in bb.named_parameters() if "vision_tower" in n]
    assert frozen_vision
    assert not any(p.requires_grad for p in frozen_vision)
    before = _step(bb)
    moved = {n for n, p in bb.named_parameters() if p.requires_grad and not torch.equal(before[n], p)}
    assert any("multi_modal_projector.modules_to_save" in n for n in moved)
    bb.save_adapter(tmp_path / "adapter")  # the projector is part of the adapter and comes back with it
    again = HFMultimodalBackbone(str(tiny_model_dir), lora=LoRA(r=2, alpha=4, train_parts=["projector"],
                                                                 init_adapter=str(tmp_path / "adapter")))
    assert again.weights_digest() == bb.weights_digest()

    both = HFMultimodalBackbone(str(tiny_model_dir), lora=LoRA(r=2, alpha=4, train_parts=["vision", "projector"]))
    assert _trained_modules(both) == {"vision_tower", "multi_modal_projector"}


def test_xgenmm_resampler_trains_and_the_vision_encoder_stays_frozen(tmp_path):
    bb = XGenMMBackbone(str(tmp_path / "x"), make_tiny_if_missing=True, anyres=False,
                        lora=LoRA(r=2, alpha=4, dropout=0.0, train_parts=["resampler"]))
    assert _trained_modules(bb) == {"vision_tokenizer"}
    before = _step(bb)
    assert any("vision_tokenizer.modules_to_save" in n and not torch.equal(before[n], p)
               for n, p in bb.named_parameters() if p.requires_grad)


def test_bad_train_parts_are_explained(tiny_model_dir):
    with pytest.raises(CIRConfigError, match="unknown `lora.train_parts` entry 'llm'"):
        HFMultimodalBackbone(str(tiny_model_dir), lora=LoRA(r=2, alpha=4, train_parts=["llm"]))


def test_parts_that_are_missing_or_nested_are_explained():
    from torch import nn

    from cir_lightning.backbones.lora import part_paths

    model = nn.Module()  # Qwen2-VL's layout: the merger (its projector) lies inside the vision tower
    model.model = nn.Module()
    model.model.visual = nn.ModuleDict({"merger": nn.Linear(2, 2)})
    assert part_paths(model, ["vision"]) == ["model.visual"]
    with pytest.raises(CIRConfigError, match="model.visual.merger lies inside model.visual"):
        part_paths(model, ["projector", "vision"])
    with pytest.raises(CIRConfigError, match="has no module named vision_tower / vision_model"):
        part_paths(nn.Linear(2, 2), ["vision"])


def test_an_adapter_with_another_scale_is_refused_rslora_included(backbone):
    """rsLoRA scales by alpha / sqrt(r), not alpha / r: such an adapter loaded as plain LoRA ran at the wrong
    scale without a word (peft's own scaling for it: 4.0 against our 2.0)."""
    from pathlib import Path

    from cir_lightning.backbones.adapters import _check_settings, lora_settings
    from cir_lightning.errors import CIRConfigError

    assert lora_settings(backbone.model) == {"r": 4, "lora_alpha": 8, "use_rslora": False}
    _check_settings(Path("adapter"), {"r": 4, "lora_alpha": 8, "use_rslora": False}, backbone.model)
    _check_settings(Path("adapter"), {"r": 4, "lora_alpha": 8}, backbone.model)  # recorded before rsLoRA was
    with pytest.raises(CIRConfigError, match=r"other LoRA settings \(use_rslora: True in the adapter, False here\)"):
        _check_settings(Path("adapter"), {"r": 4, "lora_alpha": 8, "use_rslora": True}, backbone.model)
