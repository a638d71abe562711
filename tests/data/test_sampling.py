"""The training order resumed in the middle of an epoch, on each rank under DDP: the rest of the rank's share after the
batches trained, with padded shares and incomplete batches (checked without starting processes; the 2-process `fit`
is tests/test_ddp_resume.py)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from torch.utils.data import DistributedSampler

from cir_lightning.data.sampling import DistributedEpochSampler, EpochSampler, ResumableLoader, train_sampler


@pytest.mark.parametrize(("size", "ranks", "batch"), [(64, 2, 4), (61, 2, 4), (63, 2, 4), (62, 3, 5), (7, 4, 2)])
def test_each_rank_resumes_its_own_share_after_the_batches_trained(size, ranks, batch):
    """61 and 63 over 2 ranks and 62 over 3 pad the last shares with repeated rows; 61/4, 62/5 and 7/2 leave
    incomplete batches, which training drops."""
    for rank in range(ranks):
        lightning = DistributedSampler(range(size), num_replicas=ranks, rank=rank, seed=5)
        lightning.set_epoch(2)
        share = list(lightning)  # the order of Lightning's own sampler
        whole = len(share) // batch
        for trained in range(whole + 1):
            sampler = DistributedEpochSampler(range(size), num_replicas=ranks, rank=rank, seed=5, batch_size=batch,
                                              epoch_fn=lambda: 2, position_fn=lambda n=trained: n)
            rows = list(sampler)
            # every whole batch trained: the epoch was complete, its order starts anew
            assert rows == (share[trained * batch:] if trained < whole else share), (rank, trained)
            assert {row.epoch for row in rows} == {2}
            assert len(sampler) == len(share)  # Lightning counts the epoch's batches from the whole share


def test_the_epoch_is_read_when_the_iteration_starts():
    """Lightning starts a resumed run's first iteration before `set_epoch` (DataLoader workers draw the order then):
    the epoch comes from the restored loop, not from the sampler's default 0."""
    epoch = [3]
    sampler = DistributedEpochSampler(range(10), num_replicas=2, rank=0, seed=0, epoch_fn=lambda: epoch[0])
    lightning = DistributedSampler(range(10), num_replicas=2, rank=0, seed=0)
    lightning.set_epoch(3)
    assert list(sampler) == list(lightning)
    epoch[0] = 4
    lightning.set_epoch(4)
    assert list(sampler) == list(lightning)


def test_the_training_sampler_reads_lightning_s_loops_on_every_rank():
    loops = SimpleNamespace(epoch_progress=SimpleNamespace(current=SimpleNamespace(processed=1)),
                            epoch_loop=SimpleNamespace(batch_progress=SimpleNamespace(current=SimpleNamespace(ready=2))))
    trainer = SimpleNamespace(world_size=2, distributed_sampler_kwargs={"num_replicas": 2, "rank": 1}, fit_loop=loops)
    sampler = train_sampler(20, 3, trainer)
    assert isinstance(sampler, DistributedEpochSampler)
    lightning = DistributedSampler(range(20), num_replicas=2, rank=1, seed=sampler.seed)
    lightning.set_epoch(1)
    assert list(sampler) == list(lightning)[6:]
    assert ResumableLoader(range(20), batch_size=3, sampler=sampler).state_dict() == {"epoch": 1, "batches": 2}
    one = train_sampler(20, 3, SimpleNamespace(world_size=1, fit_loop=loops))
    assert isinstance(one, EpochSampler)
    assert list(one) == list(EpochSampler(20, one.seed, 3, epoch_fn=lambda: 1))[6:]


def test_the_recorded_seed_is_the_running_order_s_declared_one(monkeypatch):
    """`training_order` read the running sampler's seed with `getattr`: a sampler without one fell back to the seed
    a new order would take, silently recording another order than the one running. The seed is declared by every
    `ResumableSampler`, the only sampler a `ResumableLoader` runs."""
    import torch

    from cir_lightning.data.sampling import ResumableSampler, training_order

    monkeypatch.setenv("PL_GLOBAL_SEED", "5")
    for trainer in (SimpleNamespace(world_size=1, train_dataloader=None),
                    SimpleNamespace(world_size=2, distributed_sampler_kwargs={"num_replicas": 2, "rank": 0},
                                    train_dataloader=None)):
        sampler = train_sampler(20, 4, trainer)
        assert isinstance(sampler, ResumableSampler)
        assert training_order(20, 4, trainer)["seed"] == sampler.seed  # before the loader: the seed it will take
        trainer.train_dataloader = ResumableLoader(range(20), batch_size=4, sampler=sampler)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(sampler.seed + 1)  # the global seed changes once the order runs
            assert training_order(20, 4, trainer)["seed"] == sampler.seed  # the running order's own

    class Undeclared(ResumableSampler):  # a new sampler that forgot its seed
        def __init__(self) -> None:
            self.epoch, self.batch_size = 0, 4

        def __iter__(self):
            return iter(range(20))

    trainer = SimpleNamespace(world_size=1, train_dataloader=ResumableLoader(range(20), batch_size=4,
                                                                             sampler=Undeclared()))
    with pytest.raises(AttributeError, match="seed"):  # loud, never the order a new run would take
        training_order(20, 4, trainer)
