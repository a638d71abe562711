"""The JSONL DataModule: loading, exclusion, resizing, and every bad-input error naming file and line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from cir_lightning.data import JsonlCIRDataModule
from cir_lightning.errors import CIRDataError


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


@pytest.fixture
def root(tmp_path):
    (tmp_path / "images").mkdir()
    for name, colour in [("a", "red"), ("b", "blue"), ("c", "green")]:
        Image.new("RGB", (80, 40), colour).save(tmp_path / "images" / f"{name}.png")
    write_jsonl(tmp_path / "gallery.jsonl", [{"image_id": n, "image_path": f"images/{n}.png"} for n in "abc"])
    write_jsonl(tmp_path / "train.jsonl", [
        {"reference_image": "images/a.png", "target_image": "images/b.png", "modification": "make it blue",
         "target_caption": "blue"},
        {"reference_image": "images/b.png", "target_image": "images/c.png", "modification": "make it green",
         "target_caption": "green"},
    ])
    write_jsonl(tmp_path / "val_queries.jsonl", [
        {"query_id": "q0", "reference_image": "images/a.png", "reference_id": "a", "modification": "blue",
         "target_id": "b", "exclude_ids": ["a"]},
        {"query_id": "q1", "reference_image": "images/b.png", "reference_id": "b", "modification": "x",
         "target_ids": ["a", "c"]},
    ])
    return tmp_path


def setup(root: Path, stage: str = "fit", **kwargs) -> JsonlCIRDataModule:
    dm = JsonlCIRDataModule(str(root), **kwargs)
    dm.setup(stage)
    return dm


def test_loads_triplets_queries_gallery_and_ground_truth(root):
    dm = setup(root, max_short_edge=20, with_captions=True)
    sample = dm.train_set[0]
    assert sample["modification"] == "make it blue"
    assert sample["target_caption"] == "blue"
    assert sample["reference_image"].size == (40, 20)  # short edge shrunk to 20, aspect kept
    queries, gallery = dm.val_sets[0]
    assert gallery.ids == ["a", "b", "c"]
    assert queries.positives == [(1,), (0, 2)]  # rows in the gallery; several positives allowed
    assert queries.excluded == [(0,), ()]
    assert set(dm.val_dataloader()[1].dataset[2]) == {"index", "image"}


def test_exclude_reference_option_adds_the_reference(root):
    queries, _ = setup(root, "validate", exclude_reference=True).val_sets[0]
    assert queries.excluded == [(0,), (1,)]


def test_captions_are_optional_and_off_by_default(root):
    assert "target_caption" not in setup(root).train_set[0]


def test_test_stage_uses_test_files_or_falls_back_to_val(root):
    shutil.copy(root / "val_queries.jsonl", root / "test_queries.jsonl")
    assert len(setup(root, "test", test_queries_file="test_queries.jsonl").test_sets[0][0]) == 2
    assert len(setup(root, "test").test_sets[0][0]) == 2


@pytest.mark.parametrize(("file", "line", "bad", "message"), [
    ("train.jsonl", 2, "{not json", "malformed JSON"),
    ("train.jsonl", 1, "[1, 2]", "expected a JSON object"),
    ("train.jsonl", 2, {"reference_image": "images/a.png", "target_image": "images/b.png"},
     "missing field `modification`"),
    ("train.jsonl", 1, {"reference_image": "images/a.png", "target_image": 3, "modification": "m"},
     "`target_image` must be a non-empty string"),
    ("train.jsonl", 2, {"reference_image": "../secret.png", "target_image": "images/b.png", "modification": "m"},
     "points outside the image root"),
    ("train.jsonl", 1, {"reference_image": "/etc/passwd", "target_image": "images/b.png", "modification": "m"},
     "is absolute"),
    ("gallery.jsonl", 3, {"image_id": "a", "image_path": "images/a.png"}, "duplicate `image_id` 'a'"),
    ("gallery.jsonl", 2, {"image_id": ["b"], "image_path": "images/b.png"}, "`image_id` must be a non-empty string"),
    ("val_queries.jsonl", 2, {"query_id": "q0", "reference_image": "images/a.png", "modification": "m",
                              "target_id": "b"}, "duplicate `query_id` 'q0'"),
    ("val_queries.jsonl", 1, {"query_id": "q0", "reference_image": "images/a.png", "modification": "m",
                              "target_id": "b", "exclude_ids": ["b"]}, "excludes its own positive"),
    ("val_queries.jsonl", 1, {"query_id": "q0", "reference_image": "images/a.png", "modification": "m",
                              "target_ids": []}, "`target_ids` must be a non-empty list"),
    ("val_queries.jsonl", 2, {"query_id": "q1", "reference_image": "images/a.png", "modification": "m"},
     "missing field `target_id`"),
])
def test_bad_lines_name_file_and_line(root, file, line, bad, message):
    path = root / file
    rows = path.read_text().splitlines()
    rows[line - 1 if line <= len(rows) else len(rows):line] = [bad if isinstance(bad, str) else json.dumps(bad)]
    path.write_text("\n".join(rows) + "\n")
    with pytest.raises(CIRDataError, match=message) as info:
        setup(root)
    assert f"{file}:{line}:" in str(info.value)


def test_positives_missing_from_gallery_are_listed_not_counted_as_misses(root):
    write_jsonl(root / "val_queries.jsonl", [
        {"query_id": f"q{i}", "reference_image": "images/a.png", "modification": "m", "target_id": f"zz{i}"}
        for i in range(7)])
    with pytest.raises(CIRDataError, match=r"7 query\(ies\) have positives that are not in the gallery") as info:
        setup(root, "validate")
    assert "val_queries.jsonl:1 query 'q0': 'zz0'" in str(info.value)
    assert "and 2 more" in str(info.value)


def test_missing_images_are_listed_with_their_lines(root):
    (root / "images" / "c.png").unlink()
    with pytest.raises(CIRDataError, match=r"1 image file\(s\) do not exist") as info:
        setup(root)
    assert "train.jsonl:2:" in str(info.value)
    assert "c.png" in str(info.value)


def test_unreadable_image_fails_when_loaded_naming_file_and_line(root):
    (root / "images" / "b.png").write_bytes(b"this is not a png")
    dm = setup(root)
    with pytest.raises(CIRDataError, match=r"train\.jsonl:1: image .*b\.png` cannot be read"):
        dm.train_set[0]


def test_missing_files_and_empty_files_are_reported(root):
    with pytest.raises(CIRDataError, match="nope.jsonl: annotation file does not exist"):
        setup(root, train_file="nope.jsonl")
    (root / "train.jsonl").write_text("\n\n")
    with pytest.raises(CIRDataError, match="no training samples"):
        setup(root)
    with pytest.raises(CIRDataError, match="image root is not a folder"):
        setup(root, image_root=str(root / "missing"))


def test_image_root_separate_from_annotations(root, tmp_path_factory):
    images = tmp_path_factory.mktemp("elsewhere")
    shutil.move(str(root / "images"), str(images / "images"))
    dm = setup(root, image_root=str(images))
    assert dm.train_set[0]["target_image"].size == (80, 40)


def test_symlinked_image_folder_is_followed_but_dotdot_still_refused(root, tmp_path_factory):
    real = tmp_path_factory.mktemp("real_images")
    shutil.move(str(root / "images"), str(real / "images"))
    (root / "images").symlink_to(real / "images", target_is_directory=True)
    assert setup(root).train_set[0]["target_image"].size == (80, 40)
    path = root / "train.jsonl"
    rows = path.read_text().splitlines()
    rows[0] = json.dumps({"reference_image": "images/../../x.png", "target_image": "images/b.png",
                          "modification": "m"})
    path.write_text("\n".join(rows) + "\n")
    with pytest.raises(CIRDataError, match="train.jsonl:1: .* points outside the image root"):
        setup(root)


def test_nul_bytes_and_invalid_utf8_name_the_line(root):
    path = root / "gallery.jsonl"
    path.write_bytes(path.read_bytes() + b'{"image_id": "d", "image_path": "images/\\u0000.png"}\n')
    with pytest.raises(CIRDataError, match="gallery.jsonl:4: `image_path` must be a non-empty relative path"):
        setup(root)
    path.write_bytes(b'{"image_id": "a", "image_path": "images/a.png"}\n{"image_id": "\xff"}\n')
    with pytest.raises(CIRDataError, match=r"gallery.jsonl:2: not valid UTF-8"):
        setup(root)


def test_with_captions_requires_a_target_caption_on_every_line(root):
    path = root / "train.jsonl"
    rows = path.read_text().splitlines()
    rows[1] = json.dumps({k: v for k, v in json.loads(rows[1]).items() if k != "target_caption"})
    path.write_text("\n".join(rows) + "\n")
    assert len(setup(root).train_set) == 2  # captions not asked for: fine
    with pytest.raises(CIRDataError, match="train.jsonl:2: missing field `target_caption`"):
        setup(root, with_captions=True)


# ----------------------------------------------------------------- readers, exclusions, image paths
def edit_line(path: Path, line: int, row) -> None:
    rows = path.read_text().splitlines()
    rows[line - 1] = row if isinstance(row, str) else json.dumps(row)
    path.write_text("\n".join(rows) + "\n")


@pytest.mark.parametrize("file", ["train.jsonl", "gallery.jsonl", "val_queries.jsonl"])
def test_deeply_nested_line_is_an_error_naming_file_and_line(root, file):
    edit_line(root / file, 2, '{"a": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(CIRDataError, match="JSON nested too deeply") as info:
        setup(root)
    assert str(info.value).startswith(f"{root / file}:2: ")


def test_byte_order_mark_and_windows_line_ends_are_read(root):
    for name in ("train.jsonl", "gallery.jsonl", "val_queries.jsonl"):
        path = root / name
        path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes().replace(b"\n", b"\r\n"))
    dm = setup(root)
    assert len(dm.train_set) == 2
    assert dm.val_sets[0][1].ids == ["a", "b", "c"]


def test_annotation_folder_instead_of_file(root):
    (root / "train.jsonl").unlink()
    (root / "train.jsonl").mkdir()
    with pytest.raises(CIRDataError, match=r"train\.jsonl: annotation file is a folder, not a file$"):
        setup(root)


def queries_with(root: Path, **fields) -> None:
    rows = [json.loads(r) for r in (root / "val_queries.jsonl").read_text().splitlines()]
    rows[1].update(fields)
    write_jsonl(root / "val_queries.jsonl", rows)


def test_unknown_exclude_ids_are_an_error_naming_line_and_ids(root):
    queries_with(root, exclude_ids=["b-typo", "b", "zz"])
    with pytest.raises(CIRDataError) as info:
        setup(root, "validate")
    text = str(info.value)
    assert text.startswith(f"{root / 'val_queries.jsonl'}: 1 query(ies) exclude 2 id(s) that are not in the "
                           "gallery; a misspelt id leaves that image in the ranking")
    assert f"{root / 'val_queries.jsonl'}:2 query 'q1': `exclude_ids` 'b-typo', `exclude_ids` 'zz'" in text
    assert "`unknown_exclude_ids: warn`" in text


def test_unknown_exclude_ids_can_be_downgraded_to_one_warning(root):
    queries_with(root, exclude_ids=["b-typo", "b"], target_ids=["a", "c"])
    rows = [json.loads(r) for r in (root / "val_queries.jsonl").read_text().splitlines()]
    rows += [{**rows[0], "query_id": f"q{i}", "exclude_ids": [f"typo{i}"]} for i in range(2, 9)]
    write_jsonl(root / "val_queries.jsonl", rows)
    with pytest.warns(UserWarning, match="not in the gallery") as caught:
        queries, _ = setup(root, "validate", unknown_exclude_ids="warn").val_sets[0]
    assert len(caught) == 1
    message = str(caught[0].message)
    assert "8 query(ies) exclude 8 id(s) that are not in the gallery" in message
    assert "they are ignored" in message
    assert "... and 3 more" in message
    assert queries.excluded[:2] == [(0,), (1,)]  # the known ids still count


def test_triplets_whose_reference_is_their_target_are_kept_with_one_warning_naming_their_lines(root):
    """FashionIQ's training data has such pairs and its protocol trains on them; in one's own file they are more
    likely a mistake (they were taken without a word)."""
    rows = [json.loads(line) for line in (root / "train.jsonl").read_text().splitlines()]
    same = {**rows[0], "target_image": "images/./a.png"}  # the same file, written otherwise
    write_jsonl(root / "train.jsonl", [rows[0], same, rows[1], {**rows[1], "reference_image": "images/c.png"}])
    with pytest.warns(UserWarning, match="same reference and target") as caught:
        dm = setup(root)
    assert len(dm.train_set) == 4  # trained on as they are
    messages = [str(w.message) for w in caught if "same reference and target" in str(w.message)]
    assert messages == [f"{root / 'train.jsonl'}: 2 of 4 training triplets have the same reference and target image "
                        "(lines 2, 4): each asks the model to find its own reference image; they are trained on as "
                        "they are (FashionIQ's training data has a few such pairs), so check the file if it should "
                        "have none"]


def test_unknown_reference_id_is_an_error_only_when_the_reference_is_excluded(root):
    queries_with(root, reference_id="b_typo")
    assert len(setup(root, "validate").val_sets[0][0]) == 2  # not used: not checked
    with pytest.raises(CIRDataError, match=r"val_queries\.jsonl:2 query 'q1': `reference_id` 'b_typo'"):
        setup(root, "validate", exclude_reference=True)


def test_unknown_exclude_ids_option_is_checked():
    from cir_lightning.errors import CIRConfigError

    with pytest.raises(CIRConfigError, match="`unknown_exclude_ids` must be 'error' or 'warn', got 'ignore'"):
        JsonlCIRDataModule("anywhere", unknown_exclude_ids="ignore")


@pytest.mark.parametrize(("fields", "message"), [
    ({"target_ids": ["a", "c", "a"]}, r":2: `target_ids` lists 'a' more than once"),
    ({"target_ids": ["a"], "target_id": "c"}, r":2: `target_id` 'c' is not among `target_ids` \['a'\]"),
    ({"target_ids": ["a", {"id": "c"}]}, r":2: `target_ids` item 2 must be a non-empty string or an integer id, got \{'id': 'c'\}"),
    ({"exclude_ids": "a"}, r":2: `exclude_ids` must be a list, got 'a'"),
    ({"exclude_ids": ["a", None]}, r":2: `exclude_ids` item 2 must be a non-empty string or an integer id, got None"),
    ({"target_ids": [None]}, r":2: `target_ids` item 1 must be a non-empty string or an integer id, got None"),
    ({"query_id": " "}, r":2: field `query_id` must be a non-empty string or an integer id, got ' '"),
    ({"target_id": ""}, r":2: field `target_id` must be a non-empty string or an integer id, got ''"),
    ({"modification": ["x"] * 50}, r":2: field `modification` must be a non-empty string, got \['x', 'x', 'x', "
                                   r"'x', 'x', 'x', \.\.\.\]"),
])
def test_more_bad_query_lines(root, fields, message):
    queries_with(root, **fields)
    with pytest.raises(CIRDataError, match=message) as info:
        setup(root, "validate")
    assert str(info.value).startswith(str(root / "val_queries.jsonl"))


def test_null_exclude_ids_and_agreeing_target_fields_are_fine(root):
    queries_with(root, exclude_ids=None, target_id="c")  # target_ids ["a", "c"] holds it
    queries, _ = setup(root, "validate").val_sets[0]
    assert queries.positives[1] == (0, 2)
    assert queries.excluded[1] == ()


def test_a_folder_or_broken_link_where_an_image_should_be(root):
    (root / "images" / "c.png").unlink()
    (root / "images" / "c.png").mkdir()
    with pytest.raises(CIRDataError, match=r"1 image file\(s\) are missing or not image files: .*train\.jsonl:2: "
                                           r".*c\.png is a folder, not an image file"):
        setup(root)
    (root / "images" / "c.png").rmdir()
    (root / "images" / "c.png").symlink_to(root / "images" / "moved.png")
    with pytest.raises(CIRDataError, match=r"c\.png is a broken symbolic link \(to `.*moved\.png`\)"):
        setup(root)


@pytest.mark.parametrize(("line", "fields", "message"), [
    (1, {"exclude_id": ["a"]}, r"unknown field `exclude_id`: did you mean `exclude_ids`\? Ignored, a misspelt"),
    (1, {"Exclude_IDs": ["a"]}, "unknown field `Exclude_IDs`: did you mean `exclude_ids`?"),
    (1, {"ignore_ids": ["a"]}, "unknown field `ignore_ids`: did you mean `exclude_ids`?"),
    (1, {"targets": ["b", "c"]}, "unknown field `targets`: did you mean `target_ids`?"),  # beside target_id
    (1, {"positive_ids": ["b", "c"]}, "unknown field `positive_ids`: did you mean `target_ids`?"),
])
def test_a_misspelt_optional_query_field_is_an_error_not_ignored(root, line, fields, message):
    """Ignored, `exclude_id` would leave the reference in the ranking and `targets` would drop a positive: the
    metrics would change without a word."""
    rows = [json.loads(r) for r in (root / "val_queries.jsonl").read_text().splitlines()]
    rows[line - 1].pop("exclude_ids", None)
    rows[line - 1].update(fields)
    write_jsonl(root / "val_queries.jsonl", rows)
    with pytest.raises(CIRDataError, match=message) as info:
        setup(root, "validate")
    assert f"val_queries.jsonl:{line}:" in str(info.value)


def test_a_misspelt_required_field_is_reported_missing(root):
    write_jsonl(root / "gallery.jsonl", [{"image_id": "a", "img_path": "images/a.png"}])
    with pytest.raises(CIRDataError, match=r"gallery\.jsonl:1: missing field `image_path`"):
        setup(root, "validate")


def test_the_user_s_own_fields_are_kept_out_of_the_way(root):
    """Fields of the user's own, even ones named like the layout's, are ignored."""
    queries_with(root, category="dress", split="val", reference_url="http://x", reference_name="b",
                 target="note", image="url", sample_idx=3)
    write_jsonl(root / "gallery.jsonl", [{"image_id": n, "image_path": f"images/{n}.png", "image_url": "http://x",
                                          "image": "thumbnail", "img_path": "thumbs/x.png"} for n in "abc"])
    rows = [json.loads(r) for r in (root / "train.jsonl").read_text().splitlines()]
    write_jsonl(root / "train.jsonl", [{**r, "reference_path": "p", "target_idx": 1, "target_captoin": "typo"}
                                       for r in rows])
    dm = setup(root, "fit")
    queries, gallery = dm.val_sets[0]
    assert queries.positives[1] == (0, 2)
    assert len(gallery) == 3
    assert len(dm.train_set) == 2


def test_fewer_triplets_than_a_batch_is_an_error_not_an_empty_training(root):
    """Training drops the incomplete batch: 2 triplets with `batch_size` 4 would train nothing and exit 0."""
    with pytest.raises(CIRDataError, match=r"the training set has 2 triplet\(s\), 2 per process over 1 process\(es\), "
                                           r"fewer than `batch_size` = 4: .* lower `batch_size`"):
        setup(root, batch_size=4).train_dataloader()
    assert len(setup(root, batch_size=2).train_dataloader()) == 1


def test_one_image_under_two_gallery_ids_is_an_error(root):
    """Identical scores tie, ties go to the lower gallery row: with `b` listed second under another id, even a
    perfect model could never rank the target `b` first."""
    write_jsonl(root / "gallery.jsonl", [{"image_id": "a", "image_path": "images/a.png"},
                                         {"image_id": "b_copy", "image_path": "images/b.png"},
                                         {"image_id": "b", "image_path": "images/./b.png"},
                                         {"image_id": "c", "image_path": "images/c.png"}])
    with pytest.raises(CIRDataError, match=r"gallery\.jsonl:3: `image_path` 'images/\./b\.png' is the image of "
                                           r"`image_id` 'b_copy' too \(line 2\)"):
        setup(root, "validate")


def test_a_text_holding_the_model_s_placeholder_is_named_with_its_line_when_the_model_connects(root):
    """Refused before any batch (in a worker, mid-epoch, it would come after the gallery was embedded)."""
    from cir_lightning.backbones import SampleBatches

    def collator_of(placeholders: list[str]) -> SampleBatches:
        collator = SampleBatches()
        collator.placeholders = placeholders
        return collator

    collator = collator_of(["<image>", "<|video_pad|>"])
    queries_with(root, modification="make it <|video_pad|> red")
    dm = setup(root, "fit")
    with pytest.raises(CIRDataError, match=r"val_queries\.jsonl:2: the modification 'make it <\|video_pad\|> red' "
                                           r"holds '<\|video_pad\|>', a placeholder the model fills with a video"):
        dm.connect(collator)
    rows = [json.loads(r) for r in (root / "train.jsonl").read_text().splitlines()]
    rows[1]["target_caption"] = "a <image> square"
    write_jsonl(root / "train.jsonl", rows)
    queries_with(root, modification="make it red")
    setup(root, "fit").connect(collator)  # captions are not read without `with_captions`
    with pytest.raises(CIRDataError, match=r"train\.jsonl:2: the caption 'a <image> square' holds '<image>'"):
        setup(root, "fit", with_captions=True).connect(collator)
    setup(root, "fit", with_captions=True).connect(collator_of([]))  # a dual encoder has none


def test_a_blank_gallery_id_is_an_error(root):
    write_jsonl(root / "gallery.jsonl", [{"image_id": "a", "image_path": "images/a.png"},
                                         {"image_id": "", "image_path": "images/b.png"}])
    with pytest.raises(CIRDataError, match=r"gallery\.jsonl:2: field `image_id` must be a non-empty string or an "
                                           r"integer id, got ''"):
        setup(root, "validate")



def test_a_gallery_cache_of_one_gallery_file_is_never_used_for_another_of_the_same_root(root, tmp_path_factory):
    """The gallery's identity names the root, not the gallery file: two gallery files of one root both cache as
    `val-0-gallery` under one identity. The cache also records the ids and the image files they name, so it is
    refused for any other gallery, and loaded only for the same images under the same ids (the same embeddings)."""
    from types import SimpleNamespace

    import torch

    from cir_lightning.retrieval import RetrievalEvaluator
    from cir_lightning.retrieval.gallery_cache import GalleryCache

    folder = tmp_path_factory.mktemp("caches")

    def validate(gallery_file: str, rows: list | None = None) -> tuple[JsonlCIRDataModule, GalleryCache, set]:
        if rows is not None:
            write_jsonl(root / gallery_file, [{"image_id": i, "image_path": f"images/{p}.png"} for i, p in rows])
        dm = setup(root, "validate", gallery_file=gallery_file)
        cache = GalleryCache(folder)  # what a validate with `model.embedding_cache` looks up
        found = cache.lookup_sets(dm.split_for("validate"), dm.val_sets, dataset=dm.gallery_identity(), model={"m": 1})
        return dm, cache, found

    first, cache, found = validate("gallery.jsonl")
    assert found == set()
    evaluator = RetrievalEvaluator(ks=[1])
    evaluator.galleries[0] = embedded = torch.randn(3, 4)
    assert [p.name for p in cache.save(evaluator)] == ["val-0-gallery"]
    Image.new("RGB", (80, 40), "white").save(root / "images" / "d.png")
    others = {"swapped.jsonl": ([("a", "b"), ("b", "a"), ("c", "c")], "images: the ids name other image files"),
              "reordered.jsonl": ([("c", "c"), ("b", "b"), ("a", "a")], "ids: 3 cached, 3 expected, or in another"),
              "more.jsonl": ([("a", "a"), ("b", "b"), ("c", "c"), ("d", "d")], "ids: 3 cached, 4 expected"),
              "renamed.jsonl": ([("a", "a"), ("b", "b"), ("c", "d")], "images: the ids name other image files")}
    for name, (rows, message) in others.items():
        with pytest.raises(CIRDataError, match=f"val-0-gallery: the cache does not match: {message}"):
            validate(name, rows)
        assert setup(root, "validate", gallery_file=name).gallery_identity() == first.gallery_identity()
    copy, cache, found = validate("copy.jsonl", [("a", "a"), ("b", "b"), ("c", "c")])
    assert copy.gallery_identity() == first.gallery_identity()
    assert found == {0}  # the same images under the same ids: the same embeddings
    provided = []
    cache.provide(SimpleNamespace(provide=lambda subset, kind, rows, indices: provided.append(rows)))
    assert torch.equal(provided[0], embedded)
