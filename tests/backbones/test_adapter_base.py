"""An adapter records the base weights it was trained on; loading it onto other base weights warns.

The warning compares content digests (``identity.checkpoint_digest``), not paths: a moved model folder is the
same base, a folder whose weights were replaced is not. Both of what ``lora.init_adapter`` reads are covered,
the exported adapter folder and the Lightning checkpoint.
"""

from __future__ import annotations

import json
import shutil
import warnings

import torch
from safetensors.torch import load_file, save_file

from cir_lightning.backbones import HFMultimodalBackbone
from cir_lightning.backbones.adapters import BASE_FILE
from cir_lightning.backbones.lora import LoRA


def _warnings_loading(model_dir, init_adapter) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        HFMultimodalBackbone(str(model_dir), lora=LoRA(r=2, alpha=4, init_adapter=str(init_adapter)))
    return [str(w.message) for w in caught if "base" in str(w.message)]


def _other_weights(model_dir, dest):
    """A copy of ``model_dir`` whose first weight was changed."""
    other = shutil.copytree(model_dir, dest)
    weights = load_file(other / "model.safetensors")
    first = sorted(weights)[0]
    weights[first] = weights[first] + 1.0
    save_file(weights, str(other / "model.safetensors"), metadata={"format": "pt"})
    return other


def test_an_adapter_folder_records_its_base_and_warns_on_other_weights(tiny_model_dir, tmp_path):
    trained = HFMultimodalBackbone(str(tiny_model_dir), lora=LoRA(r=2, alpha=4))
    trained.save_adapter(tmp_path / "adapter")
    record = json.loads((tmp_path / "adapter" / BASE_FILE).read_text())
    assert record == {"model": str(tiny_model_dir), "base_digest": trained.base_digest}

    moved = shutil.copytree(tiny_model_dir, tmp_path / "moved")
    assert _warnings_loading(moved, tmp_path / "adapter") == []  # the same weights elsewhere
    other = _other_weights(tiny_model_dir, tmp_path / "other")
    (message,) = _warnings_loading(other, tmp_path / "adapter")
    assert message.startswith(f"`lora.init_adapter` {tmp_path / 'adapter'} was trained on other base weights: "
                              f"`{tiny_model_dir}` (base digest {trained.base_digest[:16]}) then, `{other}`")

    (tmp_path / "adapter" / BASE_FILE).unlink()  # peft's own folders (FiRE's release) record no base
    assert _warnings_loading(other, tmp_path / "adapter") == []


def test_a_checkpoint_given_as_init_adapter_is_compared_with_its_base(tiny_model_dir, tmp_path):
    trained = HFMultimodalBackbone(str(tiny_model_dir), lora=LoRA(r=2, alpha=4))
    state = {f"backbone.model.{n}": p.detach().clone() for n, p in trained.model.named_parameters() if p.requires_grad}
    fingerprint = {"model": str(tiny_model_dir), "base_digest": trained.base_digest}
    torch.save({"state_dict": state, "cir_lightning": {"fingerprint": fingerprint, "trainable": sorted(state)}},
               tmp_path / "fit.ckpt")
    assert _warnings_loading(tiny_model_dir, tmp_path / "fit.ckpt") == []
    other = _other_weights(tiny_model_dir, tmp_path / "other")
    (message,) = _warnings_loading(other, tmp_path / "fit.ckpt")
    assert "fit.ckpt was trained on other base weights" in message
    assert "load the base model it was trained on" in message
