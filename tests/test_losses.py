"""FiRE's losses against direct, loop-based computations of the formulas in fire.md."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from cir_lightning.errors import CIRConfigError
from cir_lightning.losses import (
    FireLoss,
    RetrievalLoss,
    all_gather_with_grad,
    check_loss,
    distributed_loss,
    info_nce,
    recall_surrogate,
)


class Hinge(RetrievalLoss):
    """A loss of a user's own: a margin on each query's positives against its hardest negative."""

    def __init__(self, margin: float = 0.2) -> None:
        super().__init__()
        self.margin = margin

    def forward(self, query, target, positive_mask=None):
        sim = query @ target.T
        mask = torch.eye(*sim.shape, dtype=torch.bool) if positive_mask is None else positive_mask
        positive = sim.masked_fill(~mask, float("inf")).min(1).values
        negative = sim.masked_fill(mask, float("-inf")).max(1).values
        return {"loss": (negative - positive + self.margin).clamp(min=0).mean(), "hardest": negative.mean()}


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def reference_recall(sim: torch.Tensor, pos: torch.Tensor, k: int, tau1: float, tau2: float) -> float:
    total = 0.0
    for i in range(sim.shape[0]):
        recalls = []
        for p in range(sim.shape[1]):
            if not pos[i, p]:
                continue
            rank = sum(_sigmoid((sim[i, j].item() - sim[i, p].item()) / tau2)
                       for j in range(sim.shape[1]) if not pos[i, j])
            recalls.append(_sigmoid((k - 1 - rank) / tau1))
        total += 1 - sum(recalls) / len(recalls)
    return total / sim.shape[0]


def reference_info_nce(sim: torch.Tensor, pos: torch.Tensor, scale: float) -> float:
    total = 0.0
    for i in range(sim.shape[0]):
        terms = []
        for p in range(sim.shape[1]):
            if not pos[i, p]:
                continue
            denom = math.exp(scale * sim[i, p].item()) + sum(
                math.exp(scale * sim[i, j].item()) for j in range(sim.shape[1]) if not pos[i, j])
            terms.append(-(scale * sim[i, p].item() - math.log(denom)))
        total += sum(terms) / len(terms)
    return total / sim.shape[0]


def _sim(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q = F.normalize(torch.randn(n, 16, generator=g, dtype=torch.float64), dim=-1)
    t = F.normalize(q + 0.7 * torch.randn(n, 16, generator=g, dtype=torch.float64), dim=-1)
    return q @ t.T


@pytest.mark.parametrize(("k", "tau1", "tau2"), [(1, 1.0, 0.01), (5, 1.0, 0.01), (3, 0.5, 0.1)])
def test_recall_surrogate_matches_loop(k, tau1, tau2):
    sim = _sim(12, seed=k)
    pos = torch.eye(12, dtype=torch.bool)
    got = recall_surrogate(sim, k, tau1, tau2)
    assert got.item() == pytest.approx(reference_recall(sim, pos, k, tau1, tau2), rel=1e-9, abs=1e-12)


def test_recall_surrogate_several_positives_match_loop():
    sim = _sim(10, seed=3)
    pos = torch.eye(10, dtype=torch.bool)
    pos[0, 3] = pos[0, 7] = pos[4, 1] = True  # rows with 3 and 2 positives
    got = recall_surrogate(sim, 5, 1.0, 0.01, positive_mask=pos)
    assert got.item() == pytest.approx(reference_recall(sim, pos, 5, 1.0, 0.01), rel=1e-9)


def test_info_nce_matches_loop_one_and_several_positives():
    sim = _sim(9, seed=5)
    eye = torch.eye(9, dtype=torch.bool)
    assert info_nce(sim, 100.0).item() == pytest.approx(reference_info_nce(sim, eye, 100.0), rel=1e-9)
    pos = eye.clone()
    pos[2, 5] = pos[5, 2] = True
    assert info_nce(sim, 20.0, pos).item() == pytest.approx(reference_info_nce(sim, pos, 20.0), rel=1e-9)
    # with a diagonal mask, the masked path must agree with the plain one
    assert info_nce(sim, 20.0, eye).item() == pytest.approx(info_nce(sim, 20.0).item(), rel=1e-12)


def test_fire_loss_combines_terms_with_paper_weights():
    g = torch.Generator().manual_seed(0)
    q = F.normalize(torch.randn(8, 32, generator=g), dim=-1)
    t = F.normalize(torch.randn(8, 32, generator=g), dim=-1)
    terms = FireLoss()(q, t)
    expected = terms["loss_infonce"] + 0.4 * terms["loss_recall@1"] + 0.15 * terms["loss_recall@5"]
    assert terms["loss"].item() == pytest.approx(expected.item(), rel=1e-6)
    weighted = FireLoss(recall_ks=[2], recall_weights=[1.0], contrastive_weight=0.0)(q, t)
    assert weighted["loss"].item() == pytest.approx(weighted["loss_recall@2"].item(), rel=1e-6)


def test_fire_loss_gradients_flow_and_rank_well_separated_pairs_low():
    q = torch.randn(6, 16, requires_grad=True)
    loss = FireLoss()(F.normalize(q, dim=-1), F.normalize(torch.randn(6, 16), dim=-1))["loss"]
    loss.backward()
    assert q.grad is not None
    assert q.grad.abs().sum() > 0
    good = F.normalize(torch.eye(6, 16), dim=-1)
    perfect = FireLoss()(good, good)
    assert perfect["loss_infonce"].item() < 1e-6
    assert perfect["loss_recall@5"].item() < 0.02  # rank 0 << 5


def test_bad_arguments_are_reported():
    with pytest.raises(ValueError, match="same length"):
        FireLoss(recall_ks=[1, 5], recall_weights=[0.4])
    with pytest.raises(ValueError, match="square"):
        info_nce(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="positive in every row"):
        recall_surrogate(torch.zeros(2, 2), 1, positive_mask=torch.zeros(2, 2, dtype=torch.bool))


def test_distributed_loss_in_one_process_is_the_plain_loss_with_key_positives():
    g = torch.Generator().manual_seed(3)
    q = F.normalize(torch.randn(6, 16, generator=g), dim=-1)
    t = F.normalize(torch.randn(6, 16, generator=g), dim=-1)
    unique = torch.arange(6) * 11
    for cross_rank in (True, False):  # no process group: both are the in-batch loss
        got = distributed_loss(FireLoss(), q, t, unique, cross_rank=cross_rank)
        want = FireLoss()(q, t)
        assert {k: v.item() for k, v in got.items()} == pytest.approx({k: v.item() for k, v in want.items()})
    keys = torch.tensor([5, 9, 5, 1, 9, 2])
    got = distributed_loss(FireLoss(), q, t, keys)
    want = FireLoss()(q, t, keys[:, None] == keys[None, :])
    assert got["loss"].item() == pytest.approx(want["loss"].item(), rel=1e-6)
    assert got["loss"].item() != pytest.approx(FireLoss()(q, t)["loss"].item(), rel=1e-3)


def test_all_gather_in_one_process_is_the_tensor_itself():
    x = torch.ones(3, 2)
    assert all_gather_with_grad(x) is x


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_fire_loss_is_computed_in_float32_inside_mixed_precision(dtype):
    g = torch.Generator().manual_seed(0)
    q = F.normalize(torch.randn(16, 64, generator=g), dim=-1)
    t = F.normalize(q + 0.05 * torch.randn(16, 64, generator=g), dim=-1)  # near-duplicates: cosines close to 1
    want = FireLoss()(q, t)
    with torch.autocast("cpu", dtype=dtype):
        got = FireLoss()(q, t)
    for name, value in want.items():
        assert got[name].dtype == torch.float32
        assert got[name].item() == pytest.approx(value.item(), rel=1e-6, abs=1e-6), name


def test_a_loss_of_ones_own_is_trained_with_the_positives_the_target_keys_give():
    q = F.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.1]]), dim=-1)
    shared = torch.tensor([5, 6, 5])  # triplets 0 and 2 share their target: positives of each other, not negatives
    got = distributed_loss(Hinge(margin=0.5), q, q, shared, cross_rank=False)
    assert sorted(got) == ["hardest", "loss"]
    assert got["loss"].item() == pytest.approx(Hinge(margin=0.5)(q, q, shared[:, None] == shared[None, :])["loss"].item())
    assert got["loss"].item() != pytest.approx(Hinge(margin=0.5)(q, q)["loss"].item())


def test_what_is_not_a_retrieval_loss_is_one_line():
    class Abstract(RetrievalLoss):
        pass

    class NoTotal(RetrievalLoss):
        def forward(self, query, target, positive_mask=None):
            return {"hinge": query.sum()}

    check_loss(FireLoss())
    check_loss(Hinge())
    with pytest.raises(CIRConfigError, match=r"^`loss`: MSELoss is not a `cir_lightning.losses.RetrievalLoss`"):
        check_loss(torch.nn.MSELoss())
    with pytest.raises(CIRConfigError, match=r"^`loss`: Abstract does not implement `forward`"):
        check_loss(Abstract())
    with pytest.raises(CIRConfigError, match=r"NoTotal.forward returned dict with keys \['hinge'\]; .*\"loss\""):
        distributed_loss(NoTotal(), torch.eye(2), torch.eye(2), torch.arange(2))


def test_the_command_line_takes_a_loss_of_ones_own_by_class_path():
    from jsonargparse import ArgumentParser

    from cir_lightning.module import CIRModule

    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(CIRModule, "model", skip={"backbone"})
    config = parser.parse_args(["--model.loss", "tests.test_losses.Hinge", "--model.loss.margin", "0.3"])
    assert config.model.loss.class_path == "tests.test_losses.Hinge"
    assert config.model.loss.init_args.margin == 0.3
    with pytest.raises(Exception, match="torch.nn.MSELoss"):  # not a RetrievalLoss: the parser refuses it
        parser.parse_args(["--model.loss", "torch.nn.MSELoss"])
