"""The CIRCO DataModule on a fake copy of the official layout: gallery, ground truth, query text, mAP,
the server submission, missing images, and one `cir-lightning validate` run end to end."""

from __future__ import annotations

import inspect
import json
import shutil
from collections import Counter
from pathlib import Path

import pytest
import torch
import yaml

from cir_lightning.data.circo import CIRCODataModule
from cir_lightning.data.layouts.circo import BGE_VL_TEMPLATE, make_submission
from cir_lightning.errors import CIRConfigError, CIRDataError
from cir_lightning.retrieval import RetrievalEvaluator, SearchConfig, subsets_from_loaders
from tests.data.fake_circo import make_fake_circo

INFO = Path("COCO2017_unlabeled/annotations/image_info_unlabeled2017.json")
IMAGES = Path("COCO2017_unlabeled/unlabeled2017")


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    return make_fake_circo(tmp_path_factory.mktemp("circo") / "CIRCO")


@pytest.fixture
def root(pristine, tmp_path):
    return Path(shutil.copytree(pristine, tmp_path / "CIRCO"))


def load(root: Path, name: str | Path):
    return json.loads((root / name).read_text())


def save(root: Path, name: str | Path, obj) -> None:
    """A list is written one element a line (element i on line i + 2), as messages count lines."""
    text = "[\n" + ",\n".join(map(json.dumps, obj)) + "\n]" if isinstance(obj, list) else json.dumps(obj)
    (root / name).write_text(text)


def image_ids(root: Path) -> list[str]:
    return [str(i["id"]) for i in load(root, INFO)["images"]]


def setup(root: Path, stage: str = "validate", **kwargs) -> CIRCODataModule:
    dm = CIRCODataModule(str(root), **kwargs)
    dm.setup(stage)
    return dm


def test_val_gallery_ground_truth_and_query_text(root):
    queries, gallery = setup(root).val_sets[0]
    val = load(root, "annotations/val.json")
    assert gallery.ids == image_ids(root)  # the image-info list, in its order, ids as str(int)
    assert gallery.records[0].path == root / IMAGES / f"{int(gallery.ids[0]):012d}.jpg"
    assert queries.ids == [str(q["id"]) for q in val]
    for q, rows in zip(val, queries.positives, strict=True):
        assert [gallery.ids[r] for r in rows] == [str(g) for g in q["gt_img_ids"]]
    assert queries.excluded == [()] * len(val)  # the protocol keeps the reference in the ranking
    assert (queries.name, queries.metrics, queries.depth) == ("", {"map": [5, 10, 25, 50]}, 50)
    first = queries[0]
    assert first["modification"] == (f"Find a picture that also {val[0]['shared_concept']}, "
                                     f"but {val[0]['relative_caption']}.")
    assert first["reference_image"].size == (8, 8)
    assert queries.records[0].reference == root / IMAGES / f"{val[0]['reference_img_id']:012d}.jpg"


def test_test_split_has_no_ground_truth_and_shares_the_gallery(root):
    dm = setup(root, "test")
    dm.setup("validate")
    queries, gallery = dm.test_sets[0]
    assert queries.positives is None
    assert queries.ids == [str(i) for i in range(5)]
    assert queries.depth == 50
    assert gallery.records is dm.val_sets[0][1].records  # checked once, reused


def test_gallery_comes_from_the_image_info_list_not_the_folder(root):
    info = load(root, INFO)
    used = {q["reference_img_id"] for q in load(root, "annotations/val.json") + load(root, "annotations/test.json")}
    used |= {g for q in load(root, "annotations/val.json") for g in q["gt_img_ids"]}
    unused = next(i for i in info["images"] if i["id"] not in used)
    info["images"].remove(unused)
    shutil.copy(root / IMAGES / unused["file_name"], root / IMAGES / "000000999999.jpg")  # not listed
    entry = info["images"][3]  # file_name is followed, whatever it is
    (root / IMAGES / entry["file_name"]).rename(root / IMAGES / "renamed.jpg")
    entry["file_name"] = "renamed.jpg"
    save(root, INFO, info)
    gallery = setup(root).val_sets[0][1]
    assert len(gallery) == 59
    assert str(unused["id"]) not in gallery.ids
    assert "999999" not in gallery.ids
    assert gallery.records[3].path.name == "renamed.jpg"


