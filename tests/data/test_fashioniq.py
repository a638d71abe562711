"""The FashionIQ DataModule on a fake copy of the official layout: files, images, texts, protocol, metrics."""

from __future__ import annotations

import json
import shutil
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
import yaml
from lightning.pytorch import seed_everything
from torch.utils.data import DataLoader

from cir_lightning.data.fashioniq import FashionIQDataModule
from cir_lightning.data.layouts.fashioniq import EVAL_KS
from cir_lightning.data.layouts.fashioniq_summary import average_over_categories, summary_lines
from cir_lightning.errors import CIRConfigError, CIRDataError
from tests.data.fake_fashioniq import make_fake_fashioniq
from tests.test_cli import CONF, run

CONFIGS = Path(__file__).parents[2] / "configs"


@pytest.fixture
def root(tmp_path):
    return make_fake_fashioniq(tmp_path / "fiq")


def setup(root: Path, stage: str = "fit", **kwargs) -> FashionIQDataModule:
    dm = FashionIQDataModule(str(root), **kwargs)
    dm.setup(stage)
    return dm


def read(path: Path) -> list:
    return json.loads(path.read_text())


def set_captions(root: Path, cat: str, split: str, index: int, captions: list[str], **fields) -> None:
    path = root / "captions" / f"cap.{cat}.{split}.json"
    entries = read(path)
    entries[index].update(captions=captions, **fields)
    path.write_text(json.dumps(entries))


def test_train_mixes_categories_and_val_is_per_category_over_the_whole_split(root):
    dm = setup(root)
    assert len(dm.train_set) == 3 * 6
    assert {r.sample_id.split("-")[0] for r in dm.train_set.records} == {"dress", "shirt", "toptee"}
    sample = dm.train_set[7]
    assert set(sample) == {"index", "reference_image", "modification", "target_image", "target_key"}
    assert sample["reference_image"].size == (8, 8)
    assert [q.name for q, _ in dm.val_sets] == ["dress", "shirt", "toptee"]
    for (queries, gallery), cat in zip(dm.val_sets, ["dress", "shirt", "toptee"], strict=True):
        split = read(root / "image_splits" / f"split.{cat}.val.json")
        pairs = read(root / "captions" / f"cap.{cat}.val.json")
        assert gallery.ids == split  # all 8 images, the 3 in no val pair included
        assert len(set(split) - {p[k] for p in pairs for k in ("candidate", "target")}) == 3
        assert queries.ids == [f"{cat}-{i}" for i in range(5)]
        assert [gallery.ids[p[0]] for p in queries.positives] == [p["target"] for p in pairs]
        assert queries.excluded == [()] * 5  # the reference stays in the ranking by default
        assert queries.metrics == {"recall": list(EVAL_KS), "mrr": list(EVAL_KS)}
        assert {10, 50} <= set(queries.metrics["recall"])


def test_a_training_pair_whose_candidate_is_its_target_is_trained_on_without_a_warning(root, recwarn):
    """The official training captions have such pairs and the protocol keeps them (JSONL warns: a likely mistake)."""
    entries = read(root / "captions" / "cap.dress.train.json")
    entries[0]["target"] = entries[0]["candidate"]
    (root / "captions" / "cap.dress.train.json").write_text(json.dumps(entries))
    dm = setup(root)
    assert len(dm.train_set) == 3 * 6
    assert dm.train_set.records[0].reference == dm.train_set.records[0].target
    assert not [w for w in recwarn if "same reference" in str(w.message)]


def test_categories_subset_and_test_stage_uses_val(root):
    dm = setup(root, "test", categories=["shirt"])
    assert dm.train_set is None
    assert [q.name for q, _ in dm.test_sets] == ["shirt"]
    assert dm.test_sets == dm.val_sets


def test_predict_embeds_the_val_split_and_names_it_so(root):
    dm = setup(root, "predict", categories=["shirt", "dress"])
    split, sets = dm.predict_sets()
    assert split == "val"  # its test is the val split: predict's folders are val-shirt-query, ...
    assert [q.name for q, _ in sets] == ["shirt", "dress"]
    assert [loader.dataset for loader in dm.predict_dataloader()] == [d for pair in dm.val_sets for d in pair]


