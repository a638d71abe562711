"""The CIRR DataModule on a fake copy of the official layout: loading, image roots, the protocol (gallery,
reference exclusion, candidates), metrics by hand, the server files and every bad-input error."""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import pytest
import torch

from cir_lightning.data.cirr import CIRRDataModule
from cir_lightning.data.layouts.cirr import METRICS
from cir_lightning.errors import CIRConfigError, CIRDataError
from cir_lightning.retrieval import RetrievalEvaluator, SearchConfig, subsets_from_loaders
from tests.data.fake_cirr import image_dir, make_fake_cirr


@pytest.fixture
def root(tmp_path):
    return make_fake_cirr(tmp_path / "cirr")


def setup(root: Path, stage: str = "validate", **kwargs) -> CIRRDataModule:
    dm = CIRRDataModule(str(root), **kwargs)
    dm.setup(stage)
    return dm


def captions(root: Path, split: str) -> list[dict]:
    return json.loads((root / "captions" / f"cap.rc2.{split}.json").read_text())


def split_names(root: Path, split: str) -> dict[str, str]:
    return json.loads((root / "image_splits" / f"split.rc2.{split}.json").read_text())


def rewrite(path: Path, edit) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def test_loads_train_val_and_test1(root):
    dm = setup(root, "fit")
    train = captions(root, "train")
    assert len(dm.train_set) == len(train) == 8
    first = dm.train_set.records[0]
    assert first.modification == train[0]["caption"]
    assert first.sample_id == str(train[0]["pairid"])
    assert first.reference.name == train[0]["reference"] + ".png"
    assert first.target.name == train[0]["target_hard"] + ".png"
    assert first.reference.parent.parent.name == "train"  # the numbered sub-folders of the split file
    assert set(dm.train_set[0]) == {"index", "reference_image", "modification", "target_image", "target_key"}

    queries, gallery = dm.val_sets[0]
    val = captions(root, "val")
    assert queries.ids == [str(e["pairid"]) for e in val]
    assert [r.modification for r in queries.records] == [e["caption"] for e in val]
    assert gallery.ids == sorted(split_names(root, "val"))  # every image of the split, no extension
    assert len(gallery) == 60
    assert queries.metrics == METRICS
    assert queries.name == ""
    assert queries.depth == 50
    assert gallery[0]["image"].size == (8, 8)

    dm.setup("test")
    queries, gallery = dm.test_sets[0]
    assert queries.has_ground_truth is False
    assert queries.positives is None
    assert queries.ids == [str(e["pairid"]) for e in captions(root, "test1")]
    assert gallery.ids == sorted(split_names(root, "test1"))
    sub = subsets_from_loaders(dm.test_dataloader())[0]
    assert sub.positives is None
    assert sub.depth == 50
    assert [len(c) for c in sub.candidates] == [5] * 6


@pytest.mark.parametrize("split", ["val", "test1"])
def test_only_the_reference_is_excluded_and_candidates_are_the_other_members(root, split):
    dm = setup(root, "validate" if split == "val" else "test")
    queries, gallery = (dm.val_sets if split == "val" else dm.test_sets)[0]
    row = {name: i for i, name in enumerate(gallery.ids)}
    for entry, record, candidates in zip(captions(root, split), queries.records, queries.candidates, strict=True):
        members = entry["img_set"]["members"]
        assert record.excluded == (row[entry["reference"]],)
        assert sorted(candidates) == sorted(row[m] for m in members if m != entry["reference"])
        assert len(candidates) == 5
        others = {row[m] for m in members} - {row[entry["reference"]]}
        assert not others & set(record.excluded)  # not the whole img_set (the FiRE release bug)
        if split == "val":
            assert record.positives == (row[entry["target_hard"]],)
            assert row[entry["target_hard"]] in candidates


