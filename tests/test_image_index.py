"""``cir-lightning index`` / ``search`` and ``ImageIndex``: your own images, embedded once, searched by the model
that embedded them; a killed build continues; unreadable images are listed; bad input is one line."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cir_lightning.backbones.tiny import make_tiny_model
from cir_lightning.cli import main
from cir_lightning.data.images import load_image
from cir_lightning.errors import CIRConfigError, CIRDataError, CIRModelError
from cir_lightning.image_index import Hit, ImageIndex
from tests.test_cli import CONF

COLOURS = {"red.png": "red", "green.jpg": "green", "sub/blue.png": "blue", "sub/deeper/yellow.webp": "yellow",
           "grey.png": "grey"}


def _photos(folder: Path) -> Path:
    for name, colour in COLOURS.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (24, 16), colour).save(folder / name)
    (folder / "notes.txt").write_text("not an image")
    (folder / ".hidden.png").write_bytes(b"")
    return folder


def _index_args(photos: Path, out: Path, model: Path, *more: str) -> list[str]:
    return ["index", str(photos), "--config", str(CONF), "--model.backbone.init_args.model_name_or_path", str(model),
            "--out", str(out), *more]


@pytest.fixture(scope="module")
def small_index(tmp_path_factory, tiny_model_dir):
    tmp = tmp_path_factory.mktemp("small")
    photos = _photos(tmp / "photos")
    main(_index_args(photos, tmp / "index", tiny_model_dir, "--batch-size", "2"))
    return tmp / "index", photos


def test_an_index_holds_every_image_and_searches_like_brute_force(small_index, capsys):
    folder, photos = small_index
    index = ImageIndex.open(folder)
    assert index.relpaths == sorted(COLOURS)  # recursive, sorted; no text or hidden files
    assert index.root == photos.resolve()
    backbone = index.load_backbone()
    image = Image.new("RGB", (48, 32), "red")
    hits = index.query(backbone, image, "make it blue", k=3)
    assert [h.rank for h in hits] == [1, 2, 3]
    assert all(isinstance(h, Hit) and h.path == photos.resolve() / h.relpath for h in hits)
    # the same as scoring every stored row with the query's embedding
    query = backbone.encode_query([image], ["make it blue"])[0].numpy()
    scores = np.load(folder / "embeddings.npy") @ query
    best = np.argsort(-scores, kind="stable")[:3]
    assert [h.relpath for h in hits] == [index.relpaths[i] for i in best]
    assert [h.score for h in hits] == pytest.approx(scores[best].tolist(), abs=1e-5)
    # the stored rows are the gallery embeddings of the images
    direct = backbone.encode_gallery([load_image(photos / p) for p in index.relpaths])
    assert torch.allclose(torch.from_numpy(np.load(folder / "embeddings.npy")), direct, atol=1e-5)
    assert len(index.query(backbone, image, "x", k=50, exclude=["red.png"])) == 4  # fewer than k: all the others


def test_an_index_records_the_faiss_index_it_built_and_its_search_settings(small_index, tiny_model_dir, tmp_path,
                                                                           capsys):
    """An IVF index too large for the images is built smaller: its meta.json and the printed line named the
    factory asked for, not the one built."""
    photos = small_index[1]
    with pytest.warns(UserWarning, match="too few to train 1024 IVF lists"):
        main(_index_args(photos, tmp_path / "ivf", tiny_model_dir, "--factory", "IVF1024,Flat", "--nprobe", "4"))
    assert "faiss IVF1,Flat)" in capsys.readouterr().out
    search = json.loads((tmp_path / "ivf" / "meta.json").read_text())["image_index"]["search"]
    assert search == {"factory": "IVF1,Flat", "nprobe": 4, "ef_search": None, "asked": "IVF1024,Flat"}


def test_a_moved_image_folder_is_found_again_with_root_and_ties_rank_as_in_evaluation(tmp_path, tiny_model_dir):
    """Search after the image folder moved printed paths that no longer existed; equal scores (copies of one
    photo) were ordered by faiss's heap, not by row as the evaluation's search orders them."""
    photos = tmp_path / "photos"
    for name, colour in [("a.png", "red"), ("b.png", "red"), ("c.png", "red"), ("d.png", "blue"), ("e.png", "red")]:
        photos.mkdir(exist_ok=True)
        Image.new("RGB", (24, 16), colour).save(photos / name)
    main(_index_args(photos, tmp_path / "index", tiny_model_dir))
    photos.rename(tmp_path / "moved")
    with pytest.raises(CIRDataError, match=r"the image folder `.*photos` the index was built over is not there: .*"
                                           r"`--root FOLDER`"):
        ImageIndex.open(tmp_path / "index")
    index = ImageIndex.open(tmp_path / "index", root=tmp_path / "moved")
    backbone = index.load_backbone()
    hits = index.query(backbone, Image.new("RGB", (24, 16), "red"), "same", k=2, exclude=["a.png"])
    assert [h.relpath for h in hits] == ["b.png", "c.png"]  # four equal scores: the lowest rows, a.png left out
    assert hits[0].score == hits[1].score
    assert hits[0].path == (tmp_path / "moved" / "b.png").resolve()


def test_phone_photos_are_indexed_and_searched_upright_as_their_exif_orientation_says(tmp_path, tiny_model_dir):
    """A photo stored sideways with an EXIF orientation (as phones save them) was embedded sideways, while
    the browser showed it upright: "move it to the top" then searched a rotated picture."""
    from cir_lightning.pixels import upright

    photos = tmp_path / "photos"
    photos.mkdir()
    sideways = Image.new("RGB", (80, 40), "red")
    sideways.paste(Image.new("RGB", (40, 40), "blue"), (40, 0))  # not symmetric: a turn changes it
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to view"
    sideways.save(photos / "phone.jpg", exif=exif.tobytes(), quality=95)
    Image.new("RGB", (40, 80), "green").save(photos / "other.png")
    main(_index_args(photos, tmp_path / "index", tiny_model_dir))
    index = ImageIndex.open(tmp_path / "index")
    backbone = index.load_backbone()
    row = np.load(tmp_path / "index" / "embeddings.npy")[index.relpaths.index("phone.jpg")]
    with Image.open(photos / "phone.jpg") as raw:
        raw.load()
        shown = upright(raw)
        assert shown.size == (40, 80)
        as_viewed = backbone.encode_gallery([shown.convert("RGB")])[0].numpy()
        as_stored = backbone.encode_gallery([raw.convert("RGB")])[0].numpy()
        assert np.allclose(row, as_viewed, atol=1e-5)
        assert not np.allclose(row, as_stored, atol=1e-3)
        # a query image given as opened (EXIF kept) is turned the same way
        hits = index.query(backbone, raw, "same", k=2)
        direct = backbone.encode_query([shown.convert("RGB")], ["same"])[0].numpy()
        rows = np.load(tmp_path / "index" / "embeddings.npy")
        assert hits[0].score == pytest.approx(float(np.max(rows @ direct)), abs=1e-5)


def test_search_prints_the_ranked_paths_and_draws_them(small_index, capsys, tmp_path):
    folder, photos = small_index
    capsys.readouterr()
    main(["search", str(folder), "--image", str(photos / "red.png"), "--text", "make it green", "-k", "3",
          "--show", str(tmp_path / "top.png")])
    out = capsys.readouterr().out.splitlines()
    assert "(the reference itself, red.png, left out: --keep-reference keeps it)" in out[0]
    rows = [line.split() for line in out[2:5]]
    assert [r[0] for r in rows] == ["1", "2", "3"]
    assert [float(r[1]) for r in rows] == sorted((float(r[1]) for r in rows), reverse=True)
    assert all(Path(r[2]).is_file() and Path(r[2]).name != "red.png" for r in rows)
    assert out[5] == f"picture written to {tmp_path / 'top.png'}"
    with Image.open(tmp_path / "top.png") as picture:
        assert picture.width > 3 * 128  # reference and three results side by side
        info = picture.text  # what drew it, as validate's and show's pictures say (it said nothing)
    assert {k: info.get(k) for k in ("label", "index", "root", "image", "text", "k")} == {
        "label": "search", "index": str(folder.absolute()), "root": str(photos.resolve()),
        "image": str((photos / "red.png").absolute()), "text": "make it green", "k": "3"}
    assert json.loads(info["model"]) == ImageIndex.open(folder).meta["model"]  # the model that built the index
    assert "subset" not in info


def test_a_k_far_past_the_index_size_returns_every_image(small_index):
    """`search -k 1000000000000` failed to allocate a trillion -1s of padding (torch's RuntimeError)."""
    index = ImageIndex.open(small_index[0])
    hits = index.query(index.load_backbone(), Image.new("RGB", (16, 16), "red"), "make it blue", k=10**12)
    assert sorted(hit.relpath for hit in hits) == sorted(index.relpaths)
    assert [hit.rank for hit in hits] == list(range(1, len(index.relpaths) + 1))


def test_an_index_refuses_a_model_other_than_its_own(small_index, backbone):
    index = ImageIndex.open(small_index[0])
    with pytest.raises(CIRModelError, match=r"was built by another model \(model\.fingerprint\.prompts\.query"):
        index.query(backbone, Image.new("RGB", (8, 8)), "make it red")
    with pytest.raises(CIRConfigError, match="`k` must be an integer >= 1, got 0"):
        index.query(index.load_backbone(), Image.new("RGB", (8, 8)), "make it red", k=0)


def test_a_query_the_model_embeds_as_nan_is_refused_not_ranked(small_index, monkeypatch):
    """faiss and torch order NaN scores each their own way: the results were arbitrary paths."""
    index = ImageIndex.open(small_index[0])
    backbone = index.load_backbone()
    monkeypatch.setattr(backbone, "encode_query", lambda images, texts: torch.full((1, backbone.embedding_dim),
                                                                                  float("nan")))
    with pytest.raises(CIRModelError, match=r"the model's embedding of this query is not finite \(NaN or inf\)"):
        index.query(backbone, Image.new("RGB", (8, 8)), "make it red")


def test_an_index_built_in_bf16_records_it_and_is_searched_by_its_model(tmp_path, tiny_model_dir, small_index):
    photos = small_index[1]
    main(_index_args(photos, tmp_path / "index", tiny_model_dir, "--trainer.precision", "bf16-mixed"))
    index, full = ImageIndex.open(tmp_path / "index"), ImageIndex.open(small_index[0])
    assert index.meta["model"] == {**full.meta["model"], "precision": "bf16-mixed"}
    hits = index.query(index.load_backbone(), Image.new("RGB", (24, 16), "red"), "keep it", k=5)  # not refused
    assert sorted(h.relpath for h in hits) == sorted(COLOURS)


def test_search_refuses_an_index_whose_model_files_changed(tmp_path, tiny_model_dir, capsys):
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    photos = _photos(tmp_path / "photos")
    main(_index_args(photos, tmp_path / "index", model))
    other = make_tiny_model(tmp_path / "other", seed=1)  # same names and shapes, other weights
    for weights in other.glob("*.safetensors"):
        shutil.copy(weights, model / weights.name)
    with pytest.raises(SystemExit) as exit_info:
        main(["search", str(tmp_path / "index"), "--image", str(photos / "red.png"), "--text", "make it blue"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "the model that built it has changed since (model.fingerprint.base_digest: index has" in err
    assert "put its files back, or index the images again" in err
    assert len(err.strip().splitlines()) == 2  # the line, and how to see where it was raised
    shutil.rmtree(model)  # gone: said so, not a failed hub lookup of a path
    with pytest.raises(SystemExit):
        main(["search", str(tmp_path / "index"), "--image", str(photos / "red.png"), "--text", "make it blue"])
    err = capsys.readouterr().err
    assert f"cannot load model `{model.resolve()}`: the folder does not exist (moved or deleted?)" in err
    assert len(err.strip().splitlines()) == 2


def test_unreadable_images_are_listed_and_left_out_only_when_asked(tmp_path, tiny_model_dir, capsys):
    photos = _photos(tmp_path / "photos")
    (photos / "broken.jpg").write_bytes(b"not a jpeg")
    good = (photos / "red.png").read_bytes()
    (photos / "sub" / "cut.png").write_bytes(good[: len(good) // 2])
    args = _index_args(photos, tmp_path / "index", tiny_model_dir, "--batch-size", "2", "--shard-size", "2")
    with pytest.raises(SystemExit):
        main(args)
    err = capsys.readouterr().err
    assert "2 of 7 images cannot be read: image `" in err
    assert "broken.jpg" in err
    assert "cut.png` is truncated" in err
    assert "add `--skip-unreadable`" in err
    assert "the 5 embedded images are kept" in err
    partial = tmp_path / "index.partial"
    assert not (tmp_path / "index").exists()
    assert len(list((partial / "shards").iterdir())) == 2
    # an unfinished index is only continued with the model that began it
    with pytest.raises(SystemExit):
        main([*args, "--model.backbone.init_args.lora.r", "2"])
    assert f"{partial}: holds an unfinished index of other images or another model" in capsys.readouterr().err
    # ... and with the same image size: rows shrunk to 16 px next to full-size ones would mix two preprocessings
    with pytest.raises(SystemExit):
        main([*args, "--max-short-edge", "16", "--skip-unreadable"])
    assert "index.max_short_edge: begun with None, now 16" in capsys.readouterr().err
    # ... and at the same precision: bf16 rows next to float32 ones would mix two roundings
    with pytest.raises(SystemExit):
        main([*args, "--trainer.precision", "bf16-mixed", "--skip-unreadable"])
    assert "index.model.precision: begun with None, now 'bf16-mixed'" in capsys.readouterr().err
    # a photo replaced under the same name since it was embedded: embedded again, never its stale row kept
    Image.new("RGB", (30, 20), "purple").save(photos / "green.jpg")
    main([*args, "--skip-unreadable"])
    out = capsys.readouterr().out
    assert "resuming: 4 of 7 images were embedded by an earlier run" in out  # + the 2 unreadable ones tried again
    assert "5 of 7 images below" in out
    assert "2 unreadable left out (listed in meta.json)" in out
    index = ImageIndex.open(tmp_path / "index")
    assert index.relpaths == sorted(COLOURS)
    assert [p for p, _ in index.info["skipped"]] == ["broken.jpg", "sub/cut.png"]
    assert not partial.exists()
    backbone = index.load_backbone()
    row = np.load(tmp_path / "index" / "embeddings.npy")[index.relpaths.index("green.jpg")]
    assert np.allclose(row, backbone.encode_gallery([load_image(photos / "green.jpg")])[0].numpy(), atol=1e-5)


@pytest.mark.ddp
def test_an_index_killed_midway_continues_where_it_stopped(tmp_path, tiny_model_dir, synthetic_root, capsys):
    images, out = tmp_path / "images", tmp_path / "index"
    images.mkdir()
    for source in sorted((synthetic_root / "images").iterdir())[:128]:
        shutil.copy(source, images / source.name)
    args = _index_args(images, out, tiny_model_dir, "--shard-size", "8", "--batch-size", "4")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(Path(__file__).parents[1]), "CIR_KILL_AFTER_SHARDS": "2"}
    with (tmp_path / "log.txt").open("w") as log:  # two processes (DDP, gloo), all killed after rank 0's 2nd shard
        killed = subprocess.run([sys.executable, str(Path(__file__).with_name("kill_index.py")), *args,
                                 "--trainer.devices", "2", "--trainer.strategy", "ddp"], cwd=tmp_path, env=env,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, (tmp_path / "log.txt").read_text()[-3000:]
    assert not out.exists(), "the build ended before it could be killed:\n" + (tmp_path / "log.txt").read_text()[-3000:]
    capsys.readouterr()
    main(args)  # one process now: it embeds only what no shard holds
    resumed = capsys.readouterr().out
    done = int(resumed.split("resuming: ")[1].split(" of 128")[0])
    assert 16 <= done < 128
    assert not (tmp_path / "index.partial").exists()
    index = ImageIndex.open(out)
    assert index.relpaths == sorted(p.name for p in images.iterdir())
    backbone = index.load_backbone()
    direct = backbone.encode_gallery([load_image(images / p) for p in index.relpaths])
    assert torch.allclose(torch.from_numpy(np.load(out / "embeddings.npy")), direct, atol=1e-5)


@pytest.mark.parametrize(("argv", "message"), [
    (["index", "{tmp}/nowhere", "--out", "{tmp}/i"], "{tmp}/nowhere: does not exist"),
    (["index", "{tmp}/empty", "--out", "{tmp}/i"], "{tmp}/empty: holds no image files (looked for .bmp, .gif"),
    (["index", "{tmp}/text", "--out", "{tmp}/i"], "{tmp}/text: holds no image files"),
    (["index", "{tmp}/text/a.txt", "--out", "{tmp}/i"], "a.txt: is not a folder of images"),
    (["index", "{photos}", "--out", "{index}"], "`--out`: `{index}` already exists; it is never overwritten (choose another name, or remove it)"),
    (["index", "{photos}", "--out", "{tmp}/i", "--ckpt_path", "{tmp}/no.ckpt"], "`--ckpt_path`: `{tmp}/no.ckpt` does not"),
    (["index", "{photos}", "--out", "{tmp}/i", "--adapter", "{tmp}/text"], "`--adapter`: `{tmp}/text` is not an adapter"),
    (["index", "{photos}", "--out", "{tmp}/i", "--ckpt_path", "{tmp}/text/a.txt"],
     "`--ckpt_path` `{tmp}/text/a.txt` is not a torch checkpoint"),
    (["index", "{photos}", "--out", "{tmp}/i", "--batch-size", "0"], "`--batch-size` must be an integer >= 1, got 0"),
    (["index", "{photos}", "--out", "{tmp}/i", "--factory", "IVF8,PQ16"],
     "`--factory` 'IVF8,PQ16': its product quantizer learns 256 centroids per sub-vector from the vectors, so it "
     "needs at least 256 of them and there are 5"),
    (["index", "{photos}", "--out", "{tmp}/i", "--factory", "HNSW32", "--nprobe", "3"],
     "`--nprobe`: index `HNSW32` has no parameter `nprobe`"),
    (["search", "{tmp}/nowhere", "--image", "{photos}/red.png", "--text", "x"], "{tmp}/nowhere: does not exist (build"),
    (["search", "{tmp}/text", "--image", "{photos}/red.png", "--text", "x"], "{tmp}/text/meta.json: does not exist"),
    (["search", "{tmp}/unfinished", "--image", "{photos}/red.png", "--text", "x"], "its build is unfinished"),
    (["search", "{index}", "--image", "{photos}/red.png", "--text", "x", "-k", "0"], "`-k` must be an integer >= 1"),
    (["search", "{index}", "--image", "{tmp}/gone.png", "--text", "x"], "`--image`: image `{tmp}/gone.png` does not exist"),
    (["search", "{index}", "--image", "{tmp}/text/a.txt", "--text", "x"], "not a recognised image format"),
    # show draws results files; an index was "a folder, not a file"
    (["show", "{index}"], "{index}: is an image index written by `cir-lightning index`, not a results file: draw a "
     "search of it with `cir-lightning search INDEX"),
    (["show", "{index}/meta.json"], "{index}/meta.json: is an image index written by `cir-lightning index`"),
    (["search", "{index}", "--image", "{photos}/red.png", "--text", "x", "--show", "{tmp}/drawn.jpg"],
     "`--show` writes a PNG: give a file name ending in .png, got `{tmp}/drawn.jpg`"),  # PNG bytes were written
    (["search", "{index}", "--image", "{photos}/red.png", "--text", "x", "--show", "{photos}/red.png"],
     "`--show`: `{photos}/red.png` already exists; it is never overwritten (choose another name, or remove it)"),
    # a loop of symbolic links: RuntimeError from pathlib (--out: after the model was loaded)
    (["index", "{photos}", "--out", "{tmp}/loop/i"], "`--out`: `{tmp}/loop/i` leads into a loop of symbolic links"),
    (["index", "{photos}", "--out", "{tmp}/i", "--reuse", "{tmp}/loop"], "`--reuse`: `{tmp}/loop` leads into a loop"),
    (["index", "{tmp}/loop", "--out", "{tmp}/i"], "{tmp}/loop: cannot be checked: Too many levels of symbolic links"),
    (["search", "{index}", "--image", "{photos}/red.png", "--text", "x", "--root", "{tmp}/loop"],
     "`--root`: `{tmp}/loop` leads into a loop of symbolic links"),
    (["search", "{index}", "--image", "{photos}/red.png", "--text", "x", "--root", "{tmp}/empty"],
     "(`--root`) holds none of the indexed images (looked for "),
    # the folder `index --out X` works in, X.partial, is removed when done: never the user's images or files
    (["index", "{tmp}/pics.partial", "--out", "{tmp}/pics"], "{tmp}/pics.partial: is inside `{tmp}/pics.partial`, "
     "where `index --out {tmp}/pics` keeps its unfinished work"),
    (["index", "{photos}", "--out", "{tmp}/mine"], "{tmp}/mine.partial: is in the way: `index` keeps an unfinished "
     "index there (and removes it when done), but this is not one (no plan.json; it holds notes.txt)"),
])
def test_bad_input_is_one_line(argv, message, small_index, tmp_path, tiny_model_dir, capsys):
    index, photos = small_index
    (tmp_path / "empty").mkdir()
    (tmp_path / "text").mkdir()
    (tmp_path / "text" / "a.txt").write_text("hello")
    (tmp_path / "unfinished.partial").mkdir()
    shutil.copytree(photos, tmp_path / "pics.partial")
    (tmp_path / "mine.partial").mkdir()
    (tmp_path / "mine.partial" / "notes.txt").write_text("mine")
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    fill = {"tmp": str(tmp_path), "photos": str(photos), "index": str(index)}
    argv = [a.format(**fill) for a in argv]
    if argv[0] == "index":
        argv += ["--config", str(CONF), "--model.backbone.init_args.model_name_or_path", str(tiny_model_dir)]
    before = {p: p.read_bytes() for p in [*photos.rglob("*"), *index.rglob("*")] if p.is_file()}
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message.format(**fill) in err
    assert err.startswith("cir-lightning: error: ")
    assert "Traceback" not in err
    assert {p: p.read_bytes() for p in [*photos.rglob("*"), *index.rglob("*")] if p.is_file()} == before
    assert not (tmp_path / "i").exists()
    assert not (tmp_path / "i.partial").exists()  # refused before any work
    assert (tmp_path / "mine.partial" / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in (tmp_path / "pics.partial").iterdir()) == sorted(p.name for p in photos.iterdir())


def _edit_meta(section: str | None, key: str | None, value: object):
    """A hand edit of meta.json: ``image_index[section][key]`` (or ``image_index[section]``, or ``meta[key]``)."""
    def edit(folder: Path) -> None:
        meta = json.loads((folder / "meta.json").read_text())
        if section is None:
            meta[key] = value
        elif key is None:
            meta["image_index"][section] = value
        else:
            meta["image_index"][section][key] = value
        (folder / "meta.json").write_text(json.dumps(meta))

    return edit


def _escape_root(folder: Path) -> None:
    """ids.json edited to lead out of the image folder, its digest in meta.json recomputed to match."""
    from cir_lightning.retrieval.embedding_folder import ids_digest

    ids = json.loads((folder / "ids.json").read_text())
    ids[0] = "../../x.png"
    (folder / "ids.json").write_text(json.dumps(ids))
    meta = json.loads((folder / "meta.json").read_text())
    (folder / "meta.json").write_text(json.dumps({**meta, "ids_sha256": ids_digest(ids)}))


def test_damaged_indexes_are_refused_in_one_line(small_index, tmp_path):
    for damage, message in [(lambda f: (f / "ids.json").write_text('["x"]'), "ids.json: does not match meta.json"),
                            (lambda f: (f / "index.faiss").write_bytes(b"junk"), "cannot be read as a faiss index"),
                            (lambda f: (f / "meta.json").write_text("{"), "meta.json: cannot be read"),
                            (lambda f: (f / "embeddings.npy").unlink(), "embeddings.npy: cannot be read"),
                            (_edit_meta("search", "nprobe", "x"), "`image_index.search.nprobe` is 'x', not a whole"),
                            # never written as 0: --nprobe was blamed though the user gave none
                            (_edit_meta("search", "asked_nprobe", 0), "`image_index.search.asked_nprobe` is 0, not a "
                             "whole number >= 1"),
                            (_edit_meta("max_short_edge", None, "abc"), "`image_index.max_short_edge` is 'abc', not"),
                            (_edit_meta(None, "model", None), "meta.json: `model` is None, not a mapping"),
                            # a TypeError / AttributeError when its model was rebuilt; the query shrunk to 1x1;
                            # "no" taken for true
                            (_edit_meta("adapter", None, 5), "`image_index.adapter` is 5, not the name of a folder"),
                            (_edit_meta("backbone", "init_args", [1]), "`image_index.backbone.init_args` is \\[1\\]"),
                            (_edit_meta("max_short_edge", None, 0), "`image_index.max_short_edge` is 0, not a whole "
                             "number >= 1"),
                            (_edit_meta("upright", None, "no"), "`image_index.upright` is 'no', not true or false"),
                            (_escape_root, r"ids.json: holds paths that are not below the image folder \('\.\./\.\./x\.png'"),
                            # each was searched as if well (a version this code does not know, what it records wrong)
                            (_edit_meta("version", None, 99), r"`image_index.version` is 99, and this cir_lightning "
                             r"reads index version 1 only \(an index written by another one\?\): rebuild the index"),
                            (_edit_meta(None, "dtype", 5), "`dtype` is 5, not float32 or float16: the index is damaged"),
                            (_edit_meta("skipped", None, [5]), r"`image_index.skipped` is \[5\], not a list of \[path, "),
                            (_edit_meta("left_out", None, 5), "`image_index.left_out` is 5, not a mapping"),
                            (_edit_meta("left_out", "hidden", "x"), "`image_index.left_out.hidden` is 'x', not a whole"),
                            (_edit_meta("search", "factory", 5), "`image_index.search.factory` is 5, not a faiss "
                             "index_factory string"),
                            # 'no `image_index` entry', which there was
                            (_edit_meta("root", None, 5), "`image_index.root` is 5, not the path of a folder: the index "
                             "is damaged")]:
        copy = tmp_path / "copy"
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(small_index[0], copy)
        damage(copy)
        with pytest.raises(Exception, match=message) as info:
            ImageIndex.open(copy)
        assert type(info.value).__name__ == "CIRDataError"
        assert "\n" not in str(info.value)
    meta = json.loads((small_index[0] / "meta.json").read_text())
    assert meta["image_index"]["search"]["factory"] == "Flat"
    assert meta["image_index"]["faiss_index"] == "IndexFlat"


def test_linked_folders_are_searched_and_each_real_folder_listed_once(tmp_path):
    """A photo folder linked in counts like one copied in; a second link to it, or a link loop, adds nothing
    (an image listed twice would tie with itself in every search)."""
    from cir_lightning.data.folder import list_images

    photos, elsewhere = tmp_path / "photos", tmp_path / "elsewhere" / "2024"
    for folder, name in ((photos, "a.png"), (elsewhere, "b.png"), (elsewhere / "deep", "c.png")):
        folder.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8)).save(folder / name)
    (photos / "2024").symlink_to(elsewhere)
    (photos / "zz_again").symlink_to(elsewhere)
    (photos / "loop").symlink_to(photos)
    (photos / "0_link_to_a.png").symlink_to(photos / "a.png")  # first in order, but a link: a.png is kept
    (photos / "outside.png").symlink_to(elsewhere / "deep" / "c.png")  # 2024/deep/c.png has it already
    assert list_images(photos) == ["2024/b.png", "2024/deep/c.png", "a.png"]


def test_search_leaves_out_the_reference_reached_through_a_link(tmp_path, tiny_model_dir, capsys):
    """The reference is left out whether it is named through a linked folder or by a link to an indexed file."""
    photos, elsewhere = tmp_path / "photos", tmp_path / "elsewhere"
    for folder, name, colour in ((photos, "red.png", "red"), (photos, "green.png", "green"),
                                 (elsewhere, "grey.png", "grey")):
        folder.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (24, 16), colour).save(folder / name)
    (photos / "linked").symlink_to(elsewhere)
    (tmp_path / "red_link.png").symlink_to(photos / "red.png")
    (tmp_path / "grey_link.png").symlink_to(elsewhere / "grey.png")  # indexed only through the linked folder
    main(_index_args(photos, tmp_path / "index", tiny_model_dir, "--batch-size", "2"))
    assert ImageIndex.open(tmp_path / "index").relpaths == ["green.png", "linked/grey.png", "red.png"]
    for reference, indexed in ((photos / "linked" / "grey.png", "linked/grey.png"),
                               (tmp_path / "red_link.png", "red.png"), (tmp_path / "grey_link.png", "linked/grey.png")):
        capsys.readouterr()
        main(["search", str(tmp_path / "index"), "--image", str(reference), "--text", "the same", "-k", "3"])
        out = capsys.readouterr().out
        assert out.startswith("2 of 3 images below")
        assert f"(the reference itself, {indexed}, left out" in out
        listed = [line.split()[-1] for line in out.splitlines() if line.strip()[:1].isdigit() and "  " in line]
        assert len(listed) == 2
        assert str(photos / indexed) not in listed


@pytest.mark.skipif(sys.platform == "win32", reason="builds are locked with POSIX flock")
def test_a_second_build_to_the_same_index_meanwhile_is_refused_at_its_start(tmp_path, tiny_model_dir, capsys):
    photos = _photos(tmp_path / "photos")
    partial = tmp_path / "index.partial"
    partial.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, sys, time; f = open(sys.argv[1], 'a'); "
                               "fcntl.flock(f, fcntl.LOCK_EX); print('held', flush=True); time.sleep(120)",
                               str(partial / ".lock")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"  # another `index` is building there now
        with pytest.raises(SystemExit):
            main(_index_args(photos, tmp_path / "index", tiny_model_dir))
        assert f"{partial}: is being built by another `cir-lightning index` now" in capsys.readouterr().err
        assert not (tmp_path / "index").exists()
    finally:
        holder.kill()
        holder.wait()
    main(_index_args(photos, tmp_path / "index", tiny_model_dir))  # the other one gone: this one builds
    assert ImageIndex.open(tmp_path / "index").relpaths == sorted(COLOURS)
    assert not partial.exists()


def test_sigterm_stops_a_build_keeping_what_it_embedded(tmp_path):
    """Lightning's predict loop only notes a SIGTERM (a `timeout`, a scheduler's preemption); the build stops."""
    import types

    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from cir_lightning.index_shards import ShardWriter, read_shards

    writer = ShardWriter(tmp_path / "i.partial" / "shards", ["a.png", "b.png", "c.png"], 100, {"m": 1}, "/photos")
    trainer = types.SimpleNamespace(received_sigterm=False, global_rank=0)
    batch = {"index": torch.tensor([0, 1])}
    prediction = {"index": torch.tensor([0, 1]), "embedding": torch.eye(2)}
    writer.write_on_batch_end(trainer, None, prediction, None, batch, 0)  # no shard yet: 2 of 100
    assert not (tmp_path / "i.partial" / "shards").exists()
    trainer.received_sigterm = True
    prediction = {"index": torch.tensor([2]), "embedding": torch.ones(1, 2)}
    with pytest.raises(SIGTERMException):  # `cli.main` ends it with status 143 and one line (test_faults)
        writer.write_on_batch_end(trainer, None, prediction, None, {"index": torch.tensor([2])}, 1)
    (shard,) = read_shards(tmp_path / "i.partial" / "shards", {"m": 1}, tmp_path / "i.partial")
    assert shard[1] == ["a.png", "b.png", "c.png"]


def test_search_marks_results_whose_files_are_gone_since_indexing(tmp_path, tiny_model_dir, capsys):
    photos = _photos(tmp_path / "photos")
    main(_index_args(photos, tmp_path / "index", tiny_model_dir))
    (photos / "grey.png").unlink()
    Image.new("RGB", (30, 20), "white").save(photos / "sub" / "blue.png")  # another photo under its name
    capsys.readouterr()
    args = ["search", str(tmp_path / "index"), "--image", str(photos / "red.png"), "--text", "x", "-k", "5",
            "--keep-reference"]
    main(args)
    captured = capsys.readouterr()
    rows = [line for line in captured.out.splitlines() if line.strip()[:1].isdigit() and "  " in line]
    assert [row.endswith("  (gone)") for row in rows] == [row.split()[2].endswith("grey.png") for row in rows]
    assert any(row.endswith("  (gone)") for row in rows)
    assert "1 of these images are gone since the index was built; index the folder again" in captured.err
    assert [row.split()[2] for row in rows if row.endswith("  (changed since indexed)")] == [str(photos / "sub/blue.png")]
    # `--show` draws the gone one as a tile saying so, with its path (it refused to draw any picture), and badges the
    # replaced one as `serve` does
    from cir_lightning.pictures import missing_tile, tile_origin
    from cir_lightning.pictures.draw import ORANGE, TILE

    main([*args, "--show", str(tmp_path / "shown.png")])
    captured = capsys.readouterr()
    assert captured.out.splitlines()[-1] == f"picture written to {tmp_path / 'shown.png'}"
    assert "1 of these images are gone since the index was built" in captured.err
    placeholder = missing_tile("grey.png", "gone").tobytes()
    with Image.open(tmp_path / "shown.png") as shown:
        picture = shown.convert("RGB")
    origins = [tile_origin(0, rank) for rank in range(1, len(rows) + 1)]
    tiles = [picture.crop((x, y, x + TILE, y + TILE)).tobytes() for x, y in origins]
    assert [tile == placeholder for tile in tiles] == [row.endswith("  (gone)") for row in rows]
    assert [picture.getpixel((x + 6, y + 6)) == ORANGE for x, y in origins] == \
        [row.endswith("  (changed since indexed)") for row in rows]
