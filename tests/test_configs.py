"""Every shipped config parses through the real entry point; the offline one (the demo) also runs."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import yaml

from cir_lightning.cli import main

CONFIGS = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))
# evaluation-only configs run `validate`; the others train
EVALUATE = {"cirr.yaml", "circo.yaml", "fashioniq.yaml", "bgevl_fashioniq.yaml"}


def _import(class_path: str) -> type:
    module, _, name = class_path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def test_every_config_is_covered():
    assert {p.name for p in CONFIGS} >= {"demo.yaml", "fire_stage1.yaml", "fire_stage2.yaml", *EVALUATE}


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
def test_config_parses_and_names_existing_classes(config, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing may be written: --print_config only parses
    stage = "validate" if config.name in EVALUATE else "fit"
    with pytest.raises(SystemExit) as exit_info:
        main([stage, "--config", str(config), "--print_config"])
    assert exit_info.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    assert _import(printed["model"]["backbone"]["class_path"])
    assert _import(printed["data"]["class_path"])
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("config", [c for c in CONFIGS if c.name not in EVALUATE], ids=lambda p: p.name)
def test_last_ckpt_holds_the_newest_weights_in_every_training_config(config):
    """With a `monitor`, Lightning rewrites last.ckpt only with a new best: a config keeping last.ckpt must
    do it with a monitor-free callback, or `--ckpt_path last` resumes and evaluates an older epoch."""
    from types import SimpleNamespace

    from cir_lightning.fit_summary import stale_last_warning

    callbacks = yaml.safe_load(config.read_text())["trainer"].get("callbacks", [])
    checkpoints = [_import(c["class_path"])(**c.get("init_args", {})) for c in callbacks
                   if c["class_path"].endswith("ModelCheckpoint")]
    assert any(c.save_last for c in checkpoints), config.name  # every training config keeps a last.ckpt
    assert stale_last_warning(SimpleNamespace(checkpoint_callbacks=checkpoints)) is None
    monitored_only = [c for c in checkpoints if c.monitor is not None]
    for c in monitored_only:
        c.save_last = True
    if monitored_only:  # the same callbacks with last.ckpt kept by the monitored one alone: warned about
        assert "rewrites last.ckpt only when it saves a new best" in stale_last_warning(
            SimpleNamespace(checkpoint_callbacks=monitored_only))


def test_the_demo_config_runs_offline(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    config = Path(__file__).parents[1] / "configs" / "demo.yaml"
    main(["fit", "--config", str(config), "--trainer.fast_dev_run", "true", "--trainer.default_root_dir", "demo",
          "--data.init_args.num_train", "64", "--data.init_args.num_val", "8", "--data.init_args.num_workers", "0"])
    assert (tmp_path / "demo" / "tiny-llava-next" / "config.json").is_file()  # built offline, on first use
    assert (tmp_path / "demo" / "data" / "train.jsonl").is_file()