@pytest.mark.parametrize("layout", ["root", "img_raw", "images", "beside"])
def test_image_root_is_detected(tmp_path, layout):
    root = make_fake_cirr(tmp_path / "copy", images=layout)
    dm = setup(root)
    gallery = dm.val_sets[0][1]
    assert gallery.records[0].path.parent == (image_dir(tmp_path / "copy", layout) / "dev").resolve()
    assert gallery.records[0].path.is_file()


def test_image_root_elsewhere_needs_the_option_and_the_error_says_where_it_looked(tmp_path):
    root = make_fake_cirr(tmp_path / "copy", images="elsewhere")
    with pytest.raises(CIRDataError, match=r"no `dev/` image folder in .*img_raw.*images.*set `image_root`") as err:
        setup(root)
    assert str(root / "image_splits" / "split.rc2.val.json") in str(err.value)
    dm = setup(root, image_root=str(tmp_path / "copy" / "pictures"))
    assert dm.val_sets[0][1].records[0].path.is_file()


def test_split_paths_may_not_leave_the_image_root(root):
    rewrite(root / "image_splits" / "split.rc2.val.json",
            lambda d: d.update({next(iter(d)): "./dev/../../../secret.png"}))
    with pytest.raises(CIRDataError, match="points outside the image root"):
        setup(root)


def hand_scores(queries, gallery, targets: list[int]) -> tuple[torch.Tensor, list[dict]]:
    """Query x gallery scores whose rankings are known; the reference always scores highest."""
    scores = torch.zeros(len(queries), len(gallery))
    cases = []
    for i, (record, candidates, target) in enumerate(zip(queries.records, queries.candidates, targets,
                                                         strict=True)):
        ref = record.excluded[0]
        other = next(c for c in candidates if c != target)
        strangers = [j for j in range(len(gallery)) if j not in {ref, *candidates}]
        scores[i, ref] = 1.0
        if i % 3 == 0:  # target first: hit at every K
            scores[i, target] = 0.9
        elif i % 3 == 1:  # one stranger before the target: global rank 2, first among the candidates
            scores[i, strangers[0]], scores[i, target], scores[i, other] = 0.95, 0.9, 0.5
        else:  # six strangers and one member before it: global rank 8, second among the candidates
            for n, j in enumerate(strangers[:6]):
                scores[i, j] = 0.99 - 0.01 * n
            scores[i, other], scores[i, target] = 0.93, 0.9
        cases.append({"target": gallery.ids[target], "other": gallery.ids[other], "ref": gallery.ids[ref]})
    return scores, cases


def evaluate(dm, stage: str):
    loaders = dm.val_dataloader() if stage == "validate" else dm.test_dataloader()
    sub = subsets_from_loaders(loaders)[0]
    queries, gallery = loaders[0].dataset, loaders[1].dataset
    # test1 has no ground truth: let the first candidate play the target there
    targets = [r.positives[0] if r.positives else c[0] for r, c in zip(queries.records, queries.candidates,
                                                                       strict=True)]
    scores, cases = hand_scores(queries, gallery, targets)
    ev = RetrievalEvaluator(search=SearchConfig(backend="torch"))
    ev.add(0, "gallery", torch.eye(len(gallery)), torch.arange(len(gallery)))
    ev.add(0, "query", scores, torch.arange(len(queries)))
    results = ev.compute([sub], keep_rankings=True)
    rankings = {"": sub.ranked_ids(ev.rankings[""])}
    within = {"": sub.ranked_ids(ev.subset_rankings[""])}
    return results, rankings, within, cases


