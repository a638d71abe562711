"""``cir-lightning reproduce`` on a tiny offline twin of the zero-shot configs, and the shipped zero-shot configs
themselves: each parses, pairs its checkpoint with that model's own prompts, and has published numbers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from cir_lightning.backbones.tiny import make_tiny_model
from cir_lightning.cli import main as cli_main
from cir_lightning.commands import run_command
from cir_lightning.commands.reproduce import present
from cir_lightning.data import SyntheticCIRDataModule
from cir_lightning.errors import CIRConfigError

CONFIGS = Path(__file__).parents[1] / "configs"
ZEROSHOT = sorted((CONFIGS / "zeroshot").glob("*/*.yaml"))
PUBLISHED = yaml.safe_load((CONFIGS / "zeroshot" / "published.yaml").read_text())


def _config(model_path: str) -> dict:
    return {
        "trainer": {"accelerator": "cpu", "devices": 1, "logger": False, "enable_checkpointing": False,
                    "enable_progress_bar": False},
        "model": {"backbone": {"class_path": "cir_lightning.backbones.HFMultimodalBackbone",
                               "init_args": {"model_name_or_path": model_path, "prompts": {"preset": "short"}}},
                  "pictures": 0},
        "data": {"class_path": "cir_lightning.data.SyntheticCIRDataModule",
                 "init_args": {"root": "set-by-reproduce", "num_train": 16, "num_val": 8, "image_size": 32,
                               "eval_batch_size": 8}},
    }


@pytest.fixture(scope="module")
def twin(tmp_path_factory):
    """configs/tiny/synthetic.yaml (weights and data here), configs/absent/synthetic.yaml (weights missing)."""
    root = tmp_path_factory.mktemp("twin")
    tiny = make_tiny_model(root / "tiny-model")
    data = root / "data"
    SyntheticCIRDataModule(str(data), num_train=16, num_val=8, image_size=32).prepare_data()
    for model, path in (("tiny", str(tiny)), ("absent", str(root / "no-such-model"))):
        (root / "configs" / model).mkdir(parents=True)
        (root / "configs" / model / "synthetic.yaml").write_text(yaml.safe_dump(_config(path)))
    published = {"tiny": {"name": "the tiny twin", "results": {"synthetic": {
        "split": "val", "source": "made up for this test", "metrics": {"Recall@1": 12.5, "Recall@5": 50.0}}}}}
    (root / "configs" / "published.yaml").write_text(yaml.safe_dump(published))
    return root, data


def test_list_names_what_each_config_lacks_and_runs_nothing(twin, capsys):
    root, data = twin
    run_command(["reproduce", "--configs", str(root / "configs"), "--list", "--out", str(root / "listed")])
    out = capsys.readouterr().out
    assert f"weights `{root / 'no-such-model'}` (not a folder, not in the Hugging Face cache)" in out
    assert "give --data synthetic=ROOT" in out  # the config's own root is not a folder
    assert not (root / "listed").exists()


def test_runs_what_is_here_and_prints_ours_next_to_published(twin, capsys):
    root, data = twin
    out_dir = root / "runs"
    run_command(["reproduce", "--configs", str(root / "configs"), "--data", f"synthetic={data}",
                 "--out", str(out_dir), "--", "--data.init_args.num_workers", "0"])
    printed = capsys.readouterr().out
    results = sorted((out_dir / "tiny" / "synthetic").rglob("results-validate*.json"))
    assert len(results) == 1
    assert not (out_dir / "absent").exists()
    metrics = json.loads(results[0].read_text())["metrics"][""]
    r1, r5 = 100 * metrics["Recall@1"], 100 * metrics["Recall@5"]
    rows = [line.split() for line in printed.splitlines() if line.startswith("tiny/synthetic  Recall@")]
    assert rows == [["tiny/synthetic", "Recall@1", "12.50", "(val)", f"{r1:.2f}", "(val)", f"{r1 - 12.5:+.2f}"],
                    ["tiny/synthetic", "Recall@5", "50.00", "(val)", f"{r5:.2f}", "(val)", f"{r5 - 50.0:+.2f}"]]
    summary = json.loads((out_dir / "reproduce.json").read_text())
    assert summary["tiny/synthetic"]["ours"]["Recall@1"] == pytest.approx(r1)
    assert summary["tiny/synthetic"]["published"]["source"] == "made up for this test"


@pytest.mark.parametrize(("args", "message"), [
    (["--data", "cirr"], "--data 'cirr': expected BENCHMARK=ROOT"),
    (["--only", "nobody"], "--only nobody: no such config"),
    (["--configs", "/no/such/folder"], "--configs /no/such/folder: not a folder"),
    # a misspelt benchmark's root was never used, without a word
    (["--data", "synthtic=/data"], "--data synthtic=/data: no config below .* is of a benchmark 'synthtic'; they are "
                                   "of: synthetic"),
])
def test_bad_options_are_one_line_errors(twin, args, message):
    root, _ = twin
    base = [] if "--configs" in args else ["--configs", str(root / "configs")]
    with pytest.raises(CIRConfigError, match=message.replace("(", r"\(")):
        run_command(["reproduce", *base, *args, "--list"])


def test_a_published_value_that_is_not_a_number_names_the_file_and_key(twin, tmp_path):
    root, _ = twin
    bad = tmp_path / "published.yaml"
    bad.write_text(yaml.safe_dump({"tiny": {"results": {"synthetic": {"metrics": {"Recall@1": "12.5%"}}}}}))
    with pytest.raises(CIRConfigError, match=f"{bad}: `tiny.results.synthetic.metrics.Recall@1` must be a number"):
        run_command(["reproduce", "--configs", str(root / "configs"), "--published", str(bad), "--list"])


@pytest.mark.parametrize(("published", "message"), [
    ({"tiny": {"result": {}}}, "`tiny.result` is not an entry of a model \\(a misspelling\\?\\); a model has name, paper,"),
    ({"tiny": {"results": {"synthetic": {"metric": {"Recall@1": 12.5}}}}},
     "`tiny.results.synthetic.metric` is not an entry of a result \\(a misspelling\\?\\); a result has split, source, metrics"),
    ({"tiny": {"results": [1]}}, r"`tiny.results` must be a mapping, got \[1\]"),
    ({"tiny": {"results": {"synthetic": {"metrics": 12.5}}}}, "`tiny.results.synthetic.metrics` must be a mapping"),
    ({"tiny": "e5v"}, "`tiny` must be a mapping of name, paper, checkpoint"),
])
def test_an_entry_of_the_published_numbers_it_does_not_read_names_the_file_and_key(twin, tmp_path, published, message):
    """A misspelt `results` / `metrics` left that model's numbers out of the comparison without a word."""
    root, _ = twin
    bad = tmp_path / "published.yaml"
    bad.write_text(yaml.safe_dump(published))
    with pytest.raises(CIRConfigError, match=f"{bad}: {message}"):
        run_command(["reproduce", "--configs", str(root / "configs"), "--published", str(bad), "--list"])