def test_test_reuses_the_gallery_caches_validate_wrote(root, tmp_path, tiny_model_dir):
    """``test`` evaluates the val split: it loads ``validate``'s val-dress-gallery (it wrote test-dress-gallery)."""
    import lightning.pytorch as pl

    from cir_lightning.backbones import HFMultimodalBackbone, Prompts
    from cir_lightning.module import CIRModule

    cache = tmp_path / "cache"
    module = CIRModule(HFMultimodalBackbone(str(tiny_model_dir), prompts=Prompts("short")), write_results=False,
                       embedding_cache=str(cache))
    metrics = {}
    for stage in ("validate", "test"):
        trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                             default_root_dir=tmp_path)
        run_stage = trainer.validate if stage == "validate" else trainer.test
        metrics[stage] = run_stage(module, FashionIQDataModule(str(root), categories=["dress"]), verbose=False)[0]
    report = module.evaluation.cache.report()
    assert report["written"] == [str(cache / "val-dress-gallery")]  # by validate; test wrote nothing
    assert report["loaded"] == [str(cache / "val-dress-gallery")]  # by test
    assert sorted(p.name for p in cache.iterdir()) == ["val-dress-gallery"]
    assert metrics["test"]["test/dress/MRR@5"] == pytest.approx(metrics["validate"]["val/dress/MRR@5"])  # stage prefix


@pytest.mark.parametrize("ext", ["png", "jpg", "mixed"])
@pytest.mark.parametrize("per_category_folder", [False, True])
def test_image_extension_and_folder_are_detected(tmp_path, ext, per_category_folder):
    root = make_fake_fashioniq(tmp_path / "fiq", ext=ext, per_category_folder=per_category_folder)
    dm = setup(root)
    paths = [g.path for _, gallery in dm.val_sets for g in gallery.records]
    paths += [p for r in dm.train_set.records for p in (r.reference, r.target)]
    assert all(p.is_file() for p in paths)
    suffixes = {p.suffix for p in paths}
    assert suffixes == ({".png", ".jpg"} if ext == "mixed" else {f".{ext}"})
    folders = {g.path.parent.name for g in dm.val_sets[0][1].records}
    assert folders == {"dress" if per_category_folder else "images"}


def test_png_is_preferred_when_both_files_exist_and_image_root_elsewhere(root, tmp_path):
    first = read(root / "image_splits" / "split.dress.val.json")[0]
    shutil.copy(root / "images" / f"{first}.png", root / "images" / f"{first}.jpg")
    assert setup(root, "validate").val_sets[0][1].records[0].path.suffix == ".png"
    moved = tmp_path / "elsewhere"
    shutil.move(str(root / "images"), str(moved))
    with pytest.raises(CIRDataError, match="images folder does not exist; set `image_root`"):
        setup(root, "validate")
    assert setup(root, "validate", image_root=str(moved)).val_sets[0][1].records[0].path.parent == moved
    with pytest.raises(CIRDataError, match=r"split\.dress\.val\.json: the images folder is not a folder; set `image_root`"):
        setup(root, "validate", image_root=str(root / "image_splits" / "split.dress.val.json"))


def test_query_text_forms(root):
    set_captions(root, "dress", "val", 0, [" is red. ", "has no sleeves?\n"])
    texts = {form: setup(root, "validate", query_text=form).val_sets[0][0].records[0].modification
             for form in ("clip4cir", "bge_vl", "e5v", "both_orders")}
    assert texts == {
        "clip4cir": "Is red and has no sleeves",
        "bge_vl": "is red., and has no sleeves?",
        "e5v": ("is red, has no sleeves", "has no sleeves, is red"),
        "both_orders": ("is red and has no sleeves", "has no sleeves and is red"),
    }
    assert setup(root, "validate", query_text="both_orders").val_sets[0][0][0]["modification"] == \
        texts["both_orders"]


def test_stray_whitespace_is_stripped(tmp_path):
    root = make_fake_fashioniq(tmp_path / "fiq", stray_whitespace=True)
    raw = read(root / "captions" / "cap.dress.val.json")
    assert any(c != c.strip() for e in raw for c in e["captions"])
    for form in ("bge_vl", "clip4cir"):
        for queries, _ in setup(root, "validate", query_text=form).val_sets:
            assert all(r.modification == r.modification.strip() and "\n" not in r.modification
                       for r in queries.records)