def test_metrics_by_hand_and_avg(root, tmp_path):
    dm = setup(root)
    results, rankings, within, cases = evaluate(dm, "validate")
    # queries 0, 3: rank 1; 1, 4: rank 2 (subset 1); 2, 5: rank 8 (subset 2)
    expected = {"Recall@1": 2 / 6, "Recall@5": 4 / 6, "Recall@10": 1.0, "Recall@50": 1.0,
                "Recall_subset@1": 4 / 6, "Recall_subset@2": 1.0, "Recall_subset@3": 1.0}
    assert results == pytest.approx(expected)
    assert dm.summarize(results) == pytest.approx({"Avg": 2 / 3})
    assert dm.summarize({"Recall@5": 0.5}) == {}

    paths = dm.write_predictions(tmp_path / "out", "validate", rankings, within)
    assert [p.name for p in paths] == ["cirr-val-recall.json", "cirr-val-recall_subset.json"]
    recall, subset = (json.loads(p.read_text()) for p in paths)
    for i, (qid, case) in enumerate(zip(dm.val_sets[0][0].ids, cases, strict=True)):
        assert (recall[qid][0] == case["target"]) == (i % 3 == 0)
        assert case["ref"] not in recall[qid]
        if i % 3 == 2:
            assert subset[qid][:2] == [case["other"], case["target"]]


def test_test1_submission_files(root, tmp_path):
    dm = setup(root, "test")
    results, rankings, within, cases = evaluate(dm, "test")
    assert results == {}  # no ground truth: rankings only
    paths = dm.write_predictions(tmp_path, "test", rankings, within)
    assert [p.name for p in paths] == ["cirr-test1-recall.json", "cirr-test1-recall_subset.json"]
    recall, subset = (json.loads(p.read_text()) for p in paths)
    entries = captions(root, "test1")
    names = set(split_names(root, "test1"))
    assert (recall["version"], recall["metric"]) == ("rc2", "recall")
    assert (subset["version"], subset["metric"]) == ("rc2", "recall_subset")
    assert set(recall) == set(subset) == {"version", "metric", *(str(e["pairid"]) for e in entries)}
    for entry, case in zip(entries, cases, strict=True):
        top, within3 = recall[str(entry["pairid"])], subset[str(entry["pairid"])]
        assert len(top) == len(set(top)) == 50
        assert set(top) <= names
        assert entry["reference"] not in top + within3
        assert len(within3) == len(set(within3)) == 3
        assert set(within3) <= set(entry["img_set"]["members"])
        assert case["target"] in top[:8]
    assert dm.write_predictions(tmp_path, "fit", rankings, within) == []


def test_test_caches_test1s_gallery_as_test(root, tmp_path, tiny_model_dir):
    """CIRR's test evaluates test1, another split than val: its gallery cache is named test (validate's val)."""
    import lightning.pytorch as pl

    from cir_lightning.backbones import HFMultimodalBackbone, Prompts
    from cir_lightning.module import CIRModule

    cache = tmp_path / "cache"
    module = CIRModule(HFMultimodalBackbone(str(tiny_model_dir), prompts=Prompts("short")), write_results=False,
                       embedding_cache=str(cache))
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                         default_root_dir=tmp_path)
    trainer.test(module, CIRRDataModule(str(root)), verbose=False)
    assert sorted(p.name for p in cache.iterdir()) == ["test-0-gallery"]
    meta = json.loads((cache / "test-0-gallery" / "meta.json").read_text())
    assert meta["split"] == "test/0"
    assert meta["count"] == len(split_names(root, "test1"))


def good_rankings(dm: CIRRDataModule) -> tuple[dict, dict]:
    gallery = dm.gallery_names["test1"]
    ranked = {pid: [n for n in gallery if n != p.reference][:50] for pid, p in dm.pairs["test1"].items()}
    within = {pid: list(p.candidates[:3]) for pid, p in dm.pairs["test1"].items()}
    return {"": ranked}, {"": within}


