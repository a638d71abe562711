"""``cir_lightning.files``: a folder written through ``atomic_folder`` appears complete or not at all, and a full
disk is one line naming it, also when the library that wrote the files reports it in its own exception type."""

from __future__ import annotations

import pytest
from safetensors import SafetensorError

from cir_lightning.errors import CIRFileError
from cir_lightning.files import atomic_folder

FULL = "Error while serializing: I/O error: No space left on device (os error 28)"  # safetensors' own words


def _write(path, error: Exception) -> None:
    with atomic_folder(path) as folder:
        (folder / "adapter_config.json").write_text("{}")
        raise error


def test_a_library_s_own_full_disk_error_is_one_line_and_leaves_nothing(tmp_path):
    with pytest.raises(CIRFileError) as info:
        _write(tmp_path / "adapter", SafetensorError(FULL))
    assert str(info.value) == f"cannot write `{tmp_path / 'adapter'}`: no space left on the device"
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(CIRFileError, match="`.*index`: no space left on the device"):  # faiss.write_index's words
        _write(tmp_path / "index", RuntimeError("Error: 'ret == (size * 4)' failed: write error in index.faiss: "
                                                "4051 != 51200 (No space left on device)"))
    with pytest.raises(SafetensorError, match="invalid header"):  # not an operating system's error: left as it is
        _write(tmp_path / "other", SafetensorError("invalid header"))
    assert list(tmp_path.iterdir()) == []


def test_an_adapter_exported_onto_a_full_disk_is_one_line(backbone, tmp_path, monkeypatch):
    def full(*args, **kwargs):
        raise SafetensorError(FULL)

    monkeypatch.setattr("peft.peft_model.safe_save_file", full)
    with pytest.raises(CIRFileError, match="no space left on the device"):
        backbone.save_adapter(tmp_path / "adapter")
    assert list(tmp_path.iterdir()) == []
