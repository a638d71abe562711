"""Backbone options checked when set, atomic tiny-model and adapter writing."""

from __future__ import annotations

import os
import stat
import warnings

import pytest
import torch

from cir_lightning.backbones import (
    DualEncoderBackbone,
    HFMultimodalBackbone,
    LoRA,
    Prompts,
    XGenMMBackbone,
    make_tiny_dual_encoder,
    make_tiny_xgenmm,
)
from cir_lightning.backbones.tiny import save_atomically
from cir_lightning.errors import CIRConfigError, CIRFileError

warnings.filterwarnings("ignore", category=FutureWarning)


@pytest.mark.parametrize(("options", "message"), [
    ({"r": 0}, "`lora.r` must be an integer >= 1, got 0"),
    ({"r": 2.5}, "`lora.r` must be an integer >= 1, got 2.5"),
    ({"alpha": 0}, "`lora.alpha` must be a finite number > 0, got 0"),
    ({"alpha": -8}, "`lora.alpha` must be a finite number > 0, got -8"),
    ({"dropout": 1.0}, r"`lora.dropout` must be a number in \[0, 1\), got 1.0"),
    ({"dropout": -0.1}, r"`lora.dropout` must be a number in \[0, 1\), got -0.1"),
    ({"rank_pattern": {"q_proj": 0}}, r"^`lora.rank_pattern\['q_proj'\]` must be an integer >= 1, got 0$"),
    ({"rank_pattern": {"q_proj": 2.5}}, r"^`lora.rank_pattern\['q_proj'\]` must be an integer >= 1, got 2.5$"),
    ({"alpha_pattern": {"v_proj": -1}}, r"^`lora.alpha_pattern\['v_proj'\]` must be a finite number > 0, got -1$"),
    ({"rank_pattern": {"q_proj(": 4}}, r"^`lora.rank_pattern` pattern 'q_proj\(' is not a regular expression \("),
    ({"alpha_pattern": {"": 4}}, r"^`lora.alpha_pattern`: a key must name a module .*, got ''$"),
])
def test_lora_numbers_are_checked_when_set(options, message):
    with pytest.raises(CIRConfigError, match=message):
        LoRA(**options)
    assert LoRA(r=1, alpha=0.5, dropout=0.0).r == 1


def test_eos_block_size_is_checked_before_loading(tiny_model_dir, tmp_path):
    with pytest.raises(CIRConfigError, match="`eos_block_size` must be an integer >= 0, got -1"):
        HFMultimodalBackbone(str(tiny_model_dir), prompts=Prompts("e5v"), eos_block_size=-1)
    with pytest.raises(CIRConfigError, match="`eos_block_size` must be an integer >= 0, got -2"):
        XGenMMBackbone(str(tmp_path / "never-built"), pooling="last_token", eos_block_size=-2)
    with pytest.raises(CIRConfigError, match=r"`max_text_tokens` must be an integer >= 1, got 0"):
        XGenMMBackbone(str(tmp_path / "never-built"), max_text_tokens=0)
    with pytest.raises(CIRConfigError, match=r"`max_text_tokens` must be an integer >= 1, got -1"):
        DualEncoderBackbone(str(tmp_path / "never-built"), max_text_tokens=-1)
    assert not (tmp_path / "never-built").exists()


def _modes(folder) -> dict[str, int]:
    return {p.name: stat.S_IMODE(p.stat().st_mode) for p in [folder, *folder.iterdir()]}


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


@pytest.mark.usefixtures("umask_022")
def test_tiny_models_get_the_users_normal_file_modes(tmp_path):
    for folder in (make_tiny_dual_encoder(tmp_path / "clip"), make_tiny_xgenmm(tmp_path / "xgenmm")):
        modes = _modes(folder)
        assert modes.pop(folder.name) == 0o755
        assert "model.safetensors" in modes
        assert set(modes.values()) == {0o644}, modes