@pytest.mark.parametrize(("change", "message"), [
    ("missing", r"recall submission has 1 problem\(s\): 1 pair id\(s\) missing \((\d+)\)"),
    ("reference", r"recall submission .*lists its reference"),
    ("short", r"recall submission .*: 49 names, need 50"),
    ("duplicate", r"recall submission .*duplicate names"),
    ("outsider", r"recall_subset submission .*not among the img_set members"),
    ("extension", r"recall submission .*not among the split's images"),
])
def test_invalid_submissions_are_refused_before_anything_is_written(root, tmp_path, change, message):
    dm = setup(root, "test")
    (ranked,), (within,) = (r.values() for r in good_rankings(dm))
    pid, pair = next(iter(dm.pairs["test1"].items()))
    if change == "missing":
        del ranked[pid]
        del within[pid]
    elif change == "reference":
        ranked[pid] = [pair.reference, *ranked[pid][:49]]
    elif change == "short":
        ranked[pid] = ranked[pid][:49]
    elif change == "duplicate":
        ranked[pid][1] = ranked[pid][0]
    elif change == "outsider":
        within[pid][0] = next(n for n in dm.gallery_names["test1"] if n not in pair.candidates + (pair.reference,))
    else:
        ranked[pid][0] += ".png"
    with pytest.raises(CIRDataError, match=message):
        dm.write_predictions(tmp_path / "out", "test", {"": ranked}, {"": within})
    assert not (tmp_path / "out").exists()


def test_submission_files_are_never_overwritten_and_stay_paired(root, tmp_path):
    dm = setup(root, "test")
    ranked, within = good_rankings(dm)
    first = dm.write_predictions(tmp_path, "test", ranked, within)
    before = first[0].read_text()
    second = dm.write_predictions(tmp_path, "test", ranked, within)
    assert [p.name for p in second] == ["cirr-test1-recall-1.json", "cirr-test1-recall_subset-1.json"]
    assert first[0].read_text() == before
    first[0].unlink()  # a lone recall_subset.json still blocks suffix 0 for both
    third = dm.write_predictions(tmp_path, "test", ranked, within)
    assert [p.name for p in third] == ["cirr-test1-recall-2.json", "cirr-test1-recall_subset-2.json"]


def test_missing_images_are_an_error_or_dropped(root):
    entry = captions(root, "val")[1]
    target = image_dir(root, "img_raw") / split_names(root, "val")[entry["target_hard"]]
    target.unlink()
    with pytest.raises(CIRDataError, match=rf"1 of 60 val images need missing images: {entry['target_hard']}: "
                                           r".*on_missing: drop"):
        setup(root)
    with warnings.catch_warnings(record=True) as warned:
        warnings.simplefilter("always")
        dm = setup(root, on_missing="drop")
    messages = [str(w.message) for w in warned]
    assert any("dropped 1 of 60 val images" in m for m in messages)
    assert any("dropped 1 of 6 val pairs" in m for m in messages)
    queries, gallery = dm.val_sets[0]
    assert len(gallery) == 59
    assert entry["target_hard"] not in gallery.ids
    assert str(entry["pairid"]) not in queries.ids
    assert len(queries) == 5
    with pytest.warns(UserWarning, match="no CIRR val prediction files written: `on_missing: drop` left out 1"):
        assert dm.write_predictions(root, "validate", {"": {}}, {"": {}}) == []


def test_a_reduced_test1_gallery_writes_no_server_files(root, tmp_path):
    used = {n for e in captions(root, "test1") for n in [e["reference"], *e["img_set"]["members"]]}
    unused = next(n for n in split_names(root, "test1") if n not in used)  # no pair needs it
    (image_dir(root, "img_raw") / split_names(root, "test1")[unused]).unlink()
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        dm = setup(root, "test", on_missing="drop")
    queries, gallery = dm.test_sets[0]
    assert len(queries) == len(captions(root, "test1"))  # every pair kept, ranked over a smaller gallery
    rankings = {q: list(gallery.ids[:50]) for q in queries.ids}
    with pytest.warns(UserWarning, match="left out 0 pairs and 1 gallery images"):
        assert dm.write_predictions(tmp_path, "test", {"": rankings}, {"": rankings}) == []
    assert not list(tmp_path.glob("cirr-*.json"))


