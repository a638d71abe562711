"""The `cir-lightning` console entry point: fit, validate, test, predict and the offline tools."""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import logging
import os
import subprocess
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import pytest
import torch
import yaml

from cir_lightning.backbones import HFMultimodalBackbone, LoRA, Prompts

CONF = Path(__file__).parent / "conf" / "tiny.yaml"
EXE = Path(sys.executable).parent / "cir-lightning"


def run(*args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    """``cir-lightning ARGS`` run in ``cwd`` in this process (``cli.main``: a new process costs ~10 s; the
    console script and ``python -m`` are tested on their own): its exit status and what it printed."""
    from cir_lightning.cli import main

    out, err = io.StringIO(), io.StringIO()
    returncode = 0
    with contextlib.chdir(cwd), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), \
            warnings.catch_warnings(), mock.patch.object(sys, "argv", ["cir-lightning"]):
        warnings.simplefilter("ignore")  # PYTHONWARNINGS=ignore, as the subprocess had
        try:
            main(list(args))
        except SystemExit as exit_info:
            returncode = exit_info.code if isinstance(exit_info.code, int) else 1
    proc = subprocess.CompletedProcess(["cir-lightning", *args], returncode, out.getvalue(), err.getvalue())
    if check and proc.returncode != 0:
        raise AssertionError(f"cir-lightning {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def spawn(*args: str, cwd: Path, check: bool = True, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``cir-lightning ARGS`` as its own process, for what ``run`` cannot do in this one: DDP (Lightning starts
    the other ranks by running the command line again), a process that kills itself, an environment of its own.
    It runs this checkout's package (PYTHONPATH), not the one installed in the venv (another checkout's, editable)."""
    path = os.pathsep.join(p for p in (str(CONF.parents[2]), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore", "PYTHONPATH": path, **(env or {})}
    proc = subprocess.run([str(EXE), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"cir-lightning {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


@pytest.fixture(scope="module")
def fitted(tmp_path_factory, tiny_model_dir, synthetic_root):
    cwd = tmp_path_factory.mktemp("cli")
    common = ["--config", str(CONF), "--model.backbone.init_args.model_name_or_path", str(tiny_model_dir),
              "--data.init_args.root", str(cwd / "data")]
    run("fit", *common, "--trainer.default_root_dir", "run", cwd=cwd)
    return cwd, common


@pytest.fixture(scope="module")
def small_data(tmp_path_factory, synthetic_root, tiny_model_dir) -> SimpleNamespace:
    """CONF's synthetic data (``synthetic_root``: the same generator options) over a gallery of its val queries'
    references and targets and a few more scenes: an evaluation embeds those, not all 576 scenes. ``data``: the
    options replacing CONF's ``--data``; ``common``: CONF's model and that data; ``queries``: the val queries;
    ``gallery``: the gallery's size."""
    from tests.test_module import small_gallery

    gallery = small_gallery(synthetic_root, tmp_path_factory.mktemp("small"))
    data = ["--data", "cir_lightning.data.JsonlCIRDataModule", "--data.root", str(synthetic_root),
            "--data.gallery_file", gallery]
    common = ["--config", str(CONF), "--model.backbone.init_args.model_name_or_path", str(tiny_model_dir), *data]
    queries = [json.loads(line) for line in (synthetic_root / "val_queries.jsonl").read_text().splitlines()]
    return SimpleNamespace(data=data, common=common, queries=queries,
                           gallery=len(Path(gallery).read_text().splitlines()))


