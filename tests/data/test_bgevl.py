"""BGE-VL's evaluation as its users know it: its files (BGEVLDataModule), its script's flags and console output
(scripts/eval_fashioniq.py, eval_circo.py), its metrics against a plain loop, its embedding files."""

from __future__ import annotations

import ast
import contextlib
import io
import json
import os
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from cir_lightning.commands.bgevl import main_circo, main_fashioniq
from cir_lightning.data import BGEVLDataModule
from cir_lightning.data.datasets import ImageDataset
from cir_lightning.errors import CIRConfigError, CIRDataError, CIRFileError
from cir_lightning.retrieval.memmap import MemmapGalleries, read_memmap
from tests.data.fake_bgevl import CATEGORIES, make_bgevl_clip, make_fake_bgevl

warnings.filterwarnings("ignore", category=FutureWarning)
KS = (1, 5, 10, 20, 50, 100)
CONFIG = Path(__file__).parents[2] / "configs" / "bgevl_fashioniq.yaml"


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("bgevl")
    make_fake_bgevl(root / "eval" / "data", root / "images_root")
    make_bgevl_clip(root / "BGE-VL-tiny")
    return root


def _run(main, root: Path, *flags: str) -> tuple[int, list[str], str]:
    """The script in this process, from ``root`` (as BGE-VL's scripts run from its folder)."""
    out, err, here = io.StringIO(), io.StringIO(), os.getcwd()
    os.chdir(root)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(["--model_name", "BGE-VL-tiny", "--image_dir", "images_root", "--num_workers", "0", *flags])
    finally:
        os.chdir(here)
    return code, out.getvalue().splitlines(), err.getvalue()


@pytest.fixture(scope="module")
def reference(root):
    return {cat: _reference(root, cat) for cat in CATEGORIES}


@pytest.fixture(scope="module")
def saved(root):
    """One run with ``--save_embedding`` (the files stay for the tests that load them)."""
    code, lines, err = _run(main_fashioniq, root, "--save_embedding")
    assert code == 0, err[-2000:]
    return lines


def _features(out):
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def _reference(root: Path, category: str) -> tuple[list[list], list, torch.Tensor]:
    """Independently of the library: BGE-VL's math with plain transformers (its loader and processors), full
    rankings by exact cosine similarity (ties to the lower row), the labels, and the corpus embeddings."""
    corpus, queries, query, gallery = _embeddings(root, category)
    scores = (query @ gallery.T).numpy()
    preds = [[corpus[j]["content"] for j in np.argsort(-row, kind="stable")[:100]] for row in scores]
    return preds, [q["positive_key"] for q in queries], gallery


def _embeddings(root: Path, category: str) -> tuple[list[dict], list[dict], torch.Tensor, torch.Tensor]:
    """The corpus and query lines and BGE-VL's query and corpus embeddings, with plain transformers."""
    from transformers import CLIPImageProcessor, CLIPModel, CLIPTokenizer

    folder, data = root / "BGE-VL-tiny", root / "eval" / "data"
    model = CLIPModel.from_pretrained(folder).eval()
    processor, tokenizer = CLIPImageProcessor.from_pretrained(folder), CLIPTokenizer.from_pretrained(folder)
    corpus = [json.loads(line) for line in (data / f"fashioniq_{category}_corpus.jsonl").read_text().splitlines()]
    queries = [json.loads(line) for line in (data / f"fashioniq_{category}_query_val.jsonl").read_text().splitlines()]

    def pixels(paths: list[str]) -> torch.Tensor:
        images = [Image.open(os.path.join(root / "images_root", p)).convert("RGB") for p in paths]
        return processor(images, return_tensors="pt")["pixel_values"]

    with torch.no_grad():
        gallery = F.normalize(_features(model.get_image_features(pixels([c["image"] for c in corpus]))), dim=-1)
        tokens = tokenizer([q["q_text"] for q in queries], padding=True, truncation=True, max_length=75,
                           return_tensors="pt")
        text = _features(model.get_text_features(**tokens))
        query = F.normalize(text + _features(model.get_image_features(pixels([q["q_img"] for q in queries]))), dim=-1)
    return corpus, queries, query, gallery