def test_one_blank_caption_is_kept_as_clip4cir_keeps_it_and_two_are_refused(root):
    # the official files hold 17 entries with one blank caption (e.g. shirt val ['', 'is grey with a design'])
    set_captions(root, "shirt", "val", 0, ["", "is grey?"])
    text = {form: setup(root, "validate", query_text=form, categories=["shirt"]).val_sets[0][0].records[0].modification
            for form in ("clip4cir", "bge_vl")}
    assert text == {"clip4cir": " and is grey", "bge_vl": ", and is grey?"}
    set_captions(root, "shirt", "val", 0, [" . ", "?"])
    with pytest.raises(CIRDataError, match=r"cap\.shirt\.val\.json:\d+: entry 1 \(candidate '.*'\): both captions "
                                           r"are blank, so the query has no text$"):
        setup(root, "validate", categories=["shirt"])


def draws(dm: FashionIQDataModule, n: int) -> list[str]:
    return [dm.train_set[0]["modification"] for _ in range(n)]


def test_training_text_augmentation_draws_the_four_forms_evenly_and_reproducibly(root):
    set_captions(root, "dress", "train", 0, ["is red.", " has no sleeves"])
    dm = setup(root)
    torch.manual_seed(0)
    texts = draws(dm, 400)
    counts = Counter(texts)
    forms = {"Is red and has no sleeves", "Has no sleeves and is red", "Is red", "Has no sleeves"}
    assert set(counts) == forms
    assert all(60 <= c <= 140 for c in counts.values()), counts  # 100 expected each
    torch.manual_seed(0)
    assert draws(dm, 400) == texts
    torch.manual_seed(1)
    assert draws(dm, 400) != texts
    # through a DataLoader, under Lightning's seeding
    loader = DataLoader(dm.train_set, batch_size=6, shuffle=True,
                        collate_fn=lambda samples: [s["modification"] for s in samples])
    seed_everything(3, workers=True)
    first = [t for batch in loader for t in batch]
    seed_everything(3, workers=True)
    assert [t for batch in loader for t in batch] == first
    assert set(draws(setup(root, train_augment=False), 20)) == {"Is red and has no sleeves"}


def test_training_text_forms_follow_the_order_s_seed_and_epoch_not_the_workers_or_the_global_state(root):
    """What a resumed run (fresh workers, another global random state) or a DDP run draws is what an
    uninterrupted one-process run draws: each row's form is a function of (seed, epoch, row)."""
    from cir_lightning.data.sampling import DistributedEpochSampler, EpochSampler

    train = setup(root).train_set
    assert len(train) >= 8

    def forms(sampler, workers: int = 0) -> dict[int, str]:
        loader = DataLoader(train, batch_size=4, sampler=sampler, num_workers=workers,
                            collate_fn=lambda samples: [(s["index"], s["modification"]) for s in samples])
        return dict(pair for batch in loader for pair in batch)

    sampler = EpochSampler(len(train), seed=7, batch_size=4)
    torch.manual_seed(0)
    first = forms(sampler)
    torch.manual_seed(1)  # another global state, e.g. after a resume
    torch.rand(100)
    assert forms(sampler) == first
    assert forms(sampler, workers=2) == first
    sampler.set_epoch(1)
    assert forms(sampler) != first  # another epoch draws anew (some of the rows' forms change)
    sampler.set_epoch(0)
    shares = [forms(DistributedEpochSampler(train, num_replicas=2, rank=r, seed=7)) for r in (0, 1)]
    assert {**shares[0], **shares[1]} == first  # two processes' rows: the same forms


def test_exclude_reference_on_and_off(root):
    pairs = read(root / "captions" / "cap.toptee.val.json")
    for exclude in (False, True):
        queries, gallery = setup(root, "validate", exclude_reference=exclude).val_sets[2]
        expected = [(gallery.ids.index(p["candidate"]),) if exclude else () for p in pairs]
        assert queries.excluded == expected
        assert [r.reference_id for r in queries.records] == [p["candidate"] for p in pairs]


