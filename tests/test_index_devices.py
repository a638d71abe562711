"""``index`` on more processes than images to embed: the processes left without one take nothing (Lightning's predict
sampler refused them with a bare AssertionError in one process, the others waiting)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSamplerWrapper
from PIL import Image
from torch.utils.data import SequentialSampler

from cir_lightning.cli import main
from cir_lightning.data.folder import ImageFolderDataset, KeepReadable
from cir_lightning.data.idle_rows import EveryProcessOne
from tests.test_image_index import _photos
from tests.test_index_update import _args, _same_as_fresh

ROOT = Path(__file__).resolve().parents[1]


def _collate(samples: list[dict]) -> dict:
    return {"index": torch.tensor([s["index"] for s in samples], dtype=torch.long)}


@pytest.mark.parametrize("processes", [2, 3])
def test_one_image_on_several_processes_leaves_the_others_an_idle_row_that_embeds_nothing(tmp_path, processes):
    Image.new("RGB", (8, 8), "red").save(tmp_path / "new.png")
    padded = EveryProcessOne(ImageFolderDataset(tmp_path, ["new.png"]), processes)
    collate = KeepReadable(_collate)
    batches = []
    for rank in range(processes):  # each process's share, as Lightning's predict sampler deals them
        sampler = UnrepeatedDistributedSamplerWrapper(SequentialSampler(padded), num_replicas=processes, rank=rank,
                                                      shuffle=False)
        batches.append(collate([padded[i] for i in sampler]))
    assert batches[0]["index"].tolist() == [0]
    assert batches[0]["unreadable"] == []
    for idle in batches[1:]:  # nothing to embed, nothing unreadable
        assert idle["index"].tolist() == []
        assert idle["unreadable"] == []
    assert len(EveryProcessOne(ImageFolderDataset(tmp_path, ["new.png"] * 5), processes)) == 5  # enough: unpadded


@pytest.mark.ddp
def test_an_update_embedding_one_new_image_on_two_processes_equals_a_build_from_scratch(tmp_path, tiny_model_dir):
    photos = _photos(tmp_path / "photos")
    main(_args(photos, tmp_path / "old", tiny_model_dir))
    Image.new("RGB", (20, 20), "orange").save(photos / "new.png")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(ROOT)}
    args = _args(photos, tmp_path / "new", tiny_model_dir, "--reuse", str(tmp_path / "old"), "--trainer.devices", "2",
                 "--trainer.strategy", "ddp")
    proc = subprocess.run([sys.executable, "-m", "cir_lightning", *args], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"updated from {tmp_path / 'old'}: reused 5, embedded 1, dropped 0" in proc.stderr
    main(_args(photos, tmp_path / "fresh", tiny_model_dir))
    _same_as_fresh(tmp_path / "new", tmp_path / "fresh", tmp_path / "old")