def test_a_hub_name_counts_only_when_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    assert not present("royokong/e5-v")
    snapshot = tmp_path / "hub" / "models--royokong--e5-v" / "snapshots" / "abc"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (tmp_path / "hub" / "models--royokong--e5-v" / "refs").mkdir()
    (tmp_path / "hub" / "models--royokong--e5-v" / "refs" / "main").write_text("abc")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    assert present("royokong/e5-v")
    assert present(str(tmp_path))
    assert not present(str(tmp_path / "missing"))
    (tmp_path / "fire.ckpt").write_bytes(b"")  # `lora.init_adapter` takes a cir_lightning checkpoint file too
    assert present(str(tmp_path / "fire.ckpt"))  # was counted as missing: the config never ran


@pytest.mark.parametrize(("text", "message"), [(b"- a\n- b\n", "a config is a mapping of options"),
                                               (b"\xff\xfe\x00", "cannot be read as YAML")])
def test_a_config_that_is_not_a_yaml_mapping_is_one_line(tmp_path, text, message):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "b.yaml").write_bytes(text)  # was AttributeError / UnicodeDecodeError tracebacks
    with pytest.raises(CIRConfigError, match=f"^{tmp_path / 'm' / 'b.yaml'}: {message}"):
        run_command(["reproduce", "--configs", str(tmp_path), "--list"])