def test_missing_images_error_or_drop_with_counts(root):
    split = read(root / "image_splits" / "split.shirt.val.json")
    pairs = read(root / "captions" / "cap.shirt.val.json")
    (root / "images" / f"{split[6]}.png").unlink()  # a gallery-only image
    (root / "images" / f"{pairs[2]['target']}.png").unlink()  # the target of query 2 (reference of 3)
    with pytest.raises(CIRDataError, match=r"2 of 8 val gallery images of shirt need missing images") as info:
        setup(root, "validate")
    assert "split.shirt.val.json" in str(info.value)
    assert split[6] in str(info.value)
    assert "on_missing: drop" in str(info.value)
    with pytest.warns(UserWarning, match="dropped") as record:
        dm = setup(root, "validate", on_missing="drop")
    messages = [str(w.message) for w in record]
    assert any("dropped 2 of 8 val gallery images of shirt" in m for m in messages)
    assert any("dropped 2 of 5 val queries of shirt" in m and f"entry 3 (candidate {pairs[2]['candidate']!r})" in m
               for m in messages)
    assert any("not comparable" in m for m in messages)
    queries, gallery = dm.val_sets[1]
    assert len(gallery) == 6
    assert queries.ids == ["shirt-0", "shirt-1", "shirt-4"]
    assert [gallery.ids[p[0]] for p in queries.positives] == [pairs[i]["target"] for i in (0, 1, 4)]
    assert len(dm.val_sets[0][1]) == 8  # other categories untouched


def test_missing_training_image_is_an_error_or_dropped(root):
    pair = read(root / "captions" / "cap.dress.train.json")[0]
    (root / "images" / f"{pair['candidate']}.png").unlink()
    with pytest.raises(CIRDataError, match=r"1 of 18 training triplets need missing images: "
                                           r".*cap\.dress\.train\.json:2: entry 1 \(candidate "
                                           rf"'{pair['candidate']}'\)"):
        setup(root)
    with pytest.warns(UserWarning, match="dropped 1 of 18 training triplets"):
        assert len(setup(root, on_missing="drop").train_set) == 17


def test_query_image_absent_from_the_gallery_split_is_an_error(root):
    set_captions(root, "toptee", "val", 3, ["a", "b"], target="B00NOTHERE")
    set_captions(root, "toptee", "val", 4, ["a", "b"], candidate="B00NOREF")
    with pytest.raises(CIRDataError, match=r"cap\.toptee\.val\.json: 2 image id\(s\) of the queries are "
                                           r"not in the gallery") as info:
        setup(root, "validate", on_missing="drop")  # not a missing file: dropping does not hide it
    assert "entry 4 (candidate " in str(info.value)
    assert "): target 'B00NOTHERE'" in str(info.value)
    assert "entry 5 (candidate 'B00NOREF'): candidate 'B00NOREF'" in str(info.value)


@pytest.mark.parametrize(("file", "content", "message"), [
    ("captions/cap.dress.val.json", "{not json", ":1: malformed JSON"),
    ("captions/cap.dress.val.json", '{"a": 1}', ": expected a JSON list, got dict"),
    ("captions/cap.dress.val.json", '[{"candidate": "x", "target": "y", "captions": ["one"]}]',
     r":1: entry 1 \(candidate 'x'\): `captions` must be a list of two strings"),
    ("captions/cap.dress.val.json", '[{"candidate": "../x", "target": "y", "captions": ["a", "b"]}]',
     ":1: entry 1: `candidate` must be an image id"),
    ("image_splits/split.dress.val.json", '["a",\n "b",\n "a"]',
     r":3: entry 3: duplicate image id 'a' \(first: entry 1, line 1\)"),
])
def test_malformed_files_name_the_file_and_entry(root, file, content, message):
    (root / file).write_text(content)
    with pytest.raises(CIRDataError, match=message) as info:
        setup(root, "validate")
    assert str(info.value).startswith(str(root / file))


