"""``cir-lightning predict`` writes the embeddings of every subset to disk: cache format, DDP, partial runs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cir_lightning.cli import main
from cir_lightning.retrieval.cache import load_embeddings
from cir_lightning.retrieval.index import search
from tests.test_cli import CONF, spawn

OUTPUTS = ("val-0-query", "val-0-gallery")


def _common(tiny_model_dir: Path, data: Path) -> list[str]:
    return ["--config", str(CONF), "--model.backbone.init_args.model_name_or_path", str(tiny_model_dir),
            "--data.init_args.root", str(data), "--data.init_args.num_val", "25"]


def _read(folder: Path) -> tuple[torch.Tensor, list[str]]:
    meta = json.loads((folder / "meta.json").read_text())
    return load_embeddings(folder, kind=meta["kind"], model=meta["model"], dataset=meta["dataset"],
                           split=meta["split"])


@pytest.fixture(scope="module")
def predicted(tmp_path_factory, tiny_model_dir):
    tmp = tmp_path_factory.mktemp("predict")
    main(["predict", *_common(tiny_model_dir, tmp / "data"), "--trainer.default_root_dir", str(tmp / "one")])
    return tmp


def test_predict_writes_query_and_gallery_embeddings_that_read_back_as_caches(predicted, capsys):
    folder = predicted / "one" / "predictions"
    assert sorted(p.name for p in folder.iterdir()) == sorted(OUTPUTS)
    queries, query_ids = _read(folder / "val-0-query")
    gallery, gallery_ids = _read(folder / "val-0-gallery")
    lines = [json.loads(line) for line in (predicted / "data" / "val_queries.jsonl").read_text().splitlines()]
    assert query_ids == [q["query_id"] for q in lines]  # the synthetic data has no test queries: val's, named so
    gallery_lines = (predicted / "data" / "gallery.jsonl").read_text().splitlines()
    assert gallery_ids == [json.loads(line)["image_id"] for line in gallery_lines]
    assert queries.shape == (25, 64)
    assert gallery.shape == (576, 64)
    # every row was written (a row never written would be zeros), each an L2-normalised embedding
    assert torch.allclose(queries.norm(dim=1), torch.ones(25), atol=1e-5)
    assert torch.allclose(gallery.norm(dim=1), torch.ones(576), atol=1e-5)
    assert not (predicted / "one" / "predictions-1").exists()
    meta = json.loads((folder / "val-0-query" / "meta.json").read_text())  # which queries (texts and targets too)
    assert len(meta["queries_sha256"]) == 64
    assert meta["cir_lightning"] == __import__("cir_lightning").__version__


def test_a_predicted_gallery_is_an_embedding_cache_that_test_loads(predicted, tiny_model_dir, capsys):
    folder = predicted / "one" / "predictions"
    main(["test", *_common(tiny_model_dir, predicted / "data"), "--trainer.default_root_dir", str(predicted / "t"),
          "--model.embedding_cache", str(folder), "--model.eval_ks", "[1, 5]"])
    results = json.loads((predicted / "t" / "results-test.json").read_text())
    assert results["config"]["model"]["embedding_cache"]["loaded"] == [str(folder / "val-0-gallery")]
    # the metrics of that run (cached gallery, queries embedded again) equal those of the predicted rows
    queries, _ = _read(folder / "val-0-query")
    gallery, ids = _read(folder / "val-0-gallery")
    lines = [json.loads(line) for line in (predicted / "data" / "val_queries.jsonl").read_text().splitlines()]
    row = {image_id: i for i, image_id in enumerate(ids)}
    ranked = search(queries, gallery, k=5, excluded=[[row[q["reference_id"]]] for q in lines])
    for k in (1, 5):
        hits = sum(row[q["target_id"]] in ranked[i, :k].tolist() for i, q in enumerate(lines)) / len(lines)
        assert results["metrics"][""][f"Recall@{k}"] == pytest.approx(hits)


def test_a_cache_is_refused_once_its_gallery_images_were_made_again(predicted, tiny_model_dir, capsys):
    """Same ids, same paths, other pixels (data made again, e.g. at another image size): the cache is stale."""
    folder = predicted / "one" / "predictions"
    args = ["test", *_common(tiny_model_dir, predicted / "data"), "--trainer.default_root_dir", str(predicted / "t2"),
            "--model.embedding_cache", str(folder), "--model.eval_ks", "[1]"]
    image = predicted / "data" / "images" / "scene_007.png"
    original, stat = image.read_bytes(), image.stat()
    row = json.loads((folder / "val-0-gallery" / "ids.json").read_text()).index("scene_007")
    stamps = np.load(folder / "val-0-gallery" / "stamps.npy")  # each gallery image's, by row (queries have none)
    assert stamps[row].tolist() == [stat.st_size, stat.st_mtime_ns]
    assert not (folder / "val-0-query" / "stamps.npy").exists()
    try:
        Image.new("RGB", (64, 64), "white").save(image)
        with pytest.raises(SystemExit):
            main(args)
        err = [line for line in capsys.readouterr().err.splitlines() if "does not match" in line]
        assert err[-1].endswith(f"the cache does not match: images: image `{image.resolve()}` (id `scene_007`) changed "
                                f"(another size: {image.stat().st_size} bytes, {stat.st_size} when embedded) since it "
                                "was written. A stale cache is never used: re-embed with `overwrite_cache: true` (or "
                                "delete the folder)")
        assert str(folder / "val-0-gallery") in err[-1]
    finally:  # the other tests of this module read these images
        image.write_bytes(original)
        os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    main(args)  # as it was: loaded again
    assert "results written to" in capsys.readouterr().out


@pytest.mark.ddp
def test_predict_in_two_processes_writes_what_one_process_writes(predicted, tiny_model_dir):
    # 25 queries over 2 ranks: one rank embeds 13, the other 12; Lightning's predict sampler does not pad
    spawn("predict", *_common(tiny_model_dir, predicted / "data"), "--trainer.default_root_dir", "two",
        "--trainer.devices", "2", "--trainer.strategy", "ddp", "--data.init_args.eval_batch_size", "8",
        cwd=predicted, env={"OMP_NUM_THREADS": "1"})
    for name in OUTPUTS:
        one, one_ids = _read(predicted / "one" / "predictions" / name)
        two, two_ids = _read(predicted / "two" / "predictions" / name)
        assert two_ids == one_ids
        assert torch.allclose(two, one, atol=1e-5), name  # batches differ (8 vs 64): rounding only
        meta_one = json.loads((predicted / "one" / "predictions" / name / "meta.json").read_text())
        meta_two = json.loads((predicted / "two" / "predictions" / name / "meta.json").read_text())
        assert meta_two["model"] == meta_one["model"]
        assert meta_two["count"] == meta_one["count"]


def test_a_partial_predict_writes_only_complete_subsets(predicted, tiny_model_dir, recwarn):
    main(["predict", *_common(tiny_model_dir, predicted / "data"), "--trainer.default_root_dir",
          str(predicted / "partial"), "--trainer.limit_predict_batches", "1", "--predictions.dtype", "float16"])
    folder = predicted / "partial" / "predictions"
    assert [p.name for p in folder.iterdir()] == ["val-0-query"]  # 1 of the 9 gallery batches: left out
    assert any("val-0-gallery (512 of 576 rows not embedded)" in str(w.message) for w in recwarn)
    assert np.load(folder / "val-0-query" / "embeddings.npy").dtype == np.float16
    assert not [p for p in (predicted / "partial").iterdir() if p.name.startswith(".")]  # no temporary folder left


def _one_row_data(folder: Path) -> Path:
    """A subset of one query over a gallery of one image (two scenes of the synthetic benchmark)."""
    from cir_lightning.data.synthetic import SCENES, draw_scene

    (folder / "images").mkdir(parents=True)
    for name, scene in (("ref", SCENES[0]), ("target", SCENES[1])):
        draw_scene(scene, 16).save(folder / "images" / f"{name}.png")
    (folder / "gallery.jsonl").write_text(json.dumps({"image_id": "target", "image_path": "images/target.png"}) + "\n")
    (folder / "val_queries.jsonl").write_text(json.dumps(
        {"query_id": "q0", "reference_image": "images/ref.png", "modification": "make it green",
         "target_id": "target"}) + "\n")
    return folder


def test_predict_loaders_pad_a_subset_of_fewer_rows_than_processes_with_idle_rows_that_embed_nothing():
    """Each process's share as Lightning's predict sampler deals it: the first processes one row each, the others an
    idle row, an empty batch (predict_step embeds nothing); a subset with enough rows, and validate's, unpadded."""
    from types import SimpleNamespace

    from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSamplerWrapper
    from torch.utils.data import SequentialSampler

    from cir_lightning.data.base import CIRDataModule

    class Queries(list):
        name = "dress"

    datamodule = CIRDataModule()
    datamodule.test_sets = [(Queries({"index": i} for i in range(4)), [{"index": i} for i in range(2)])]
    datamodule.val_sets = datamodule.test_sets
    datamodule.trainer = SimpleNamespace(world_size=3)
    queries, gallery = datamodule.predict_dataloader()
    assert len(queries.dataset) == 4  # enough rows: as they are
    assert len(gallery.dataset) == 3
    shares = []
    for rank in range(3):
        sampler = UnrepeatedDistributedSamplerWrapper(SequentialSampler(gallery.dataset), num_replicas=3, rank=rank,
                                                      shuffle=False)
        shares.append(gallery.collate_fn([gallery.dataset[i] for i in sampler]))
    assert shares[:2] == [[{"index": 0}], [{"index": 1}]]
    assert shares[2]["index"].tolist() == []
    assert [len(loader.dataset) for loader in datamodule.val_dataloader()] == [4, 2]