def test_layout_variants_and_the_error_naming_what_was_searched(root, tmp_path):
    moved = tmp_path / "coco"
    shutil.move(root / "COCO2017_unlabeled", moved)
    with pytest.raises(CIRDataError, match="searched .*COCO2017_unlabeled/annotations/image_info_unlabeled2017.json"):
        setup(root)
    shutil.copy(moved / "annotations" / INFO.name, root / "annotations" / INFO.name)
    with pytest.raises(CIRDataError, match=r"no COCO 2017 unlabeled image folder found; .*Set `gallery_root`"):
        setup(root)
    assert len(setup(root, gallery_root=str(moved / "unlabeled2017")).val_sets[0][1]) == 60
    shutil.move(moved / "unlabeled2017", root / "unlabeled2017")
    assert len(setup(root).val_sets[0][1]) == 60


def test_default_template_is_bge_vl_and_custom_templates_are_checked(root):
    assert BGE_VL_TEMPLATE == "Find a picture that also {shared_concept}, but {relative_caption}."
    assert inspect.signature(CIRCODataModule).parameters["query_template"].default == BGE_VL_TEMPLATE
    queries = setup(root, query_template="a photo of $ that {relative_caption}").val_sets[0][0]
    caption = load(root, "annotations/val.json")[1]["relative_caption"]
    assert queries[1]["modification"] == f"a photo of $ that {caption}"


@pytest.mark.parametrize(("template", "message"), [
    ("Find {caption}", r"uses \{caption\}; allowed: \{relative_caption\}, \{shared_concept\}"),
    ("{relative_caption} {0}", r"uses \{0\}"),
    ("{} {relative_caption}", r"uses \{\}"),
    ("{relative_caption.upper}", r"uses \{relative_caption.upper\}"),
    ("{shared_concept} only", r"must contain \{relative_caption\}"),
    ("{relative_caption", "not a valid format string"),
])
def test_bad_templates_fail_when_the_module_is_built(template, message):
    with pytest.raises(CIRConfigError, match=message):
        CIRCODataModule("anywhere", query_template=template)


def test_on_missing_is_checked_when_the_module_is_built():
    with pytest.raises(CIRConfigError, match="`on_missing` must be 'error' or 'drop', got 'skip'"):
        CIRCODataModule("anywhere", on_missing="skip")


def test_exclude_reference_removes_the_reference_row(root):
    queries, gallery = setup(root, exclude_reference=True).val_sets[0]
    refs = [str(q["reference_img_id"]) for q in load(root, "annotations/val.json")]
    assert queries.excluded == [(gallery.ids.index(r),) for r in refs]


def test_exclude_reference_refuses_a_reference_among_the_ground_truths(root):
    val = load(root, "annotations/val.json")
    val[3]["gt_img_ids"].append(val[3]["reference_img_id"])
    save(root, "annotations/val.json", val)
    assert setup(root).val_sets  # the protocol's default keeps the reference: a hit like any other
    with pytest.raises(CIRDataError, match=r"val\.json: 1 of 6 queries list their reference among `gt_img_ids`, so "
                                           r"`exclude_reference` would remove a ground truth .*: query 3 \(line 5\)"):
        setup(root, exclude_reference=True)


