"""FiRE's release configs: read as the release reads them (unknown keys refused, naming them), translated
to cir_lightning configs, written by `convert-fire-config`, and run by scripts/train.py and scripts/eval.py."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file

from cir_lightning.commands import run_command
from cir_lightning.commands.convert_fire import run_release_script
from cir_lightning.errors import CIRConfigError, CIRFileError
from cir_lightning.fire_config import read_fire_config, translate_fire_config
from tests.data.fake_fire import EXAMPLES, fire_config, make_fake_fire_data

warnings.filterwarnings("ignore", category=FutureWarning)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from cir_lightning.backbones.xgenmm import make_tiny_xgenmm

    return make_tiny_xgenmm(tmp_path_factory.mktemp("fire") / "tiny")


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "fire.yaml"
    path.write_text(text)
    return path


def test_the_release_training_example_translates_to_the_same_run():
    t = translate_fire_config(EXAMPLES / "train_stage2.example.yaml", "train")
    assert t.subcommand == "fit"
    assert yaml.safe_load(t.to_yaml()) == t.config  # the printed YAML is the config
    trainer, model, data = t.config["trainer"], t.config["model"], t.config["data"]["init_args"]
    assert (t.config["seed_everything"], trainer["max_epochs"], trainer["accumulate_grad_batches"]) == (42, 2, 1)
    assert trainer["callbacks"][0]["init_args"]["every_n_train_steps"] == 1000
    assert trainer["default_root_dir"] == "./outputs/fire_stage2"
    backbone = model["backbone"]["init_args"]
    assert model["backbone"]["class_path"] == "cir_lightning.backbones.XGenMMBackbone"
    assert backbone["lora"] == {"r": 64, "alpha": 128, "dropout": 0.1,
                                "target_modules": ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]}
    assert (backbone["eos_token"], backbone["eos_block_size"], backbone["prompts"]) == ("<|end|>", 5, {"preset": "fire"})
    assert model["loss"]["init_args"] == {"scale": 100.0, "recall_ks": [1, 5], "recall_weights": [0.4, 0.15]}
    assert model["optimizer"]["init_args"] == {"lr": 1e-4, "weight_decay": 0.01}
    assert (model["warmup"], model["target_side"]) == (3000, "caption")  # the release aligns with the caption
    assert t.config["data"]["class_path"] == "cir_lightning.data.JsonlCIRDataModule"
    assert (data["train_file"], data["image_root"], data["batch_size"]) == \
        ("./data/annotations/fire_train.jsonl", "./data/images", 4)
    assert data["with_captions"] is True
    assert any("adapted only o_proj, down_proj" in note for note in t.notes)


def test_the_release_evaluation_example_translates_to_a_validate_run():
    t = translate_fire_config(EXAMPLES / "eval.example.yaml", "eval")
    assert t.subcommand == "validate"
    assert t.ks == [1, 5, 10, 50]
    backbone = t.config["model"]["backbone"]["init_args"]
    assert backbone["lora"] == {"init_adapter": "./outputs/fire_stage2"}  # its settings come from the adapter
    data = t.config["data"]["init_args"]
    assert (data["val_queries_file"], data["gallery_file"], data["eval_batch_size"]) == \
        ("./data/annotations/eval_queries.jsonl", "./data/annotations/eval_gallery.jsonl", 16)
    assert "loss" not in t.config["model"]
    assert "callbacks" not in t.config["trainer"]


@pytest.mark.parametrize(("text", "line", "message"), [
    ("seed: 1\nepochs: 3\n", 2, "unknown key `epochs` in a FiRE config; the keys of `the top level` are: data, eval"),
    ("model:\n  lora:\n    rank: 8\n", 3, "unknown key `model.lora.rank`"),
    ("training:\n  lr: 0.1\n", 2, "unknown key `training.lr`"),
    ("eval:\n  k: [1]\n", 2, "unknown key `eval.k` in a FiRE config; the keys of `eval` are: batch_size, exclude"),
    ("lora:\n  r: 8\n", 1, "unknown key `lora` in a FiRE config (FiRE reads LoRA settings from `model.lora`)"),
    ("training:\n  learning_rate: 1e-4\n", 2, "`training.learning_rate` must be a number, got '1e-4' (YAML reads"),
    ("eval:\n  ks: [0, 5]\n", 2, "`eval.ks` must be a list of distinct integers >= 1"),
    ("eval:\n  ks: [5, 1, 5]\n", 2, "`eval.ks` must be a list of distinct integers >= 1, got [5, 1, 5]"),
    ("data:\n  task: coco\n", 2, "`data.task` must be one of custom_jsonl, fashioniq, cirr, got 'coco'"),
    ("model: 3\n", 1, "`model` must be a mapping of keys"),
    ("seed: 1\nseed: 2\n", 2, "`seed` is given twice (first on line 1)"),
    # values no run can use: named here, in the FiRE file, not later by the option they become
    ("model:\n  lora:\n    r: 0\n", 3, "`model.lora.r` must be at least 1, got 0"),
    ("model:\n  lora:\n    dropout: 1.5\n", 3, "`model.lora.dropout` must be from 0 to below 1, got 1.5"),
    ("training:\n  per_device_train_batch_size: 0\n", 2, "`training.per_device_train_batch_size` must be at least 1"),
    ("training:\n  learning_rate: 0.0\n", 2, "`training.learning_rate` must be greater than 0, got 0.0"),
    ("training:\n  recall_loss_weight_at_1: -0.4\n", 2, "`training.recall_loss_weight_at_1` must be at least 0"),
    # infinite numbers: AdamW takes `lr: inf` or `weight_decay: inf`, and the first step makes every weight NaN
    ("training:\n  learning_rate: .inf\n", 2, "`training.learning_rate` must be a finite number, got inf"),
    ("training:\n  weight_decay: .inf\n", 2, "`training.weight_decay` must be a finite number, got inf"),
    ("training:\n  loss_scale: .inf\n", 2, "`training.loss_scale` must be a finite number, got inf"),
    ("seed: 99999999999\n", 1, "`seed` must be at most 4294967295 (numpy's seeds)"),  # was a ValueError traceback
    ("model:\n  lora:\n    target_modules: [o_proj, '']\n", 3, "`model.lora.target_modules` must be a list of names"),
])
def test_bad_keys_and_values_are_one_line_naming_file_line_and_key(tmp_path, text, line, message):
    path = _write(tmp_path, text)
    with pytest.raises(CIRConfigError) as caught:
        read_fire_config(path)
    assert str(caught.value).startswith(f"{path}:{line}: ")
    assert message in str(caught.value)


def test_prompts_translate_to_templates_and_an_end_block(tmp_path):
    path = _write(tmp_path, "data: {query_metadata: q.jsonl, gallery_metadata: g.jsonl}\nprompts:\n"
                            "  eval_query: '<image> {modification} {x} <|end|> <|end|> <|end|>'\n"
                            "  gallery: '<image> ? <|end|><|end|><|end|>'\n")
    backbone = translate_fire_config(path, "eval").config["model"]["backbone"]["init_args"]
    assert backbone["eos_block_size"] == 3
    assert backbone["prompts"] == {"preset": "fire", "query": "<image> {modification} {{x}}", "gallery": "<image> ?"}
    _write(tmp_path, "prompts:\n  train_query: '<image> {reference_caption} {modification} <|end|>'\n"
                     "data: {train_metadata: t.jsonl}\n")
    with pytest.raises(CIRConfigError, match=r"fire.yaml:2: `prompts.train_query` uses \{reference_caption\}"):
        translate_fire_config(path, "train")
    _write(tmp_path, "prompts:\n  gallery: '<image> <|end|>'\ndata: {query_metadata: q, gallery_metadata: g}\n")
    with pytest.raises(CIRConfigError, match=r"`prompts.gallery` must end with the same block .*\(5 x <\|end\|>\)"):
        translate_fire_config(path, "eval")
    _write(tmp_path, "prompts:\n  eval_query: '<image> {modification}'\ndata: {query_metadata: q, gallery_metadata: g}\n")
    with pytest.raises(CIRConfigError) as caught:  # was: "the same block ... as `prompts.eval_query` (0 x None)"
        translate_fire_config(path, "eval")
    assert str(caught.value) == f"{path}:2: `prompts.eval_query` must end with a block of end tokens (the release's: " \
        "' <|end|>' x 5): cir_lightning appends one block to every prompt and pools there"


def test_benchmark_tasks_follow_the_official_protocols(tmp_path):
    path = _write(tmp_path, "data: {task: fashioniq, image_root: /fiq, dress_type: shirt, split: test}\n")
    t = translate_fire_config(path, "eval")
    data = t.config["data"]
    assert data["class_path"] == "cir_lightning.data.FashionIQDataModule"
    assert data["init_args"]["categories"] == ["shirt"]
    assert (data["init_args"]["root"], t.subcommand) == ("/fiq", "validate")  # test has no targets: val is evaluated
    assert any("no public targets" in note for note in t.notes)
    assert any("reported beside fashioniq's own cut-offs" in note for note in t.notes)
    _write(tmp_path, "data: {task: cirr, image_root: /cirr_data, split: test1}\n")
    t = translate_fire_config(path, "eval")
    assert t.config["data"]["init_args"]["root"] == str(Path("/cirr_data") / "cirr")
    assert t.subcommand == "test"
    assert any("whole image set" in note for note in t.notes)
    assert any("strips '.', '?', ','" in note for note in t.notes)  # the release's caption.strip('.?, ')
    assert any("reported beside cirr's own cut-offs" in note for note in t.notes)
    for text, message in [
        ("data: {task: fashioniq, image_root: /f, dress_type: skirt}\n", "`data.dress_type` must be one of dress"),
        ("data: {task: cirr}\n", "`data.image_root` is needed for `data.task: cirr`"),
        ("data: {task: cirr, image_root: /c, split: train}\n", "`data.split` must be val or test1 for CIRR"),
        ("data: {task: custom_jsonl, query_metadata: q.jsonl}\n", "`data.gallery_metadata` is needed to evaluate"),
    ]:
        _write(tmp_path, text)
        with pytest.raises(CIRConfigError, match=message):
            translate_fire_config(path, "eval")
    _write(tmp_path, "data: {task: fashioniq, image_root: /f, train_metadata: t.jsonl}\n")
    with pytest.raises(CIRConfigError, match="trains on fashioniq's own training split"):
        translate_fire_config(path, "train")
    for task in ("fashioniq", "cirr"):  # the release's default train_target is a caption: these splits have none
        _write(tmp_path, f"data: {{task: {task}, image_root: /d}}\n")
        with pytest.raises(CIRConfigError, match=f"`prompts.train_target` aligns .* which {task}'s training split"):
            translate_fire_config(path, "train")
    _write(tmp_path, "data: {task: cirr, image_root: /d}\nprompts:\n  train_target: 'Describe the image <image> ? "
                     "<|end|> <|end|> <|end|> <|end|> <|end|>'\n")
    assert translate_fire_config(path, "train").config["model"]["target_side"] == "image"
    _write(tmp_path, "model: {freeze_base_model: false}\ndata: {train_metadata: t.jsonl}\n")
    t = translate_fire_config(path, "train")  # the release's AdamW then trains the resampler, outside peft
    assert t.config["model"]["backbone"]["init_args"]["lora"]["train_parts"] == ["resampler"]
    _write(tmp_path, "model: {lora: {target_modules: [q_proj, v_proj]}}\ndata: {train_metadata: t.jsonl}\n")
    (note,) = [n for n in translate_fire_config(path, "train").notes if n.startswith("`model.lora.target_modules`")]
    assert "matched nothing" in note
    assert "set `target_modules" not in note  # no advice to set an empty list, which is refused
    _write(tmp_path, "model: {lora: {enabled: false}}\ndata: {train_metadata: t.jsonl}\n")
    with pytest.raises(CIRConfigError, match="`model.lora.enabled` is false .*nothing would be trained"):
        translate_fire_config(path, "train")


def test_convert_fire_config_writes_the_translation_and_never_replaces_a_file(tmp_path, capsys):
    out = tmp_path / "train.yaml"
    run_command(["convert-fire-config", str(EXAMPLES / "train_stage2.example.yaml"), str(out)])
    assert f"cir-lightning fit --config {out}" in capsys.readouterr().out
    written = out.read_text()
    assert written.startswith("# Translated from a FiRE release config")
    assert yaml.safe_load(written) == translate_fire_config(EXAMPLES / "train_stage2.example.yaml", "train").config
    with pytest.raises(CIRFileError):
        run_command(["convert-fire-config", str(EXAMPLES / "eval.example.yaml"), str(out)])
    assert out.read_text() == written
    run_command(["convert-fire-config", str(EXAMPLES / "eval.example.yaml"), str(out), "--overwrite"])
    assert "cir-lightning validate --config" in out.read_text()


def test_a_bad_config_stops_the_script_with_one_line(tmp_path, capsys):
    path = _write(tmp_path, "model:\n  base_model: x\n  adapter: y\n")
    with pytest.raises(SystemExit) as stopped:
        run_release_script("eval", ["--config", str(path)])
    assert stopped.value.code == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0] == f"scripts/eval.py: error: {path}:3: unknown key `model.adapter` in a FiRE config; the keys of " \
                     "`model` are: adapter_path, base_model, freeze_base_model, lora, torch_dtype"


def test_the_script_names_the_fire_key_of_an_adapter_that_is_not_there(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # before, the model's loading said "`init_adapter` nope does not exist"
    path = _write(tmp_path, "model:\n  adapter_path: ./nope\ndata: {query_metadata: q, gallery_metadata: g}\n")
    with pytest.raises(SystemExit):
        run_release_script("eval", ["--config", str(path)])
    assert capsys.readouterr().err.splitlines()[0] == f"scripts/eval.py: error: {path}:2: `model.adapter_path` ./nope " \
        f"does not exist (a relative path is read from the folder the command runs in, {tmp_path})"
    assert translate_fire_config(path, "eval").config["model"]["backbone"]["init_args"]["lora"] == \
        {"init_adapter": "./nope"}  # a conversion may precede the training that writes it: a note, not an error


def _recalls(backbone, root: Path, queries: list[dict], ks: list[int]) -> dict[str, float]:
    """Recall@K computed here: embeddings from the backbone's own API, ranking in plain torch."""
    def image(name: str) -> Image.Image:
        return Image.open(root / "data" / "images" / name).convert("RGB")

    gallery_ids = [line["image_id"] for line in map(json.loads, (root / "data/annotations/eval_gallery.jsonl")
                                                    .read_text().splitlines())]
    q = backbone.encode_query([image(x["reference_image"]) for x in queries], [x["modification"] for x in queries])
    g = backbone.encode_gallery([image(f"{i}.png") for i in gallery_ids])
    scores = q @ g.T
    hits = {k: 0 for k in ks}
    for row, query in zip(scores, queries, strict=True):
        for excluded in query["exclude_ids"]:
            row[gallery_ids.index(excluded)] = -torch.inf
        rank = int((row > row[gallery_ids.index(query["target_id"])]).sum())
        for k in ks:
            hits[k] += rank < k
    return {f"Recall@{k}": hits[k] / len(queries) for k in ks}


