"""After the demo: the demo gallery, indexed with the trained model and searched with the demo's queries, gives
what the evaluation gives, query by query (over the queries' scenes and a few more: cheaper than all 576), and this
test measures how often the target is in the top 5.

The model is the demo's (configs/demo.yaml: tiny LLaVA-NeXT-style model, LoRA, FiRE's loss), trained briefly
(one epoch of 160 triplets: 5 steps) to stay cheap; docs/own-images.md reports the same measurement after the full
demo."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from cir_lightning.cli import main
from cir_lightning.data.images import load_image
from cir_lightning.image_index import ImageIndex
from tests.test_module import small_gallery

DEMO = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"


def _search_every_query(root: Path) -> tuple[list[dict], list[list[str]]]:
    """Each demo validation query searched in the index at ``root/index`` (its reference left out): the top 5 ids."""
    index = ImageIndex.open(root / "index")
    backbone = index.load_backbone()
    queries = [json.loads(line) for line in (root / "data" / "val_queries.jsonl").read_text().splitlines()]
    top5 = []
    for q in queries:
        reference = Path(q["reference_image"]).name
        image = load_image(root / "data" / "images" / reference, index.info["max_short_edge"])
        hits = index.query(backbone, image, q["modification"], k=5, exclude=[reference])
        top5.append([Path(h.relpath).stem for h in hits])
    return queries, top5


@pytest.mark.slow
def test_searching_the_demo_gallery_finds_what_the_evaluation_finds(tmp_path, tiny_model_dir, capsys):
    common = ["--config", str(DEMO), "--trainer.default_root_dir", str(tmp_path),
              "--model.backbone.init_args.model_name_or_path", str(tiny_model_dir), "--data.init_args.num_train", "160",
              "--data.init_args.num_val", "40", "--data.init_args.batch_size", "32", "--data.init_args.num_workers", "0"]
    main(["fit", *common, "--trainer.max_epochs", "1", "--trainer.limit_val_batches", "0"])
    run = tmp_path / "logs" / "version_0"
    ckpt = ["--ckpt_path", str(run / "checkpoints" / "last.ckpt")]
    # the gallery evaluated and indexed: the queries' references and targets and a few more scenes (all 576 were
    # embedded twice, the bulk of the test's time), the same files in the data's gallery file and the indexed folder
    images, gallery = tmp_path / "data" / "images", tmp_path / "gallery"
    small = ["--data", "cir_lightning.data.JsonlCIRDataModule", "--data.root", str(tmp_path / "data"),
             "--data.gallery_file", small_gallery(tmp_path / "data", tmp_path / "small")]
    gallery.mkdir()
    for line in (tmp_path / "small" / "gallery.jsonl").read_text().splitlines():
        shutil.copy(tmp_path / "data" / json.loads(line)["image_path"], gallery)
    # the evaluation's rankings: the gallery embedded by `predict` (its files are an embedding cache), the
    # queries one at a time as a search embeds them (a batch pads the texts: a different rounding)
    main(["predict", *common, *small, *ckpt, "--predictions.folder", str(tmp_path / "embedded")])
    main(["test", *common, *small, *ckpt, "--model.embedding_cache", str(tmp_path / "embedded"),
          "--model.save_rankings", "true", "--model.eval_ks", "[1, 5]", "--data.eval_batch_size", "1"])
    (results,) = tmp_path.glob("logs/version_*/results-test.json")
    evaluated = json.loads(results.read_text())
    assert evaluated["config"]["model"]["embedding_cache"]["loaded"]
    assert evaluated["subsets"][""]["num_gallery"] == len(list(gallery.iterdir())) < len(list(images.iterdir()))
    main(["index", str(gallery), *common, "--adapter", str(run / "adapter"), "--out", str(tmp_path / "index")])
    few = tmp_path / "few"  # the checkpoint gives the index the same trained weights as the exported adapter
    few.mkdir()
    for name in ("scene_000.png", "scene_001.png"):
        shutil.copy(images / name, few / name)
    main(["index", str(few), *common, *ckpt, "--out", str(tmp_path / "few-index")])
    capsys.readouterr()
    assert ImageIndex.open(tmp_path / "few-index").meta["model"] == ImageIndex.open(tmp_path / "index").meta["model"]

    queries, top5 = _search_every_query(tmp_path)
    found = 0
    for q, ranked in zip(queries, top5, strict=True):
        assert ranked == evaluated["rankings"][""][q["query_id"]][:5], q["query_id"]  # the same top 5, in order
        found += q["target_id"] in ranked
    with capsys.disabled():
        print(f"\ntarget in the top 5 of {len(list(gallery.iterdir()))} images for {found} of {len(queries)} demo "
              "queries")
    assert found / len(queries) == pytest.approx(evaluated["metrics"][""]["Recall@5"])


@pytest.mark.slow
def test_after_the_whole_demo_most_searches_find_the_target_in_the_top_5(tmp_path, tiny_model_dir, capsys):
    """The issue's measure, on the real demo (4 epochs of 7,400 triplets, as `fit --config configs/demo.yaml`)."""
    common = ["--config", str(DEMO), "--trainer.default_root_dir", str(tmp_path),
              "--model.backbone.init_args.model_name_or_path", str(tiny_model_dir)]
    main(["fit", *common, "--model.validate_before_fit", "false", "--trainer.limit_val_batches", "0",
          "--model.pictures", "0"])
    images = tmp_path / "data" / "images"
    main(["index", str(images), *common, "--adapter", str(tmp_path / "logs" / "version_0" / "adapter"),
          "--out", str(tmp_path / "index")])
    capsys.readouterr()
    queries, top5 = _search_every_query(tmp_path)
    found = sum(q["target_id"] in ranked for q, ranked in zip(queries, top5, strict=True))
    with capsys.disabled():
        print(f"\nafter the demo: target in the top 5 for {found} of {len(queries)} searches")
    assert found > len(queries) / 2