def _loop_metrics(preds: list[list], labels: list, hit_rate: bool = False) -> dict[str, float]:
    """BGE-VL's ``evaluate`` written as plain loops: MRR@K, and Recall@K = positives found / positives."""
    out = {}
    for K in KS:
        total = 0.0
        for pred, label in zip(preds, labels, strict=True):
            wanted = label if isinstance(label, list) else [label]
            for rank, item in enumerate(pred[:K], 1):
                if item in wanted:
                    total += 1 / rank
                    break
        out[f"MRR@{K}"] = total / len(preds)
    for K in KS:
        total = 0.0
        for pred, label in zip(preds, labels, strict=True):
            wanted = label if isinstance(label, list) else [label]
            found = sum(1 for item in wanted if item in pred[:K])
            total += float(found > 0) if hit_rate else found / len(wanted)
        out[f"Recall@{K}"] = total / len(preds)
    return out


def test_the_script_prints_bge_vls_console_output_with_its_metrics(root, saved, reference):
    assert saved[0] == str(root)  # the original prints its working folder first
    assert len(saved) == 1 + 2 * len(CATEGORIES) + len(CATEGORIES) + 1
    printed = {}
    for i, cat in enumerate(CATEGORIES):  # the script's order: shirt, dress, toptee
        assert saved[1 + 2 * i] == f"FashionIQ tasks ({cat}):"
        printed[cat] = ast.literal_eval(saved[2 + 2 * i])
        assert list(printed[cat]) == [f"{m}@{k}" for m in ("MRR", "Recall") for k in KS]
        preds, labels, _ = reference[cat]
        expected = _loop_metrics(preds, labels)
        assert printed[cat] == pytest.approx(expected, abs=1e-9)
        assert any(0 < v < 1 for v in expected.values())  # neither all hits nor all misses
    assert any(_loop_metrics(*reference[c][:2], hit_rate=True) != _loop_metrics(*reference[c][:2])
               for c in CATEGORIES)  # the fixtures tell BGE-VL's recall from the hit rate
    summary = [f"{c}: {printed[c]['Recall@10'] * 100:.2f} / {printed[c]['Recall@50'] * 100:.2f}" for c in CATEGORIES]
    r10, r50 = (sum(printed[c][f"Recall@{k}"] for c in CATEGORIES) for k in (10, 50))
    assert saved[-4:] == [*summary, f"overall: {r10 * 100 / 3:.2f} / {r50 * 100 / 3:.2f}"]


def test_the_datamodule_through_cir_lightning_validate_gives_identical_metrics(root, saved, tmp_path, capsys):
    from cir_lightning.cli import main

    main(["validate", "--config", str(CONFIG), "--trainer.accelerator", "cpu", "--trainer.devices", "1",
          "--trainer.default_root_dir", str(tmp_path),
          "--model.backbone.init_args.model_name_or_path", str(root / "BGE-VL-tiny"),
          "--data.init_args.data_dir", str(root / "eval" / "data"), "--data.init_args.image_dir",
          str(root / "images_root"), "--data.init_args.num_workers", "0"])
    out = capsys.readouterr().out
    metrics = json.loads((tmp_path / "results-validate.json").read_text())["metrics"]
    for i, cat in enumerate(CATEGORIES):
        script = ast.literal_eval(saved[2 + 2 * i])
        ours = {f"{m}@{k}": metrics[cat][f"{name}@{k}"] for m, name in (("MRR", "MRR"), ("Recall", "PositiveRecall"))
                for k in KS}
        assert ours == script  # the same numbers, bit for bit
    assert "\n".join(saved[1:]) in out  # and, after its table, BGE-VL's console lines


