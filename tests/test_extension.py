"""A benchmark of the user's own, defined outside the package (docs/data.md, "A benchmark of your own"): a worked
example that the documented extension point is enough for `validate`, its results file and `show`.

The made-up "shoes" layout: ``images/`` and ``val.csv`` (``reference,caption,target``: file names in
``images/``); every image of ``images/`` is the gallery, the reference is excluded from its query's ranking,
and the protocol is Recall@1/5/10.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from PIL import Image

from cir_lightning.data import CIRDataModule
from cir_lightning.data.contract import EvalSets, Split
from cir_lightning.data.datasets import GalleryDataset, GalleryItem, Query, QueryDataset
from cir_lightning.data.folder import list_images
from cir_lightning.data.images import DEFAULT_MAX_PIXELS
from cir_lightning.errors import CIRDataError

CONF = Path(__file__).parent / "conf" / "tiny.yaml"


class ShoesDataModule(CIRDataModule):
    """The shoes benchmark: ``root/images/`` and ``root/<split>.csv``; no training data.

    Args:
        root: the folder holding ``images/`` and the CSV files.
    """

    def __init__(self, root: str, batch_size: int = 16, eval_batch_size: int | None = None, num_workers: int = 0,
                 max_short_edge: int | None = None, pin_memory: bool = False,
                 max_image_pixels: int | None = DEFAULT_MAX_PIXELS) -> None:
        super().__init__(batch_size, eval_batch_size, num_workers, max_short_edge, pin_memory, max_image_pixels)
        self.root = Path(root)  # a gallery option (`GALLERY_OPTIONS` names `root`): part of a cache's identity

    def load_eval_sets(self, split: Split) -> EvalSets:
        images, path = (self.root / "images").resolve(), self.root / f"{split}.csv"
        names = list_images(images)  # every image below the folder, in a stable order
        row = {name: i for i, name in enumerate(names)}
        with open(path, newline="", encoding="utf-8") as f:
            lines = [(reader.line_num, r) for reader in [csv.DictReader(f)] for r in reader]
        queries = []
        for line, r in lines:
            for field in ("reference", "target"):
                if r.get(field) not in row:
                    raise CIRDataError(f"`{field}` {r.get(field)!r} is not an image of `{images}`", path, line)
            queries.append(Query(f"{split}-{line}", images / r["reference"], r["caption"], (row[r["target"]],),
                                 f"{path}:{line}", reference_id=r["reference"], excluded=(row[r["reference"]],)))
        gallery = [GalleryItem(name, images / name, f"{images}") for name in names]
        return [(QueryDataset(queries, self.max_short_edge, metrics={"recall": [1, 5, 10]}),
                 GalleryDataset(gallery, self.max_short_edge))]


COLOURS = ["red", "green", "blue", "black", "white", "yellow"]


@pytest.fixture
def shoes(tmp_path):
    root = tmp_path / "shoes"
    (root / "images").mkdir(parents=True)
    for colour in COLOURS:
        for width in (20, 24):
            Image.new("RGB", (width, 20), colour).save(root / "images" / f"{colour}{width}.png")
    rows = [{"reference": f"{a}20.png", "caption": f"make it {b}", "target": f"{b}24.png"}
            for a, b in zip(COLOURS, COLOURS[1:] + COLOURS[:1], strict=True)]
    with open(root / "val.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, ["reference", "caption", "target"])
        writer.writeheader()
        writer.writerows(rows)
    return root


def test_a_datamodule_of_one_s_own_validates_with_its_protocol_and_its_run_can_be_shown(shoes, tiny_model_dir,
                                                                                      tmp_path, monkeypatch, capsys):
    from cir_lightning.cli import CIRLightningCLI, main

    monkeypatch.chdir(tmp_path)
    CIRLightningCLI(args=["validate", "--config", str(CONF), "--model.backbone.init_args.model_name_or_path",
                          str(tiny_model_dir), "--data", f"{__name__}.ShoesDataModule", "--data.init_args.root",
                          str(shoes), "--trainer.default_root_dir", "run", "--model.save_rankings", "true"])
    results = json.loads((tmp_path / "run" / "results-validate.json").read_text())
    metrics, rankings = results["metrics"][""], results["rankings"][""]
    assert sorted(metrics) == ["Recall@1", "Recall@10", "Recall@5"]  # its protocol, not the module's eval_ks
    # recorded without a save_hyperparameters call: what `show` rebuilds the data from
    assert results["config"]["data"]["root"] == str(shoes)
    assert results["config"]["data_class_path"] == f"{__name__}.ShoesDataModule"
    with open(shoes / "val.csv", newline="") as f:
        queries = {f"val-{i + 2}": r for i, r in enumerate(csv.DictReader(f))}
    assert set(rankings) == set(queries)
    for qid, ranked in rankings.items():
        assert queries[qid]["reference"] not in ranked  # the reference is excluded
        assert len(ranked) == 10
    for k in (1, 5, 10):
        hits = [queries[qid]["target"] in ranked[:k] for qid, ranked in rankings.items()]
        assert metrics[f"Recall@{k}"] == pytest.approx(sum(hits) / len(hits))
    main(["show", str(tmp_path / "run" / "results-validate.json"), "--count", "2"])
    assert (tmp_path / "run" / "results-validate.png").is_file()
    results["config"]["data"] = {}  # a DataModule whose arguments were not recorded: named, not a TypeError
    (tmp_path / "bare.json").write_text(json.dumps(results))
    with pytest.raises(SystemExit):
        main(["show", str(tmp_path / "bare.json")])
    assert "bare.json: records no `root` of ShoesDataModule" in capsys.readouterr().err


def test_a_wrong_line_of_one_s_own_layout_is_named(shoes):
    (shoes / "val.csv").write_text("reference,caption,target\nred20.png,make it blue,blue24.png\n"
                                   "red20.png,make it pink,pink24.png\n")
    with pytest.raises(CIRDataError, match=r"val\.csv:3: `target` 'pink24\.png' is not an image of"):
        ShoesDataModule(str(shoes)).setup("validate")