def test_fit_writes_trainable_only_checkpoints_adapter_and_config(fitted):
    cwd, _ = fitted
    ckpt = torch.load(cwd / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["state_dict"]
    assert all(".lora_" in k for k in ckpt["state_dict"])
    assert ckpt["global_step"] == 4
    assert ckpt["cir_lightning"]["lora"] == {"r": 4, "lora_alpha": 8, "use_rslora": False}  # what loads compare
    assert (cwd / "run" / "adapter" / "adapter_config.json").is_file()
    saved = yaml.safe_load((cwd / "run" / "config.yaml").read_text())
    assert saved["model"]["backbone"]["init_args"]["lora"]["r"] == 4
    assert "        alpha: 8\n" in (cwd / "run" / "config.yaml").read_text()  # an integer alpha stays one (not 8.0)
    assert json.loads((cwd / "run" / "adapter" / "adapter_config.json").read_text())["lora_alpha"] == 8
    assert (cwd / "data" / "synthetic.json").is_file()  # the data module generated its data


def test_validate_and_test_from_checkpoint_report_retrieval_metrics(fitted, small_data):
    cwd, common = fitted[0], small_data.common
    ckpt = str(cwd / "run" / "checkpoints" / "last.ckpt")
    out = run("validate", *common, "--trainer.default_root_dir", "run", "--ckpt_path", ckpt, cwd=cwd).stdout
    assert "validate (val/...)" in out  # our table, one row per subset
    for name in ("Recall@1", "Recall@10", "Recall@50", "MRR@10"):
        assert name in out
    assert "DataLoader 0" not in out  # Lightning's own table (one column per loader) is off by default
    assert (cwd / "run" / "config-validate.yaml").is_file()  # fit's config.yaml is kept, not overwritten
    out = run("test", *common, "--trainer.default_root_dir", "run", "--ckpt_path", ckpt, cwd=cwd).stdout
    assert "test (test/...)" in out
    assert "Recall@10" in out
    assert "results written to run/results-test.json" in out


def test_validate_writes_results_never_overwriting_and_rankings_on_request(fitted, small_data):
    cwd, common = fitted[0], small_data.common
    ckpt = str(cwd / "run" / "checkpoints" / "last.ckpt")
    args = [*common, "--trainer.default_root_dir", "results", "--ckpt_path", ckpt]
    first = run("validate", *args, cwd=cwd).stdout
    assert "│ all " in first  # the readable table
    assert "Recall@10" in first
    run("validate", *args, "--model.save_rankings", "true", "--model.eval_ks", "[1, 3]", cwd=cwd)
    plain = json.loads((cwd / "results" / "results-validate.json").read_text())
    ranked = json.loads((cwd / "results" / "results-validate-1.json").read_text())
    assert plain["stage"] == "validate"
    assert "rankings" not in plain
    assert set(plain["metrics"][""]) == {f"{m}@{k}" for m in ("Recall", "MRR") for k in (1, 5, 10, 50)}
    assert plain["metrics"][""]["Recall@1"] == ranked["metrics"][""]["Recall@1"]
    queries, num_gallery = small_data.queries, small_data.gallery
    assert plain["subsets"][""] == {"num_queries": len(queries), "num_gallery": num_gallery}
    assert plain["model"]["fingerprint"]["class"] == "HFMultimodalBackbone"
    # which trained weights were evaluated: their digest (a checkpoint path can be written over later)
    assert plain["model"]["weights"] == ranked["model"]["weights"] != hashlib.sha256().hexdigest()  # not "none"
    assert plain["config"]["ckpt_path"] == ckpt
    assert plain["config"]["init_adapter"] is None
    assert ranked["config"]["model"]["eval_ks"] == [1, 3]  # the command line wins over the checkpoint
    assert ranked["protocol"][""]["metrics"] == {"recall": [1, 3], "mrr": [1, 3]}  # the cut-offs really used
    assert plain["protocol"][""]["chance"]["Recall@1"] == pytest.approx(1 / (num_gallery - 1))  # reference excluded
    rankings = ranked["rankings"][""]
    assert list(rankings) == [q["query_id"] for q in queries]
    for q in queries:
        assert len(rankings[q["query_id"]]) == 3
        assert q["reference_id"] not in rankings[q["query_id"]]  # excluded ids never appear
    hits = sum(q["target_id"] in rankings[q["query_id"]][:1] for q in queries) / len(queries)
    assert hits == pytest.approx(ranked["metrics"][""]["Recall@1"])


def test_predict_returns_embeddings(fitted):
    cwd, common = fitted
    proc = run("predict", *common, "--trainer.default_root_dir", "pred", "--trainer.limit_predict_batches", "1",
               cwd=cwd)
    assert proc.returncode == 0


def test_print_config_resolves_interpolation(tmp_path, tiny_model_dir):
    config = tmp_path / "interp.yaml"
    config.write_text(CONF.read_text().replace("root: data", "root: ${trainer.default_root_dir}/data"))
    out = run("fit", "--config", str(config), "--trainer.default_root_dir", "somewhere", "--print_config",
              cwd=tmp_path).stdout
    printed = yaml.safe_load(out)
    assert printed["data"]["init_args"]["root"] == "somewhere/data"
    assert printed["model"]["loss"] is None or "class_path" in printed["model"]["loss"]


def test_an_unknown_option_is_two_lines_not_the_whole_usage(capsys):
    from cir_lightning.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["validate", "--config", str(CONF), "--model.nosuch", "3"])
    assert exit_info.value.code == 2
    tip, error = capsys.readouterr().err.splitlines()  # (the program's name is pytest's here)
    assert tip.startswith("tip: For details of accepted options run: ")
    assert tip.endswith(" validate --help")
    assert error == "error: unrecognized arguments: --model.nosuch 3"


@pytest.mark.parametrize(("argv", "unknown"), [
    (["validate", "--config", str(CONF), "--model.save_ranking", "true"], "--model.save_ranking true"),
    (["search", "x", "--image", "a.png", "--text", "t", "--sho", "y"], "--sho y"),
    (["show", "results.json", "--quer", "q0"], "--quer q0")])
def test_an_abbreviated_option_is_refused_not_taken_for_the_option_it_starts(argv, unknown, capsys):
    """argparse's default takes `--model.save_ranking` for `--model.save_rankings`: a typo would silently pick
    whichever option it happens to prefix (or, after an option is added, another one)."""
    from cir_lightning.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert f"unrecognized arguments: {unknown}" in capsys.readouterr().err


