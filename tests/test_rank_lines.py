"""Under DDP the line a command ends with is printed once when every process has it, and a line only some
processes have is printed by each of them, marked with its rank (each of N processes printed it: N lines)."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch.distributed as dist

from cir_lightning.rank_lines import say_through
from tests.test_cli import CONF

ROOT = Path(__file__).resolve().parents[1]
ERROR = "cir-lightning: error: val_queries.jsonl:3: missing field `query_id`"


def _ranks(lines: list[str | None], first_waits_s: float = 2.0) -> list[str]:
    """What each rank prints when rank r says ``lines[r]`` (None: it never says anything), through one store. The
    others wait long for a rank 0 that speaks (they return as soon as it has: a short wait raced a busy machine)."""
    others_wait_s = 0.5 if lines[0] is None else 60.0
    server = dist.TCPStore("127.0.0.1", 0, len(lines), True, wait_for_workers=False)
    outs = [io.StringIO() for _ in lines]

    def rank(r: int) -> None:
        store = server if r == 0 else dist.TCPStore("127.0.0.1", server.port, len(lines), False)
        say_through(store, lines[r], r, len(lines), outs[r], first_waits_s=first_waits_s,
                    others_wait_s=others_wait_s)

    threads = [threading.Thread(target=rank, args=(r,)) for r, line in enumerate(lines) if line is not None]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return [out.getvalue() for out in outs]


def test_a_line_every_rank_has_is_printed_once_by_rank_zero():
    assert _ranks([ERROR, ERROR, ERROR]) == [ERROR + "\n", "", ""]
    assert _ranks([ERROR, ERROR], first_waits_s=0.0) == [ERROR + "\n", ""]  # after a Ctrl-C: rank 0 waits for none


def test_a_line_only_some_ranks_have_is_printed_by_each_of_them_with_its_rank():
    other = "cir-lightning: error: images/scene_9.png: cannot be read"
    assert _ranks([ERROR, other, ERROR]) == [ERROR + "\n", f"[rank 1] {other}\n", ""]
    assert _ranks([None, ERROR]) == ["", f"[rank 1] {ERROR}\n"]  # rank 0 said nothing in time: never hidden


@pytest.mark.ddp
def test_an_error_of_every_process_is_one_line_under_ddp(tmp_path, tiny_model_dir):
    from cir_lightning.data.synthetic import make_synthetic_cir

    root = make_synthetic_cir(tmp_path / "data", num_train=8, num_val=4, image_size=16)
    queries = (root / "val_queries.jsonl").read_text().splitlines()
    queries[2] = '{"reference_image": "images/scene_000.png", "modification": "x", "target_id": "scene_001"}'
    (root / "val_queries.jsonl").write_text("\n".join(queries) + "\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(ROOT)}
    args = ["validate", "--config", str(CONF), "--model.backbone.init_args.model_name_or_path", str(tiny_model_dir),
            "--data", "cir_lightning.data.JsonlCIRDataModule", "--data.root", str(root), "--trainer.devices", "2",
            "--trainer.strategy", "ddp"]
    proc = subprocess.run([sys.executable, "-m", "cir_lightning", *args], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert errors == [f"cir-lightning: error: {root / 'val_queries.jsonl'}:3: missing field `query_id`"], proc.stderr