def test_ground_truth_outside_the_image_info_list_is_an_error_listing_queries_and_ids(root):
    val = load(root, "annotations/val.json")
    val[2]["gt_img_ids"].append(123)
    val[4]["reference_img_id"] = 456
    save(root, "annotations/val.json", val)
    with pytest.raises(CIRDataError) as err:
        setup(root)
    text = str(err.value)
    assert text.startswith(str(root / "annotations" / "val.json"))
    assert "2 of 6 queries name images that are not in the gallery's image-info list" in text
    assert "query 2 (line 4): 123" in text
    assert "query 4 (line 6): reference 456" in text


@pytest.mark.parametrize(("edit", "message"), [
    (lambda v: v[3].pop("relative_caption"), r":5: entry 4 \(id 3\) lacks field\(s\) `relative_caption`"),
    (lambda v: v[1].update(gt_img_ids=[]), r":3: entry 2 \(id 1\): `gt_img_ids` must be a non-empty list"),
    (lambda v: v[1].update(gt_img_ids=["x"]), r":3: entry 2 \(id 1\): `gt_img_ids` must be an integer image id, "
                                              "got 'x'"),
    (lambda v: v[5].update(id=0), r":7: duplicate query id 0 \(entries 1 and 6, lines 2 and 7\)"),
    (lambda v: v[0].update(shared_concept=7), r":2: entry 1 \(id 0\): `shared_concept` must be a string"),
    (lambda v: v.__setitem__(2, [v[2]]), r":4: entry 3: expected a JSON object, got list"),
    (lambda v: v[1].update(id="one"), r":3: entry 2: `id` must be an integer image id, got 'one'"),
    (lambda v: v[1].update(gt_img_ids=7), r":3: entry 2 \(id 1\): `gt_img_ids` must be a non-empty list, got 7"),
    (lambda v: v[1].update(reference_img_id=[1]), r":3: entry 2 \(id 1\): `reference_img_id` must be an integer"),
    (lambda v: v[2].update(relative_caption=" \t"), r":4: entry 3 \(id 2\): `relative_caption` is empty"),
])
def test_bad_annotations_name_the_file_and_query(root, edit, message):
    val = load(root, "annotations/val.json")
    edit(val)
    save(root, "annotations/val.json", val)
    with pytest.raises(CIRDataError, match=message) as info:
        setup(root)
    assert str(info.value).startswith(str(root / "annotations" / "val.json"))


def test_malformed_json_names_the_line(root):
    (root / "annotations" / "test.json").write_text('[\n {"id": 0,\n oops}\n]')
    with pytest.raises(CIRDataError, match=r"test.json:3: malformed JSON"):
        setup(root, "test")


def test_map_on_known_embeddings_matches_a_hand_computation(root):
    g = image_ids(root)
    save(root, "annotations/val.json", [
        {"id": 0, "reference_img_id": int(g[50]), "target_img_id": int(g[0]), "relative_caption": "a",
         "shared_concept": "b", "gt_img_ids": [int(g[0]), int(g[1])], "semantic_aspects": []},
        {"id": 1, "reference_img_id": int(g[51]), "target_img_id": int(g[5]), "relative_caption": "c",
         "shared_concept": "d", "gt_img_ids": [int(g[5]), int(g[6]), int(g[7])], "semantic_aspects": []},
    ])
    dm = setup(root)

    def query(placed: dict[int, int]) -> torch.Tensor:  # rank (1-based) -> gallery row; rows 10.. fill the rest
        rest = iter(range(10, 60))
        order = [placed[rank] if rank in placed else next(rest) for rank in range(1, 41)]
        q = torch.zeros(60)
        q[order] = torch.linspace(1.0, 0.5, len(order))
        return q

    queries = torch.stack([query({1: 0, 3: 1}), query({2: 5, 6: 6, 30: 7})])
    ev = RetrievalEvaluator(search=SearchConfig(backend="torch"))
    ev.add(0, "gallery", torch.eye(60), torch.arange(60))
    ev.add(0, "query", queries, torch.arange(2))
    got = ev.compute(subsets_from_loaders(dm.val_dataloader()))
    ap0 = (1 / 1 + 2 / 3) / 2  # positives at ranks 1 and 3, |GT| = 2
    ap1_5, ap1_10, ap1_50 = (1 / 2) / 3, (1 / 2 + 2 / 6) / 3, (1 / 2 + 2 / 6 + 3 / 30) / 3  # ranks 2, 6, 30
    assert got == pytest.approx({"mAP@5": (ap0 + ap1_5) / 2, "mAP@10": (ap0 + ap1_10) / 2,
                                 "mAP@25": (ap0 + ap1_10) / 2, "mAP@50": (ap0 + ap1_50) / 2}, abs=1e-6)