@pytest.mark.parametrize(("option", "value", "line"), [
    ("--trainer.max_epochs", "abc", "option `trainer.max_epochs`: expected int or null, got 'abc'"),
    ("--model.lr_schedule", "cosin", "option `model.lr_schedule`: expected one of 'linear', 'cosine', 'constant', "
                                     "got 'cosin'"),
    ("--model.search.nprobe", "x", "option `model.search.nprobe`: expected int or null, got 'x'"),
    ("--model.backbone.init_args.lora", "{r: x}", "option `model.backbone.lora.r`: expected int or null, got 'x'"),
    ("--data.init_args.nope", "3", "option `data` (cir_lightning.data.SyntheticCIRDataModule): Option 'nope' is not "
                                   "accepted"),
    ("--model.backbone", "cir_lightning.backbones.Nope", "option `model.backbone` (cir_lightning.backbones.Nope): "
                                                         "module 'cir_lightning.backbones' has no attribute 'Nope'"),
    ("--model.backbone.init_args.nope", "3", "option `model.backbone` (cir_lightning.backbones.HFMultimodalBackbone): "
                                             "Option 'nope' is not accepted"),  # a class of no Union: it was 3 lines
    # a Union's every way of reading the value, each explained (15 lines)
    ("--trainer.callbacks", "[{class_path: lightning.pytorch.callbacks.ModelCheckpoint, init_args: {bogus: 1}}]",
     "option `trainer.callbacks` (lightning.pytorch.callbacks.ModelCheckpoint): Option 'bogus' is not accepted"),
    ("--data", "[1, 2]", "option `data`: expected a class path or a mapping with `class_path` (a LightningDataModule), "
                         "got [1, 2]"),
])
def test_a_value_of_the_wrong_type_is_one_line_naming_the_option(option, value, line, capsys, monkeypatch):
    """jsonargparse reports every Union and class path a value went through (10-20 lines): one line instead,
    the option as the command line takes it; CIR_LIGHTNING_TRACEBACK=1 keeps the whole report."""
    from cir_lightning.cli import main

    monkeypatch.delenv("CIR_LIGHTNING_TRACEBACK", raising=False)
    with pytest.raises(SystemExit) as exit_info:
        main(["validate", "--config", str(CONF), option, value])
    assert exit_info.value.code == 2
    tip, error = capsys.readouterr().err.splitlines()
    assert tip.startswith("tip: ")
    assert error == f"error: {line}"
    monkeypatch.setenv("CIR_LIGHTNING_TRACEBACK", "1")
    with pytest.raises(SystemExit):
        main(["validate", "--config", str(CONF), option, value])
    assert 'Parser key "' in capsys.readouterr().err


DATA_REQUIRED = ("option `data` is required (not given, or null): a DataModule: a class path, or a mapping with "
                 "`class_path` (e.g. cir_lightning.data.JsonlCIRDataModule) and its `init_args`")


@pytest.mark.parametrize(("text", "line"), [
    ("model: foo", "option `model`: expected a mapping of its options or the path of a config file with them, "
                   "got 'foo'"),  # jsonargparse's 3 lines, the key twice (`model.model` when read as a nesting)
    ("trainer: foo", "option `trainer`: expected a mapping of its options or the path of a config file with them, "
                     "got 'foo'"),
    # a number, list, bool or null: jsonargparse kept it, then said "required: validate.model.backbone" (the
    # trainer's went on to a TypeError traceback)
    ("model: 3", "option `model`: expected a mapping of its options or the path of a config file with them, got 3"),
    ("model: true", "option `model`: expected a mapping of its options or the path of a config file with them, "
                    "got true"),
    ("model: null", "option `model`: expected a mapping of its options or the path of a config file with them, "
                    "got null"),
    ("trainer: [1, a]", "option `trainer`: expected a mapping of its options or the path of a config file with them, "
                        "got [1, \"a\"]"),
    # a file of one bare entry: jsonargparse read it as the text `model:` ("Unexpected config: model:" and blank lines)
    ("model:", "option `model`: expected a mapping of its options or the path of a config file with them, got null"),
    ("trainer:", "option `trainer`: expected a mapping of its options or the path of a config file with them, "
                 "got null"),
    ("data:", DATA_REQUIRED),
    ("data: null", DATA_REQUIRED),  # "the following arguments are required: validate.data"
    ("data: foo", "option `data`: expected LightningDataModule or null, got 'foo' (not an import path)"),
    ("model:\n  backbone: foo", "option `model.backbone`: expected a class path or a mapping with `class_path`, "
                                "got 'foo'"),  # an empty line and two items
    ("model:\n  backbone: [1]", "option `model.backbone`: expected a class path or a mapping with `class_path` "
                                "(a Backbone), got [1]"),  # 7 lines of the ways a subclass can be given
])
def test_a_config_file_entry_that_is_not_a_mapping_is_one_line_naming_it(text, line, tmp_path, capsys, monkeypatch):
    from cir_lightning.cli import main

    monkeypatch.delenv("CIR_LIGHTNING_TRACEBACK", raising=False)
    (tmp_path / "mine.yaml").write_text(text + "\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["validate", "--config", str(CONF), "--config", str(tmp_path / "mine.yaml")])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.splitlines()[1:] == [f"error: {line}"]


def test_option_errors_it_does_not_know_stay_whole():
    from cir_lightning.option_errors import option_error

    callbacks = """Parser key "trainer.callbacks":
  - Does not validate against any of the Union subtypes
  Subtypes: [list[a.Callback], <class 'a.Callback'>, <class 'NoneType'>]
  Errors:
    - Expected a dot import path string: Nope
    - Not a valid subclass of Callback
      Subclass types expect one of:
      - a class path (str)
    - Expected a <class 'NoneType'>
  Given value type: <class 'list'>
  Given value: [{'class_path': 'Nope'}]"""
    assert option_error(callbacks) is None  # the subclass explanation would be lost
    assert option_error("Parser key \"config\": File does not exist: 'a.yaml'") is None
    assert option_error("unrecognized arguments: --x 3") is None
    two_literals = """Parser key "trainer.precision":
  Does not validate against any of the Union subtypes
  Subtypes: [typing.Literal[64, 32], typing.Literal['bf16-mixed', '32-true'], <class 'NoneType'>]
  Errors:
    - Expected a typing.Literal[64, 32]
    - Expected a typing.Literal['bf16-mixed', '32-true']
    - Expected a <class 'NoneType'>
  Given value type: <class 'str'>
  Given value: 17"""
    assert option_error(two_literals) == ("option `trainer.precision`: expected one of 64, 32, 'bf16-mixed', "
                                          "'32-true' or null, got '17'")


def test_python_dash_m_and_help_list_the_subcommands_and_tools(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "cir_lightning", "--help"], capture_output=True, text=True,
                          cwd=tmp_path, timeout=120)
    assert proc.returncode == 0
    for word in ("fit", "validate", "test", "predict", "make-tiny-model", "make-synthetic-data"):
        assert word in proc.stdout
    from cir_lightning.commands import COMMANDS

    listed = [line.split()[1] for line in proc.stdout.splitlines() if line.startswith("  cir-lightning ")]
    assert listed == list(COMMANDS)  # one line per command, not reflowed into one paragraph


