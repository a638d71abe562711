"""Session-wide fixtures: one tiny model and one small synthetic dataset, built offline."""

from __future__ import annotations

import os
import warnings

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # any accidental hub access fails loudly instead of downloading


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    from cir_lightning.backbones.tiny import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory):
    from cir_lightning.data.synthetic import make_synthetic_cir

    return make_synthetic_cir(tmp_path_factory.mktemp("data") / "synthetic", num_train=64, num_val=24,
                              image_size=32)


@pytest.fixture(scope="session")
def backbone(tiny_model_dir):
    from cir_lightning.backbones import HFMultimodalBackbone, LoRA, Prompts

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return HFMultimodalBackbone(str(tiny_model_dir), prompts=Prompts("fire"), lora=LoRA(r=4, alpha=8))


def pytest_terminal_summary(terminalreporter) -> None:
    """Say how the golden tests compared, when any ran (``tests/goldens/exact.py``)."""
    from tests.goldens import exact

    if exact.same_kernels.cache_info().currsize:
        mode = ("bit for bit (this machine's kernels reproduce the goldens)" if exact.same_kernels() else
                f"within {exact.OTHER_KERNELS_RTOL:g} of each golden's largest magnitude (this machine's kernels "
                "round differently; CIR_GOLDENS_EXACT=1 makes that a failure)")
        terminalreporter.write_line(f"golden tests compared {mode}")
