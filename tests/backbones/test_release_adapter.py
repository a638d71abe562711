"""A LoRA adapter saved by FiRE's release loads as it is: settings from its adapter_config.json, its Llama
target names (only o_proj and down_proj exist in Phi-3) said once, and it evaluates like the same weights
loaded through our own adapters."""

from __future__ import annotations

import json
import re
import warnings

import pytest
import torch
import yaml
from PIL import Image

from cir_lightning.backbones import LoRA, XGenMMBackbone
from cir_lightning.backbones.xgenmm import load_xgenmm, make_tiny_xgenmm
from cir_lightning.errors import CIRConfigError
from tests.data.fake_fire import fire_config, make_fake_fire_data

warnings.filterwarnings("ignore", category=FutureWarning)
RELEASE_TARGETS = ["k_proj", "q_proj", "v_proj", "o_proj", "gate_proj", "down_proj", "up_proj"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_xgenmm(tmp_path_factory.mktemp("xgenmm") / "tiny")


@pytest.fixture(scope="module")
def release_adapter(tiny, tmp_path_factory):
    """Saved as the release saves it: peft over xGen-MM's language model alone, with Llama's names."""
    from peft import LoraConfig, get_peft_model

    language_model = load_xgenmm(str(tiny), torch.float32).vlm.lang_model
    wrapped = get_peft_model(language_model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.1,
                                                        target_modules=RELEASE_TARGETS))
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in wrapped.named_parameters():
            if "lora_" in name:
                p.normal_(std=0.3)  # lora_B starts at zero: make the adapter change the embeddings
    folder = tmp_path_factory.mktemp("release") / "fire_stage2"
    wrapped.save_pretrained(str(folder))
    config = json.loads((folder / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps({**config, "task_type": "CAUSAL_LM"}))  # the release's
    weights = {name.split("base_model.model.", 1)[1].replace(".default", ""): p.detach().clone()
               for name, p in wrapped.named_parameters() if "lora_" in name}
    return folder, weights


@pytest.fixture(scope="module")
def own_adapter(tiny, release_adapter, tmp_path_factory):
    """The same weights on the same two projections, set up and exported by our own path."""
    _, weights = release_adapter
    ours = XGenMMBackbone(str(tiny), lora=LoRA(r=4, alpha=8, target_modules=["o_proj", "down_proj"]))
    with torch.no_grad():
        for name, p in ours.named_parameters():
            if "lora_" in name:
                p.copy_(weights[name.split("vlm.lang_model.", 1)[1].replace(".default", "")])
    folder = tmp_path_factory.mktemp("ours") / "adapter"
    ours.save_adapter(folder)
    return folder, ours


def _embed(backbone):
    images = [Image.new("RGB", (60, 30), "red"), Image.new("RGB", (30, 61), "blue")]
    return backbone.encode_query(images, ["make it green", "make it a square"]), backbone.encode_gallery(images)


def test_a_release_adapter_loads_with_its_own_settings_saying_once_what_it_adapts(tiny, release_adapter, own_adapter):
    folder, _ = release_adapter
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        release = XGenMMBackbone(str(tiny), lora=LoRA(init_adapter=str(folder)))
    said = [str(w.message) for w in caught if "init_adapter" in str(w.message)]
    assert len(said) == 1
    assert "adapted only down_proj and o_proj" in said[0]
    assert "gate_proj, k_proj, q_proj, up_proj, v_proj match no linear layer" in said[0]
    assert (release.lora.r, release.lora.alpha, release.lora.dropout) == (4, 8, 0.1)
    adapted = {name.split(".lora_A")[0].rsplit(".", 1)[-1] for name, _ in release.named_parameters() if ".lora_A" in name}
    assert adapted == {"o_proj", "down_proj"}

    _, ours = own_adapter
    base = XGenMMBackbone(str(tiny))
    for loaded, own, plain in zip(_embed(release), _embed(ours), _embed(base), strict=True):
        assert torch.equal(loaded, own)
        assert not torch.allclose(loaded, plain, atol=1e-3)  # the adapter is really applied


def test_our_own_adapter_comes_back_with_its_settings_and_a_wrong_rank_is_refused(tiny, release_adapter, own_adapter):
    folder, ours = own_adapter
    again = XGenMMBackbone(str(tiny), lora=LoRA(init_adapter=str(folder)))
    assert (again.lora.r, again.lora.alpha, list(again.lora.target_modules)) == (4, 8, ["o_proj", "down_proj"])
    assert again.weights_digest() == ours.weights_digest()
    with pytest.raises(CIRConfigError, match="other LoRA settings .*r: 4 in the adapter, 8 here"):
        XGenMMBackbone(str(tiny), lora=LoRA(r=8, init_adapter=str(release_adapter[0])))


def test_a_release_adapter_evaluates_through_fires_script_as_ours_does_through_the_cli(
        tiny, release_adapter, own_adapter, tmp_path, monkeypatch, capsys):
    from cir_lightning.cli import main
    from cir_lightning.commands.convert_fire import run_release_script

    monkeypatch.chdir(tmp_path)
    make_fake_fire_data(tmp_path)
    config = fire_config("eval", tmp_path, tiny, **{"model.adapter_path": str(release_adapter[0])})
    run_release_script("eval", ["--config", str(config)])
    out = capsys.readouterr().out
    fire = json.loads(out[out.rindex("\n{\n") + 1:])

    ours = {"seed_everything": 42, "trainer": {"default_root_dir": str(tmp_path / "ours"), "logger": False,
                                                "enable_progress_bar": False},
            "model": {"backbone": {"class_path": "cir_lightning.backbones.XGenMMBackbone", "init_args": {
                "model_name_or_path": str(tiny), "lora": {"r": 4, "alpha": 8, "target_modules": ["o_proj", "down_proj"],
                                                          "init_adapter": str(own_adapter[0])}}}},
            "data": {"class_path": "cir_lightning.data.JsonlCIRDataModule", "init_args": {
                "root": "data", "train_file": None, "val_queries_file": "annotations/eval_queries.jsonl",
                "gallery_file": "annotations/eval_gallery.jsonl", "image_root": "data/images", "eval_batch_size": 16}}}
    (tmp_path / "ours.yaml").write_text(yaml.safe_dump(ours))
    main(["validate", "--config", str(tmp_path / "ours.yaml")])
    results = json.loads(next((tmp_path / "ours").glob("results-validate*.json")).read_text())
    assert sorted(fire) == ["Recall@1", "Recall@10", "Recall@5", "Recall@50"]
    assert fire == pytest.approx({name: results["metrics"][""][name] for name in fire}, rel=1e-6)
    assert results["config"]["data"]["val_queries_file"].endswith("eval_queries.jsonl")


def _damaged(release_adapter, tmp_path, change, config_change=None):
    """A copy of the release adapter with its weights (and adapter_config.json) changed."""
    import shutil

    from safetensors.torch import load_file, save_file

    folder = tmp_path / "damaged"
    shutil.copytree(release_adapter[0], folder)
    weights = load_file(str(folder / "adapter_model.safetensors"))
    save_file(change(dict(sorted(weights.items()))), str(folder / "adapter_model.safetensors"))
    if config_change:
        config = json.loads((folder / "adapter_config.json").read_text())
        (folder / "adapter_config.json").write_text(json.dumps({**config, **config_change}))
    return folder


def _first(weights):
    return next(iter(weights))


@pytest.mark.parametrize(("change", "config_change", "said"), [
    (lambda w: {k: v for k, v in w.items() if k != _first(w)}, None, r"1 missing \(first: \['base_model\.model\."),
    (lambda w: {**w, "base_model.model.model.layers.0.mlp.down_proj.lora_C.weight": torch.zeros(2)}, None,
     r": 1 unexpected \(first: \['base_model\.model\.vlm\.lang_model\.model\.layers\.0\.mlp\.down_proj\.lora_C\."
     r"weight'\]\) \(the file's names are read with `vlm\.lang_model\.` after `base_model\.model\.`"),
    (lambda w: {**w, _first(w): torch.zeros(5, w[_first(w)].shape[1])}, None,
     r": 1 of another shape \(first: .*lora_A.*: \(5, \d+\) in the file, \(4, \d+\) here\) \(the file's"),
    # adapter_config.json says rank 8, the weights are rank 4: every LoRA matrix has another shape
    (lambda w: w, {"r": 8}, r": \d+ of another shape \(first: .*: \(4, \d+\) in the file, \(8, \d+\) here\)"),
], ids=["a weight missing", "an extra weight", "a wrong shape", "another rank"])
def test_a_damaged_release_adapter_is_one_line_naming_what_does_not_fit(tiny, release_adapter, tmp_path, change,
                                                                       config_change, said):
    folder = _damaged(release_adapter, tmp_path, change, config_change)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the release's Llama names, said once (above)
        with pytest.raises(CIRConfigError) as refused:
            XGenMMBackbone(str(tiny), lora=LoRA(init_adapter=str(folder)))
    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith(f"`init_adapter` {folder} does not fit this model's adapter")
    assert re.search(said, message), message


def test_fire_s_eval_script_stops_on_a_damaged_adapter_with_one_line(tiny, release_adapter, tmp_path, monkeypatch,
                                                                    capsys):
    from cir_lightning.commands.convert_fire import run_release_script

    monkeypatch.chdir(tmp_path)
    make_fake_fire_data(tmp_path)
    folder = _damaged(release_adapter, tmp_path, lambda w: {k: v for k, v in w.items() if k != _first(w)})
    config = fire_config("eval", tmp_path, tiny, **{"model.adapter_path": str(folder)})
    with pytest.raises(SystemExit) as stopped:
        run_release_script("eval", ["--config", str(config)])
    assert stopped.value.code == 2
    line = capsys.readouterr().err.splitlines()[0]
    assert line.startswith(f"scripts/eval.py: error: `init_adapter` {folder} does not fit this model's adapter")
    assert "1 missing" in line