def ranked(dm: CIRCODataModule, split: str = "test") -> dict[str, list[str]]:
    ids = dm.val_sets[0][1].ids if split == "val" else dm.test_sets[0][1].ids
    queries = dm.val_sets[0][0] if split == "val" else dm.test_sets[0][0]
    return {q: ids[i:] + ids[:i] for i, q in enumerate(queries.ids)}  # 60 distinct ids each


def test_test_submission_is_the_server_format_and_never_overwritten(root, tmp_path):
    dm = setup(root, "test")
    rankings = ranked(dm)
    out = tmp_path / "out"
    [first] = dm.write_predictions(out, "test", {"": rankings}, {})
    assert first == out / "circo-test.json"
    submission = json.loads(first.read_text())
    assert list(submission) == [str(i) for i in range(5)]
    assert submission["2"] == [int(x) for x in rankings["2"][:50]]
    assert all(len(v) == 50 and all(isinstance(x, int) for x in v) for v in submission.values())
    before = first.read_text()
    [second] = dm.write_predictions(out, "test", {"": rankings}, {})
    assert second.name == "circo-test-1.json"
    assert first.read_text() == before


def test_validate_writes_the_same_format_only_when_given_val_rankings(root, tmp_path):
    dm = setup(root)
    assert dm.write_predictions(tmp_path, "validate", {}, {}) == []
    [path] = dm.write_predictions(tmp_path, "validate", {"": ranked(dm, "val")}, {})
    assert path.name == "circo-val.json"
    assert len(json.loads(path.read_text())) == 6
    assert dm.write_predictions(tmp_path, "predict", {"": {}}, {}) == []


@pytest.mark.parametrize(("edit", "message"), [
    (lambda r: r.pop("3"), "the submission must rank every query; 1 of 5 missing: '3'"),
    (lambda r: r.update({"1": r["1"][:49]}), r"query '1' has only 49 ranked images; the server needs 50"),
    (lambda r: r["4"].insert(3, r["4"][0]), r"query '4' ranks an image twice in its top 50"),
    (lambda r: r["0"].insert(0, "abc"), r"`ranked id` must be an integer image id, got 'abc'"),
])
def test_invalid_submissions_are_refused_before_anything_is_written(root, tmp_path, edit, message):
    dm = setup(root, "test")
    rankings = ranked(dm)
    edit(rankings)
    with pytest.raises(CIRDataError, match=message):
        dm.write_predictions(tmp_path / "out", "test", {"": rankings}, {})
    assert not (tmp_path / "out").exists()


def test_test_rankings_are_required_and_setup_comes_first(root, tmp_path):
    with pytest.raises(CIRConfigError, match="no test rankings"):
        setup(root, "test").write_predictions(tmp_path, "test", {}, {})
    with pytest.raises(CIRConfigError, match="before setup"):
        CIRCODataModule(str(root)).write_predictions(tmp_path, "test", {"": {}}, {})


def test_submission_needs_fifty_ranked_images():
    assert make_submission({"0": [str(i) for i in range(60)]}, ["0"]) == {"0": list(range(50))}
    with pytest.raises(CIRDataError, match="has only 30 ranked images"):
        make_submission({"0": [str(i) for i in range(30)]}, ["0"])