def test_missing_file_and_bad_options(root):
    (root / "captions" / "cap.shirt.train.json").unlink()
    with pytest.raises(CIRDataError, match=r"cap\.shirt\.train\.json: file does not exist; `root` must be"):
        setup(root)
    with pytest.raises(CIRConfigError, match="`categories` must be distinct names"):
        FashionIQDataModule(str(root), categories=["dress", "pants"])
    with pytest.raises(CIRConfigError, match="`categories`"):
        FashionIQDataModule(str(root), categories=[])
    with pytest.raises(CIRConfigError, match="`query_text` must be one of"):
        FashionIQDataModule(str(root), query_text="pic2word")
    with pytest.raises(CIRConfigError, match="`on_missing` must be 'error' or 'drop', got 'skip'"):
        FashionIQDataModule(str(root), on_missing="skip")  # at construction, not as a ValueError at set-up


METRICS = {
    "dress/Recall@10": 0.30, "dress/Recall@50": 0.50, "dress/MRR@10": 0.10,
    "shirt/Recall@10": 0.40, "shirt/Recall@50": 0.62, "shirt/MRR@10": 0.20,
    "toptee/Recall@10": 0.35, "toptee/Recall@50": 0.59,  # no MRR: not averaged
}


def test_summarize_averages_over_the_categories(root):
    dm = FashionIQDataModule(str(root))
    out = dm.summarize(METRICS)
    assert set(out) == {"average/Recall@10", "average/Recall@50", "average/Recall@10+50"}
    assert out["average/Recall@10"] == pytest.approx(0.35)
    assert out["average/Recall@50"] == pytest.approx(0.57)
    assert out["average/Recall@10+50"] == pytest.approx(0.46)
    two = FashionIQDataModule(str(root), categories=["dress", "shirt"]).summarize(METRICS)
    assert two["average/MRR@10"] == pytest.approx(0.15)
    assert two["average/Recall@10+50"] == pytest.approx((0.35 + 0.56) / 2)
    partial = {k: v for k, v in METRICS.items() if not k.startswith("toptee")}
    assert dm.summarize(partial) == {}  # a category is missing: no average
    assert average_over_categories({}, ["dress"]) == {}


def test_report_prints_the_bge_vl_summary_lines(root):
    assert FashionIQDataModule(str(root)).report(METRICS).splitlines() == [
        "dress: 30.00 / 50.00", "shirt: 40.00 / 62.00", "toptee: 35.00 / 59.00", "overall: 35.00 / 57.00"]
    assert summary_lines({"dress/Recall@10": 0.123456, "dress/Recall@50": 1.0}, ["dress", "shirt"]) == \
        ["dress: 12.35 / 100.00"]  # no overall line without every category


def test_cli_validate_reports_per_category_and_average_metrics(tmp_path, tiny_model_dir):
    root = make_fake_fashioniq(tmp_path / "fiq", ext="jpg", per_category_folder=True)
    out = run("validate", "--config", str(CONF), "--model.backbone.init_args.model_name_or_path",
              str(tiny_model_dir), "--model.backbone.init_args.lora", "null",
              "--data", "cir_lightning.data.fashioniq.FashionIQDataModule", "--data.root", str(root),
              "--data.query_text", "both_orders", "--data.eval_batch_size", "16",
              "--trainer.default_root_dir", "run", cwd=tmp_path).stdout
    results = json.loads((tmp_path / "run" / "results-validate.json").read_text())
    assert results["config"]["data_class_path"] == "cir_lightning.data.fashioniq.FashionIQDataModule"
    assert results["config"]["data"]["query_text"] == "both_orders"
    for cat in ("dress", "shirt", "toptee"):
        assert set(results["metrics"][cat]) == {f"{m}@{k}" for m in ("Recall", "MRR") for k in EVAL_KS}
        assert results["subsets"][cat] == {"num_queries": 5, "num_gallery": 8}
        assert results["metrics"][cat]["Recall@10"] == 1.0  # 8 gallery images: the target is in the top 10
    average = results["metrics"]["average"]  # from FashionIQDataModule.summarize
    per_category = [results["metrics"][c]["MRR@5"] for c in ("dress", "shirt", "toptee")]
    assert average["MRR@5"] == pytest.approx(sum(per_category) / 3)
    assert average["Recall@10+50"] == 1.0
    assert "overall: 100.00 / 100.00" in out  # the BGE-VL summary lines


@pytest.mark.parametrize(("name", "subcommand"), [("fashioniq.yaml", "validate"),
                                                   ("fashioniq_train.yaml", "fit")])