def test_an_unknown_on_missing_is_refused_at_construction():
    with pytest.raises(CIRConfigError, match="`on_missing` must be 'error' or 'drop', got 'skip'"):
        CIRRDataModule("anywhere", on_missing="skip")


def test_missing_train_image_is_an_error(root):
    entry = captions(root, "train")[0]
    (image_dir(root, "img_raw") / split_names(root, "train")[entry["reference"]]).unlink()
    with pytest.raises(CIRDataError, match=rf"train triplets need missing images: .*pairid {entry['pairid']}"):
        setup(root, "fit")


@pytest.mark.parametrize("change", ["five", "duplicate", "no_reference", "no_target"])
def test_bad_img_set_names_the_file_and_pair(root, change):
    def edit(entries):
        e = entries[2]
        members = e["img_set"]["members"]
        if change == "five":
            members.pop(members.index(next(m for m in members if m not in (e["reference"], e["target_hard"]))))
        elif change == "duplicate":
            i = members.index(next(m for m in members if m not in (e["reference"], e["target_hard"])))
            members[i] = e["reference"]
        else:
            key = "reference" if change == "no_reference" else "target_hard"
            members[members.index(e[key])] = next(n for n in split_names(root, "val") if n not in members)

    rewrite(root / "captions" / "cap.rc2.val.json", edit)
    pid = captions(root, "val")[2]["pairid"]
    with pytest.raises(CIRDataError, match=rf"cap\.rc2\.val\.json:1: entry 3 \(pairid {pid}\): `img_set\.members` "
                                           r"must be 6 distinct names including the reference and the target"):
        setup(root)


def test_names_absent_from_the_split_file_are_counted(root):
    entries = captions(root, "val")
    gone = set(entries[0]["img_set"]["members"]) | set(entries[1]["img_set"]["members"])
    rewrite(root / "image_splits" / "split.rc2.val.json", lambda d: [d.pop(n) for n in gone])
    with pytest.raises(CIRDataError, match=r"12 image name\(s\) are not in .*split\.rc2\.val\.json: .* \.\.\. and "
                                           r"7 more; are the captions and the split file of the same release"):
        setup(root)


def test_malformed_annotation_files(root):
    (root / "captions" / "cap.rc2.val.json").write_text("[{")
    with pytest.raises(CIRDataError, match=r"cap\.rc2\.val\.json:1: malformed JSON \(Expecting property name"):
        setup(root)
    (root / "captions" / "cap.rc2.val.json").write_text('{"pairid": 1}')
    with pytest.raises(CIRDataError, match="expected a JSON list, got dict"):
        setup(root)
    (root / "captions" / "cap.rc2.val.json").write_text('[{"pairid": 1, "reference": "x"}]')
    with pytest.raises(CIRDataError, match=r"entry 1 \(pairid 1\): `caption` must be a non-empty string"):
        setup(root)
    entry = captions(root, "test1")[0]
    (root / "captions" / "cap.rc2.test1.json").write_text(json.dumps([entry, entry]))
    with pytest.raises(CIRDataError, match=rf":1: entry 2 \(pairid {entry['pairid']}\): `pairid` must be unique; "
                                           r"entry 1 on line 1 has it too"):
        setup(root, "test")
    (root / "captions" / "cap.rc2.val.json").write_text(
        '[{"pairid": 1, "reference": "x", "target_hard": "x", "caption": "c"}]')
    with pytest.raises(CIRDataError, match="`target_hard` is the reference 'x'; it could never be retrieved"):
        setup(root)


# ---------------------------------------------------------------------------- the CLI, end to end
CONFIGS = Path(__file__).parents[2] / "configs"


