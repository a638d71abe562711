"""Cross-rank negatives: 2 gloo processes under DDP give the loss and gradients of one process on the
global batch; without them they do not. Plus a 2-process ``fit`` through the CLI."""

from __future__ import annotations

import copy
import csv
import math
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from cir_lightning.losses import FireLoss, caption_loss, distributed_loss
from tests.test_cli import CONF, run, spawn

# 8 triplets; targets 2 and 0 appear on both ranks (rows 2/4 and 0/7), target 3 twice on rank 0 (5/3 split)
KEYS = torch.tensor([0, 1, 2, 3, 2, 5, 6, 0])
SPLITS = [(4, 4), (5, 3)]


class Towers(nn.Module):
    """A stand-in backbone: one linear tower per side, L2-normalised outputs."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.query = nn.Linear(6, 5)
        self.target = nn.Linear(6, 5)

    def forward(self, xq: torch.Tensor, xt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return F.normalize(self.query(xq), dim=-1), F.normalize(self.target(xt), dim=-1)


def _inputs() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    xq = torch.randn(len(KEYS), 6, generator=g)
    xt = torch.randn(len(KEYS), 6, generator=g)
    xt[4], xt[7] = xt[2], xt[0]  # duplicate targets are the same image
    return xq, xt


def _grads(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.grad.detach().clone() for name, p in model.named_parameters()}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _fire_case(rank: int, world: int, split: tuple[int, int], cross_rank: bool) -> dict:
    xq, xt = _inputs()
    rows = slice(0, split[0]) if rank == 0 else slice(split[0], None)
    model = nn.parallel.DistributedDataParallel(Towers())
    q, t = model(xq[rows], xt[rows])
    terms = distributed_loss(FireLoss(), q, t, KEYS[rows], cross_rank=cross_rank)
    terms["loss"].backward()  # DDP averages the gradients over the ranks
    values = torch.stack([terms[k].detach() for k in sorted(terms)])
    dist.all_reduce(values)
    return {"terms": dict(zip(sorted(terms), (values / world).tolist(), strict=True)), "grads": _grads(model.module)}


def _caption_case(rank: int, world: int) -> dict:
    """Stage 1: rank 0 holds 3 caption tokens, rank 1 holds 7."""
    hidden, tokens = _caption_tokens()
    rows = slice(0, 3) if rank == 0 else slice(3, None)
    head = nn.parallel.DistributedDataParallel(_head())
    loss = caption_loss(head(hidden[rows]), tokens[rows])
    loss.backward()
    value = loss.detach().clone()
    dist.all_reduce(value)
    return {"loss": (value / world).item(), "grads": _grads(head.module)}


def _worker(rank: int, world: int, port: int, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    # Each case runs in its own function, so its DDP model is freed while the process group is alive: a DDP
    # reducer freed after destroy_process_group can deadlock with gloo's worker thread (seen once in CI).
    results = {(split, cross_rank): _fire_case(rank, world, split, cross_rank)
               for split in SPLITS for cross_rank in (True, False)}
    results["caption"] = _caption_case(rank, world)
    if rank == 0:
        torch.save(results, out)
    dist.barrier()
    dist.destroy_process_group()


def _head() -> nn.Module:
    torch.manual_seed(0)
    return nn.Linear(6, 11)


def _caption_tokens() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(2)
    return torch.randn(10, 6, generator=g), torch.randint(0, 11, (10,), generator=g)


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("ddp") / "out.pt")
    mp.spawn(_worker, args=(2, _free_port(), out), nprocs=2, join=True)
    return torch.load(out, weights_only=False)


def _single_process() -> tuple[dict[str, float], dict[str, torch.Tensor]]:
    model = Towers()
    q, t = model(*_inputs())
    terms = FireLoss()(q, t, KEYS[:, None] == KEYS[None, :])
    terms["loss"].backward()
    return {k: v.item() for k, v in terms.items()}, _grads(model)


@pytest.mark.ddp
@pytest.mark.parametrize("split", SPLITS)
def test_two_ranks_with_cross_rank_negatives_equal_one_process_on_the_global_batch(ddp_results, split):
    want_terms, want_grads = _single_process()
    got = ddp_results[split, True]
    assert got["terms"].keys() == want_terms.keys()
    for name, value in want_terms.items():
        assert got["terms"][name] == pytest.approx(value, rel=1e-6, abs=1e-6), name
    for name, grad in want_grads.items():
        scale = grad.abs().max().item()
        assert scale > 1e-3  # the comparison is not vacuous
        # Float32 sums in another order: each component's error is a few ulps of the terms it sums, up to the
        # gradient's largest magnitude (15-35 here), not of the component itself (3.8e-6 seen on a 0.03 one)
        torch.testing.assert_close(got["grads"][name], grad, rtol=1e-5, atol=1e-6 * max(1.0, scale), msg=name)


@pytest.mark.ddp
def test_stage_one_caption_loss_on_two_ranks_is_the_token_mean_of_the_global_batch(ddp_results):
    head = _head()
    hidden, tokens = _caption_tokens()
    want = F.cross_entropy(head(hidden), tokens)  # one process, all 10 tokens
    want.backward()
    got = ddp_results["caption"]
    assert got["loss"] == pytest.approx(want.item(), rel=1e-6)
    for name, grad in _grads(head).items():
        torch.testing.assert_close(got["grads"][name], grad, rtol=1e-5, atol=1e-6, msg=name)
    # the naive per-rank mean (3 and 7 tokens weighted alike) would differ
    naive = (F.cross_entropy(head(hidden[:3]), tokens[:3]) + F.cross_entropy(head(hidden[3:]), tokens[3:])) / 2
    assert abs(naive.item() - want.item()) > 1e-3


@pytest.mark.ddp
@pytest.mark.parametrize("split", SPLITS)
def test_without_cross_rank_negatives_two_ranks_differ_from_the_global_batch(ddp_results, split):
    want_terms, want_grads = _single_process()
    got = ddp_results[split, False]
    assert abs(got["terms"]["loss"] - want_terms["loss"]) > 1e-3
    assert max((got["grads"][k] - g).abs().max().item() for k, g in want_grads.items()) > 1e-3


def _train_metrics(folder: Path) -> list[dict[str, float]]:
    (path,) = folder.glob("**/metrics.csv")
    with path.open() as f:
        return [{k: float(v) for k, v in row.items() if k.startswith("train/") and v} for row in csv.DictReader(f)]


@pytest.mark.ddp
@pytest.mark.slow
def test_fit_in_two_processes_with_cross_rank_negatives(tmp_path, tiny_model_dir):
    spawn("fit", "--config", str(CONF), "--model.backbone.init_args.model_name_or_path", str(tiny_model_dir),
        "--data.init_args.root", str(tmp_path / "data"), "--data.init_args.num_val", "8",
        "--trainer.devices", "2", "--trainer.strategy", "ddp", "--trainer.max_steps", "2",
        "--trainer.num_sanity_val_steps", "0", "--trainer.log_every_n_steps", "1",
        "--trainer.logger", "CSVLogger", "--trainer.logger.save_dir", "logs", "--model.cross_rank_negatives",
        "true", "--model.export_adapter", "false", cwd=tmp_path)
    rows = [row for row in _train_metrics(tmp_path / "logs") if "train/loss" in row]
    assert len(rows) == 2
    for row in rows:
        assert {"train/loss", "train/loss_infonce", "train/loss_recall@1", "train/loss_recall@5"} <= set(row)
        assert all(math.isfinite(v) for v in row.values())
    # The untrained tiny model's embeddings are nearly alike, so InfoNCE starts near ln(#candidates):
    # ln 32 = 3.47 with both ranks' targets (seen: 3.38), ln 16 = 2.77 with one rank's (seen: 2.68 when off).
    assert rows[0]["train/loss_infonce"] > (math.log(16) + math.log(32)) / 2


@pytest.fixture(scope="module")
def fire_configs(tmp_path_factory) -> dict[str, dict]:
    """``configs/fire_stage{1,2}.yaml`` as the CLI resolves them (nothing downloaded)."""
    import yaml

    cwd = tmp_path_factory.mktemp("fire-configs")
    printed = {}
    for stage in ("stage1", "stage2"):
        config = Path(__file__).parents[1] / "configs" / f"fire_{stage}.yaml"
        out = run("fit", "--config", str(config), "--model.backbone.init_args.model_name_or_path", "not-downloaded",
                  "--print_config", cwd=cwd).stdout
        printed[stage] = yaml.safe_load(out)
    assert not (cwd / "not-downloaded").exists()
    return printed


def test_fire_stage2_config_parses_with_the_papers_settings(fire_configs):
    printed = fire_configs["stage2"]
    model, data = printed["model"], printed["data"]
    assert model["backbone"]["class_path"] == "cir_lightning.backbones.XGenMMBackbone"
    assert {"r": 64, "alpha": 128, "dropout": 0.1}.items() <= model["backbone"]["init_args"]["lora"].items()
    assert model["backbone"]["init_args"]["eos_block_size"] == 5
    loss = {"scale": 100.0, "recall_ks": [1, 5], "recall_weights": [0.4, 0.15], "tau1": 1.0, "tau2": 0.01}
    assert all(model["loss"]["init_args"][k] == v for k, v in loss.items())
    assert model["optimizer"]["init_args"]["lr"] == pytest.approx(1e-4)
    assert model["cross_rank_negatives"] is True
    assert model["target_side"] == "image"
    assert data["class_path"] == "cir_lightning.data.JsonlCIRDataModule"
    # the paper's global batch of 16: 4 per device on 4 devices, in 2 epochs
    assert data["init_args"]["batch_size"] * printed["trainer"]["devices"] == 16
    assert printed["trainer"]["max_epochs"] == 2
    assert printed["seed_everything"] == 42


def test_fire_stage1_config_parses_and_matches_stage2s_adapter(fire_configs):
    printed = copy.deepcopy(fire_configs)
    model, data = printed["stage1"]["model"], printed["stage1"]["data"]
    assert model["objective"] == "caption"
    assert data["init_args"]["with_captions"] is True
    assert model["caption_instruction"] == "<image> but modified with {modification}. Please describe the new image."
    assert model["optimizer"]["init_args"]["lr"] == pytest.approx(1e-4)
    assert printed["stage1"]["trainer"]["max_epochs"] == 1
    # stage 2 loads stage 1's adapter: the same backbone, prompts and LoRA settings
    backbones = [printed[stage]["model"]["backbone"] for stage in ("stage1", "stage2")]
    assert backbones[1]["init_args"]["lora"].pop("init_adapter") is None
    backbones[0]["init_args"]["lora"].pop("init_adapter")
    assert backbones[0] == backbones[1]