def test_missing_images_are_an_error_or_dropped_with_their_queries(root, tmp_path):
    val = load(root, "annotations/val.json")
    test = load(root, "annotations/test.json")
    uses = Counter([q["reference_img_id"] for q in val + test] + [g for q in val for g in q["gt_img_ids"]])
    lost_gt = next(g for q in val for g in q["gt_img_ids"] if uses[g] == 1)  # needed by one val query only
    lost_ref = next(q["reference_img_id"] for q in test if uses[q["reference_img_id"]] == 1)
    val_q = next(str(q["id"]) for q in val if lost_gt in q["gt_img_ids"])
    test_q = next(str(q["id"]) for q in test if q["reference_img_id"] == lost_ref)
    gone = {lost_gt, lost_ref}
    for image_id in gone:
        (root / IMAGES / f"{image_id:012d}.jpg").unlink()
    with pytest.raises(CIRDataError, match=r"2 of 60 gallery images need missing images: .*on_missing: drop"):
        setup(root)
    dm = CIRCODataModule(str(root), on_missing="drop")
    with pytest.warns(UserWarning, match="dropped") as caught:
        dm.setup("validate")
    with pytest.warns(UserWarning, match="dropped 1 of 5 test queries") as caught_test:
        dm.setup("test")
    messages = [str(w.message) for w in [*caught, *caught_test]]
    assert any("dropped 2 of 60 gallery images" in m for m in messages)
    assert any("dropped 1 of 6 val queries" in m and f"query {val_q}:" in m for m in messages)
    assert any(f"query {test_q}:" in m for m in messages if "test queries" in m)
    queries, gallery = dm.val_sets[0]
    assert len(gallery) == 58
    assert not {str(i) for i in gone} & set(gallery.ids)
    assert val_q not in queries.ids
    assert len(queries) == 5
    for q, rows in zip(queries.ids, queries.positives, strict=True):  # rows point into the reduced gallery
        assert [gallery.ids[r] for r in rows] == [str(g) for g in val[int(q)]["gt_img_ids"]]
    assert test_q not in dm.test_sets[0][0].ids
    with pytest.raises(CIRDataError, match="left out 1 test queries and 2 gallery images"):
        dm.write_predictions(tmp_path, "test", {"": ranked(dm)}, {})


def test_a_reduced_gallery_never_makes_a_test_submission(root, tmp_path):
    val, test = load(root, "annotations/val.json"), load(root, "annotations/test.json")
    used = {q["reference_img_id"] for q in val + test} | {g for q in val for g in q["gt_img_ids"]}
    unused = next(int(i) for i in image_ids(root) if int(i) not in used)  # no query needs it
    (root / IMAGES / f"{unused:012d}.jpg").unlink()
    with pytest.warns(UserWarning, match="dropped 1 of 60 gallery images"):
        dm = setup(root, "test", on_missing="drop")
    assert len(dm.test_sets[0][0]) == 5  # every query kept, but ranked over 59 images
    with pytest.raises(CIRDataError, match="left out 0 test queries and 1 gallery images"):
        dm.write_predictions(tmp_path, "test", {"": ranked(dm)}, {})
    assert not list(tmp_path.glob("circo-*.json"))


def test_repeated_ground_truth_ids_are_an_error(root):
    val = load(root, "annotations/val.json")
    val[0]["gt_img_ids"] = val[0]["gt_img_ids"] + val[0]["gt_img_ids"][:1]
    save(root, "annotations/val.json", val)
    with pytest.raises(CIRDataError, match=rf"val\.json:2: entry 1 \(id {val[0]['id']}\): `gt_img_ids` lists "
                                           rf"{val[0]['gt_img_ids'][0]} more than once"):
        setup(root)