def cli_args(root: Path, model: Path) -> list[str]:
    from tests.test_cli import CONF

    return ["--config", str(CONF), "--model.backbone.init_args.model_name_or_path", str(model),
            "--data", "cir_lightning.data.cirr.CIRRDataModule", "--data.root", str(root),
            "--data.eval_batch_size", "64", "--trainer.default_root_dir", "run"]


def test_cli_validate_logs_recall_subset_avg_and_writes_consistent_files(tmp_path, tiny_model_dir):
    from tests.test_cli import run

    root = make_fake_cirr(tmp_path / "cirr")
    out = run("validate", *cli_args(root, tiny_model_dir), cwd=tmp_path).stdout
    assert "predictions written to run/cirr-val-recall_subset.json" in out
    results = json.loads((tmp_path / "run" / "results-validate.json").read_text())
    metrics = results["metrics"][""]
    assert set(metrics) == {*(f"Recall@{k}" for k in (1, 5, 10, 50)), "Recall_subset@1", "Recall_subset@2",
                            "Recall_subset@3", "Avg"}
    assert results["subsets"][""] == {"num_queries": 6, "num_gallery": 60}
    assert metrics["Avg"] == pytest.approx((metrics["Recall@5"] + metrics["Recall_subset@1"]) / 2)
    # the val prediction files agree with the logged metrics
    recall, subset = (json.loads((tmp_path / "run" / f"cirr-val-{m}.json").read_text())
                      for m in ("recall", "recall_subset"))
    entries = captions(root, "val")
    for k in (1, 5, 10, 50):
        hits = [e["target_hard"] in recall[str(e["pairid"])][:k] for e in entries]
        assert sum(hits) / len(entries) == pytest.approx(metrics[f"Recall@{k}"])
    for k in (1, 2, 3):
        hits = [e["target_hard"] in subset[str(e["pairid"])][:k] for e in entries]
        assert sum(hits) / len(entries) == pytest.approx(metrics[f"Recall_subset@{k}"])


@pytest.mark.slow
def test_cli_test_writes_the_test1_server_files(tmp_path, tiny_model_dir):
    from tests.test_cli import run

    root = make_fake_cirr(tmp_path / "cirr")
    out = run("test", *cli_args(root, tiny_model_dir), cwd=tmp_path).stdout
    assert "predictions written to run/cirr-test1-recall.json" in out
    recall, subset = (json.loads((tmp_path / "run" / f"cirr-test1-{m}.json").read_text())
                      for m in ("recall", "recall_subset"))
    pairids = {str(e["pairid"]) for e in captions(root, "test1")}
    assert set(recall) - {"version", "metric"} == set(subset) - {"version", "metric"} == pairids
    assert {len(v) for k, v in recall.items() if k in pairids} == {50}
    assert {len(v) for k, v in subset.items() if k in pairids} == {3}


@pytest.mark.parametrize(("config", "command"), [("cirr.yaml", "validate"), ("cirr_train.yaml", "fit")])
def test_cirr_configs_parse(tmp_path, tiny_model_dir, config, command, monkeypatch, capsys):
    import yaml

    from cir_lightning.cli import CIRLightningCLI

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["cir-lightning"])
    with pytest.raises(SystemExit) as done:  # in process: no second interpreter start-up
        CIRLightningCLI(args=[command, "--config", str(CONFIGS / config), "--model.backbone.init_args."
                              "model_name_or_path", str(tiny_model_dir), "--data.init_args.root", str(tmp_path),
                              "--print_config"])
    assert done.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["data"]["class_path"] == "cir_lightning.data.cirr.CIRRDataModule"
    assert printed["data"]["init_args"]["root"] == str(tmp_path)
    backbone = printed["model"]["backbone"]["init_args"]
    assert backbone["model_name_or_path"] == str(tiny_model_dir)
    assert backbone["prompts"]["preset"] == ("e5v_cirr" if command == "validate" else "fire")
    if command == "fit":
        assert backbone["lora"]["r"] == 64
        assert printed["model"]["loss"]["init_args"]["recall_weights"] == [0.4, 0.15]
        assert printed["model"]["warmup"] == 3000
    else:
        assert backbone["lora"] is None


