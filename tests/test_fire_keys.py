"""Every key of FiRE's release schema, for training and for evaluation: a file that changes it changes the
translated run, is refused in one line naming it, or gets a note naming it. None is ignored silently."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from cir_lightning.errors import CIRConfigError
from cir_lightning.fire_config import RELEASE_DEFAULTS, translate_fire_config
from cir_lightning.fire_keys import unused_keys
from tests.data.fake_fire import EXAMPLES

_END = " <|end|>" * 5
# a value for every key of the schema other than the release's default (src/fire_open/config.py DEFAULT_CONFIG)
OTHER: dict[str, Any] = {
    "seed": 7, "model.base_model": "some/other-model", "model.adapter_path": "no/adapter/yet",
    "model.torch_dtype": "bfloat16", "model.freeze_base_model": False, "model.lora.enabled": False,
    "model.lora.r": 8, "model.lora.alpha": 16, "model.lora.dropout": 0.05, "model.lora.target_modules": ["o_proj"],
    "data.image_root": "imgs", "data.train_metadata": "other_train.jsonl", "data.query_metadata": "other_q.jsonl",
    "data.gallery_metadata": "other_g.jsonl", "data.task": "cirr", "data.split": "test", "data.dress_type": "shirt",
    "data.max_short_edge": 200, "data.num_workers": 1,
    "prompts.train_query": "Q <image> {modification} ?" + _END, "prompts.train_target": "T {target_caption}" + _END,
    "prompts.gallery": "G <image> ?" + _END, "prompts.eval_query": "E <image> {modification} ?" + _END,
    "training.output_dir": "out", "training.per_device_train_batch_size": 2,
    "training.gradient_accumulation_steps": 3, "training.num_train_epochs": 1, "training.learning_rate": 2.0e-5,
    "training.weight_decay": 0.0, "training.warmup_steps": 10, "training.logging_steps": 5,
    "training.save_every_steps": 0, "training.max_length": 128, "training.fp16": False, "training.loss_scale": 20.0,
    "training.recall_loss_weight_at_1": 0.0, "training.recall_loss_weight_at_5": 1.0,
    "eval.batch_size": 4, "eval.max_length": 64, "eval.ks": [1, 3], "eval.exclude_reference": False,
}
BASE = {"train": {"data.train_metadata": "t.jsonl"},
        "eval": {"data.query_metadata": "q.jsonl", "data.gallery_metadata": "g.jsonl"}}


def _file(tmp_path: Path, settings: dict[str, Any]) -> Path:
    nested: dict[str, Any] = {}
    for key, value in settings.items():
        *sections, leaf = key.split(".")
        node = nested
        for section in sections:
            node = node.setdefault(section, {})
        node[leaf] = value
    path = tmp_path / "fire.yaml"
    path.write_text(yaml.safe_dump(nested, sort_keys=False))
    return path


def test_every_key_of_the_schema_has_another_value_here():
    assert set(OTHER) == set(RELEASE_DEFAULTS)
    assert all(OTHER[key] != default for key, default in RELEASE_DEFAULTS.items())


# the changes no run can take alone, refused in one line naming the key and what it needs
REFUSED = {("model.lora.enabled", "train"): "`model.lora.enabled` is false and there is no `model.adapter_path`",
           ("data.query_metadata", "train"): "`data.gallery_metadata` is needed to evaluate (with `data.query_metadata`)",
           ("data.gallery_metadata", "train"): "`data.query_metadata` is needed to evaluate (with `data.gallery_metadata`)",
           ("data.task", "train"): "`data.image_root` is needed for `data.task: cirr`",
           ("data.task", "eval"): "`data.image_root` is needed for `data.task: cirr`"}


@pytest.mark.parametrize("purpose", ["train", "eval"])
@pytest.mark.parametrize("key", sorted(RELEASE_DEFAULTS))
def test_a_key_changes_the_run_is_refused_or_is_named_in_a_note(tmp_path, purpose, key):
    base = translate_fire_config(_file(tmp_path, BASE[purpose]), purpose)
    path = _file(tmp_path, {**BASE[purpose], key: OTHER[key]})
    if (key, purpose) in REFUSED:
        with pytest.raises(CIRConfigError) as refused:
            translate_fire_config(path, purpose)
        assert str(refused.value).startswith(f"{path}:")
        assert REFUSED[key, purpose] in str(refused.value)
        assert "\n" not in str(refused.value)
        return
    changed = translate_fire_config(path, purpose)
    new_notes = [note for note in changed.notes if note not in base.notes]
    assert changed.config != base.config or any(f"`{key}" in note for note in new_notes)


def test_the_examples_say_which_of_their_keys_a_run_does_not_read(tmp_path):
    t = translate_fire_config(EXAMPLES / "eval.example.yaml", "eval")  # custom_jsonl with split and dress_type
    (note,) = [n for n in t.notes if n.startswith("set in the file, read neither")]
    assert "`data.split` (line 13: read with `data.task: fashioniq` or `cirr` only)" in note
    assert "`data.dress_type` (line 14: read with `data.task: fashioniq` only)" in note
    path = _file(tmp_path, {"model.freeze_base_model": True, "training.learning_rate": 1.0e-4,
                            "training.output_dir": "o", **BASE["eval"]})  # training keys, evaluated
    (note,) = [n for n in translate_fire_config(path, "eval").notes if n.startswith("set in the file, read neither")]
    assert note.endswith("by the release's scripts/eval.py: `model.freeze_base_model` (line 2: read by training); "
                         "`training.learning_rate` (line 4: read by training)")  # not output_dir: results go there
    assert not any(n.startswith("set in the file") for n in translate_fire_config(
        EXAMPLES / "train_stage2.example.yaml", "train").notes)  # the training example uses every key it sets


def test_an_adapter_s_own_settings_win_over_model_lora_and_the_translation_says_so(tmp_path):
    path = _file(tmp_path, {"model.adapter_path": "a", "model.lora.r": 8, **BASE["eval"]})
    t = translate_fire_config(path, "eval")
    assert t.config["model"]["backbone"]["init_args"]["lora"] == {"init_adapter": "a"}
    assert any("`model.lora.r` (line 4: the adapter's own adapter_config.json sets them" in n for n in t.notes)
    settings = {**RELEASE_DEFAULTS, "model.lora.enabled": False, "_lines": {"model.lora.alpha": 3}}
    assert unused_keys(settings, train=False) == {"model.lora.alpha": "`model.lora.enabled` is false"}
