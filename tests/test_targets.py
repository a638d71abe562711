"""Target identities: written into batches by the collators, read back by the loss (cir_lightning/targets.py)."""

from __future__ import annotations

import pytest
import torch

from cir_lightning.targets import key_id, target_identity, target_keys


def test_key_ids_are_stable_non_negative_int64():
    assert key_id("images/a.png") == key_id("images/a.png")
    assert key_id("images/a.png") != key_id("images/b.png")
    assert 0 <= key_id("x") < 2 ** 63
    assert torch.tensor([key_id("x")]).dtype == torch.long


def test_target_keys_for_cross_rank_negatives():
    batch = {"index": torch.tensor([4, 7, 9]), "target_group": torch.tensor([0, 1, 0])}
    # one process: in-batch identity (the dataset row of the first triplet with the same target)
    assert target_keys(batch, cross_rank=False).tolist() == [4, 7, 4]
    # samples that name their target (every training dataset's `target_key`): a global id, the same on every rank
    samples = [{"target_key": f"img/{i % 3}.png"} for i in (4, 7, 9)]
    named = {**batch, **target_identity(samples)}
    expected = [key_id("img/1.png"), key_id("img/1.png"), key_id("img/0.png")]
    assert target_keys(named, True).tolist() == expected
    assert target_keys(named, False).tolist() == expected
    with pytest.warns(UserWarning, match="no `target_key`"):
        assert target_keys(batch, True).tolist() == [4, 7, 4]