@pytest.mark.ddp
def test_a_subset_of_one_row_on_two_processes_writes_what_one_process_writes(tmp_path, tiny_model_dir, capsys):
    """Lightning's predict sampler gives each process one row at least: one query and one gallery image on 2
    processes was a bare AssertionError in one process while the other waited (then refused in one line); the
    second process now takes an idle row and writes nothing."""
    data = _one_row_data(tmp_path / "data")
    common = ["predict", "--config", str(CONF), "--model.backbone.init_args.model_name_or_path", str(tiny_model_dir),
              "--data", "cir_lightning.data.JsonlCIRDataModule", "--data.root", str(data), "--data.train_file", "null"]
    main([*common, "--trainer.default_root_dir", str(tmp_path / "one")])
    spawn(*common, "--trainer.default_root_dir", "two", "--trainer.devices", "2", "--trainer.strategy", "ddp",
          cwd=tmp_path, env={"OMP_NUM_THREADS": "1"})
    one, two = tmp_path / "one" / "predictions", tmp_path / "two" / "predictions"
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in one.iterdir()) == sorted(OUTPUTS)
    for name, ids in zip(OUTPUTS, (["q0"], ["target"]), strict=True):
        one_rows, one_ids = _read(one / name)
        two_rows, two_ids = _read(two / name)
        assert one_ids == ids  # its own row only: no idle row listed or written
        assert two_ids == one_ids
        assert two_rows.shape == one_rows.shape == (1, 64)
        assert torch.allclose(two_rows, one_rows, atol=1e-5), name
        assert json.loads((two / name / "meta.json").read_text())["count"] == 1


