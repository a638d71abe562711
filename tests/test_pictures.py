"""Retrieval pictures: drawn from the datasets and rankings, written after validate / test (and inside fit on
request), sent to image loggers, and redrawn from a results file by `cir-lightning show`."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from PIL import Image

from cir_lightning.pictures import (
    log_picture,
    query_rows,
    recall_curves,
    retrieval_picture,
    sample_queries,
    save_picture,
    tile_origin,
)
from cir_lightning.pictures.draw import GAP, GREEN, LABEL, PALETTE, THUMB, TILE
from cir_lightning.retrieval import EvalSubset, RetrievalEvaluator, SearchConfig

# Lightning, the data and the CLI are imported inside the tests: the DDP test's processes import this module.
CONF = Path(__file__).parent / "conf" / "tiny.yaml"
WHITE = (255, 255, 255)


def main(argv: list[str]) -> None:
    from cir_lightning.cli import main as cli_main

    cli_main(argv)


def _tile(picture: Image.Image, row: int, column: int) -> Image.Image:
    x, y = tile_origin(row, column)
    return picture.crop((x, y, x + TILE, y + TILE))


def _expected_tile(path: Path) -> Image.Image:
    """A 32-pixel synthetic image scaled 4x by nearest neighbour: the tile the picture must hold."""
    with Image.open(path) as image:
        return image.convert("RGB").resize((TILE, TILE), Image.Resampling.NEAREST)


def _outline(picture: Image.Image, row: int, column: int) -> tuple[int, int, int]:
    x, y = tile_origin(row, column)
    return picture.getpixel((x - 2, y + TILE // 2))


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    """Ten synthetic scenes as files, a query set over them and its gallery."""
    from cir_lightning.data.datasets import GalleryDataset, GalleryItem, Query, QueryDataset
    from cir_lightning.data.synthetic import SCENES, draw_scene

    folder = tmp_path_factory.mktemp("scenes")
    paths = []
    for i in range(10):
        paths.append(folder / f"s{i}.png")
        draw_scene(SCENES[i * 37], 32).save(paths[-1])
    gallery = GalleryDataset([GalleryItem(f"g{i}", p, "gallery.jsonl") for i, p in enumerate(paths)])
    queries = QueryDataset([Query("q0", paths[0], "make it a much bigger and brighter shape in the middle of the "
                                  "picture, please, with a longer text than fits", (2,), "queries.jsonl"),
                            Query("q1", paths[1], ("make it red", "and small"), (9,), "queries.jsonl"),
                            Query("q2", paths[2], "move it", (5, 6), "queries.jsonl")])
    return queries, gallery, paths


def test_retrieval_picture_shows_the_images_outlines_targets_and_finds_ranks(scenes):
    queries, gallery, paths = scenes
    ranked = [[3, 2, 4, 5, 7, 8, -1], [1, 2, 3, 4, 5, 6, 7], [4, 6, 5, 0, 1, 2, 3]]
    scores = [[0.9, 0.8, 0.7, 0.6, 0.5, 0.4, float("-inf")], [0.5] * 7, [0.3, 0.2, 0.1, 0.0, -0.1, -0.2, -0.3]]
    rows = query_rows(queries, gallery, [0, 1, 2], ranked, scores)
    assert [r.target_rank for r in rows] == [2, None, 2]
    assert [r.depth for r in rows] == [6, 7, 7]  # -1 padding is not a result
    assert [r.target.image_id for r in rows] == ["g2", "g9", "g6"]  # unranked: the first listed target
    assert rows[1].text == "make it red | and small"  # several texts (FashionIQ's both orders)
    assert [h.score for h in rows[0].hits] == pytest.approx([0.9, 0.8, 0.7, 0.6, 0.5])
    picture = retrieval_picture(rows, title="test")
    assert picture.size == (tile_origin(0, 5)[0] + TILE + GAP, tile_origin(3, 0)[1])
    for r, row in enumerate(ranked):
        assert _tile(picture, r, 0).tobytes() == _expected_tile(paths[r]).tobytes()  # the reference
        for k in range(5):
            assert _tile(picture, r, k + 1).tobytes() == _expected_tile(paths[row[k]]).tobytes()
            target = row[k] in queries.records[r].positives
            assert _outline(picture, r, k + 1) == (GREEN if target else WHITE), (r, k)
        tx, ty = tile_origin(r, 0)[0] + TILE + GAP, tile_origin(r, 0)[1] + TILE + LABEL - THUMB
        assert picture.getpixel((tx, ty + THUMB // 2)) == GREEN  # the target's thumbnail, outlined
    # without scores (a results file without them) and without ground truth: ranks only, nothing outlined
    from cir_lightning.data.datasets import QueryDataset

    unlabelled = QueryDataset(queries.records, has_ground_truth=False)
    [row] = query_rows(unlabelled, gallery, [0], [ranked[0]])
    assert (row.target, row.target_rank, row.has_targets, row.hits[0].score) == (None, None, False, None)
    plain = retrieval_picture([row])
    assert all(_outline(plain, 0, k + 1) == WHITE for k in range(5))


def test_recall_curves_draw_one_curve_per_subset_with_recall(tmp_path):
    metrics = {"dress": {"Recall@10": 0.3, "Recall@50": 0.6}, "shirt": {"Recall@1": 0.1, "Recall@50": 0.7},
               "average": {"R@avg": 0.5}}
    picture = recall_curves(metrics)
    colours = picture.getcolors(maxcolors=1 << 16)
    count = {colour: n for n, colour in colours}
    assert count.get(PALETTE[0], 0) > 50
    assert count.get(PALETTE[1], 0) > 50
    assert PALETTE[2] not in count  # `average` has no Recall@K: no third curve
    with pytest.raises(ValueError, match="no `Recall@K` metrics"):
        recall_curves({"": {"MRR@10": 0.2}})


def test_pictures_are_never_overwritten_and_go_to_loggers_that_take_images(tmp_path):
    from lightning.pytorch.loggers import CSVLogger

    from cir_lightning.run_outputs import RunOutputs

    picture = Image.new("RGB", (30, 20), (10, 200, 30))
    first, second = save_picture(picture, tmp_path / "p.png"), save_picture(picture, tmp_path / "p.png")
    assert (first.name, second.name) == ("p.png", "p-1.png")
    with Image.open(second) as back:
        assert back.size == (30, 20)
        assert back.getpixel((3, 3)) == (10, 200, 30)
    seen = []
    board = SimpleNamespace(experiment=SimpleNamespace(add_image=lambda *args, **kwargs: seen.append((args, kwargs))))
    assert log_picture([CSVLogger(tmp_path / "csv"), board], "val/retrievals", picture, 7) == ["SimpleNamespace"]
    (tag, array), kwargs = seen[0]
    assert tag == "val/retrievals"
    assert array.shape == (20, 30, 3)
    assert kwargs["global_step"] == 7
    assert RunOutputs(True, False, None, pictures=0).keep_rankings(None) is False
    assert RunOutputs(True, False, None, pictures=8).keep_rankings(None) is True


def _fit_epoch(tmp_path: Path, scenes, during_fit: bool, epoch: int):
    from lightning.pytorch.trainer.states import TrainerFn
    from torch.utils.data import DataLoader

    from cir_lightning.evaluation import Evaluation, EvaluationOptions

    queries, gallery, _ = scenes
    evaluation = Evaluation(EvaluationOptions(eval_ks=[1, 5], search=SearchConfig(backend="torch"), pictures=2,
                                              pictures_during_fit=during_fit))
    g = torch.Generator().manual_seed(0)
    evaluation.evaluator.add(0, "gallery", F.normalize(torch.randn(10, 8, generator=g), dim=-1), torch.arange(10))
    evaluation.evaluator.add(0, "query", F.normalize(torch.randn(3, 8, generator=g), dim=-1), torch.arange(3))
    logged = []
    board = SimpleNamespace(experiment=SimpleNamespace(add_image=lambda tag, image, global_step, dataformats:
                                                      logged.append((tag, global_step))))
    trainer = SimpleNamespace(state=SimpleNamespace(fn=TrainerFn.FITTING), sanity_checking=False, datamodule=None,
                              log_dir=str(tmp_path), default_root_dir=str(tmp_path), is_global_zero=True,
                              loggers=[board], global_step=40 + epoch, current_epoch=epoch, checkpoint_callbacks=[], callbacks=[],
                              precision="bf16-mixed")

    def identity(precision: str) -> dict:
        return {"fingerprint": {"family": "stand-in"}, "weights": f"after-epoch-{epoch}", "precision": precision}

    module = SimpleNamespace(trainer=trainer, log_dict=lambda values, **how: None,
                             backbone=SimpleNamespace(identity=identity))
    loaders = [DataLoader(queries), DataLoader(gallery)]  # what `trainer.val_dataloaders` holds
    assert evaluation.epoch_end(module, "validate", loaders) is not None
    return logged


def test_pictures_inside_fit_only_when_asked(tmp_path, scenes):
    assert _fit_epoch(tmp_path, scenes, during_fit=False, epoch=0) == []
    assert list(tmp_path.iterdir()) == []
    logged = _fit_epoch(tmp_path, scenes, during_fit=True, epoch=0) + _fit_epoch(tmp_path, scenes, True, 1)
    assert logged == [("val/retrievals", 40), ("val/retrievals", 41)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["retrievals-val-epoch0.png", "retrievals-val-epoch1.png"]
    with Image.open(tmp_path / "retrievals-val-epoch1.png") as picture:
        assert picture.size[1] == tile_origin(2, 0)[1]  # 2 queries drawn
        info = picture.text
    assert (info["label"], info["step"]) == ("val-epoch1", "41")
    assert json.loads(info["model"]) == {"fingerprint": {"family": "stand-in"}, "weights": "after-epoch-1",
                                         "precision": "bf16-mixed"}  # the weights that drew it (it had no model)


@pytest.fixture(scope="module")
def validated(tmp_path_factory, tiny_model_dir, synthetic_root):
    """A standalone validate on the synthetic benchmark with rankings saved."""
    run = tmp_path_factory.mktemp("pictures") / "run"
    main(["validate", "--config", str(CONF), "--model.backbone.init_args.model_name_or_path", str(tiny_model_dir),
          "--data.init_args.root", str(synthetic_root), "--trainer.default_root_dir", str(run),
          "--model.save_rankings", "true"])
    results = json.loads((run / "results-validate.json").read_text())
    queries = [json.loads(line) for line in (synthetic_root / "val_queries.jsonl").read_text().splitlines()]
    return run, results, queries


def _check_rows(picture: Image.Image, first_row: int, query_ids, results, queries, root: Path) -> None:
    """Every drawn result is the ranked gallery image, outlined in green exactly when it is the target."""
    by_id = {q["query_id"]: q for q in queries}
    for r, qid in enumerate(query_ids):
        assert _tile(picture, first_row + r, 0).tobytes() == _expected_tile(root / by_id[qid]["reference_image"]
                                                                           ).tobytes()
        for k, image_id in enumerate(results["rankings"][""][qid][:5]):
            tile = _tile(picture, first_row + r, k + 1)
            assert tile.tobytes() == _expected_tile(root / "images" / f"{image_id}.png").tobytes()
            assert _outline(picture, first_row + r, k + 1) == (GREEN if image_id == by_id[qid]["target_id"]
                                                               else WHITE)


def test_validate_writes_a_picture_and_the_scores(validated, synthetic_root):
    run, results, queries = validated
    rankings, scores = results["rankings"][""], results["scores"][""]
    assert list(scores) == list(rankings)
    for qid, ranked in rankings.items():  # the scores of the ranked ids, best first, cosine similarities
        assert len(scores[qid]) == len(ranked) == 50
        assert scores[qid] == sorted(scores[qid], reverse=True)
        assert all(-1.0001 <= s <= 1.0001 for s in scores[qid])
    with Image.open(run / "retrievals-validate.png") as picture:
        picture = picture.convert("RGB")
    assert picture.size == (tile_origin(0, 5)[0] + TILE + GAP, tile_origin(8, 0)[1])
    drawn = [queries[i]["query_id"] for i in sample_queries(len(queries), 8)]
    _check_rows(picture, 0, drawn, results, queries, synthetic_root)


def test_show_redraws_queries_from_the_results_file(validated, synthetic_root, tmp_path, capsys):
    run, results, queries = validated
    chosen = [q["query_id"] for q in queries]  # all 24: some targets are in a top 5, most are not
    out = tmp_path / "all.png"
    main(["show", str(run / "results-validate.json"), "--queries", *chosen, "--out", str(out)])
    assert f"picture written to {out}" in capsys.readouterr().out
    with Image.open(out) as picture:
        picture = picture.convert("RGB")
    curve_height = 420 + GAP  # the Recall@K curves come first
    assert picture.size == (tile_origin(0, 5)[0] + TILE + GAP, curve_height + tile_origin(24, 0)[1])
    body = picture.crop((0, curve_height, picture.width, picture.height))
    _check_rows(body, 0, chosen, results, queries, synthetic_root)
    # the default name is beside the results file and never replaces an earlier picture
    for name in ("results-validate.png", "results-validate-1.png"):
        main(["show", str(run / "results-validate.json"), "--count", "2"])
        assert (run / name).is_file()


def _error(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("cir-lightning: error: ")
    assert "Traceback" not in err
    return err.splitlines()[0]


def test_show_refuses_bad_input_with_one_line(validated, tmp_path, capsys):
    run, results, _ = validated
    good = run / "results-validate.json"

    def variant(name: str, change) -> str:
        document = json.loads(good.read_text())
        change(document)
        (tmp_path / name).write_text(json.dumps(document))
        return str(tmp_path / name)

    assert "holds no rankings: evaluate with `--model.save_rankings true`" in _error(
        ["show", variant("plain.json", lambda d: d.pop("rankings"))], capsys)
    assert "`--queries`: no query nope" in _error(["show", str(good), "--queries", "val_00001", "nope"], capsys)
    assert "`--subset dress`: no rankings of that subset" in _error(["show", str(good), "--subset", "dress"], capsys)
    (tmp_path / "taken.png").write_bytes(b"")
    assert (f"`--out`: `{tmp_path / 'taken.png'}` already exists; it is never overwritten (choose another name, or "
            "remove it)") in _error(["show", str(good), "--out", str(tmp_path / "taken.png")], capsys)
    assert "`--out` writes a PNG: give a file name ending in .png" in _error(  # PNG bytes were written as .jpg
        ["show", str(good), "--out", str(tmp_path / "drawn.jpg")], capsys)
    assert not (tmp_path / "drawn.jpg").exists()
    moved = variant("moved.json", lambda d: d["config"]["data"].update(root=str(tmp_path / "gone")))
    assert "cannot rebuild its data (SyntheticCIRDataModule" in _error(["show", moved], capsys)
    assert not (tmp_path / "gone").exists()  # show never writes data
    nameless = variant("nameless.json", lambda d: d["config"].pop("data_class_path"))
    assert "records no DataModule (`config.data_class_path`)" in _error(["show", nameless], capsys)
    foreign = variant("foreign.json", lambda d: d["rankings"][""]["val_00001"].insert(0, "scene_999"))
    assert "ranks gallery ids not in the rebuilt gallery: scene_999" in _error(
        ["show", foreign, "--queries", "val_00001"], capsys)
    assert "`--count` must be" in _error(["show", str(good), "--count", "0"], capsys)
    # a hand-edited or damaged file (these were AttributeError / ValueError tracebacks while drawing)
    for name, change, message in [
            ("metrics.json", lambda d: d["metrics"].update({"": [1]}), "`metrics` of subset '' is not an object"),
            ("value.json", lambda d: d["metrics"][""].update({"Recall@1": "x"}), "`metrics` of subset '' is not"),
            ("scores.json", lambda d: d.update(scores=[1]), "`scores` is not an object of subset -> query -> list"),
            ("rankings.json", lambda d: d["rankings"].update({"": ["a"]}), "`rankings` is not an object")]:
        assert f"{name}: {message}" in _error(["show", variant(name, change), "--queries", "val_00001"], capsys)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _scores_worker(rank, world, port, qry, gal, sub, out):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        ev = RetrievalEvaluator(ks=[1, 5], search=SearchConfig(backend="torch"))
        for kind, x in (("query", qry), ("gallery", gal)):  # DistributedSampler's strided shards, padded
            per_rank = -(-len(x) // world)
            mine = torch.tensor((list(range(len(x))) + list(range(per_rank * world - len(x))))[rank::world])
            ev.add(0, kind, x[mine], mine)
        ev.compute([sub], keep_rankings=True)
        out[rank] = (ev.rankings[""].tolist(), ev.scores[""].tolist())
    finally:
        dist.destroy_process_group()


@pytest.mark.ddp
def test_kept_scores_under_ddp_equal_one_process():
    g = torch.Generator().manual_seed(1)
    gal, qry = F.normalize(torch.randn(13, 6, generator=g), dim=-1), F.normalize(torch.randn(7, 6, generator=g), dim=-1)
    sub = EvalSubset("", [[i % 13] for i in range(7)], [[(i + 3) % 13] for i in range(7)], 13)
    single = RetrievalEvaluator(ks=[1, 5], search=SearchConfig(backend="torch"))
    single.add(0, "gallery", gal, torch.arange(13))
    single.add(0, "query", qry, torch.arange(7))
    single.compute([sub], keep_rankings=True)
    ranked, scores = single.rankings[""], single.scores[""]
    assert torch.allclose(scores, (qry[:, None, :] * gal[ranked]).sum(-1), atol=1e-6)  # the ranked rows' cosines
    out = mp.Manager().dict()
    mp.spawn(_scores_worker, args=(2, _free_port(), qry, gal, sub, out), nprocs=2, join=True)
    for rank in range(2):  # the same rankings; the same scores up to the rounding of another matrix shape
        assert out[rank][0] == ranked.tolist()
        assert torch.allclose(torch.tensor(out[rank][1]), scores, atol=1e-6)


def test_text_pillow_s_own_font_cannot_draw_takes_an_installed_font_that_can():
    """Accents and CJK in a query text, id or file name were drawn as boxes (Pillow's font stops at ASCII)."""
    from cir_lightning.pictures.fonts import FALLBACK_FONTS, default_font, draws, font, system_font

    assert not draws(default_font(16), "ä")  # why a fallback is needed
    assert font(16, "make it red") is default_font(16)  # ASCII keeps Pillow's font
    installed = [f for f in (system_font(name, 16) for name in FALLBACK_FONTS) if f is not None and draws(f, "ä")]
    chosen = font(16, "färbe es rot")
    assert draws(chosen, "ä") == bool(installed)  # CI installs DejaVu (.ci/run): there it must draw
    if installed:
        assert chosen.path == installed[0].path


def test_a_long_id_and_text_stay_in_their_column_and_unicode_takes_the_font_drawing_most(scenes):
    """A 200-character query id ran across the result tiles; ``färbe ... 日本語`` was all boxes when no font drew
    every character (DejaVu draws the ä); the ``...`` of a cut text ran into the first tile."""
    from cir_lightning.data.datasets import Query, QueryDataset
    from cir_lightning.pictures.draw import TEXT_WIDTH
    from cir_lightning.pictures.fonts import default_font, draws, font

    _, gallery, _ = scenes
    long_id = "ü" * 20 + "x" * 200 + "日本語"
    queries = QueryDataset([Query(long_id, scenes[2][0], "färbe es rot 日本語 " * 10, (2,), "queries.jsonl")])
    picture = retrieval_picture(query_rows(queries, gallery, [0], [[3, 2, 4]], [[0.9, 0.8, 0.7]]))
    x, y = tile_origin(0, 0)
    first = tile_origin(0, 1)[0]
    column_end = x + TILE + GAP + TEXT_WIDTH
    between = picture.crop((column_end + 1, y, first - 1, y + TILE))  # the gap before the first result tile
    assert between.getcolors() == [(between.width * between.height, WHITE)]
    gaps = [picture.crop((tile_origin(0, k)[0] + TILE + 5, y, tile_origin(0, k + 1)[0] - 5, y + 16)) for k in (1, 2)]
    assert all(g.getcolors() == [(g.width * g.height, WHITE)] for g in gaps)  # no id drawn across the results
    accents = font(16, "ä")  # CI installs DejaVu (.ci/run): there a font draws the ä
    assert draws(font(16, "färbe 日本語"), "ä") == (accents is not default_font(16))  # though none draws the CJK


@pytest.mark.parametrize("case", ["one image", "k beyond the gallery"])
def test_a_gallery_of_one_and_rankings_shorter_than_the_picture_draw_what_there_is(scenes, case):
    from cir_lightning.data.datasets import GalleryDataset, GalleryItem, Query, QueryDataset
    from cir_lightning.pictures import subset_pictures

    _, _, paths = scenes
    size = 1 if case == "one image" else 2
    gallery = GalleryDataset([GalleryItem(f"g{i}", paths[i], "gallery.jsonl") for i in range(size)])
    queries = QueryDataset([Query("q0", paths[5], "make it red", (size - 1,), "queries.jsonl")])
    ranked = torch.tensor([[size - 1, *range(size - 1), *[-1] * 5]])  # -1: nothing ranked there (k > gallery)
    scores = torch.tensor([[0.5, *[0.25] * (size - 1), *[float("-inf")] * 5]])
    picture = subset_pictures([(queries, gallery)], {"": ranked}, {"": scores}, 4, "validate")[""]
    assert _tile(picture, 0, 0).tobytes() == _expected_tile(paths[5]).tobytes()
    assert _tile(picture, 0, 1).tobytes() == _expected_tile(paths[size - 1]).tobytes()
    assert _outline(picture, 0, 1) == GREEN  # the one target, at rank 1
    for column in range(size + 1, 6):  # no tile where nothing was ranked
        empty = _tile(picture, 0, column)
        assert empty.getcolors() == [(TILE * TILE, WHITE)]


@pytest.mark.parametrize(("broken", "what"), [("reference", "reference"), (1, "result #2"), (7, "target")])
def test_a_missing_or_unreadable_image_is_one_warning_naming_it_and_its_query(scenes, tmp_path, broken, what):
    """``RunOutputs.draw`` of a query whose reference, a result or its target cannot be read: one line naming the
    file and the query (it named only the file), no picture; the run keeps its results."""
    from cir_lightning.data.datasets import GalleryDataset, GalleryItem, Query, QueryDataset
    from cir_lightning.retrieval.loop import EpochResults
    from cir_lightning.run_outputs import RunOutputs

    paths = list(scenes[2])
    reference, positives = paths[4], (7,) if what == "target" else (2,)  # the target not ranked: its thumbnail drawn
    if broken == "reference":
        reference = tmp_path / "gone.png"
    else:
        paths[broken] = tmp_path / "notes.jpg"
        paths[broken].write_text("not an image")
    gallery = GalleryDataset([GalleryItem(f"g{i}", p, "gallery.jsonl") for i, p in enumerate(paths)])
    queries = QueryDataset([Query("q0", paths[3], "make it blue", (2,), "queries.jsonl"),
                            Query("q1", reference, "make it red", positives, "queries.jsonl")])
    evaluator = SimpleNamespace(rankings={"": torch.tensor([[2, 0, 3], [2, 1, 0]])},
                                scores={"": torch.tensor([[0.9, 0.8, 0.7], [0.9, 0.8, 0.7]])})
    trainer = SimpleNamespace(log_dir=str(tmp_path), default_root_dir=str(tmp_path), is_global_zero=True, loggers=[],
                              global_step=0)
    name = "gone.png` does not exist" if broken == "reference" else "notes.jpg` cannot be read"
    with pytest.warns(UserWarning, match=rf"^retrieval pictures not drawn: query `q1`'s {what}: .*{name}") as caught:
        drawn = RunOutputs(True, False, None, pictures=2).draw(trainer, "validate", "val", EpochResults({}, []),
                                                               evaluator, [queries, gallery])
    assert ["\n" in str(w.message) for w in caught] == [False]
    assert drawn == []
    assert not list(tmp_path.glob("*.png"))
