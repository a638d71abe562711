"""An exported adapter folder that a crash or a copy left damaged is refused in one line naming the file, and
a folder without its weights file is never looked up on the hub (peft would try a relative path as a repo)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from cir_lightning.backbones import HFMultimodalBackbone
from cir_lightning.backbones.adapters import BASE_FILE
from cir_lightning.backbones.lora import LoRA
from cir_lightning.errors import CIRConfigError, CIRDataError, CIRModelError


@pytest.fixture(scope="module")
def exported(tiny_model_dir, tmp_path_factory):
    trained = HFMultimodalBackbone(str(tiny_model_dir), lora=LoRA(r=2, alpha=4))
    with torch.no_grad():
        for p in trained.model.parameters():
            if p.requires_grad:
                p.add_(0.01)
    folder = tmp_path_factory.mktemp("exported") / "adapter"
    trained.save_adapter(folder)
    return folder, {n: p.detach().clone() for n, p in trained.model.named_parameters() if p.requires_grad}


def _load(model_dir, adapter) -> HFMultimodalBackbone:
    return HFMultimodalBackbone(str(model_dir), lora=LoRA(r=2, alpha=4, init_adapter=str(adapter)))


def _copy(exported, tmp_path):
    return shutil.copytree(exported[0], tmp_path / "adapter")


def test_a_truncated_weights_file_is_one_line_naming_it(exported, tiny_model_dir, tmp_path):
    folder = _copy(exported, tmp_path)
    weights = folder / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(CIRModelError, match="truncated or damaged") as info:
        _load(tiny_model_dir, folder)
    assert str(weights) in str(info.value)
    assert "\n" not in str(info.value)


def test_a_folder_without_its_weights_is_refused_without_asking_the_hub(exported, tiny_model_dir, tmp_path,
                                                                       monkeypatch):
    folder = _copy(exported, tmp_path)
    (folder / "adapter_model.safetensors").unlink()
    monkeypatch.chdir(tmp_path)  # `adapter` is also a valid hub repo id: it must never be looked up there

    def no_hub(*args, **kwargs):
        raise AssertionError("the hub was asked")

    for name in ("file_exists", "hf_hub_download"):
        monkeypatch.setattr(f"peft.utils.save_and_load.{name}", no_hub)
    with pytest.raises(CIRConfigError, match="holds adapter_config.json but no adapter_model.safetensors"):
        _load(tiny_model_dir, "adapter")


def test_peft_s_older_bin_weights_load_as_the_safetensors_ones(exported, tiny_model_dir, tmp_path):
    folder = _copy(exported, tmp_path)
    torch.save(load_file(folder / "adapter_model.safetensors"), folder / "adapter_model.bin")
    (folder / "adapter_model.safetensors").unlink()
    loaded = _load(tiny_model_dir, folder)
    for name, p in loaded.model.named_parameters():
        if p.requires_grad:
            assert torch.equal(p, exported[1][name])
    (folder / "adapter_model.bin").write_bytes(b"")
    with pytest.raises(CIRModelError, match="is empty"):
        _load(tiny_model_dir, folder)


def test_a_base_record_that_is_not_an_object_is_refused(exported, tiny_model_dir, tmp_path):
    folder = _copy(exported, tmp_path)
    (folder / BASE_FILE).write_text(json.dumps(["damaged"]))
    with pytest.raises(CIRDataError, match=f"{BASE_FILE}: is not a JSON object"):
        _load(tiny_model_dir, folder)