def test_an_existing_predictions_folder_is_refused_before_anything_is_embedded(predicted, tiny_model_dir, capsys):
    taken = predicted / "one" / "predictions"
    before = {p: p.stat().st_mtime_ns for p in taken.rglob("*")}
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", *_common(tiny_model_dir, predicted / "data"), "--trainer.default_root_dir",
              str(predicted / "again"), "--predictions.folder", str(taken)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert (f"`predictions.folder`: `{taken}` already exists; it is never overwritten (choose another name, or remove "
            "it)") in err
    assert "Traceback" not in err
    assert {p: p.stat().st_mtime_ns for p in taken.rglob("*")} == before


def test_sigterm_stops_predict_without_a_half_written_folder(predicted, tiny_model_dir, monkeypatch, capsys):
    """Lightning's predict loop only notes a SIGTERM; the writer stops the run and nothing is left behind, with
    the status a shell gives a process SIGTERM ended (the writer's bare SystemExit made it 1, an error's)."""
    import lightning.pytorch as pl

    # a SIGTERM arriving after the first batch (what Lightning's signal handler records)
    monkeypatch.setattr(pl.Trainer, "received_sigterm",
                        property(lambda trainer: trainer.predict_loop.batch_progress.current.completed >= 1))
    out = predicted / "stopped"
    with pytest.raises(SystemExit) as stopped:
        main(["predict", *_common(tiny_model_dir, predicted / "data"), "--trainer.default_root_dir", str(out),
              "--predictions.folder", str(out / "embedded"), "--data.init_args.eval_batch_size", "4"])
    assert stopped.value.code == 143
    assert "cir-lightning: stopped by SIGTERM; files being written were removed" in capsys.readouterr().err
    assert not (out / "embedded").exists()
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary folder left


@pytest.mark.parametrize("failing", ["create", "finish"])
def test_a_full_disk_is_one_line_naming_the_folder_and_leaves_nothing(predicted, tiny_model_dir, monkeypatch, capsys,
                                                                     failing):
    """ENOSPC while the files are made (before the first batch) or completed (ids.json, at the end) was an OSError
    traceback; the temporary folder is removed either way."""
    import errno

    import cir_lightning.predictions as predictions

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(predictions, "new_embeddings" if failing == "create" else "finish_embeddings", full)
    out = predicted / f"full-{failing}"
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", *_common(tiny_model_dir, predicted / "data"), "--trainer.default_root_dir", str(out),
              "--predictions.folder", str(out / "embedded")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"cir-lightning: error: cannot write `{out / 'embedded'}`: no space left on the device" in err
    assert "Traceback" not in err
    assert not (out / "embedded").exists()
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary folder left
