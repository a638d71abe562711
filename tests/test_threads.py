"""Torch threads per process: the cores shared between this node's processes and their DataLoader workers."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from cir_lightning.data import CIRDataModule
from cir_lightning.errors import CIRConfigError
from cir_lightning.threads import ThreadBudget, thread_budget

CONF = Path(__file__).parent / "conf" / "tiny.yaml"


@pytest.fixture
def keep_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def _trainer(processes: int, workers: int) -> SimpleNamespace:
    return SimpleNamespace(strategy=SimpleNamespace(num_processes=processes),
                           datamodule=CIRDataModule(num_workers=workers))


@pytest.mark.parametrize(("cores", "processes", "workers", "expected"),
                         [(2, 1, 1, 1), (2, 1, 0, 2), (16, 2, 2, 6), (8, 8, 4, 1), (1, 1, 0, 1)])
def test_the_budget_shares_the_cores(cores, processes, workers, expected):
    assert thread_budget(cores, processes, workers) == expected


def test_the_callback_sets_the_budget_unless_the_user_chose(keep_threads, monkeypatch):
    monkeypatch.setattr("cir_lightning.threads._cores", lambda: 4)
    monkeypatch.delenv("CIR_TORCH_THREADS", raising=False)
    assert ThreadBudget().setup(_trainer(1, 1), None, "fit") == 3
    assert torch.get_num_threads() == 3
    torch.set_num_threads(2)
    assert ThreadBudget(user_set_omp=True).setup(_trainer(1, 1), None, "fit") is None  # OMP_NUM_THREADS: theirs
    assert torch.get_num_threads() == 2
    monkeypatch.setenv("CIR_TORCH_THREADS", "1")  # an explicit choice wins over both
    assert ThreadBudget(user_set_omp=True).setup(_trainer(2, 0), None, "validate") == 1
    assert torch.get_num_threads() == 1
    monkeypatch.setenv("CIR_TORCH_THREADS", "two")
    with pytest.raises(CIRConfigError, match="`CIR_TORCH_THREADS` must be an integer >= 1, got 'two'"):
        ThreadBudget().setup(_trainer(1, 0), None, "fit")


def test_the_command_adds_the_budget_and_respects_omp_num_threads(keep_threads, monkeypatch, tmp_path,
                                                                    tiny_model_dir, synthetic_root):
    from cir_lightning.cli import CIRLightningCLI

    args = ["--config", str(CONF), "--model.backbone.init_args.model_name_or_path", str(tiny_model_dir),
            "--data.init_args.root", str(synthetic_root), "--trainer.default_root_dir", str(tmp_path)]
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("CIR_LIGHTNING_USER_OMP", raising=False)
    budget = [c for c in CIRLightningCLI(args=args, run=False).trainer.callbacks if isinstance(c, ThreadBudget)]
    assert len(budget) == 1
    assert budget[0].user_set_omp is False
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    budget = [c for c in CIRLightningCLI(args=args, run=False).trainer.callbacks if isinstance(c, ThreadBudget)]
    assert budget[0].user_set_omp is True
