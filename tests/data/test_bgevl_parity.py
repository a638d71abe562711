"""Parity with BGE-VL's own scripts (VectorSpaceLab/MegaPairs ``eval/``; the same files as FlagEmbedding's
``research/BGE_VL/eval``): every flag with its default, where each flag lands in the library, and the numbers
their code path makes: faiss ``index_factory(dim, "Flat", METRIC_INNER_PRODUCT)`` top-k (``--k``), ``-1``
filtered, scored by BGE-VL's ``evaluate`` (here ``_loop_metrics``, written independently)."""

from __future__ import annotations

import ast
import json
import shutil

import faiss
import numpy as np
import pytest
import torch

from cir_lightning.commands.bgevl import build_parser, main_circo, main_fashioniq, run
from tests.data.fake_bgevl import make_bgevl_clip, make_fake_bgevl
from tests.data.test_bgevl import KS, _embeddings, _loop_metrics, _run

# BGE-VL's `Args` dataclasses: flag -> default, as the user types it (HfArgumentParser)
ORIGINAL = {"model_name": "BAAI/BGE-VL-large", "fp16": "False", "max_query_length": "64",
            "max_passage_length": "77", "batch_size": "256", "index_factory": "Flat", "k": "100",
            "save_embedding": "False", "load_embedding": "False", "save_path": "embeddings.memmap"}
ORIGINAL_FASHIONIQ = {**ORIGINAL, "image_dir": "YOUR_FASHIONIQ_IMAGE_DIRECTORY"}
ORIGINAL_CIRCO = {**ORIGINAL, "image_dir": "YOUR_COCO_IMAGE_DIRECTORY",
                  "result_save_path": "./eval/mmret_large_circo.json"}


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("bgevl_parity")
    make_fake_bgevl(root / "eval" / "data", root / "images_root", categories=("dress",), seed=3)
    make_bgevl_clip(root / "BGE-VL-tiny")
    return root


def _printed(lines: list[str]) -> dict[str, float]:
    assert lines[1] == "FashionIQ tasks (dress):"
    return ast.literal_eval(lines[2])


def _their_rankings(corpus: list[dict], query: torch.Tensor, gallery: torch.Tensor, k: int,
                    batch_size: int = 256) -> list[list]:
    """BGE-VL's `index` and `search`: an inner-product faiss index from `index_factory`, searched `batch_size`
    queries at a time for `k` neighbours; -1 (fewer corpus items than k) filtered, rows mapped to `content`."""
    index = faiss.index_factory(gallery.shape[1], "Flat", faiss.METRIC_INNER_PRODUCT)
    index.train(gallery.numpy().astype(np.float32))
    index.add(gallery.numpy().astype(np.float32))
    q = query.numpy().astype(np.float32)
    found = np.concatenate([index.search(q[i:i + batch_size], k)[1] for i in range(0, len(q), batch_size)])
    return [[corpus[j]["content"] for j in row if j != -1] for row in found]


@pytest.mark.parametrize(("task", "original"), [("fashioniq", ORIGINAL_FASHIONIQ), ("circo", ORIGINAL_CIRCO)])
def test_every_flag_of_the_original_is_taken_with_its_default(task, original):
    parser = build_parser(task)
    defaults = vars(parser.parse_args([]))
    typed = vars(parser.parse_args([f for name, value in original.items() for f in (f"--{name}", value)]))
    assert typed == defaults  # each flag exists, and the original's default is ours
    for name, value in original.items():
        expected = {"False": False}.get(value, int(value) if value.isdigit() else value)
        assert defaults[name] == expected, name
    for form, value in (("--fp16", True), ("--fp16=yes", True), ("--fp16 0", False), ("--fp16 T", True)):
        assert parser.parse_args(form.split()).fp16 is value
    assert parser.parse_args(["--max_query_length", "0"]).max_query_length == 0  # unused there: any int, as there
    with pytest.raises(SystemExit):
        parser.parse_args(["--fp16", "maybe"])


def test_the_flags_reach_the_library(root, monkeypatch, tmp_path):
    import lightning.pytorch as pl

    made = {}

    class Trainer:  # records what the script asks for, runs nothing
        def __init__(self, **kwargs):
            made["trainer"] = kwargs

        def validate(self, module, datamodule, verbose):
            made["module"], made["data"] = module, datamodule

    monkeypatch.setattr(pl, "Trainer", Trainer)
    flags = ["--model_name", str(root / "BGE-VL-tiny"), "--image_dir", str(root / "images_root"), "--fp16",
             "--batch_size", "7", "--index_factory", "IVF2,Flat", "--k", "9", "--save_embedding",
             "--save_path", str(tmp_path / "e.memmap"), "--data_dir", str(root / "eval" / "data"),
             "--categories", "dress", "--num_workers", "3", "--devices", "1"]
    run(build_parser("fashioniq").parse_args(flags), "fashioniq")
    module, data = made["module"], made["data"]
    assert module.backbone.base_model.dtype == torch.float16
    assert module.backbone.collator.max_length == 75  # --max_query_length changes nothing, as there
    search = module.evaluation.evaluator.search
    assert (search.factory, search.device, search.float16) == ("IVF2,Flat", "cpu", False)
    assert (data.k, data.batch_size, data.num_workers, data.categories) == (9, 7, 3, ["dress"])
    assert data.ks == [1, 5, 9]  # K > k: the value at k (preds are k long)
    cache = module.evaluation.cache
    assert (cache.save_path, cache.saving, cache.loading, cache.single) == (tmp_path / "e.memmap", True, False, False)
    assert made["trainer"]["devices"] == "1"
    run(build_parser("circo").parse_args([*flags[:4], "--load_embedding", "--save_path", "c.memmap",
                                          "--result_save_path", str(tmp_path / "r.json")]), "circo")
    cache = made["module"].evaluation.cache
    assert (cache.save_path.name, cache.loading, cache.single) == ("c.memmap", True, True)  # the file itself
    assert made["data"].results_file == tmp_path / "r.json"