def test_saved_embeddings_are_raw_float32_rows_and_loading_them_skips_the_corpus_images(root, saved, reference,
                                                                                         monkeypatch):
    for cat in CATEGORIES:
        path = root / f"embeddings.{cat}.memmap"
        rows = np.memmap(path, dtype=np.float32, mode="r").reshape(-1, 32)  # BGE-VL's own loader
        gallery = reference[cat][2]
        assert rows.shape == tuple(gallery.shape)
        assert np.allclose(rows, gallery.numpy(), atol=1e-6)  # corpus row order
        identity = json.loads(path.with_name(path.name + ".json").read_text())
        assert identity["ids"] == [json.loads(line)["content"] for line in
                                   (root / "eval" / "data" / f"fashioniq_{cat}_corpus.jsonl").read_text().splitlines()]
    decoded = []
    original = ImageDataset._image
    monkeypatch.setattr(ImageDataset, "_image", lambda self, path, source: decoded.append(path) or original(
        self, path, source))
    code, lines, err = _run(main_fashioniq, root, "--load_embedding")
    assert code == 0, err[-2000:]
    assert lines == saved
    queries = sum(len((root / "eval" / "data" / f"fashioniq_{c}_query_val.jsonl").read_text().splitlines())
                  for c in CATEGORIES)
    assert len(decoded) == queries  # the query images only: not one corpus image


def test_a_stale_embedding_file_is_refused_in_one_line(root, saved, tmp_path):
    code, lines, err = _run(main_fashioniq, root, "--load_embedding", "--fp16")  # written by the float32 model
    assert code == 2
    assert err.strip().splitlines()[-2].startswith("eval_fashioniq.py: error: ")
    assert err.strip().splitlines()[-1] == "(set CIR_LIGHTNING_TRACEBACK=1 to see where it was raised)"
    assert "embeddings.shirt.memmap: does not match this run (" in err
    assert "model.dtype: stored 'float32', expected 'float16'" in err  # (the fingerprint names the dtype too)
    assert lines == [str(root)]
    shutil.copy(root / "embeddings.shirt.memmap", tmp_path / "e.shirt.memmap")
    with open(tmp_path / "e.shirt.memmap", "ab") as f:  # one row too many: another corpus
        f.write(bytes(4 * 32))
    with pytest.raises(CIRDataError, match=r"holds 3200 bytes, but 24 embeddings of dimension 32 in float32 take 3072"):
        read_memmap(tmp_path / "e.shirt.memmap", 24, 32)
    shutil.copy(root / "embeddings.dress.memmap", tmp_path / "raw.memmap")
    with pytest.warns(UserWarning, match="no identity file"):  # one written by BGE-VL's script: size checked only
        rows = read_memmap(tmp_path / "raw.memmap", 24, 32, {"model": {"anything": 1}})
    assert torch.equal(rows, torch.from_numpy(np.fromfile(root / "embeddings.dress.memmap", dtype=np.float32)).view(24, 32))