# ----------------------------------------------------------------- bad files, lines, atomic writes
def write_lines(path: Path, data) -> None:
    """A list one element a line (element i from 1 on line i + 1); an object one member a line."""
    if isinstance(data, list):
        path.write_text("[\n" + ",\n".join(map(json.dumps, data)) + "\n]")
    else:
        path.write_text("{\n" + ",\n".join(f"{json.dumps(k)}: {json.dumps(v)}" for k, v in data.items()) + "\n}")


@pytest.mark.parametrize("file", ["captions/cap.rc2.val.json", "image_splits/split.rc2.val.json"])
def test_deeply_nested_json_names_file_and_line(root, file):
    data = json.loads((root / file).read_text())
    if isinstance(data, list):
        data[3]["img_set"] = "DEEP"
    else:
        data[next(iter(data))] = "DEEP"
    write_lines(root / file, data)
    text = (root / file).read_text().replace('"DEEP"', "[" * 100_000 + "]" * 100_000)
    (root / file).write_text(text)
    with pytest.raises(CIRDataError, match="JSON nested too deeply") as info:
        setup(root)
    line = 5 if isinstance(data, list) else 2
    assert str(info.value).startswith(f"{root / file}:{line}: ")


@pytest.mark.parametrize(("edit", "message"), [
    (lambda e: e.__setitem__(1, [e[1]]), r":3: entry 2: expected a JSON object, got list"),
    (lambda e: e[1].update(pairid=1.5), r":3: entry 2: `pairid` must be an integer, got 1\.5"),
    (lambda e: e[1].pop("img_set"), r":3: entry 2 \(pairid \d+\): `img_set` is missing; Recall_subset needs"),
    (lambda e: e[1].update(img_set=[]), r":3: entry 2 \(pairid \d+\): `img_set\.members` must be 6 distinct"),
    (lambda e: e[1].update(caption=["two", "captions"]), r":3: entry 2 \(pairid \d+\): `caption` must be a "
                                                         r"non-empty string, got \['two', 'captions'\]"),
    (lambda e: e[1].update(reference=17), r":3: entry 2 \(pairid \d+\): `reference` must be a non-empty string"),
])
def test_bad_caption_entries_name_file_line_and_pair(root, edit, message):
    path = root / "captions" / "cap.rc2.val.json"
    entries = captions(root, "val")
    edit(entries)
    write_lines(path, entries)
    with pytest.raises(CIRDataError, match=message) as info:
        setup(root)
    assert str(info.value).startswith(str(path))


def test_two_names_of_one_image_are_refused(root):
    path = root / "image_splits" / "split.rc2.val.json"
    names = split_names(root, "val")
    first, second = sorted(names)[:2]
    write_lines(path, {**names, second: names[first].replace("./", "./dev/../", 1)})
    line = list(names).index(second) + 2
    with pytest.raises(CIRDataError, match=rf"split\.rc2\.val\.json:{line}: '{second}': '{second}' is the image `.*` of "
                                           rf"'{first}' too \(.*\): the two ids would tie in every ranking"):
        setup(root)


def test_bad_split_files_name_the_line(root):
    path = root / "image_splits" / "split.rc2.val.json"
    names = split_names(root, "val")
    third = list(names)[2]
    write_lines(path, {**names, third: ["./dev/x.png"]})
    with pytest.raises(CIRDataError, match=rf"split\.rc2\.val\.json:4: image '{third}': expected \{{name: relative "
                                           r"path\}, got the value \['\./dev/x\.png'\]"):
        setup(root)
    write_lines(path, {**names, third: "./dev/../../x.png"})
    with pytest.raises(CIRDataError, match=rf"split\.rc2\.val\.json:4: `{third}` '\./dev/\.\./\.\./x\.png' points "
                                           "outside the image root"):
        setup(root)
    text = "{\n" + ",\n".join(f"{json.dumps(k)}: {json.dumps(v)}" for k, v in names.items())
    path.write_text(text + f',\n{json.dumps(third)}: "./dev/other.png"\n}}')
    with pytest.raises(CIRDataError, match=rf"split\.rc2\.val\.json:62: key '{third}' appears twice \(first on "
                                           r"line 4; JSON would keep only the last\)"):
        setup(root)
    path.write_text("{}")
    with pytest.raises(CIRDataError, match=r"split\.rc2\.val\.json: no images"):
        setup(root)


