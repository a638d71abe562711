"""``find_adapter``: the exported adapter a FiRE ``model.adapter_path`` names, never an export's leftover
temporary folder (``.adapter.XXXX.tmp``, left by a run killed while it exported); ``release_adapter``: a path
that holds no usable adapter is one line naming the FiRE file, line and key."""

from __future__ import annotations

import os
import time

import pytest
import torch
from safetensors.torch import save_file

from cir_lightning.errors import CIRConfigError
from cir_lightning.fire_adapter import find_adapter, release_adapter


def test_a_killed_export_s_temporary_folder_is_never_taken_for_the_adapter(tmp_path):
    done = tmp_path / "logs" / "version_0" / "adapter"
    done.mkdir(parents=True)
    (done / "adapter_config.json").write_text("{}")
    time.sleep(0.01)
    for leftover in (tmp_path / "logs" / "version_1" / ".adapter.k2j3.tmp", tmp_path / ".hidden" / "adapter"):
        leftover.mkdir(parents=True)
        (leftover / "adapter_config.json").write_text("{}")  # newer, but half written
        os.utime(leftover / "adapter_config.json")
    assert find_adapter(tmp_path) == done


def _adapter(folder, config: str = '{"r": 4, "lora_alpha": 8, "target_modules": ["o_proj"]}', weights: bool = True,
             rank: int = 4):
    """A peft adapter folder as the release saves one (LoRA A of shape (rank, in), B of (out, rank))."""
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(config)
    if weights:
        name = "base_model.model.model.layers.0.self_attn.o_proj"
        save_file({f"{name}.lora_A.weight": torch.zeros(rank, 6), f"{name}.lora_B.weight": torch.zeros(6, rank)},
                  str(folder / "adapter_model.safetensors"))
    return folder


def _truncated(folder):
    _adapter(folder)
    (folder / "adapter_model.safetensors").write_bytes(b"\x10\x00")


@pytest.mark.parametrize(("make", "message"), [
    (lambda p: p.write_text("x"), "is a file: FiRE's `adapter_path` is a peft adapter folder"),
    (lambda p: p.mkdir(), "holds no peft adapter (no adapter_config.json in it, nor in a folder below it)"),
    (lambda p: _adapter(p, "{not json"), "the adapter x/a is damaged: x/a/adapter_config.json:1: malformed JSON"),
    (lambda p: _adapter(p, "[1]"), "is damaged: `lora.init_adapter` x/a: adapter_config.json is not a JSON object"),
    (lambda p: _adapter(p, weights=False), "holds adapter_config.json but no adapter_model.safetensors or"),
    # read before any model is loaded, naming the FiRE key (the loading would name `init_adapter` only)
    (lambda p: _adapter(p, rank=8), "is damaged: its adapter_config.json gives rank 4, its LoRA weights have rank 8"),
    (_truncated, "is damaged: adapter_model.safetensors cannot be read ("),
])
def test_an_adapter_path_that_holds_no_usable_adapter_is_one_line_naming_the_fire_key(tmp_path, monkeypatch, make,
                                                                                    message):
    """Before, each reached the model's loading and named `init_adapter`, not the FiRE file and key."""
    monkeypatch.chdir(tmp_path)  # the release's paths are relative to where its scripts run
    (tmp_path / "x").mkdir()
    make(tmp_path / "x" / "a")
    for must_exist in (False, True):
        with pytest.raises(CIRConfigError) as caught:
            release_adapter("x/a", "eval.yaml:5: `model.adapter_path`", must_exist)
        assert str(caught.value).startswith("eval.yaml:5: `model.adapter_path`")
        assert message in str(caught.value)


def test_an_adapter_path_that_does_not_exist_stops_a_run_and_is_a_note_in_a_conversion(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CIRConfigError, match=r"^eval.yaml:5: `model.adapter_path` out does not exist \(a relative "):
        release_adapter("out", "eval.yaml:5: `model.adapter_path`", must_exist=True)
    found, note = release_adapter("out", "eval.yaml:5: `model.adapter_path`", must_exist=False)
    assert found == "out"
    assert "does not exist yet" in note  # converted before the training that writes it
    exported = _adapter(tmp_path / "out" / "logs" / "version_0" / "adapter")
    found, note = release_adapter("out", "eval.yaml:5: `model.adapter_path`", must_exist=True)
    assert (found, "the newest adapter below it is used" in note) == (str(exported.relative_to(tmp_path)), True)
    assert release_adapter(found, "eval.yaml:5: `model.adapter_path`", must_exist=True) == (found, None)