def test_embeddings_of_corpus_images_changed_or_gone_since_they_were_saved_are_refused_in_one_line(root, saved,
                                                                                                  tmp_path):
    """``--load_embedding`` after corpus images changed gave silently stale numbers: the identity file beside the
    embeddings now records each image's size and modification time (the embedding file stays BGE-VL's bytes)."""
    corpus = [json.loads(line) for line in
              (root / "eval" / "data" / "fashioniq_shirt_corpus.jsonl").read_text().splitlines()]
    images = [(root / "images_root" / c["image"]).resolve() for c in corpus]
    identity = json.loads((root / "embeddings.shirt.memmap.json").read_text())
    assert identity["image_stamps"] == [[p.stat().st_size, p.stat().st_mtime_ns] for p in images]
    assert (root / "embeddings.shirt.memmap").stat().st_size == len(corpus) * 32 * 4  # no header, no stamps in it
    stale = "embeddings.shirt.memmap: image `{}` (id `{}`) {} since these embeddings were saved" \
            "{}: they are stale; embed again with `--save_embedding` into a new file"

    def refusal() -> str:
        code, lines, err = _run(main_fashioniq, root, "--load_embedding")
        assert (code, lines) == (2, [str(root)])
        prefix, line = "eval_fashioniq.py: error: ", err.strip().splitlines()[-2]
        assert line.startswith(prefix)
        return line[len(prefix):]

    touched, gone = 3, 5
    before = images[touched].stat()
    try:
        os.utime(images[touched], ns=(before.st_atime_ns, before.st_mtime_ns + 10**9))  # saved again, same size
        touched_how = r"changed \(same size, another modification time: \S+ \S+, \S+ \S+ when embedded\)"
        assert re.fullmatch(re.escape(stale.format(images[touched], corpus[touched]["content"], "HOW", ""))
                            .replace("HOW", touched_how), refusal())
        # a gone corpus image the data's own check refuses first (missing images); below it, the file's check
        images[gone].rename(tmp_path / "away.png")
        with pytest.raises(CIRDataError) as refused:
            read_memmap(root / "embeddings.shirt.memmap", len(corpus), 32, {"ids": identity["ids"]}, images)
        assert re.fullmatch(re.escape(f"{root}/" + stale.format(images[touched], corpus[touched]["content"], "HOW",
                                                                "; 1 more changed or gone")).replace("HOW", touched_how),
                            str(refused.value))
        os.utime(images[touched], ns=(before.st_atime_ns, before.st_mtime_ns))
        with pytest.raises(CIRDataError) as refused:
            read_memmap(root / "embeddings.shirt.memmap", len(corpus), 32, {"ids": identity["ids"]}, images)
        assert str(refused.value) == f"{root}/" + stale.format(images[gone], corpus[gone]["content"], "is gone", "")
    finally:
        os.utime(images[touched], ns=(before.st_atime_ns, before.st_mtime_ns))
        if (tmp_path / "away.png").exists():
            (tmp_path / "away.png").rename(images[gone])
    assert read_memmap(root / "embeddings.shirt.memmap", len(corpus), 32, {"ids": identity["ids"]}, images).shape == \
        (len(corpus), 32)  # put back as they were: loaded
    # files written before stamps were recorded, or by BGE-VL's script (no identity file): loaded, with a warning
    shutil.copy(root / "embeddings.shirt.memmap", tmp_path / "old.memmap")
    (tmp_path / "old.memmap.json").write_text(json.dumps({k: v for k, v in identity.items() if k != "image_stamps"}))
    with pytest.warns(UserWarning, match="records no `image_stamps`.*its images were not checked"):
        read_memmap(tmp_path / "old.memmap", len(corpus), 32, {"ids": identity["ids"]}, images)
    (tmp_path / "old.memmap.json").unlink()
    with pytest.warns(UserWarning, match="no identity file .* nor whether they changed since"):
        read_memmap(tmp_path / "old.memmap", len(corpus), 32, {"ids": identity["ids"]}, images)


def test_fp16_runs_in_half_precision_and_save_never_overwrites(root, saved, monkeypatch):
    code, _, err = _run(main_fashioniq, root, "--save_embedding")  # the files of `saved` are there
    assert code == 2
    assert ("`--save_path`: `embeddings.shirt.memmap` already exists; it is never overwritten (choose "
            "another name, remove it, or reuse it with `--load_embedding`)") in err
    dtypes = []
    from cir_lightning.backbones.dual_encoder import DualEncoderBackbone

    original = DualEncoderBackbone.image_features
    monkeypatch.setattr(DualEncoderBackbone, "image_features",
                        lambda self, inputs: dtypes.append(self.base_model.dtype) or original(self, inputs))
    code, lines, err = _run(main_fashioniq, root, "--fp16", "--save_embedding", "--save_path", "half.memmap",
                            "--categories", "dress")
    assert code == 0, err[-2000:]
    assert set(dtypes) == {torch.float16}
    assert lines[1] == "FashionIQ tasks (dress):"
    assert lines[-1].startswith("overall: ")
    half = np.fromfile(root / "half.dress.memmap", dtype=np.float32)
    full = np.fromfile(root / "embeddings.dress.memmap", dtype=np.float32)
    assert np.allclose(half, full, atol=1e-2)
    assert not np.array_equal(half, full)
    assert json.loads((root / "half.dress.memmap.json").read_text())["model"]["dtype"] == "float16"