def test_offline_tools_build_model_and_data(tmp_path, capsys):
    from cir_lightning.cli import main

    run("make-tiny-model", "model", cwd=tmp_path)
    assert json.loads((tmp_path / "model" / "config.json").read_text())["model_type"] == "llava_next"
    with pytest.raises(SystemExit) as exit_info:  # never over a folder that has files: one line, exit code 2
        main(["make-tiny-model", str(tmp_path / "model")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"cir-lightning: error: `{tmp_path / 'model'}` already exists; it is never overwritten unless "
                          "asked (choose another name, or pass `overwrite=True` (`--overwrite` on the command line) to "
                          "replace it)")
    run("make-synthetic-data", "data", "--num-train", "10", "--num-val", "4", "--image-size", "16", cwd=tmp_path)
    assert len((tmp_path / "data" / "train.jsonl").read_text().splitlines()) == 10


def test_bad_data_fails_with_the_file_and_line(tmp_path, tiny_model_dir, synthetic_root):
    import shutil

    root = tmp_path / "mydata"
    shutil.copytree(synthetic_root, root)
    lines = (root / "train.jsonl").read_text().splitlines()
    lines[4] = '{"reference_image": "../../etc/passwd", "target_image": "images/scene_000.png", "modification": "x"}'
    (root / "train.jsonl").write_text("\n".join(lines) + "\n")
    proc = run("fit", "--config", str(CONF), "--model.backbone.init_args.model_name_or_path", str(tiny_model_dir),
               "--data", "cir_lightning.data.JsonlCIRDataModule", "--data.root", str(root),
               "--trainer.default_root_dir", "run", cwd=tmp_path, check=False)
    assert proc.returncode == 2
    assert f"cir-lightning: error: {root / 'train.jsonl'}:5: `reference_image` '../../etc/passwd' points outside " \
           "the image root" in proc.stderr
    assert "Traceback" not in proc.stderr  # the user's mistake, said plainly


def test_checkpoints_load_with_weights_only_unless_asked_otherwise(fitted, monkeypatch):
    import functools

    import lightning.pytorch as pl

    from cir_lightning.cli import CIRLightningCLI

    cwd, common = fitted
    seen = {}

    @functools.wraps(pl.Trainer.validate)  # LightningCLI makes its flags from this signature
    def record(self, *args, **kwargs):
        seen.update(kwargs)
        return []

    monkeypatch.setattr(pl.Trainer, "validate", record)
    monkeypatch.chdir(cwd)
    ckpt = str(cwd / "run" / "checkpoints" / "last.ckpt")
    CIRLightningCLI(args=["validate", *common, "--trainer.default_root_dir", "wo", "--ckpt_path", ckpt])
    assert seen["weights_only"] is True
    CIRLightningCLI(args=["validate", *common, "--trainer.default_root_dir", "wo", "--ckpt_path", ckpt,
                          "--weights_only", "false"])
    assert seen["weights_only"] is False

    # a checkpoint holding an object outside torch's safe list: refused by default, read when the user says so
    from fractions import Fraction

    from cir_lightning.errors import CIRModelError

    trusted = cwd / "trusted.ckpt"
    torch.save({**torch.load(ckpt, weights_only=True), "note": Fraction(1, 3)}, trusted)
    seen.clear()
    with pytest.raises(CIRModelError, match="not a safe checkpoint.*fractions"):
        CIRLightningCLI(args=["validate", *common, "--trainer.default_root_dir", "wo", "--ckpt_path", str(trusted)])
    assert seen == {}
    CIRLightningCLI(args=["validate", *common, "--trainer.default_root_dir", "wo", "--ckpt_path", str(trusted),
                          "--weights_only", "false"])
    assert seen["weights_only"] is False
    assert seen["ckpt_path"] == str(trusted)

    # a path among the hyperparameters (a DataModule given `root` as a Path) is read with weights_only too: torch
    # refused Lightning's read, and our check, which reads paths, then re-raised torch's error as a traceback
    with_path = cwd / "with_path.ckpt"
    torch.save({**torch.load(ckpt, weights_only=True), "datamodule_hyper_parameters": {"root": Path(cwd)}}, with_path)
    seen.clear()
    CIRLightningCLI(args=["validate", *common, "--trainer.default_root_dir", "wo", "--ckpt_path", str(with_path)])
    assert seen["weights_only"] is True
    assert seen["ckpt_path"] == str(with_path)



def test_fit_resumed_from_an_epoch_checkpoint_ends_exactly_like_an_uninterrupted_run(tmp_path, tiny_model_dir):
    every_epoch = tmp_path / "every_epoch.yaml"
    every_epoch.write_text(yaml.safe_dump({"trainer": {"callbacks": [{
        "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
        "init_args": {"save_last": True, "save_top_k": -1}}]}}))
    args = ["--config", str(CONF), "--config", str(every_epoch), "--model.backbone.init_args.model_name_or_path",
            str(tiny_model_dir), "--data.init_args.root", str(tmp_path / "data"), "--trainer.max_epochs", "2",
            "--trainer.max_steps", "-1", "--trainer.limit_train_batches", "null", "--trainer.limit_val_batches", "0",
            "--trainer.num_sanity_val_steps", "0"]
    run("fit", *args, "--trainer.default_root_dir", "straight", cwd=tmp_path)
    first_epoch = tmp_path / "straight" / "checkpoints" / "epoch=0-step=4.ckpt"
    run("fit", *args, "--trainer.default_root_dir", "resumed", "--ckpt_path", str(first_epoch), cwd=tmp_path)
    straight, resumed = (torch.load(tmp_path / d / "checkpoints" / "last.ckpt", weights_only=True)
                         for d in ("straight", "resumed"))
    assert (straight["global_step"], resumed["global_step"]) == (8, 8)  # continued, not restarted
    assert torch.load(first_epoch, weights_only=True)["global_step"] == 4
    # same optimizer and schedule state, same batches in the same order: bit-identical weights
    for name, weight in straight["state_dict"].items():
        assert torch.equal(resumed["state_dict"][name], weight), name
    assert resumed["lr_schedulers"] == straight["lr_schedulers"]


def test_resuming_with_other_training_settings_is_refused_not_silently_reverted(fitted, capsys, monkeypatch):
    """LightningCLI puts a checkpoint's hyperparameters over the command line: `--model.warmup 0` and
    `--model.lr_schedule constant` given to `fit --ckpt_path` were dropped without a word."""
    from cir_lightning.cli import main

    cwd, common = fitted
    monkeypatch.chdir(cwd)
    ckpt = str(cwd / "run" / "checkpoints" / "last.ckpt")
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *common, "--trainer.default_root_dir", "resumed", "--ckpt_path", ckpt,
              "--model.warmup", "0", "--model.lr_schedule", "constant"])
    assert exit_info.value.code == 2
    line = capsys.readouterr().err.splitlines()[0]
    assert line == (f"cir-lightning: error: `--ckpt_path {ckpt}` resumes a run with its own training settings, "
                    "which differ from those given: `model.lr_schedule` 'constant' given, 'linear' in the checkpoint; "
                    "`model.warmup` 0.0 given, 1.0 in the checkpoint; give the checkpoint's values to resume it, or start "
                    "a new run from its weights with `model.backbone.init_args.lora.init_adapter`")
    assert not (cwd / "resumed").exists()  # refused before anything was written


