"""Trainable-only checkpoints when a strategy wraps the module (FSDP) or loads the weights itself."""

from __future__ import annotations

from types import SimpleNamespace

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.strategies import FSDPStrategy
from torch import nn

from cir_lightning.checkpointing import check_and_complete, keep_trainable, prepare_strategy, trainable_keys
from cir_lightning.data import CIRDataModule
from cir_lightning.errors import CIRConfigError, CIRModelError

FINGERPRINT = {"model": "tiny"}


class Wrapped(pl.LightningModule):
    """Parameter names as FSDP's auto-wrapping leaves them: ``_fsdp_wrapped_module.`` inside."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Module()
        self.backbone._fsdp_wrapped_module = nn.ModuleDict({"frozen": nn.Linear(2, 2), "lora": nn.Linear(2, 1)})
        self.backbone._fsdp_wrapped_module["frozen"].requires_grad_(False)


def test_wrapped_parameter_names_still_select_the_trainable_weights():
    module = Wrapped()
    assert trainable_keys(module) == {"backbone.lora.weight", "backbone.lora.bias"}
    # what FSDP's full state dict holds: clean names, frozen weights included
    checkpoint = {"state_dict": {"backbone.frozen.weight": torch.ones(2, 2), "backbone.frozen.bias": torch.ones(2),
                                 "backbone.lora.weight": torch.ones(1, 2), "backbone.lora.bias": torch.ones(1)}}
    keep_trainable(module, checkpoint, FINGERPRINT)
    assert set(checkpoint["state_dict"]) == {"backbone.lora.weight", "backbone.lora.bias"}
    assert checkpoint["cir_lightning"]["trainable"] == ["backbone.lora.bias", "backbone.lora.weight"]


def test_loading_after_the_strategy_loaded_the_weights_checks_the_stored_names():
    module = Wrapped()
    checkpoint = {"cir_lightning": {"fingerprint": FINGERPRINT, "trainable": sorted(trainable_keys(module))}}
    check_and_complete(module, checkpoint, FINGERPRINT)  # no state_dict left (FSDP / DeepSpeed): names agree
    assert "state_dict" not in checkpoint
    checkpoint["cir_lightning"]["trainable"] = ["backbone.lora.weight", "backbone.other.weight"]
    with pytest.raises(CIRModelError, match="1 missing .*backbone.lora.bias.*1 unexpected .*backbone.other.weight"):
        check_and_complete(module, checkpoint, FINGERPRINT)


def test_sharding_strategies_load_non_strictly_and_sharded_fsdp_state_is_refused():
    module = Wrapped()
    module._trainer = SimpleNamespace(strategy=FSDPStrategy(state_dict_type="full"))
    prepare_strategy(module, cached=False)
    assert module.strict_loading is False  # the frozen weights are not in the file
    module._trainer = SimpleNamespace(strategy=FSDPStrategy(state_dict_type="sharded"))
    with pytest.raises(CIRConfigError, match="state_dict_type full"):
        prepare_strategy(module, cached=False)
    module._trainer = SimpleNamespace(strategy=FSDPStrategy())
    with pytest.raises(CIRConfigError, match="FSDP shards"):
        prepare_strategy(module, cached=True)


def test_deepspeed_micro_batch_comes_from_the_data_and_frozen_weights_warn():
    from lightning.pytorch.strategies import DeepSpeedStrategy

    module = Wrapped()
    strategy = DeepSpeedStrategy.__new__(DeepSpeedStrategy)  # its __init__ needs deepspeed installed
    strategy.config, strategy.exclude_frozen_parameters = {"train_micro_batch_size_per_gpu": "16"}, True
    module._trainer = SimpleNamespace(strategy=strategy, datamodule=CIRDataModule(batch_size=4))
    prepare_strategy(module, cached=False)
    assert strategy.config["train_micro_batch_size_per_gpu"] == 16  # the command line's "16", as an int
    assert module.strict_loading is False
    strategy.config, strategy.exclude_frozen_parameters = {}, False
    with pytest.warns(UserWarning, match="exclude_frozen_parameters true"):
        prepare_strategy(module, cached=False)
    assert strategy.config["train_micro_batch_size_per_gpu"] == 4  # not from train_dataloader()


def test_a_checkpoint_of_another_embedding_set_up_is_warned_about_but_not_of_another_dtype():
    """Prompts or pooling that differ from training change the numbers: said. The dtype is not compared here:
    under `bf16-true` Lightning converts the weights after the checkpoint is loaded, so it always differs."""
    import warnings

    module = Wrapped()
    trained = {**FINGERPRINT, "pooling": "last", "prompts": {"query": "<image> {modification}"}}
    checkpoint = {"cir_lightning": {"fingerprint": {**trained, "dtype": "bfloat16"},
                                    "trainable": sorted(trainable_keys(module))}}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_and_complete(module, checkpoint, trained)  # same set-up, weights not converted yet
    with pytest.warns(UserWarning, match=r"another embedding set-up, .*backbone\.pooling: trained with 'last', "
                                         r"now 'mean'"):
        check_and_complete(module, checkpoint, {**trained, "pooling": "mean"})