def test_sources_name_file_line_and_pair(root):
    path = root / "captions" / "cap.rc2.val.json"
    entries = captions(root, "val")
    write_lines(path, entries)
    queries, gallery = setup(root).val_sets[0]
    assert queries.records[2].source == f"{path}:4: pairid {entries[2]['pairid']}"
    split = root / "image_splits" / "split.rc2.val.json"
    line = next(i + 1 for i, text in enumerate(split.read_text().splitlines()) if f'"{gallery.ids[0]}"' in text)
    assert gallery.records[0].source == f"{split}:{line}: {gallery.ids[0]!r}"


def test_byte_order_mark_and_windows_line_ends(root):
    for path in [*(root / "captions").iterdir(), *(root / "image_splits").iterdir()]:
        path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes().replace(b"\n", b"\r\n"))
    dm = setup(root, "fit")
    assert len(dm.train_set) == 8
    assert len(dm.val_sets[0][0]) == 6


def test_an_image_folder_where_a_file_should_be_is_an_error_even_with_drop(root):
    entry = captions(root, "val")[0]
    image = image_dir(root, "img_raw") / split_names(root, "val")[entry["reference"]]
    image.unlink()
    image.mkdir()
    for on_missing in ("error", "drop"):
        with pytest.raises(CIRDataError, match=rf"1 of 60 val images need image paths that are not image files: "
                                               rf"{entry['reference']}: .* is a folder, not an image file"):
            setup(root, on_missing=on_missing)


def test_existing_files_and_links_are_never_replaced(root, tmp_path):
    dm = setup(root, "test")
    ranked, within = good_rankings(dm)
    (tmp_path / "cirr-test1-recall.json").write_text("mine")
    (tmp_path / "cirr-test1-recall_subset-1.json").symlink_to(tmp_path / "nowhere")
    paths = dm.write_predictions(tmp_path, "test", ranked, within)
    assert [p.name for p in paths] == ["cirr-test1-recall-2.json", "cirr-test1-recall_subset-2.json"]
    assert (tmp_path / "cirr-test1-recall.json").read_text() == "mine"
    assert (tmp_path / "cirr-test1-recall_subset-1.json").is_symlink()


@pytest.mark.parametrize("fail_at", [1, 2])
def test_a_failing_write_leaves_no_file_and_no_half_pair(root, tmp_path, monkeypatch, fail_at):
    import errno
    import os
    import stat

    from cir_lightning.errors import CIRFileError

    dm = setup(root, "test")
    ranked, within = good_rankings(dm)
    calls = []
    real_fsync = os.fsync

    def fsync(fd):
        if stat.S_ISREG(os.fstat(fd).st_mode):  # a file's, not the folder's
            calls.append(fd)
            if len(calls) == fail_at:
                raise OSError(errno.ENOSPC, "No space left on device")
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    out = tmp_path / "out"
    with pytest.raises(CIRFileError) as info:
        dm.write_predictions(out, "test", ranked, within)
    name = "cirr-test1-recall.json" if fail_at == 1 else "cirr-test1-recall_subset.json"
    assert str(info.value) == f"cannot write `{out / name}`: no space left on the device"
    assert list(out.iterdir()) == []  # no partial file, no temporary file, no lone half of the pair