def test_circo_ranks_the_test_queries_into_bge_vls_results_file(root, tmp_path):
    out = tmp_path / "mmret_circo.json"
    code, lines, err = _run(main_circo, root, "--image_dir", "images_root", "--result_save_path", str(out))
    assert code == 0, err[-2000:]
    assert lines[0] == f"Results will be saved in {out}"
    results = json.loads(out.read_text())
    queries = [json.loads(line) for line in (root / "eval" / "data" / "circo_query.jsonl").read_text().splitlines()]
    corpus = [json.loads(line)["content"] for line in (root / "eval" / "data" / "circo_corpus.jsonl").read_text().splitlines()]
    assert list(results) == [str(q["id"]) for q in queries]
    assert all(sorted(r) == sorted(corpus) for r in results.values())  # every corpus content, as ints
    assert all(isinstance(c, int) for r in results.values() for c in r)
    code, _, err = _run(main_circo, root, "--result_save_path", str(out))
    assert code == 2
    assert f"`--result_save_path`: `{out}` already exists; it is never overwritten (choose another name, or remove it)" in err


def test_the_data_modules_results_file_is_refused_before_any_work_naming_its_option(root, tmp_path):
    (tmp_path / "taken.json").write_text("{}")
    data = BGEVLDataModule(str(root / "eval" / "data"), str(root / "images_root"), task="circo",
                           results_file=str(tmp_path / "taken.json"))
    with pytest.raises(CIRFileError) as info:
        data.setup("validate")
    assert str(info.value) == (f"`results_file`: `{tmp_path / 'taken.json'}` already exists; it is never overwritten "
                               "(choose another name, or remove it)")


# ---------------------------------------------------------------------- the files (no model)
def _setup(root: Path, **kwargs) -> BGEVLDataModule:
    dm = BGEVLDataModule(str(root / "eval" / "data"), str(root / "images_root"), **kwargs)
    dm.setup("validate")
    return dm


def test_the_datamodule_reads_bge_vls_field_layout(root):
    dm = _setup(root)
    assert [q.name for q, _ in dm.val_sets] == list(CATEGORIES)
    data = root / "eval" / "data"
    for queries, gallery in dm.val_sets:
        corpus = [json.loads(line) for line in (data / f"fashioniq_{queries.name}_corpus.jsonl").read_text().splitlines()]
        rows = [json.loads(line) for line in (data / f"fashioniq_{queries.name}_query_val.jsonl").read_text().splitlines()]
        assert gallery.ids == [c["content"] for c in corpus]
        assert [r.path for r in gallery.records] == [(root / "images_root" / c["image"]).resolve() for c in corpus]
        for record, row in zip(queries.records, rows, strict=True):
            keys = row["positive_key"] if isinstance(row["positive_key"], list) else [row["positive_key"]]
            assert [gallery.ids[p] for p in record.positives] == keys
            assert record.modification == row["q_text"]
            assert record.excluded == ()
        assert queries.metrics == {"mrr": list(KS), "positive_recall": list(KS)}
    assert dm.load_eval_sets("test") is dm.val_sets
    assert _setup(root, k=20).val_sets[0][0].metrics["mrr"] == [1, 5, 10, 20]


@pytest.mark.parametrize(("file", "line", "change", "message"), [
    ("query_val", 2, {"positive_key": "B00NOTHERE"}, r"1 query\(ies\) have a `positive_key` that is not in the corpus.*line 2: 'B00NOTHERE'"),
    ("query_val", 3, {"positive_key": []}, r":3: `positive_key` is an empty list"),
    ("query_val", 1, {"q_img": "../../secret.png"}, r":1: `q_img` '../../secret.png' points outside the image root"),
    ("query_val", 4, {"q_text": None}, r":4: `q_text` must be a non-empty string, got None"),
    ("corpus", 5, {"content": True}, r":5: `content` must be a non-empty string or an integer id, got True"),
    ("corpus", 6, {"image": "/etc/passwd"}, r":6: `image` '/etc/passwd' is absolute"),
    ("corpus", 7, {"image": "images/../images/"}, r"_corpus\.jsonl:\d+: '\w+' is the image `.*` of '\w+' too "
                                                  r"\(.*_corpus\.jsonl:\d+\): the two ids would tie in every ranking"),
])
def test_bad_lines_are_one_error_naming_file_and_line(root, tmp_path, file, line, change, message):
    copy = tmp_path / "copy"
    shutil.copytree(root / "eval", copy / "eval")
    path = copy / "eval" / "data" / f"fashioniq_dress_{file}.jsonl"
    rows = [json.loads(r) for r in path.read_text().splitlines()]
    rows[line - 1].update(change)
    if change.get("image", "").endswith("/"):  # the image of the line before, written another way
        rows[line - 1]["image"] += Path(rows[line - 2]["image"]).name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (copy / "images_root").symlink_to(root / "images_root")
    with pytest.raises(CIRDataError, match=message) as info:
        _setup(copy, categories=["dress"])
    assert str(path) in str(info.value)
    assert "\n" not in str(info.value)


