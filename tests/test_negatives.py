"""FiRE's loss needs negatives: a training set whose triplets all share one target trained nothing (constant loss,
gradient 0) and exported the untouched adapter as trained; now refused at fit's set-up, and a set where many batches
cannot have a negative is warned about, in one line."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest

from cir_lightning.data import JsonlCIRDataModule
from cir_lightning.data.datasets import Triplet, TripletDataset
from cir_lightning.errors import CIRDataError
from cir_lightning.negatives import check_negatives
from tests.test_module import make_module, trainer


def _train_file(root: Path, name: str, targets: list[int]) -> str:
    lines = [json.loads(line) for line in (root / "train.jsonl").read_text().splitlines()][:len(targets)]
    with (root.parent / name).open("w") as f:
        for line, target in zip(lines, targets, strict=True):
            f.write(json.dumps({**line, "target_image": f"images/scene_{target:03d}.png"}) + "\n")
    return str(root.parent / name)


def test_a_training_set_with_one_target_is_refused_before_any_step(tiny_model_dir, synthetic_root, tmp_path):
    train = _train_file(synthetic_root, "one_target.jsonl", [75] * 16)
    dm = JsonlCIRDataModule(str(synthetic_root), train_file=train, batch_size=8, val_queries_file=None)
    module = make_module(tiny_model_dir)
    forwards = []
    module.backbone.register_forward_hook(lambda *_: forwards.append(1))
    with pytest.raises(CIRDataError) as error:
        trainer(tmp_path, max_steps=2, enable_checkpointing=False).fit(module, dm)
    message = str(error.value)
    assert message.startswith(f"{train}: all 16 training triplets have the same target image (`")
    assert "scene_075.png`)" in message
    assert "there is no negative" in message
    assert "\n" not in message
    assert forwards == []  # refused at set-up, before any batch was embedded
    assert not (tmp_path / "adapter").exists()  # no untrained adapter exported as trained


def _records(counts: dict[str, int]) -> TripletDataset:
    return TripletDataset([Triplet(Path(f"r{i}.png"), Path(target), "m", f"t.jsonl:{i + 1}")
                           for i, target in enumerate(t for t, n in counts.items() for _ in range(n))])


@pytest.mark.parametrize(("counts", "batch", "processes", "warned"), [
    ({"a.png": 32, "b.png": 32}, 64, 1, False),   # two targets: nearly every batch has both, each a negative
    ({"a.png": 990, "b.png": 10}, 64, 1, True),   # one target dominates: about half of the batches hold only it
    ({"a.png": 990, "b.png": 10}, 32, 4, True),   # cross-rank negatives: the batch is all processes' together
    ({"a.png": 990, "b.png": 10}, 64, 4, False),  # 256 a batch: nearly every one holds a `b.png` triplet
])
def test_batches_likely_without_a_negative_are_warned_about_in_one_line(counts, batch, processes, warned):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_negatives(_records(counts), batch, processes)
    lines = [str(w.message) for w in caught]
    assert len(lines) == int(warned)
    if warned:
        assert lines[0].startswith("t.jsonl: ")
        assert "990 of the 1000 triplets have `a.png`" in lines[0]
        assert f"{batch * processes} triplets a batch" in lines[0]
        assert "\n" not in lines[0]