def test_fashioniq_configs_parse(tmp_path, tiny_model_dir, capsys, monkeypatch, name, subcommand):
    from cir_lightning.cli import CIRLightningCLI

    monkeypatch.setattr(sys, "argv", ["cir-lightning"])
    with pytest.raises(SystemExit) as info:  # in-process: no second interpreter start-up
        CIRLightningCLI(args=[subcommand, "--config", str(CONFIGS / name), "--model.backbone.init_args."
                              "model_name_or_path", str(tiny_model_dir), "--data.init_args.root",
                              str(tmp_path / "fiq"), "--print_config"])
    assert info.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["data"]["class_path"] == "cir_lightning.data.fashioniq.FashionIQDataModule"
    assert printed["data"]["init_args"]["root"] == str(tmp_path / "fiq")
    assert printed["data"]["init_args"]["query_text"] == ("e5v" if subcommand == "validate" else "clip4cir")
    assert printed["data"]["init_args"]["categories"] == ["dress", "shirt", "toptee"]
    assert printed["model"]["backbone"]["init_args"]["model_name_or_path"] == str(tiny_model_dir)
    prompts = printed["model"]["backbone"]["init_args"]["prompts"]
    assert prompts["preset"] == ("e5v_fashioniq_dress" if subcommand == "validate" else "fire")
    if subcommand == "validate":  # E5-V asks about a "shirt" for toptee too
        assert prompts["per_subset"] == {"shirt": "e5v_fashioniq_shirt", "toptee": "e5v_fashioniq_shirt"}
    lora = printed["model"]["backbone"]["init_args"]["lora"]
    if subcommand == "validate":
        assert lora is None
    else:
        assert (lora["r"], lora["alpha"], lora["dropout"]) == (64, 128, 0.1)
        assert printed["model"]["optimizer"]["init_args"]["lr"] == pytest.approx(1e-4)


# ----------------------------------------------------------------- bad files, lines, image paths
def write_entries(path: Path, entries: list) -> None:
    """One entry a line: entry i (from 1) on line i + 1."""
    path.write_text("[\n" + ",\n".join(map(json.dumps, entries)) + "\n]")


@pytest.mark.parametrize("file", ["captions/cap.shirt.val.json", "image_splits/split.shirt.val.json",
                                  "captions/cap.shirt.train.json"])
def test_deeply_nested_json_names_file_and_line(root, file):
    entries = read(root / file)
    entries[2] = json.loads("[" * 50 + "]" * 50)
    write_entries(root / file, entries)
    path = (root / file).read_text().replace("[" * 50 + "]" * 50, "[" * 100_000 + "]" * 100_000)
    (root / file).write_text(path)
    with pytest.raises(CIRDataError, match="JSON nested too deeply") as info:
        setup(root)
    assert str(info.value).startswith(f"{root / file}:4: ")


def test_entry_errors_count_from_one_and_give_the_line_and_id(root):
    path = root / "captions" / "cap.dress.val.json"
    entries = read(path)
    entries[3]["captions"] = ["fine", 7]
    write_entries(path, entries)
    with pytest.raises(CIRDataError) as info:
        setup(root, "validate")
    assert str(info.value) == (f"{path}:5: entry 4 (candidate {entries[3]['candidate']!r}): `captions` must be a "
                               "list of two strings, got ['fine', 7]")


@pytest.mark.parametrize(("entry", "message"), [
    (["B00", "B01"], r":3: entry 2: expected a JSON object, got list"),
    ({"candidate": 123, "target": "x", "captions": ["a", "b"]}, r":3: entry 2: `candidate` must be an image id .* got 123"),
    ({"candidate": "x", "captions": ["a", "b"]}, r":3: entry 2 \(candidate 'x'\): `target` must be an image id .* got None"),
    ({"candidate": "x", "target": "y", "captions": ["a", None]}, r":3: entry 2 \(candidate 'x'\): `captions` must be"),
])
def test_bad_caption_entries(root, entry, message):
    path = root / "captions" / "cap.toptee.val.json"
    entries = read(path)
    entries[1] = entry
    write_entries(path, entries)
    with pytest.raises(CIRDataError, match=message) as info:
        setup(root, "validate")
    assert str(info.value).startswith(str(path))