def test_cli_validate_reports_map_and_writes_the_val_predictions(tmp_path, tiny_model_dir, pristine):
    from tests.test_cli import CONF, run

    out = run("validate", "--config", str(CONF), "--model.backbone.init_args.model_name_or_path", str(tiny_model_dir),
              "--data", "cir_lightning.data.circo.CIRCODataModule", "--data.root", str(pristine),
              "--data.eval_batch_size", "32", "--trainer.default_root_dir", "run", cwd=tmp_path).stdout
    assert "mAP@5" in out
    assert "predictions written to run/circo-val.json" in out
    results = json.loads((tmp_path / "run" / "results-validate.json").read_text())
    metrics = results["metrics"][""]
    assert set(metrics) == {"mAP@5", "mAP@10", "mAP@25", "mAP@50"}
    assert all(0.0 <= v <= 1.0 for v in metrics.values())
    assert results["subsets"][""] == {"num_queries": 6, "num_gallery": 60}
    assert results["config"]["data_class_path"] == "cir_lightning.data.circo.CIRCODataModule"
    assert results["config"]["data"]["query_template"] == BGE_VL_TEMPLATE
    val = json.loads((tmp_path / "run" / "circo-val.json").read_text())
    assert list(val) == [str(i) for i in range(6)]


def test_trainer_test_writes_the_submission_through_the_module_hook(tmp_path, tiny_model_dir, pristine):
    import lightning.pytorch as pl

    from cir_lightning.backbones import HFMultimodalBackbone, Prompts
    from cir_lightning.module import CIRModule

    module = CIRModule(HFMultimodalBackbone(str(tiny_model_dir), prompts=Prompts("short")))
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                         default_root_dir=tmp_path)
    trainer.test(module, CIRCODataModule(str(pristine), eval_batch_size=32), verbose=False)
    submission = json.loads((tmp_path / "circo-test.json").read_text())
    gallery = {i["id"] for i in load(pristine, INFO)["images"]}
    assert list(submission) == [str(i) for i in range(5)]
    assert all(len(set(v)) == 50 and set(v) <= gallery for v in submission.values())


def test_circo_config_parses(tmp_path, tiny_model_dir):
    from tests.test_cli import run

    config = Path(__file__).parents[2] / "configs" / "circo.yaml"
    out = run("validate", "--config", str(config), "--model.backbone.init_args.model_name_or_path",
              str(tiny_model_dir), "--print_config", cwd=tmp_path).stdout
    printed = yaml.safe_load(out)
    assert printed["data"]["class_path"] == "cir_lightning.data.circo.CIRCODataModule"
    assert printed["data"]["init_args"]["query_template"] == BGE_VL_TEMPLATE
    assert printed["model"]["backbone"]["init_args"]["lora"] is None
    assert printed["model"]["backbone"]["init_args"]["prompts"]["preset"] == "e5v"  # E5-V's, with E5-V


# ----------------------------------------------------------------- bad files, lines, atomic writes
def test_deeply_nested_json_names_file_and_line(root):
    val = load(root, "annotations/val.json")
    val[2]["semantic_aspects"] = "DEEP"
    save(root, "annotations/val.json", val)
    path = root / "annotations" / "val.json"
    path.write_text(path.read_text().replace('"DEEP"', "[" * 100_000 + "]" * 100_000))
    with pytest.raises(CIRDataError, match="JSON nested too deeply") as info:
        setup(root)
    assert str(info.value).startswith(f"{path}:4: ")
    val[2]["semantic_aspects"] = []
    save(root, "annotations/val.json", val)
    info_file = root / INFO
    info_file.write_text('{"images":\n [' + "[" * 100_000 + "]" * 100_000 + "]}")
    with pytest.raises(CIRDataError, match="JSON nested too deeply") as info:
        setup(root)
    assert str(info.value).startswith(f"{info_file}:2: ")