def test_a_content_twice_or_a_positive_twice_is_refused(root, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(root / "eval", copy / "eval")
    (copy / "images_root").symlink_to(root / "images_root")
    queries = copy / "eval" / "data" / "fashioniq_shirt_query_val.jsonl"
    rows = [json.loads(r) for r in queries.read_text().splitlines()]
    rows[0]["positive_key"] = [rows[0]["positive_key"]] * 2 if isinstance(rows[0]["positive_key"], str) else \
        rows[0]["positive_key"][:1] * 2
    queries.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(CIRDataError, match=r"query_val.jsonl:1: `positive_key` lists .* more than once"):
        _setup(copy, categories=["shirt"])
    corpus = copy / "eval" / "data" / "fashioniq_dress_corpus.jsonl"
    corpus.write_text(corpus.read_text() + corpus.read_text().splitlines()[0] + "\n")
    with pytest.raises(CIRDataError, match=r"corpus.jsonl:25: `content` '\w+' is given twice \(first on line 1\)"):
        _setup(copy, categories=["dress"])


def test_query_images_without_an_extension_get_jpg_as_in_bge_vl(root, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(root / "eval", copy / "eval")
    (copy / "images_root" / "images").mkdir(parents=True)
    queries = copy / "eval" / "data" / "fashioniq_toptee_query_val.jsonl"
    rows = [json.loads(r) for r in queries.read_text().splitlines()]
    for row in rows:
        row["q_img"] = row["q_img"][:-4]
        shutil.copy(root / "images_root" / (row["q_img"] + ".png"), copy / "images_root" / (row["q_img"] + ".jpg"))
    queries.write_text("".join(json.dumps(r) + "\n" for r in rows))
    for image in (copy / "eval" / "data" / "fashioniq_toptee_corpus.jsonl").read_text().splitlines():
        src = root / "images_root" / json.loads(image)["image"]
        if not (copy / "images_root" / json.loads(image)["image"]).exists():
            shutil.copy(src, copy / "images_root" / json.loads(image)["image"])
    with pytest.warns(UserWarning, match="'.jpg' is appended to every `q_img`"):
        dm = _setup(copy, categories=["toptee"])
    assert all(r.reference.suffix == ".jpg" for r in dm.val_sets[0][0].records)


def test_options_are_checked_when_set(root):
    with pytest.raises(CIRConfigError, match="`categories` must be distinct names"):
        BGEVLDataModule(categories=["shirt", "shirt"])
    with pytest.raises(CIRConfigError, match="`k` must be an integer >= 1"):
        BGEVLDataModule(k=0)
    with pytest.raises(CIRConfigError, match="`task` must be 'fashioniq' or 'circo'"):
        BGEVLDataModule(task="cirr")
    with pytest.raises(CIRDataError, match="`image_dir` is not a folder"):
        BGEVLDataModule(str(root / "eval" / "data"), str(root / "nowhere")).setup("validate")


def test_memmap_galleries_refuse_to_save_over_a_file_before_any_work(tmp_path):
    from types import SimpleNamespace

    (tmp_path / "e.dress.memmap").write_bytes(b"")
    store = MemmapGalleries(tmp_path / "e.memmap", dim=2, save=True)
    with pytest.raises(CIRFileError, match="e.dress.memmap` already exists"):
        store.lookup_sets("val", [(SimpleNamespace(name="dress"), SimpleNamespace(ids=["a"], paths=["a.png"]))], dataset="d",
                          model={})


def test_devices_lightning_refuses_is_one_line_naming_the_flag(root):
    """``--devices 0`` was Lightning's MisconfigurationException, with its traceback."""
    code, _, err = _run(main_fashioniq, root, "--devices", "0")
    assert code == 2
    assert "Traceback" not in err
    assert "`--devices`: Lightning refuses it: `Trainer(devices='0')`" in err
