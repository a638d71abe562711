"""Multi-node launch, simulated on loopback: 2 nodes x 1 process (scripts/launch_torchrun.sh, one call per
node) train and validate exactly like 1 node x 2 processes."""

from __future__ import annotations

import csv
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.test_cli import CONF, spawn

SCRIPT = Path(__file__).parents[1] / "scripts" / "launch_torchrun.sh"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _val_metrics(folder: Path) -> dict[str, str]:
    (path,) = folder.glob("**/metrics.csv")
    with path.open() as f:
        return {k: v for row in csv.DictReader(f) for k, v in row.items() if k.startswith("val/") and v}


@pytest.mark.ddp
def test_two_nodes_of_one_process_equal_one_node_of_two(tmp_path, tiny_model_dir):
    common = ["--config", str(CONF), "--model.backbone.init_args.model_name_or_path", str(tiny_model_dir),
              "--data.init_args.root", str(tmp_path / "data"), "--trainer.logger", "CSVLogger",
              "--trainer.num_sanity_val_steps", "0"]
    spawn("fit", *common, "--trainer.devices", "2", "--trainer.strategy", "ddp", "--trainer.default_root_dir", "one",
        "--trainer.logger.save_dir", "one", cwd=tmp_path)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore", "NNODES": "2", "GPUS_PER_NODE": "1",
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    nodes = [subprocess.Popen(["bash", str(SCRIPT), "fit", *common, "--trainer.default_root_dir", "two",
                               "--trainer.logger.save_dir", "two"], cwd=tmp_path, env={**env, "NODE_RANK": str(n)},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for n in (0, 1)]
    try:
        logs = [node.communicate(timeout=int(os.environ.get("CIR_TEST_NODE_TIMEOUT", 300)))[0] for node in nodes]
    except subprocess.TimeoutExpired:  # stop both "nodes" (never leave them running) and show what they said
        for node in nodes:
            node.kill()
        logs = [node.communicate()[0] for node in nodes]
        pytest.fail("the two torchrun nodes did not finish:\n" + "\n".join(log[-3000:] for log in logs))
    assert [node.returncode for node in nodes] == [0, 0], "\n".join(log[-3000:] for log in logs)
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in logs[1]  # the second "node" really joined
    one, two = (torch.load(next((tmp_path / d).glob("**/last.ckpt")), weights_only=True) for d in ("one", "two"))
    assert one["global_step"] == two["global_step"] == 2  # 64 samples, batch 16 per process, 2 processes
    for name, weight in one["state_dict"].items():
        torch.testing.assert_close(two["state_dict"][name], weight, rtol=0, atol=1e-7)
    assert _val_metrics(tmp_path / "two") == _val_metrics(tmp_path / "one")
    assert "val/Recall@10" in _val_metrics(tmp_path / "one")