def test_overwriting_a_tiny_model_replaces_it_completely(tmp_path):
    folder = make_tiny_dual_encoder(tmp_path / "clip")
    before = (folder / "model.safetensors").read_bytes()
    (folder / "stale.txt").write_text("left over from an older checkpoint")
    with pytest.raises(CIRFileError) as info:
        make_tiny_dual_encoder(folder, seed=1)
    assert str(info.value) == (f"`{folder}` already exists; it is never overwritten unless asked (choose another name, "
                               "or pass `overwrite=True` to replace it)")
    assert make_tiny_dual_encoder(folder, seed=1, overwrite=True) == folder
    assert not (folder / "stale.txt").exists()
    assert (folder / "model.safetensors").read_bytes() != before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip"]  # no temporary or old folder left


def test_racing_builders_never_see_a_half_written_folder(tmp_path):
    out = tmp_path / "model"

    def write(folder):
        (folder / "a.txt").write_text("mine")
        out.mkdir()  # another process finishes the same folder while this one is still writing
        (out / "a.txt").write_text("theirs")

    assert save_atomically(out, write) == out
    assert (out / "a.txt").read_text() == "theirs"  # the second one dropped its copy
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    (tmp_path / "empty").mkdir()  # an empty folder counts as absent
    save_atomically(tmp_path / "empty", lambda f: (f / "b.txt").write_text("b"))
    assert (tmp_path / "empty" / "b.txt").read_text() == "b"


def test_a_lora_pattern_naming_no_adapted_module_is_one_line_when_the_model_is_built(tiny_model_dir):
    """peft ignored such a key without a word (the module kept `lora.r`); the first sign was an adapter that did not
    load. A key may name a module LoRA adapts, by its name or a regular expression over the end of its path."""
    for option in ("rank_pattern", "alpha_pattern"):
        with pytest.raises(CIRConfigError) as info:
            HFMultimodalBackbone(str(tiny_model_dir), lora=LoRA(r=2, alpha=4, target_modules=["q_proj", "v_proj"],
                                                               **{option: {"o_proj": 8}}))
        message = str(info.value)
        assert message.startswith(f"`lora.{option}` pattern 'o_proj' matches none of the modules LoRA adapts (")
        assert ".q_proj, " in message  # the adapted modules, named for the user
        assert "(set `lora.target_modules` to adapt others)" in message


def test_lora_patterns_set_per_module_ranks_and_an_exported_adapter_loads_with_them(tiny_model_dir, tmp_path):
    lora = LoRA(r=2, alpha=4, target_modules=["q_proj", "v_proj"], rank_pattern={r"layers\.0\.self_attn\.q_proj": 6},
                alpha_pattern={"v_proj": 16})
    bb = HFMultimodalBackbone(str(tiny_model_dir), lora=lora)
    ranks = {name.split(".lora_A")[0].split("layers.", 1)[1]: p.shape[0] for name, p in bb.model.named_parameters()
             if ".lora_A." in name}
    assert ranks.pop("0.self_attn.q_proj") == 6
    assert set(ranks.values()) == {2}  # every other adapted module keeps `lora.r`
    scales = {name.rsplit(".", 1)[-1]: m.scaling["default"] for name, m in bb.model.named_modules()
              if hasattr(m, "lora_A") and "layers.1." in name}
    assert scales == {"q_proj": 2.0, "v_proj": 8.0}
    bb.save_adapter(tmp_path / "adapter")
    again = LoRA(init_adapter=str(tmp_path / "adapter"))  # its patterns are the adapter's own
    assert (again.rank_pattern, again.alpha_pattern) == (lora.rank_pattern, lora.alpha_pattern)
    loaded = HFMultimodalBackbone(str(tiny_model_dir), lora=again)
    assert all(torch.equal(p, dict(bb.model.named_parameters())[n]) for n, p in loaded.model.named_parameters()
               if "lora_" in n)


