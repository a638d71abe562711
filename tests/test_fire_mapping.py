"""``find_adapter``: the exported adapter a FiRE ``model.adapter_path`` names, never an export's leftover
temporary folder (``.adapter.XXXX.tmp``, left by a run killed while it exported)."""

from __future__ import annotations

import os
import time

from cir_lightning.fire_mapping import find_adapter


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
