"""``CIRDataModule``'s contract with the model: declared hooks, the stage -> split switch, the gallery
identity of embedding caches (pinned: caches written before must still match), the shared options'
``--help``, the old import paths, and which way the data modules import."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
from jsonargparse import ArgumentParser

from cir_lightning.data import (
    BGEVLDataModule,
    CIRCODataModule,
    CIRDataModule,
    CIRRDataModule,
    FashionIQDataModule,
    JsonlCIRDataModule,
    SyntheticCIRDataModule,
)
from cir_lightning.data.datasets import GalleryDataset, QueryDataset
from cir_lightning.errors import CIRConfigError

PACKAGE = Path(__file__).parents[2] / "cir_lightning"
IDENTITIES = [  # (DataModule, expected identity; {r} is the resolved working folder)
    (lambda: CIRDataModule(), "CIRDataModule()"),
    (lambda: CIRDataModule(max_short_edge=224), "CIRDataModule(max_short_edge=224:lanczos-floor)"),
    (lambda: FashionIQDataModule("fiq"), "FashionIQDataModule(root={r}/fiq, image_root={r}/fiq/images)"),
    (lambda: FashionIQDataModule("fiq", image_root="imgs", max_short_edge=336),
     "FashionIQDataModule(root={r}/fiq, image_root={r}/imgs, max_short_edge=336:lanczos-floor)"),
    (lambda: CIRRDataModule("cirr"), "CIRRDataModule(root={r}/cirr)"),
    (lambda: CIRRDataModule("cirr", image_root="img_raw", max_short_edge=224),
     "CIRRDataModule(root={r}/cirr, image_root={r}/img_raw, max_short_edge=224:lanczos-floor)"),
    (lambda: CIRCODataModule("circo"), "CIRCODataModule(root={r}/circo)"),
    (lambda: CIRCODataModule("circo", gallery_root="coco", image_info_file="info.json", max_short_edge=224),
     "CIRCODataModule(root={r}/circo, gallery_root={r}/coco, image_info_file={r}/info.json, max_short_edge=224:lanczos-floor)"),
    (lambda: JsonlCIRDataModule("data"), "JsonlCIRDataModule(root={r}/data)"),
    (lambda: JsonlCIRDataModule("data", image_root="images", max_short_edge=64, gallery_file="other.jsonl"),
     "JsonlCIRDataModule(root={r}/data, image_root={r}/images, max_short_edge=64:lanczos-floor)"),
    (lambda: JsonlCIRDataModule("link"), "JsonlCIRDataModule(root={r}/real)"),  # links resolved
    (lambda: SyntheticCIRDataModule("synth", max_short_edge=32), "SyntheticCIRDataModule(root={r}/synth, max_short_edge=32:lanczos-floor)"),
]


def identity_as_module_built_it(dm: object) -> str:
    """The string ``CIRModule._cached_galleries`` built before ``gallery_identity`` existed."""
    names = ("root", "image_root", "gallery_root", "image_info_file", "max_short_edge")
    where = {name: getattr(dm, name) for name in names if getattr(dm, name, None) is not None}
    where = {k: Path(v).resolve() if isinstance(v, str | Path) else v for k, v in where.items()}
    return f"{type(dm).__name__}({', '.join(f'{k}={v}' for k, v in where.items())})"


@pytest.mark.parametrize(("make", "expected"), IDENTITIES)
def test_gallery_identity_is_the_string_caches_were_written_with(tmp_path, monkeypatch, make, expected):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    dm = make()
    assert dm.gallery_identity() == expected.format(r=tmp_path.resolve())
    # the same string as before, but with `max_short_edge`, whose images are now shrunk as FiRE's release shrinks
    # them (LANCZOS, int): caches of the images shrunk before (bicubic, round) must not match
    assert (dm.gallery_identity() == identity_as_module_built_it(dm)) == ("max_short_edge" not in expected)


def test_the_contract_is_declared_with_defaults_that_do_nothing(tmp_path):
    jsonl, fiq = JsonlCIRDataModule(str(tmp_path)), FashionIQDataModule(str(tmp_path), categories=["dress"])
    assert (jsonl.summarize({"Recall@1": 1.0}), jsonl.report({"Recall@1": 1.0})) == ({}, "")
    assert jsonl.write_predictions(tmp_path, "test", {"": {"q": ["a"]}}, {}) == []
    assert list(tmp_path.iterdir()) == []
    assert [dm.writes_predictions for dm in (jsonl, fiq, CIRRDataModule("c"), CIRCODataModule("c"))] == \
        [False, False, True, True]
    assert [dm.with_captions for dm in (jsonl, fiq, CIRRDataModule("c"), CIRCODataModule("c"))] == [False] * 4
    assert JsonlCIRDataModule(str(tmp_path), with_captions=True).with_captions
    assert CIRRDataModule("c").summarize({"Recall@5": 0.5, "Recall_subset@1": 1.0}) == {"Avg": 0.75}
    assert not hasattr(CIRDataModule, "eval_sets")


class Recording(CIRDataModule):
    def __init__(self) -> None:
        super().__init__()
        self.read: list[str] = []

    def load_train_set(self) -> None:
        self.read.append("train")

    def load_eval_sets(self, split: str) -> list:
        self.read.append(split)
        return [(QueryDataset([], name=split), GalleryDataset([]))]


def names(sets: list) -> list[str]:
    return [queries.name for queries, _ in sets]


@pytest.mark.parametrize(("stage", "read", "sets"), [
    ("fit", ["train", "val"], (["val"], [])),
    ("validate", ["val"], (["val"], [])),
    ("test", ["test"], ([], ["test"])),
    ("predict", ["test"], ([], ["test"])),
])
def test_each_stage_reads_its_split_once(stage, read, sets):
    dm = Recording()
    dm.setup(stage)
    dm.setup(stage)
    assert dm.read == read + (["train"] if stage == "fit" else [])  # no training data: asked again
    assert (names(dm.val_sets), names(dm.test_sets)) == sets


@pytest.mark.parametrize(("sets", "named"), [
    ([("q", "g")], "subset 0 is (str, str)"),
    (("pair",), "got tuple"),
    ([(QueryDataset([]), GalleryDataset([])), (GalleryDataset([]), QueryDataset([]))],
     "subset 1 is (GalleryDataset, QueryDataset)"),
    ([(QueryDataset([]),)], "subset 0 is (QueryDataset)"),
])
def test_eval_sets_that_are_not_query_gallery_pairs_are_one_line_naming_the_subset(sets, named):
    class Mine(CIRDataModule):  # a benchmark of one's own: a mistake in its load_eval_sets
        def load_eval_sets(self, split):
            return sets

    with pytest.raises(CIRConfigError, match=rf"^Mine.load_eval_sets\('val'\) must return a list of "
                                             rf"\(QueryDataset, GalleryDataset\) pairs .*{re.escape(named)}$"):
        Mine().setup("validate")


def test_predict_embeds_the_test_sets_or_else_the_val_sets_read_before_and_says_which():
    dm = Recording()
    dm.setup("validate")
    split, sets = dm.predict_sets()
    assert (split, names(sets)) == ("val", ["val"])
    dm.setup("predict")
    split, sets = dm.predict_sets()
    assert (split, names(sets)) == ("test", ["test"])
    assert len(dm.predict_dataloader()) == 2  # the queries and the gallery of the one test subset


@pytest.mark.parametrize(("make", "splits"), [  # the split fit, validate, test and predict evaluate
    (lambda: CIRRDataModule("c"), ["val", "val", "test", "test"]),  # test1: another split
    (lambda: CIRCODataModule("c"), ["val", "val", "test", "test"]),
    (lambda: JsonlCIRDataModule("d", test_queries_file="t.jsonl"), ["val", "val", "test", "test"]),
    (lambda: JsonlCIRDataModule("d", test_gallery_file="g.jsonl"), ["val", "val", "test", "test"]),  # not val's data
    (lambda: JsonlCIRDataModule("d"), ["val", "val", "val", "val"]),  # test reads the val files then
    (lambda: SyntheticCIRDataModule("s"), ["val", "val", "val", "val"]),  # it writes no test files
    (lambda: FashionIQDataModule("f"), ["val", "val", "val", "val"]),  # test labels are not public
    (lambda: BGEVLDataModule(), ["val", "val", "val", "val"]),  # val and test are the same sets
])
def test_each_stage_names_the_split_its_data_is(make, splits):
    assert [make().split_for(stage) for stage in ("fit", "validate", "test", "predict")] == splits


class Renamed(Recording):
    def split_for(self, stage: str) -> str:
        return f"{stage}-data"


@pytest.mark.parametrize("stage", ["validate", "test", "predict"])
def test_the_gallery_cache_is_asked_for_the_split_split_for_names_and_predict_folders_are_named_so(stage):
    dm, asked = Renamed(), []
    dm.cached_galleries = lambda split, sets: asked.append((split, sets)) or set()
    dm.setup(stage)
    loaders = {"validate": dm.val_dataloader, "test": dm.test_dataloader, "predict": dm.predict_dataloader}[stage]()
    read = "val" if stage == "validate" else "test"
    (queries, gallery), = dm.val_sets or dm.test_sets  # what load_eval_sets returned
    assert queries.name == read
    assert [loader.dataset for loader in loaders] == [queries, gallery]
    assert asked == [(f"{stage}-data", [(queries, gallery)])]  # not the Lightning stage: the split the data is
    if stage == "predict":
        assert dm.predict_sets() == ("predict-data", [(queries, gallery)])


@pytest.mark.parametrize("cls", [FashionIQDataModule, CIRRDataModule, CIRCODataModule, JsonlCIRDataModule,
                                 SyntheticCIRDataModule])
def test_shared_options_are_typed_flags_documented_once(cls):
    parser = ArgumentParser()
    parser.add_class_arguments(cls, "data")
    helps = {action.dest: action.help for action in parser._actions}
    assert helps["data.batch_size"] == "training batch size per process."
    assert helps["data.max_image_pixels"].startswith("refuse images with more pixels than this")
    assert helps["data.root"]  # and its own options keep their own text


BENCHMARKS = ["fashioniq", "cirr", "circo", "jsonl", "bgevl"]


@pytest.mark.parametrize("name", BENCHMARKS)
def test_a_benchmark_module_exports_its_data_module_only(name):
    """One home per name: the layout's readers, constants and protocol in ``data.layouts.<name>``, the DataModule in
    ``data.<name>`` (each DataModule module re-exported its layout's names: two import paths for one thing)."""
    import importlib

    module = importlib.import_module(f"cir_lightning.data.{name}")
    [exported] = module.__all__
    assert issubclass(getattr(module, exported), CIRDataModule)
    assert getattr(module, exported).__module__ == module.__name__  # config files and checkpoints name it so


def test_nothing_imports_a_layout_name_through_a_data_module_module():
    import re

    repo, modules = PACKAGE.parent, {f"cir_lightning.data.{name}" for name in BENCHMARKS}
    code = [*repo.glob("cir_lightning/**/*.py"), *repo.glob("scripts/**/*.py"), *repo.glob("tests/**/*.py")]
    found = {f"{path.relative_to(repo)}: from {node.module} import {alias.name}" for path in code
             for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.ImportFrom)
             and node.module in modules for alias in node.names if not alias.name.endswith("DataModule")}
    # in full or as the package's docstrings shorten it (``data.<benchmark>.NAME``)
    dotted = re.compile(rf"(?<![\w/])(?:cir_lightning\.)?data\.(?:{'|'.join(BENCHMARKS)})\.(\w+)")
    found |= {f"{path.relative_to(repo)}: {m.group(0)}" for path in [*code, repo / "README.md", *repo.glob("docs/*.md")]
              for m in dotted.finditer(path.read_text()) if not m.group(1).endswith("DataModule")}
    assert not found