def test_a_fractional_alpha_pattern_is_read_from_the_command_line_and_scales_its_module(tiny_model_dir, tmp_path):
    """peft takes fractional alphas, and so did LoRA from Python; the command line refused 1.5 (`dict[str, int]`)."""
    from cir_lightning.cli import CIRLightningCLI
    from tests.test_cli import CONF

    cli = CIRLightningCLI(args=["--config", str(CONF), "--model.backbone.init_args.model_name_or_path", str(tiny_model_dir),
                                "--model.backbone.init_args.lora.alpha_pattern", '{"q_proj": 1.5}',
                                "--data.init_args.root", str(tmp_path / "data"),
                                "--trainer.default_root_dir", str(tmp_path / "run")], run=False)
    assert cli.model.backbone.lora.alpha_pattern == {"q_proj": 1.5}
    scales = {name.rsplit(".", 1)[-1]: m.scaling["default"] for name, m in cli.model.backbone.model.named_modules()
              if hasattr(m, "lora_A") and "layers.0." in name}
    assert scales["q_proj"] == 1.5 / 4  # the tiny config's r: 4, alpha: 8
    assert scales["v_proj"] == 8 / 4


@pytest.mark.parametrize(("given", "alpha"), [(None, 8), ("command line", 1.5), ("config file", 1.5)])
def test_a_fractional_alpha_is_read_saved_and_exported_and_an_integer_one_stays_an_integer(tiny_model_dir, tmp_path,
                                                                                            given, alpha):
    """LoRA and peft take a fractional alpha; the command line and config files refused 1.5 (`int | None`). A run's
    saved config and the exported adapter keep what was given: 1.5, and an integer as an integer (`alpha: 8`)."""
    import json

    import yaml

    from cir_lightning.cli import CIRLightningCLI
    from tests.test_cli import CONF

    extra = {None: [], "command line": ["--model.backbone.init_args.lora.alpha", "1.5"],
             "config file": ["--config", str(tmp_path / "alpha.yaml")]}[given]
    (tmp_path / "alpha.yaml").write_text("model:\n  backbone:\n    init_args:\n      lora:\n        alpha: 1.5\n")
    cli = CIRLightningCLI(args=["--config", str(CONF), "--model.backbone.init_args.model_name_or_path", str(tiny_model_dir),
                                *extra, "--data.init_args.root", str(tmp_path / "data"),
                                "--trainer.default_root_dir", str(tmp_path / "run")], run=False)
    assert cli.model.backbone.lora.alpha == alpha
    assert type(cli.model.backbone.lora.alpha) is type(alpha)
    saved = cli.parser.dump(cli.config, skip_none=False)  # what KeepConfigCallback writes as the run's config.yaml
    assert f"alpha: {alpha}\n" in saved
    assert yaml.safe_load(saved)["model"]["backbone"]["init_args"]["lora"]["alpha"] == alpha
    scales = {m.scaling["default"] for m in cli.model.backbone.model.modules() if hasattr(m, "lora_A")}
    assert scales == {alpha / 4}  # the tiny config's r: 4
    cli.model.backbone.save_adapter(tmp_path / "adapter")
    exported = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())["lora_alpha"]
    assert exported == alpha
    assert type(exported) is type(alpha)
    again = LoRA(init_adapter=str(tmp_path / "adapter"))  # alpha unset: the adapter's own
    assert again.alpha == alpha
    loaded = HFMultimodalBackbone(str(tiny_model_dir), lora=again)
    assert {m.scaling["default"] for m in loaded.model.modules() if hasattr(m, "lora_A")} == {alpha / 4}


def test_an_adapter_export_is_atomic_and_never_overwrites(tiny_model_dir, tmp_path):
    bb = HFMultimodalBackbone(str(tiny_model_dir), lora=LoRA(r=2, alpha=4))
    bb.save_adapter(tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()
    with pytest.raises(CIRFileError, match="already exists; it is never overwritten"):
        bb.save_adapter(tmp_path / "adapter")

    def broken(folder, **_):
        open(os.path.join(folder, "adapter_model.safetensors"), "wb").close()
        raise torch.cuda.OutOfMemoryError("interrupted")

    bb.model.save_pretrained = broken
    with pytest.raises(torch.cuda.OutOfMemoryError):
        bb.save_adapter(tmp_path / "half")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]  # nothing half-written left behind
