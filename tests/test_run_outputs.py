"""What a standalone validate / test leaves (``RunOutputs``), read back as a researcher would a month later: the
results file names the data, the libraries and the run's other files, its rankings and scores equal the
evaluator's, and its pictures say in their PNG text what drew them; two runs into one folder stay apart."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from cir_lightning.data.datasets import GalleryDataset, GalleryItem, Query, QueryDataset
from cir_lightning.retrieval import RetrievalEvaluator, SearchConfig
from cir_lightning.retrieval.loop import EpochResults
from cir_lightning.retrieval.subsets import subsets_from_datasets
from cir_lightning.run_outputs import RunOutputs, data_identity

MODEL = {"fingerprint": {"class": "Tiny", "model": "bäse/模型"}, "weights": "ab12"}


@pytest.fixture
def datasets(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for i in range(6):
        Image.new("RGB", (8, 8), (40 * i, 0, 0)).save(images / f"g{i}.png")
    gallery = GalleryDataset([GalleryItem(f"g{i}", images / f"g{i}.png", "gallery.jsonl") for i in range(6)])
    queries = QueryDataset([Query(f"q{i}", images / f"g{i}.png", f"make it {i}", ((i + 1) % 6,), "queries.jsonl")
                            for i in range(4)])
    return queries, gallery


def _run(folder: Path, datasets, pictures: int):
    """One evaluation of the datasets with a seeded model, its outputs written into ``folder``."""
    queries, gallery = datasets
    evaluator = RetrievalEvaluator(ks=[1, 3], search=SearchConfig(backend="torch"))
    g = torch.Generator().manual_seed(0)
    evaluator.add(0, "gallery", F.normalize(torch.randn(6, 8, generator=g), dim=-1), torch.arange(6))
    evaluator.add(0, "query", F.normalize(torch.randn(4, 8, generator=g), dim=-1), torch.arange(4))
    subsets = subsets_from_datasets([(queries, gallery)])
    metrics = evaluator.compute(subsets, keep_rankings=True)
    trainer = SimpleNamespace(log_dir=str(folder), default_root_dir=str(folder), is_global_zero=True, loggers=[],
                              global_step=0, callbacks=[])
    RunOutputs(write_results=True, save_rankings=True, cache=None, pictures=pictures).write(
        trainer, "validate", "val", EpochResults(metrics, subsets), evaluator, None, MODEL, lambda: {"model": {}},
        [queries, gallery])
    return evaluator, subsets


def test_the_results_file_reads_back_as_the_run_made_it(tmp_path, datasets, capsys):
    evaluator, subsets = _run(tmp_path, datasets, pictures=2)
    document = json.loads((tmp_path / "results-validate.json").read_text(encoding="utf-8"))
    ranked, scores = evaluator.rankings[""], evaluator.scores[""]
    gallery_ids = subsets[0].gallery_ids
    assert list(document["rankings"][""]) == ["q0", "q1", "q2", "q3"]  # the queries' order
    for i, q in enumerate(["q0", "q1", "q2", "q3"]):
        assert document["rankings"][""][q] == [gallery_ids[j] for j in ranked[i].tolist() if j >= 0]
        assert document["scores"][""][q] == pytest.approx(scores[i].tolist(), abs=1e-6)
        assert document["scores"][""][q] == sorted(document["scores"][""][q], reverse=True)  # scores agree with ranks
    assert document["metrics"][""] == pytest.approx({k: v for k, v in evaluator.compute(subsets).items()})
    assert document["model"] == MODEL
    assert {"torch", "lightning", "numpy"} <= set(document["versions"])
    assert document["data"] == data_identity(None, "validate", list(datasets))
    assert document["files"] == {"config": [], "pictures": ["retrievals-validate.png"]}
    with Image.open(tmp_path / "retrievals-validate.png") as picture:  # what drew it, in the PNG's text
        assert json.loads(picture.text["model"]) == MODEL
        assert picture.text["label"] == "validate"
        assert picture.text["software"].startswith("cir_lightning ")
    assert "results written to" in capsys.readouterr().out


def test_two_runs_into_one_folder_name_their_own_pictures(tmp_path, datasets):
    """Run B into run A's folder: its results, ``-1``, name its own picture (A drew none, so B's picture took the
    first name: before, nothing told which results a ``retrievals-validate.png`` belonged to)."""
    _run(tmp_path, datasets, pictures=0)
    first = (tmp_path / "results-validate.json").read_bytes()
    _run(tmp_path, datasets, pictures=2)
    assert (tmp_path / "results-validate.json").read_bytes() == first  # never replaced
    assert json.loads(first)["files"] == {"config": []}
    assert json.loads((tmp_path / "results-validate-1.json").read_text())["files"]["pictures"] == \
        ["retrievals-validate.png"]


def test_the_data_identity_changes_with_a_query_s_text_or_target_and_the_gallery(datasets):
    queries, gallery = datasets
    before = data_identity(None, "validate", [queries, gallery])["subsets"][""]
    edited = QueryDataset([replace(queries.records[0], modification="make it blue"), *queries.records[1:]])
    retargeted = QueryDataset([replace(queries.records[0], positives=(3,)), *queries.records[1:]])
    fewer = GalleryDataset(gallery.records[:5])
    assert data_identity(None, "validate", [edited, gallery])["subsets"][""]["queries_sha256"] != before["queries_sha256"]
    assert data_identity(None, "validate", [retargeted, gallery])["subsets"][""]["queries_sha256"] != \
        before["queries_sha256"]
    after = data_identity(None, "validate", [queries, fewer])["subsets"][""]
    assert after["gallery_ids_sha256"] != before["gallery_ids_sha256"]
    assert after["images_sha256"] != before["images_sha256"]


def test_a_refused_server_file_still_leaves_the_results(tmp_path, datasets):
    """The server files are written before the results file (which names them): one that is refused must not
    cost the run its metrics."""
    from cir_lightning.errors import CIRDataError

    class Refusing:
        writes_predictions = True

        def write_predictions(self, *args):
            raise CIRDataError("3 CIRCO queries were not ranked")

        def report(self, metrics):
            return ""

        def split_for(self, stage):
            return "val"

        def gallery_identity(self):
            return "Refusing()"

    queries, gallery = datasets
    evaluator = RetrievalEvaluator(ks=[1], search=SearchConfig(backend="torch"))
    evaluator.add(0, "gallery", torch.eye(6, 8), torch.arange(6))
    evaluator.add(0, "query", torch.eye(4, 8), torch.arange(4))
    subsets = subsets_from_datasets([(queries, gallery)])
    metrics = evaluator.compute(subsets, keep_rankings=True)
    trainer = SimpleNamespace(log_dir=str(tmp_path), default_root_dir=str(tmp_path), is_global_zero=True, loggers=[],
                              global_step=0, callbacks=[])
    with pytest.raises(CIRDataError, match="not ranked"):
        RunOutputs(True, False, None).write(trainer, "test", "test", EpochResults(metrics, subsets), evaluator,
                                           Refusing(), MODEL, lambda: {}, [queries, gallery])
    document = json.loads((tmp_path / "results-test.json").read_text())
    assert document["data"]["split"] == "val"
    assert document["data"]["gallery"] == "Refusing()"


def test_the_readme_s_example_reads_the_files_back(tmp_path, datasets, capsys):
    """docs/evaluation.md's Python example, run on a results file, its picture and an embedding folder made here."""
    import re

    import numpy as np

    from cir_lightning.retrieval import save_embeddings

    run = tmp_path / "run"
    _run(run, datasets, pictures=1)
    folder = tmp_path / "predictions" / "val-0-gallery"
    rows = np.arange(12, dtype=np.float32).reshape(6, 2)
    save_embeddings(folder, rows, [f"g{i}" for i in range(6)], kind="gallery", model=MODEL, dataset="toy",
                    split="val")
    page = Path(__file__).resolve().parents[1] / "docs" / "evaluation.md"
    [example] = [b for b in re.findall(r"^```python\n(.*?)^```", page.read_text(encoding="utf-8"), re.S | re.M)
                 if "results-validate" in b]
    example = example.replace('"demo_workdir/logs/version_2"', repr(str(run)))
    example = example.replace('"demo_workdir/logs/version_1/predictions/val-0-gallery"', repr(str(folder)))
    capsys.readouterr()
    scope: dict = {}
    exec(compile(example, str(page), "exec"), scope)
    assert scope["ids"] == [f"g{i}" for i in range(6)]
    assert np.array_equal(scope["embeddings"], rows)
    assert scope["meta"]["cir_lightning"] == scope["results"]["cir_lightning"]  # the version that wrote each
    out = capsys.readouterr().out.splitlines()
    assert out[0].endswith("ab12 None")  # Recall@1, the weights digest, the split (no DataModule here)
    assert json.loads(out[1]) == MODEL
