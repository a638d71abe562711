"""Gradient checkpointing: the same gradients with less stored activation, for every backbone family."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from cir_lightning.backbones import DualEncoderBackbone, HFMultimodalBackbone, LoRA, Prompts, XGenMMBackbone
from cir_lightning.errors import CIRConfigError

IMAGES = [Image.new("RGB", (40, 32), c) for c in ("red", "blue", "green")]
MODS = ["make it blue", "a red one", "same but darker"]


def _build(kind: str, folder: str, checkpointing: bool):
    torch.manual_seed(0)
    lora = LoRA(r=4, alpha=8, dropout=0.0)
    if kind == "hf":
        return HFMultimodalBackbone(folder, prompts=Prompts("short"), lora=lora, gradient_checkpointing=checkpointing,
                                    make_tiny_if_missing=True)
    if kind == "xgenmm":
        return XGenMMBackbone(folder, prompts=Prompts("short"), lora=lora, gradient_checkpointing=checkpointing,
                              make_tiny_if_missing=True)
    return DualEncoderBackbone(folder, lora=lora, gradient_checkpointing=checkpointing, make_tiny_if_missing=True)


def _layers(backbone) -> list[torch.nn.Module]:
    # a submodule of the first layer: transformers checkpoints a layer's `forward`, so hooks on the layer
    # itself stay outside the checkpoint, while those of its parts run again when it is recomputed
    return [m for name, m in backbone.named_modules() if name.endswith("layers.0.mlp")]


@pytest.mark.parametrize("kind", ["hf", "xgenmm", "dual"])
def test_checkpointing_recomputes_layers_and_keeps_the_gradients(kind, tmp_path):
    grads, calls = [], []
    _build(kind, str(tmp_path / kind), False)  # make the tiny checkpoint first: building it draws random numbers
    for checkpointing in (False, True):
        bb = _build(kind, str(tmp_path / kind), checkpointing)
        for name, p in bb.named_parameters():  # LoRA B starts at zero: give it values so A gets gradients
            if "lora_B" in name:
                torch.nn.init.normal_(p, std=0.02, generator=torch.Generator().manual_seed(hash(name) % 1000))
        count = [0]
        for layer in _layers(bb):
            # a pre-hook: torch stops a recomputation as soon as it has what backward needs, which can be
            # before a forward hook would run
            layer.register_forward_pre_hook(lambda *_, c=count: c.__setitem__(0, c[0] + 1))
        bb.train()
        q = bb(bb.collator.query_inputs(IMAGES, MODS))
        g = bb(bb.collator.gallery_inputs(IMAGES))
        forward_calls = count[0]
        torch.nn.functional.cross_entropy(q @ g.T * 10, torch.arange(3)).backward()
        calls.append(count[0] - forward_calls)  # layer forwards run again during backward
        grads.append({n: p.grad.clone() for n, p in bb.named_parameters() if p.requires_grad})
    assert calls[0] == 0
    assert calls[1] > 0  # checkpointing recomputed the layers
    assert grads[0].keys() == grads[1].keys()
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, atol=1e-6, rtol=1e-5)
    assert any(g.abs().sum() > 0 for g in grads[0].values())


def test_models_without_checkpointing_say_so():
    from cir_lightning.backbones.base import enable_gradient_checkpointing

    with pytest.raises(CIRConfigError, match="Linear does not support gradient checkpointing"):
        enable_gradient_checkpointing(torch.nn.Linear(2, 2))