@pytest.mark.parametrize(("edit", "message"), [
    (lambda i: i["images"].__setitem__(3, [1]), r"`images` entry 4: expected a JSON object, got list"),
    (lambda i: i["images"][3].update(id="x"), r"`images` entry 4: `id` must be an integer image id, got 'x'"),
    (lambda i: i["images"][3].update(id=i["images"][0]["id"]), r"`images` entry 4 \(id \d+\): duplicate image id "
                                                                r"\(first: entry 1\)"),
    (lambda i: i["images"][3].update(file_name="../x.jpg"), r"`images` entry 4 \(id \d+\): `file_name` must be a "
                                                            "plain file name"),
    (lambda i: i.update(images={}), r'expected a COCO image-info object \{"images"'),
    (lambda i: i["images"][3].update(file_name="a\0.jpg"), r"`images` entry 4 \(id \d+\): `file_name` must be a plain "
                                                          r"file name, got 'a\\x00\.jpg'"),
    (lambda i: i["images"][3].update(file_name=i["images"][1]["file_name"]), r"image \d+: '\d+' is the image `.*` of "
                                                                           r"'\d+' too \(.*\): the two ids would tie"),
])
def test_bad_image_info_entries(root, edit, message):
    info = load(root, INFO)
    edit(info)
    save(root, INFO, info)
    with pytest.raises(CIRDataError, match=message) as err:
        setup(root)
    assert str(err.value).startswith(f"{root / INFO}: ")


def test_annotation_file_problems(root):
    path = root / "annotations" / "val.json"
    path.write_text("")
    with pytest.raises(CIRDataError, match=r"val\.json: CIRCO val annotation file is empty; expected a JSON list"):
        setup(root)
    path.write_text("[]")
    with pytest.raises(CIRDataError, match=r"val\.json: expected a non-empty JSON list of queries"):
        setup(root)
    path.unlink()
    path.mkdir()
    with pytest.raises(CIRDataError, match=r"val\.json: CIRCO val annotation file is a folder, not a file"):
        setup(root)
    with pytest.raises(CIRDataError, match=r"annotations: COCO image-info file is a folder, not a file; set "
                                           r"`image_info_file` to the COCO file$"):
        setup(root, "test", image_info_file=str(root / "annotations"))


def test_byte_order_mark_and_sources_with_lines(root):
    val = load(root, "annotations/val.json")
    save(root, "annotations/val.json", val)
    path = root / "annotations" / "val.json"
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes().replace(b"\n", b"\r\n"))
    queries, _ = setup(root).val_sets[0]
    assert queries.records[3].source == f"{path}:5: query {val[3]['id']}"


def test_a_gallery_folder_where_an_image_should_be_is_an_error_even_with_drop(root):
    image_id = image_ids(root)[7]
    image = root / IMAGES / f"{int(image_id):012d}.jpg"
    image.unlink()
    image.mkdir()
    for on_missing in ("error", "drop"):
        with pytest.raises(CIRDataError, match=rf"1 of 60 gallery images need image paths that are not image "
                                               rf"files: {image_id}: .* is a folder, not an image file"):
            setup(root, on_missing=on_missing)


def test_a_failing_submission_write_leaves_nothing(root, tmp_path, monkeypatch):
    import errno
    import os

    from cir_lightning.errors import CIRFileError

    dm = setup(root, "test")
    rankings = ranked(dm)

    def fsync(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(CIRFileError) as info:
        dm.write_predictions(tmp_path / "out", "test", {"": rankings}, {})
    assert str(info.value) == f"cannot write `{tmp_path / 'out' / 'circo-test.json'}`: no space left on the device"
    assert list((tmp_path / "out").iterdir()) == []


def test_an_existing_submission_or_link_is_never_replaced(root, tmp_path):
    dm = setup(root, "test")
    (tmp_path / "circo-test.json").write_text("mine")
    (tmp_path / "circo-test-1.json").symlink_to(tmp_path / "nowhere")
    [path] = dm.write_predictions(tmp_path, "test", {"": ranked(dm)}, {})
    assert path.name == "circo-test-2.json"
    assert (tmp_path / "circo-test.json").read_text() == "mine"
    assert (tmp_path / "circo-test-1.json").is_symlink()
