"""Resuming `fit` in the middle of an epoch under DDP: each rank skips the batches of its own share already trained,
so the resumed run trains the rest of the epoch once and ends with the bits of an uninterrupted run (before, the
order restarted and the rows trained before the interruption were trained again in that epoch).

All runs share one launch of 2 gloo processes, started here rather than by Lightning: in each, `LOCAL_RANK` tells
Lightning the processes exist, and the runs are in-process `fit`s one after another."""

from __future__ import annotations

import os
import warnings
from collections import Counter
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.utils.data import DistributedSampler

from tests.test_ddp_training import _free_port
from tests.test_resume import _fit

# 61 triplets over 2 ranks: shares of 31, rank 1's padded with a repeated row; 7 whole batches of 4 a rank (3 rows
# dropped), 2 batches an optimizer step: 4 steps an epoch, the last of one batch
SAMPLES, BATCH, ACCUMULATE, SEED = 61, 4, 2, 0
DDP = {"devices": 2, "strategy": "ddp", "accumulate_grad_batches": ACCUMULATE, "max_epochs": 2}


def _worker(rank: int, port: int, out: str, root: str, model: str, train_file: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), LOCAL_RANK=str(rank), NODE_RANK="0")
    folder = Path(out)
    args = {"root": Path(root), "model": Path(model), "batch_size": BATCH, "seed": SEED, "train_file": train_file}
    rows = {"straight": _fit(folder / "straight", **args, **DDP).rows}  # 8 steps; checkpoints every 2
    rows["stopped"] = _fit(folder / "stopped", **args, **{**DDP, "max_steps": 6}).rows  # 4 batches into epoch 1
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # max_steps stopped it: its epoch-end checkpoint, in the middle of epoch 1
        rows["resumed"] = _fit(folder / "resumed", **args, **DDP,
                               ckpt=folder / "stopped" / "epochs" / "epoch=1-step=6.ckpt").rows
        # every_n_train_steps: step 2 is 4 batches into epoch 0, 3 left (the last a step of its own)
        rows["from_step_2"] = _fit(folder / "from_step_2", **args, **DDP,
                                   ckpt=folder / "straight" / "epoch=0-step=2.ckpt").rows
    torch.save({"rows": rows, "warnings": [str(w.message) for w in caught]}, folder / f"rank{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def ddp_runs(tmp_path_factory, synthetic_root, tiny_model_dir) -> tuple[Path, list[dict]]:
    folder = tmp_path_factory.mktemp("ddp_resume")
    lines = (synthetic_root / "train.jsonl").read_text().splitlines(keepends=True)
    (folder / "train61.jsonl").write_text("".join(lines[:SAMPLES]))
    mp.spawn(_worker, args=(_free_port(), str(folder), str(synthetic_root), str(tiny_model_dir),
                            str(folder / "train61.jsonl")), nprocs=2, join=True)
    return folder, [torch.load(folder / f"rank{rank}.pt", weights_only=False) for rank in (0, 1)]


def _weights(path: Path) -> dict[str, torch.Tensor]:
    checkpoint = torch.load(path, weights_only=True)
    assert checkpoint["global_step"] == 8
    return checkpoint["state_dict"]


@pytest.mark.ddp
@pytest.mark.slow
def test_a_mid_epoch_resume_under_ddp_trains_the_rest_of_each_rank_s_share_and_ends_bit_identically(ddp_runs):
    folder, ranks = ddp_runs
    per_epoch = 7 * BATCH  # rows a rank trains an epoch
    for rank, result in enumerate(ranks):
        rows = result["rows"]
        # the order of Lightning's own distributed sampler: the same seed, epochs and padded shares
        for epoch in (0, 1):
            lightning = DistributedSampler(range(SAMPLES), num_replicas=2, rank=rank, seed=SEED)
            lightning.set_epoch(epoch)
            assert rows["straight"][epoch * per_epoch:(epoch + 1) * per_epoch] == list(lightning)[:per_epoch]
        assert rows["stopped"] + rows["resumed"] == rows["straight"]  # 16 of epoch 1's rows, then its other 12
        assert rows["from_step_2"] == rows["straight"][4 * BATCH:]
        assert not [w for w in result["warnings"] if "not resumable" in w]  # Lightning's warning for a restart
    # the interrupted epoch, both ranks: each row trained once (5 of 61 dropped in incomplete batches, the padding
    # among them)
    interrupted = {"max_steps": [r["rows"]["stopped"][per_epoch:] + r["rows"]["resumed"] for r in ranks],
                   "every_n_train_steps": [r["rows"]["straight"][:4 * BATCH] + r["rows"]["from_step_2"][:3 * BATCH]
                                           for r in ranks]}
    for how, shares in interrupted.items():
        trained = Counter(row for share in shares for row in share)
        assert len(trained) == 2 * per_epoch, how
        assert set(trained.values()) == {1}, how
    straight = _weights(folder / "straight" / "epochs" / "epoch=1-step=8.ckpt")
    for run in ("resumed", "from_step_2"):
        resumed = _weights(folder / run / "epochs" / "epoch=1-step=8.ckpt")
        assert resumed.keys() == straight.keys()
        for name, weight in straight.items():  # the same batches, steps and order: the same bits
            assert torch.equal(resumed[name], weight), (run, name)