def test_a_checkpoint_loaded_with_another_lora_alpha_is_refused(fitted, capsys, monkeypatch):
    """Same shapes, another scale: every embedding changed (Recall@5 4.17 became 8.33) without a word."""
    from cir_lightning.cli import main

    cwd, common = fitted
    monkeypatch.chdir(cwd)
    ckpt = str(cwd / "run" / "checkpoints" / "last.ckpt")
    with pytest.raises(SystemExit) as exit_info:
        main(["validate", *common, "--trainer.default_root_dir", "alpha", "--ckpt_path", ckpt,
              "--model.backbone.init_args.lora.alpha", "400"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.splitlines()[0] == (
        "cir-lightning: error: the checkpoint was trained with other LoRA settings (lora_alpha: 8 in the checkpoint, "
        "400 here); set the same `model.backbone.init_args.lora` values")


def test_a_gallery_cache_is_not_shared_across_weight_dtypes_or_mixed_precision(fitted, small_data, tiny_model_dir,
                                                                              monkeypatch, capsys):
    """bf16 weights, or bf16-mixed autocast, give other embeddings than float32: such a cache was reused by a
    float32 evaluation (R@1 4.17 against 0.00) without a word."""
    from cir_lightning.backbones import HFMultimodalBackbone
    from cir_lightning.cli import main

    assert "dtype" not in HFMultimodalBackbone(str(tiny_model_dir)).fingerprint()  # float32 keys as they were
    assert HFMultimodalBackbone(str(tiny_model_dir), dtype="bfloat16").fingerprint()["dtype"] == "bfloat16"
    cwd, _ = fitted
    monkeypatch.chdir(cwd)
    ckpt = str(cwd / "run" / "checkpoints" / "last.ckpt")
    args = [*small_data.common, "--ckpt_path", ckpt, "--model.embedding_cache", "emb_precision"]
    main(["validate", *args, "--trainer.default_root_dir", "bf16", "--trainer.precision", "bf16-mixed"])
    written = json.loads((cwd / "bf16" / "results-validate.json").read_text())["config"]["model"]["embedding_cache"]
    assert written["written"]
    assert not written["loaded"]
    with pytest.raises(SystemExit):  # a stale cache is never used: refused, naming what differs
        main(["validate", *args, "--trainer.default_root_dir", "fp32"])
    assert "the cache does not match: model.precision: cached 'bf16-mixed', expected None" in capsys.readouterr().err


def test_evaluating_a_checkpoint_with_another_prompt_preset_is_warned_about(fitted, monkeypatch):
    """Trained with `preset: short`, evaluated with the default `fire` (an easy slip): Recall@5 30.00 against
    20.00 without a word. Allowed (prompt ablations), but said."""
    from cir_lightning.cli import main

    cwd, common = fitted
    monkeypatch.chdir(cwd)
    ckpt = str(cwd / "run" / "checkpoints" / "last.ckpt")
    with pytest.warns(UserWarning, match=r"the checkpoint was trained with another embedding set-up, so results may "
                                         r"differ from its training's: backbone\.prompts\..*: trained with "):
        main(["validate", *common, "--trainer.default_root_dir", "preset", "--ckpt_path", ckpt,
              "--model.backbone.init_args.prompts.preset", "fire", "--trainer.limit_val_batches", "1"])
    with warnings.catch_warnings(record=True) as caught:  # the set-up it was trained with: nothing to say
        warnings.simplefilter("always")
        main(["validate", *common, "--trainer.default_root_dir", "same", "--ckpt_path", ckpt,
              "--trainer.limit_val_batches", "1"])
    assert not [w for w in caught if "another embedding set-up" in str(w.message)]


def test_the_checkpoint_settings_are_the_module_s_arguments_but_its_parts_and_evaluation_options():
    import inspect

    from cir_lightning.evaluation import EVALUATION_OPTIONS
    from cir_lightning.module import TRAINING_SETTINGS, CIRModule

    names = [p for p in inspect.signature(CIRModule.__init__).parameters if p != "self"]
    parts = {"backbone", "loss", "optimizer", "export_adapter"}
    assert sorted(TRAINING_SETTINGS) == sorted(set(names) - parts - set(EVALUATION_OPTIONS))


def test_gallery_embedding_cache_is_written_then_reused_and_refused_when_stale(fitted, small_data):
    cwd, common = fitted[0], small_data.common  # the fitted model evaluated on the small gallery
    ckpt = str(cwd / "run" / "checkpoints" / "last.ckpt")
    args = [*common, "--trainer.default_root_dir", "cached", "--ckpt_path", ckpt,
            "--model.embedding_cache", "emb"]
    out = run("validate", *args, cwd=cwd).stderr
    cache = cwd / "emb" / "val-0-gallery"
    assert (cache / "embeddings.npy").is_file()
    assert json.loads((cache / "meta.json").read_text())["count"] == small_data.gallery  # every image
    assert f"gallery embeddings cached in {Path('emb') / 'val-0-gallery'}" in out.splitlines()
    out = run("validate", *args, cwd=cwd).stderr  # second run: the gallery is loaded, its images never decoded
    assert f"gallery embeddings read from the cache {Path('emb') / 'val-0-gallery'}" in out.splitlines()
    first, second = (json.loads((cwd / "cached" / name).read_text())
                     for name in ("results-validate.json", "results-validate-1.json"))
    assert first["config"]["model"]["embedding_cache"]["written"] == [str(Path("emb") / "val-0-gallery")]
    assert second["config"]["model"]["embedding_cache"]["loaded"] == [str(Path("emb") / "val-0-gallery")]
    assert second["metrics"] == first["metrics"]
    # other weights (the untrained adapter) must not reuse the cache of the trained ones
    trained_digest = json.loads((cache / "meta.json").read_text())["model"]["weights"]
    stale = run("validate", *common, "--trainer.default_root_dir", "cached", "--model.embedding_cache", "emb",
                cwd=cwd, check=False)
    assert stale.returncode != 0
    assert "the cache does not match: model.weights:" in stale.stderr
    run("validate", *common, "--trainer.default_root_dir", "cached", "--model.embedding_cache", "emb",
        "--model.overwrite_cache", "true", cwd=cwd)
    assert json.loads((cache / "meta.json").read_text())["model"]["weights"] != trained_digest


@pytest.mark.parametrize(("backbone", "path_arg"), [("DualEncoderBackbone", "model_name_or_path"),
                                                  ("XGenMMBackbone", "model_name_or_path")])
def test_other_backbone_families_train_and_evaluate_from_the_command_line(tmp_path, small_data, backbone, path_arg):
    args = ["--config", str(CONF), "--model.backbone", f"cir_lightning.backbones.{backbone}",
            f"--model.backbone.{path_arg}", "tiny", "--model.backbone.make_tiny_if_missing", "true",
            "--model.backbone.lora", '{"r": 4, "alpha": 8}', *small_data.data, "--trainer.default_root_dir", "run"]
    run("fit", *args, cwd=tmp_path)
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["state_dict"]
    assert all(".lora_" in k for k in ckpt["state_dict"])
    run("validate", *args, "--ckpt_path", str(tmp_path / "run" / "checkpoints" / "last.ckpt"), cwd=tmp_path)
    results = json.loads((tmp_path / "run" / "results-validate.json").read_text())
    assert results["model"]["fingerprint"]["class"] == backbone
    assert results["subsets"][""]["num_gallery"] == small_data.gallery
    assert set(results["metrics"][""]) == {f"{m}@{k}" for m in ("Recall", "MRR") for k in (1, 5, 10, 50)}


def test_fire_stage_one_trains_captions_and_stage_two_starts_from_its_adapter(tmp_path, tiny_model_dir):
    """Stage 1 through the CLI; the adapter it exports is what `lora.init_adapter` loads for stage 2."""
    common = ["--config", str(CONF), "--model.backbone.init_args.model_name_or_path", str(tiny_model_dir),
              "--data.init_args.root", str(tmp_path / "data"), "--data.init_args.with_captions", "true"]
    run("fit", *common, "--model.objective", "caption", "--model.optimizer.init_args.lr", "0.01",
        "--trainer.default_root_dir", "stage1", "--trainer.logger", "CSVLogger",
        "--trainer.logger.save_dir", "stage1", "--trainer.log_every_n_steps", "1",
        "--trainer.num_sanity_val_steps", "0", cwd=tmp_path)
    (metrics,) = (tmp_path / "stage1").glob("**/metrics.csv")
    with metrics.open() as f:
        rows = list(csv.DictReader(f))
    losses = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    assert len(losses) == 4
    assert losses[-1] < losses[0]
    assert any(r.get("val/Recall@1") for r in rows)  # retrieval is still validated during stage 1
    # stage 2 starts from the exported adapter: exactly the weights stage 1 ended with
    (adapter,) = (tmp_path / "stage1").glob("**/adapter")
    (ckpt,) = (tmp_path / "stage1").glob("**/last.ckpt")
    trained = torch.load(ckpt, weights_only=True)["state_dict"]
    started = HFMultimodalBackbone(str(tiny_model_dir), prompts=Prompts("short"),
                                   lora=LoRA(r=4, alpha=8, init_adapter=str(adapter)))
    loaded = started.trainable_state_dict()
    assert len(loaded) == len(trained)
    for name, value in loaded.items():
        assert torch.equal(value, trained[f"backbone.{name}"]), name


# ------------------------------------------------------------------ what a run shows and keeps (issue 13)
NOISE = ("LeafSpec", "is_gradient_checkpointing", "The dirpath has changed")


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def _in_process(argv: list[str]) -> tuple[list[str], list[str]]:
    """Run ``main(argv)``; return the warnings it raised and Lightning's info lines."""
    from cir_lightning.cli import main

    handler = _Lines()
    lightning_log = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    lightning_log.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            main(argv)
    finally:
        lightning_log.removeHandler(handler)
    return [str(w.message) for w in seen], handler.lines


def test_fit_ends_with_its_results_logs_tensorboard_and_prints_no_third_party_noise(
        tmp_path, tiny_model_dir, synthetic_root, capsys, monkeypatch):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    from tests.test_module import small_gallery

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["cir-lightning"])  # main's arguments are the only ones
    extra = tmp_path / "extra.yaml"  # the shipped configs' logger and checkpoint, on the tiny config
    extra.write_text(yaml.safe_dump({"trainer": {
        "logger": {"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                   "init_args": {"save_dir": "${trainer.default_root_dir}", "name": "logs"}},
        "callbacks": [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                       "init_args": {"monitor": "val/Recall@1", "mode": "max", "save_last": True}}]}}))
    common = ["--config", str(CONF), "--config", str(extra), "--model.backbone.init_args.model_name_or_path",
              str(tiny_model_dir), "--data", "cir_lightning.data.JsonlCIRDataModule", "--data.root",
              str(synthetic_root), "--data.gallery_file", small_gallery(synthetic_root, tmp_path),
              "--data.batch_size", "4"]
    said, info = _in_process(["fit", *common, "--trainer.default_root_dir", "run", "--model.validate_before_fit",
                              "true", "--trainer.max_epochs", "2", "--trainer.max_steps", "-1",
                              "--trainer.limit_train_batches", "1"])
    out = capsys.readouterr().out
    assert not [w for w in said if any(n in w for n in NOISE)]
    assert any(line.startswith("GPU available") for line in info)  # Lightning's lines still come ...
    assert not any("litlogger" in line for line in info)  # ... but not its advertisement
    # the run ends with the tables and what training changed; the first value is where it started
    assert out.count("fit: best") == 1
    assert "what training changed (percent):" in out
    last_line = out.strip().splitlines()[-1]
    assert last_line.startswith("val/Recall@1 (percent): ")
    before = float(last_line.split(": ")[1].split(" before fit")[0])
    # TensorBoard: that value at step 0, every validation after it, and the whole config as hyperparameters
    (events,) = (tmp_path / "run" / "logs" / "version_0").glob("events.out.tfevents.*")
    accumulator = EventAccumulator(str(events))
    accumulator.Reload()
    recall = [(e.step, e.value) for e in accumulator.Scalars("val/Recall@1")]
    assert len(recall) == 3
    assert recall[0][0] == 0
    assert round(100 * recall[0][1], 2) == before
    start = plugin_data_pb2.HParamsPluginData.FromString(
        accumulator.summary_metadata["_hparams_/session_start_info"].plugin_data.content).session_start_info
    assert start.hparams["model/optimizer/init_args/lr"].number_value == 0.001
    assert start.hparams["model/backbone/init_args/lora/r"].number_value == 4
    hparams = yaml.safe_load((tmp_path / "run" / "logs" / "version_0" / "hparams.yaml").read_text())
    assert hparams["model"]["backbone"]["init_args"]["lora"]["r"] == 4

    # a checkpoint validated into another folder: Lightning's dirpath warning is dropped ...
    ckpt = str(tmp_path / "run" / "logs" / "version_0" / "checkpoints" / "last.ckpt")
    validate = ["validate", *common, "--trainer.default_root_dir", "elsewhere", "--ckpt_path", ckpt]
    said, info = _in_process(validate)
    assert not [w for w in said if any(n in w for n in NOISE)]
    assert not any("litlogger" in line for line in info)
    # ... and without the filters every one of these messages would have been printed
    monkeypatch.setattr("cir_lightning.cli.quiet_third_party", lambda subcommand=None: None)
    monkeypatch.setattr(logging.getLogger("lightning.pytorch.utilities.rank_zero"), "filters", [])
    said, info = _in_process(validate)
    for noise in NOISE:
        assert any(noise in w for w in said), noise
    assert any("litlogger" in line for line in info)


def test_a_test_split_without_labels_keeps_its_rankings_and_results_name_the_cutoffs_used(
        tmp_path, tiny_model_dir, capsys, monkeypatch):
    from cir_lightning.cli import main
    from tests.data.fake_cirr import make_fake_cirr

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["cir-lightning"])
    root = make_fake_cirr(tmp_path / "cirr")
    args = ["--config", str(CONF), "--model.backbone.init_args.model_name_or_path", str(tiny_model_dir),
            "--data", "cir_lightning.data.cirr.CIRRDataModule", "--data.root", str(root),
            "--data.eval_batch_size", "64", "--trainer.default_root_dir", "run", "--model.save_rankings", "true"]
    main(["test", *args])
    assert "no public ground truth" in capsys.readouterr().out
    results = json.loads((tmp_path / "run" / "results-test.json").read_text())
    pairs = json.loads((root / "captions" / "cap.rc2.test1.json").read_text())
    assert results["metrics"] == {}
    assert results["protocol"] == {"": {"metrics": {}, "chance": {}}}
    rankings = results["rankings"][""]
    assert set(rankings) == {str(p["pairid"]) for p in pairs}
    for pair in pairs:  # the same 50 names as the server file, the reference never among them
        assert len(rankings[str(pair["pairid"])]) == 50
        assert pair["reference"] not in rankings[str(pair["pairid"])]
    server = json.loads((tmp_path / "run" / "cirr-test1-recall.json").read_text())
    assert all(server[pid] == ranked for pid, ranked in rankings.items())
    main(["validate", *args])
    protocol = json.loads((tmp_path / "run" / "results-validate.json").read_text())["protocol"][""]
    assert protocol["metrics"] == {"recall": [1, 5, 10, 50], "recall_subset": [1, 2, 3]}  # not eval_ks
    assert protocol["chance"]["Recall_subset@1"] == pytest.approx(1 / 5)  # 5 candidates, one of them the target


def test_the_shipped_configs_log_to_tensorboard_and_the_demo_validates_before_fit():
    for name in ("demo", "cirr", "cirr_train", "circo", "fashioniq", "fashioniq_train", "fire_stage1", "fire_stage2"):
        trainer = yaml.safe_load((Path(__file__).parents[1] / "configs" / f"{name}.yaml").read_text())["trainer"]
        assert trainer["logger"]["class_path"] == "lightning.pytorch.loggers.TensorBoardLogger", name
    demo = yaml.safe_load((Path(__file__).parents[1] / "configs" / "demo.yaml").read_text())
    assert demo["model"]["validate_before_fit"] is True
    assert demo["trainer"]["callbacks"][0]["init_args"]["monitor"] == "val/Recall@1"