def test_bad_split_files(root):
    path = root / "image_splits" / "split.shirt.val.json"
    ids = read(path)
    write_entries(path, [*ids[:2], 5, *ids[3:]])
    with pytest.raises(CIRDataError, match=r"split\.shirt\.val\.json:4: entry 3: `image id` must be an image id .*got 5"):
        setup(root, "validate")
    write_entries(path, [*ids[:2], "B00\0x", *ids[3:]])  # a NUL byte cannot be in a file name
    with pytest.raises(CIRDataError, match=r"split\.shirt\.val\.json:4: entry 3: `image id` must be an image id .*"
                                           r"got 'B00\\x00x'"):
        setup(root, "validate")
    path.write_text("[]")
    with pytest.raises(CIRDataError, match=r"split\.shirt\.val\.json: no image ids: the gallery would be empty"):
        setup(root, "validate")
    path.write_text("")
    with pytest.raises(CIRDataError, match=r"split\.shirt\.val\.json: file is empty; expected a JSON list"):
        setup(root, "validate")


def test_sources_name_file_line_and_candidate(root):
    path = root / "captions" / "cap.dress.val.json"
    starts = [i + 1 for i, text in enumerate(path.read_text().splitlines()) if text == " {"]  # indent=1
    dm = setup(root)
    entries = read(path)
    assert dm.val_sets[0][0].records[1].source == f"{path}:{starts[1]}: entry 2 (candidate {entries[1]['candidate']!r})"
    train = root / "captions" / "cap.dress.train.json"
    assert dm.train_set.records[0].source == f"{train}:2: entry 1 (candidate {read(train)[0]['candidate']!r})"
    gallery = dm.val_sets[0][1].records[0]
    assert gallery.source == f"{root / 'image_splits' / 'split.dress.val.json'}:2: entry 1 ({gallery.image_id!r})"


def test_missing_category_file_says_to_leave_the_category_out(root):
    (root / "captions" / "cap.toptee.val.json").unlink()
    with pytest.raises(CIRDataError, match=r"cap\.toptee\.val\.json: file does not exist; `root` must be the "
                                           r"FashionIQ folder .*; without the files of 'toptee', leave it out of "
                                           r"`categories`"):
        setup(root, "validate")
    assert len(setup(root, "validate", categories=["dress", "shirt"]).val_sets) == 2


def test_byte_order_mark_and_windows_line_ends(root):
    for path in [*(root / "captions").iterdir(), *(root / "image_splits").iterdir()]:
        path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes().replace(b"\n", b"\r\n"))
    dm = setup(root)
    assert len(dm.train_set) == 18
    assert [len(q) for q, _ in dm.val_sets] == [5, 5, 5]


def test_a_folder_named_like_an_image_is_never_taken_for_it(root):
    first = read(root / "image_splits" / "split.dress.val.json")[0]
    (root / "images" / f"{first}.png").rename(root / "images" / f"{first}.jpg")
    (root / "images" / f"{first}.png").mkdir()  # a folder with the preferred extension
    dm = setup(root, "validate")
    assert dm.val_sets[0][1].records[0].path.name == f"{first}.jpg"
    (root / "images" / f"{first}.jpg").unlink()
    for on_missing in ("error", "drop"):  # a folder is no missing download: `drop` does not hide it
        with pytest.raises(CIRDataError, match=rf"split\.dress\.val\.json: 1 of 8 val gallery images of dress need "
                                               rf"image paths that are not image files: {first}: .*{first}\.png is a "
                                               r"folder, not an image file"):
            setup(root, "validate", on_missing=on_missing)


def test_a_broken_link_is_reported_as_such_and_dropped_like_a_missing_file(root):
    split = read(root / "image_splits" / "split.shirt.val.json")
    image = root / "images" / f"{split[6]}.png"  # in no val pair
    image.unlink()
    image.symlink_to(root / "elsewhere" / image.name)
    with pytest.raises(CIRDataError, match=rf"need missing images: {split[6]}: .*\.png is a broken symbolic link"):
        setup(root, "validate")
    with pytest.warns(UserWarning, match="dropped 1 of 8 val gallery images of shirt"):
        assert len(setup(root, "validate", on_missing="drop").val_sets[1][1]) == 7
