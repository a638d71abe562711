"""Validation under DDP (3 CPU processes, gloo) gives exactly the numbers and rankings of one process."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from tests.test_cli import CONF, spawn


def _metrics(folder: Path) -> dict[str, float]:
    (path,) = folder.glob("**/metrics.csv")
    with path.open() as f:
        rows = list(csv.DictReader(f))
    return {k: float(v) for row in rows for k, v in row.items() if k.startswith("val/") and v}


def _results(folder: Path) -> dict:
    (path,) = folder.glob("**/results-validate.json")
    return json.loads(path.read_text())


@pytest.mark.ddp
def test_validate_three_processes_equals_one_process(tmp_path, tiny_model_dir):
    # 25 queries over 3 ranks: the distributed sampler pads ranks 1 and 2 with duplicates that must be dropped
    # Batches of one: a query's embedding then has the same shapes (no padding from its batch neighbours) in
    # both runs, so the float results, and therefore near-ties deep in a ranking, are the same; with batches
    # of 7 the ranks' batches differ from one process's and a tie 30 places down swapped order.
    # The gallery: the queries' references and targets and a few more scenes (63 images, as the 576 were, a
    # multiple of 3), more than the 50 each ranking keeps; all 576 scenes cost minutes at batches of one.
    from cir_lightning.data.synthetic import make_synthetic_cir
    from tests.test_module import small_gallery

    root = make_synthetic_cir(tmp_path / "data", num_train=16, num_val=25, image_size=32)
    gallery = small_gallery(root, tmp_path / "small")
    assert len(Path(gallery).read_text().splitlines()) > 50  # every ranking is cut at 50, not at the gallery's end
    common = ["validate", "--config", str(CONF), "--model.backbone.init_args.model_name_or_path",
              str(tiny_model_dir), "--data", "cir_lightning.data.JsonlCIRDataModule", "--data.root", str(root),
              "--data.gallery_file", gallery, "--data.eval_batch_size", "1",
              "--trainer.logger", "CSVLogger", "--model.save_rankings", "true"]
    # one BLAS thread per process in both runs: a matrix product's rounding may depend on the thread count,
    # and Lightning gives each of 3 DDP processes 1 thread where one process would use 2
    threads = {"OMP_NUM_THREADS": "1"}
    spawn(*common, "--trainer.logger.save_dir", "one", "--trainer.devices", "1", cwd=tmp_path, env=threads)
    spawn(*common, "--trainer.logger.save_dir", "two", "--trainer.devices", "3", "--trainer.strategy", "ddp",
        cwd=tmp_path, env=threads)
    one, two = _metrics(tmp_path / "one"), _metrics(tmp_path / "two")
    assert set(one) == {f"val/{m}@{k}" for m in ("Recall", "MRR") for k in (1, 5, 10, 50)}
    assert two == one
    ranked_one, ranked_two = _results(tmp_path / "one")["rankings"][""], _results(tmp_path / "two")["rankings"][""]
    assert len(ranked_one) == 25  # every query once: the padding duplicate is gone
    assert ranked_two == ranked_one  # identical ranked lists, query by query
    assert _results(tmp_path / "two")["metrics"] == _results(tmp_path / "one")["metrics"]