def test_the_release_examples_train_then_evaluate_through_the_scripts(tiny, tmp_path, monkeypatch, capsys):
    from cir_lightning.backbones import LoRA, XGenMMBackbone

    monkeypatch.chdir(tmp_path)  # the release's paths are relative to where its scripts run
    queries = make_fake_fire_data(tmp_path)
    run_release_script("train", ["--config", str(fire_config("train_stage2", tmp_path, tiny))])
    out = capsys.readouterr().out
    assert "#   cir-lightning fit --config" in out
    status = json.loads(out.strip().splitlines()[-1])
    assert status["status"] == "ok"
    adapter = Path(status["output_dir"])
    assert adapter.parts[:2] == ("outputs", "fire_stage2")
    saved = json.loads((adapter / "adapter_config.json").read_text())
    assert (saved["r"], saved["lora_alpha"]) == (64, 128)
    weights = load_file(str(adapter / "adapter_model.safetensors"))
    assert any("qkv_proj.lora_B" in name for name in weights)  # the paper's projections, not the release's two
    assert any(bool(w.abs().sum() > 0) for name, w in weights.items() if "lora_B" in name)  # it was trained

    # the evaluation example, unchanged but for the model: its adapter_path is the training's output_dir
    run_release_script("eval", ["--config", str(fire_config("eval", tmp_path, tiny))])
    out = capsys.readouterr().out
    assert "#   cir-lightning validate --config" in out
    printed = json.loads(out[out.rindex("\n{\n") + 1:])
    trained = XGenMMBackbone(str(tiny), lora=LoRA(init_adapter=str(adapter)))
    assert printed == _recalls(trained, tmp_path, queries, [1, 5, 10, 50])  # hits / n, as the release prints