def imported(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("path", sorted([*(PACKAGE / "data").rglob("*.py"), PACKAGE / "files.py",
                                         PACKAGE / "reading.py", PACKAGE / "messages.py"]), ids=str)
def test_imports_point_one_way(path):
    names = imported(path)
    assert not {n for n in names if n.startswith(("cir_lightning.retrieval", "cir_lightning.backbones",
                                                  "cir_lightning.module", "cir_lightning.cli"))}
    if path.parent.name == "layouts":  # the files and protocols know no DataModule
        assert not {n for n in names if n.startswith("cir_lightning.data.") and "layouts" not in n} - {
            "cir_lightning.data.datasets", "cir_lightning.data.images", "cir_lightning.data.missing",
            "cir_lightning.data.sampling"}  # EpochIndex: the training order's seed and epoch, for per-sample draws
    if path.name == "messages.py":
        assert not {n for n in names if n.startswith("cir_lightning")}
    if path.name == "reading.py":
        assert "cir_lightning.files" not in names


def test_an_id_given_twice_in_a_subset_is_refused_at_set_up_whatever_the_layout():
    """Checked by the base class on what any ``load_eval_sets`` returns: a layout of one's own need not."""
    from cir_lightning.data.datasets import GalleryDataset, GalleryItem, Query, QueryDataset
    from cir_lightning.errors import CIRDataError

    class Twice(CIRDataModule):
        def __init__(self, repeat: str) -> None:
            super().__init__()
            self.repeat = repeat

        def load_eval_sets(self, split):
            gallery = [GalleryItem("a", Path("a.png"), "g.csv:2"), GalleryItem("b", Path("b.png"), "g.csv:3")]
            queries = [Query("q0", Path("a.png"), "red", (1,), "q.csv:2"), Query("q1", Path("b.png"), "red", (0,), "q.csv:3")]
            if self.repeat == "query":
                queries.append(Query("q0", Path("b.png"), "blue", (0,), "q.csv:4"))
            elif self.repeat == "gallery":
                gallery.append(GalleryItem("a", Path("c.png"), "g.csv:4"))
            return [(QueryDataset(queries), GalleryDataset(gallery))]

    Twice("none").setup("validate")
    with pytest.raises(CIRDataError, match=r"^q\.csv:4: query id 'q0' is given twice \(first at q\.csv:2\)"):
        Twice("query").setup("validate")
    with pytest.raises(CIRDataError, match=r"^g\.csv:4: gallery id 'a' is given twice \(first at g\.csv:2\)"):
        Twice("gallery").setup("test")
