"""Building a tiny model never reseeds the process: a run trains the same whether it built its model or found it."""

from __future__ import annotations

import pytest
import torch

from cir_lightning.backbones import HFMultimodalBackbone, LoRA, make_tiny_dual_encoder, make_tiny_model
from cir_lightning.backbones.xgenmm.tiny import make_tiny_xgenmm


@pytest.mark.parametrize("build", [make_tiny_model, make_tiny_xgenmm, make_tiny_dual_encoder])
def test_building_leaves_the_callers_random_state_alone(build, tmp_path, monkeypatch):
    torch.manual_seed(42)
    expected = torch.rand(4)
    torch.manual_seed(42)
    gpu_seeds = []  # torch.manual_seed reseeds the GPUs too (queued until CUDA starts): it must not be called
    monkeypatch.setattr(torch.cuda, "manual_seed_all", gpu_seeds.append)
    build(tmp_path / "m", seed=0)
    assert torch.equal(torch.rand(4), expected)
    assert gpu_seeds == []


def test_a_built_and_a_found_model_get_the_same_lora_weights(tmp_path):
    def lora_weights() -> dict[str, torch.Tensor]:
        torch.manual_seed(42)  # what `seed_everything` does before the CLI builds the model
        backbone = HFMultimodalBackbone(str(tmp_path / "tiny"), make_tiny_if_missing=True,
                                        lora=LoRA(r=2, alpha=4, dropout=0.0))
        return {k: v.clone() for k, v in backbone.state_dict().items() if "lora_" in k}

    built = lora_weights()  # the first run builds the tiny model, the second loads it
    found = lora_weights()
    assert built
    assert built.keys() == found.keys()
    assert all(torch.equal(built[k], found[k]) for k in built)