# ------------------------------------------------------------------------------- the shipped zero-shot configs
def _backbone(path: Path) -> dict:
    return yaml.safe_load(path.read_text())["model"]["backbone"]


def test_every_zero_shot_config_has_published_numbers():
    assert ZEROSHOT, "configs/zeroshot/<model>/<benchmark>.yaml"
    missing = [f"{p.parent.name}/{p.stem}" for p in ZEROSHOT
               if p.stem not in (PUBLISHED.get(p.parent.name) or {}).get("results", {})]
    assert missing == []


@pytest.mark.parametrize("config", ZEROSHOT, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_zero_shot_config_parses(config, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["validate", "--config", str(config), "--print_config"])
    assert exit_info.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["data"]["class_path"].rsplit(".", 1)[-1].lower().startswith(config.stem.replace("_", ""))
    assert list(tmp_path.iterdir()) == []


def test_every_checkpoint_comes_with_its_own_models_prompts():
    """No config pairs a checkpoint with another model's prompts (the shipped benchmark configs included)."""
    own = {"e5-v": "e5v", "xgen-mm": "fire", "BGE-VL-MLLM": "bge_vl", "gme-Qwen2-VL": "gme", "LamRA": "lamra"}
    checked = 0
    for path in [*ZEROSHOT, *sorted(CONFIGS.glob("*.yaml"))]:
        args = _backbone(path)["init_args"]
        name = str(args.get("model_name_or_path", ""))
        for marker, preset in own.items():
            if marker.lower() in name.lower():
                assert str((args.get("prompts") or {}).get("preset", "fire")).startswith(preset), path
                checked += 1
    assert checked >= 6


def test_docs_show_the_published_tables_exactly():
    """docs/reproduction.md shows what ``cir-lightning reproduce --markdown`` prints (one source: published.yaml)."""
    from cir_lightning.commands.published import markdown_tables

    doc = (CONFIGS.parent / "docs" / "reproduction.md").read_text()
    assert markdown_tables(PUBLISHED, CONFIGS / "zeroshot") in doc


def test_an_out_folder_that_cannot_be_written_is_refused_before_any_run_and_a_full_disk_leaves_no_summary(
        twin, tmp_path, monkeypatch):
    """A file for `--out` ended only after every run, when reproduce.json was written (each run's error first)."""
    import errno
    import os

    from cir_lightning.commands import reproduce
    from cir_lightning.errors import CIRFileError

    root, data = twin
    args = ["reproduce", "--configs", str(root / "configs"), "--data", f"synthetic={data}"]
    (tmp_path / "file").write_text("")
    ran = []
    monkeypatch.setattr(reproduce, "run_one", lambda run, out, *a: ran.append(run) or _results(out))
    with pytest.raises(CIRFileError, match=r"^`--out`: cannot write in `.*file/runs`: a file stands where a folder"):
        run_command([*args, "--out", str(tmp_path / "file" / "runs")])
    assert ran == []

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(CIRFileError, match=r"^cannot write `.*reproduce\.json`: no space left on the device$"):
        run_command([*args, "--out", str(tmp_path / "runs")])
    assert len(ran) == 1
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["results-validate.json"]


def _results(out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results-validate.json").write_text(json.dumps({"metrics": {"": {"Recall@1": 0.25}}}))
    return out / "results-validate.json"
