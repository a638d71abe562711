"""Session-wide fixtures: one tiny model and one small synthetic dataset, built offline."""

from __future__ import annotations

import os
import signal
import threading
import warnings

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # any accidental hub access fails loudly instead of downloading


@pytest.fixture(autouse=True)
def _python_s_own_ctrl_c_handler() -> None:
    """Each test starts with Python's own SIGINT handler, as a fresh ``cir-lightning`` process does: a trainer's
    teardown puts back the handlers Lightning found at its set-up, which an in-process command test can leave to a
    later one (``cir_lightning.interrupts.stops`` installs its handler only over Python's own)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.default_int_handler)


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