def test_search_float16_needs_a_gpu_index(capsys):
    with pytest.raises(SystemExit) as info:
        main_fashioniq(["--search_float16"])
    assert info.value.code == 2
    assert "--search_float16 stores a GPU index: add --search_device cuda" in capsys.readouterr().err


@pytest.mark.parametrize("k", [100, 5])
def test_the_metrics_equal_bge_vls_faiss_top_k_scored_by_its_evaluate(root, k):
    code, lines, err = _run(main_fashioniq, root, "--categories", "dress", "--k", str(k))
    assert code == 0, err[-2000:]
    corpus, queries, query, gallery = _embeddings(root, "dress")
    preds = _their_rankings(corpus, query, gallery, k)
    assert all(len(p) == min(k, len(corpus)) for p in preds)  # k = 100 > 24 items: faiss pads with -1
    expected = _loop_metrics(preds, [q["positive_key"] for q in queries])
    assert _printed(lines) == pytest.approx(expected, abs=1e-12)
    if k == 5:  # the ranking is 5 long: every K >= 5 has the value at 5, as in the original
        assert {_printed(lines)[f"Recall@{K}"] for K in KS if K >= 5} == {expected["Recall@5"]}
        assert expected["Recall@100"] < 1  # a whole ranking (24 items) would find every positive by K = 100


def test_exact_ties_rank_the_lower_corpus_row_first_where_faiss_lists_the_higher(root, tmp_path):
    """One image under two ids (rows 0 and 24): BGE-VL's faiss keeps the same items but lists the tied rows
    higher row first; ours (docs/protocols.md) lower row first. docs/bgevl.md states the difference."""
    copy = tmp_path / "copy"
    shutil.copytree(root / "eval", copy / "eval")
    shutil.copytree(root / "images_root", copy / "images_root")
    (copy / "BGE-VL-tiny").symlink_to(root / "BGE-VL-tiny")
    data = copy / "eval" / "data"
    corpus = [json.loads(line) for line in (data / "fashioniq_dress_corpus.jsonl").read_text().splitlines()]
    shutil.copy(copy / "images_root" / corpus[0]["image"], copy / "images_root" / "images" / "B00TWINTWIN.png")
    corpus.append({"content": "B00TWINTWIN", "image": "./images/B00TWINTWIN.png"})
    (data / "fashioniq_dress_corpus.jsonl").write_text("".join(json.dumps(c) + "\n" for c in corpus))
    path = data / "fashioniq_dress_query_val.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    rows[0].update(q_img=corpus[0]["image"], positive_key=corpus[0]["content"])  # the lower of the twins
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))

    code, lines, err = _run(main_fashioniq, copy, "--categories", "dress", "--save_embedding")
    assert code == 0, err[-2000:]
    saved = np.fromfile(copy / "embeddings.dress.memmap", dtype=np.float32).reshape(len(corpus), -1)
    assert np.array_equal(saved[0], saved[-1])  # ours: the twins' embeddings are equal, bit for bit

    _, queries, query, gallery = _embeddings(copy, "dress")
    assert torch.allclose(gallery[0], gallery[-1], atol=1e-6)
    gallery[-1] = gallery[0]  # one image: one embedding
    labels = [q["positive_key"] for q in queries]
    theirs = _their_rankings(corpus, query, gallery, 100)
    first = theirs[0].index("B00TWINTWIN")
    assert theirs[0][first + 1] == corpus[0]["content"]  # faiss: the higher row first
    scores = (query @ gallery.T).numpy()
    lower_first = [[corpus[j]["content"] for j in np.argsort(-row, kind="stable")] for row in scores]
    assert lower_first[0][first:first + 2] == [corpus[0]["content"], "B00TWINTWIN"]
    assert [sorted(p) for p in lower_first] == [sorted(p) for p in theirs]  # the same items, reordered in the tie
    assert _printed(lines) == pytest.approx(_loop_metrics(lower_first, labels), abs=1e-12)
    assert _loop_metrics(theirs, labels)["MRR@100"] < _printed(lines)["MRR@100"]  # the test sees the tie


def test_circo_embedding_file_is_save_path_itself_as_in_the_original(root, tmp_path):
    out = tmp_path / "first.json"
    code, _, err = _run(main_circo, root, "--save_embedding", "--save_path", str(tmp_path / "emb.memmap"),
                        "--result_save_path", str(out))
    assert code == 0, err[-2000:]
    corpus = (root / "eval" / "data" / "circo_corpus.jsonl").read_text().splitlines()
    rows = np.memmap(tmp_path / "emb.memmap", dtype=np.float32, mode="r").reshape(len(corpus), -1)  # their loader
    assert np.allclose(np.linalg.norm(rows, axis=1), 1, atol=1e-5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["emb.memmap", "emb.memmap.json", "first.json"]
    again = tmp_path / "again.json"
    code, _, err = _run(main_circo, root, "--load_embedding", "--save_path", str(tmp_path / "emb.memmap"),
                        "--result_save_path", str(again))
    assert code == 0, err[-2000:]
    assert "gallery embeddings read from the cache" in err
    assert json.loads(again.read_text()) == json.loads(out.read_text())
