"""FitHistory: the best validation chosen as ModelCheckpoint chooses, and what the summary shows."""

from __future__ import annotations

import math

import pytest

from cir_lightning.fit_summary import FitHistory
from cir_lightning.retrieval import EvalSubset

SUBSET = EvalSubset("", positives=[[1], [2]], excluded=[[0], [0]], num_gallery=5)  # chance R@1: 1 / 4


def _history(values: list[float], key: str = "Recall@1") -> FitHistory:
    history = FitHistory()
    for epoch, value in enumerate(values):
        history.record({key: value, "MRR@1": 0.5}, [SUBSET], epoch=epoch, step=10 * (epoch + 1))
    return history


@pytest.mark.parametrize(("values", "mode", "epoch"), [
    ([0.2, 0.5, 0.5, 0.1], "max", 1),  # the first of equal values, as ModelCheckpoint keeps it
    ([0.2, 0.5, 0.5, 0.1], "min", 3),
    ([math.nan, 0.3, 0.1], "max", 1),  # a NaN is never the best
])
def test_the_best_validation_follows_the_monitor_and_mode(values, mode, epoch):
    assert _history(values).best([("val/Recall@1", mode)]).epoch == epoch


def test_without_a_monitored_retrieval_metric_the_last_is_shown_and_no_best():
    history = _history([0.9, 0.1])
    assert history.best([("train/loss", "min")]).epoch == 1  # not a validation metric: the last
    text = history.summary([("train/loss", "min")], default_ks=[1])
    assert text.startswith("fit: last validation, epoch 1 (no checkpoint monitors a val/ metric: no best)")
    assert "best (" not in text
    assert "90.00" not in text  # the first epoch is not shown


def test_the_summary_compares_before_best_last_and_chance_per_subset():
    dress, shirt = (EvalSubset(n, positives=[[1]], excluded=[[]], num_gallery=10) for n in ("dress", "shirt"))
    history = FitHistory()
    history.record({"dress/Recall@1": 0.0, "shirt/Recall@1": 0.0}, [dress, shirt], epoch=0, step=0, before=True)
    history.record({"dress/Recall@1": 0.5, "shirt/Recall@1": 0.25, "average/Recall@1": 0.375}, [dress, shirt],
                   epoch=0, step=5)
    history.record({"dress/Recall@1": 0.75, "shirt/Recall@1": 0.0, "average/Recall@1": 0.375}, [dress, shirt],
                   epoch=1, step=10)
    text = history.summary([("val/average/Recall@1", "max")], default_ks=[1])
    assert text.splitlines()[0] == "fit: best validation by val/average/Recall@1: epoch 0"
    rows = [line for line in text.splitlines() if line.startswith("│") and ("dress" in line or "shirt" in line)]
    cells = [[c.strip() for c in row.strip("│").split("│")] for row in rows]
    comparison = [c for c in cells if len(c) == 3]
    assert comparison == [["dress", "before fit", "0.00"], ["dress", "best (epoch 0)", "50.00"],
                          ["dress", "last (epoch 1)", "75.00"], ["dress", "chance", "10.00"],
                          ["shirt", "before fit", "0.00"], ["shirt", "best (epoch 0)", "25.00"],
                          ["shirt", "last (epoch 1)", "0.00"], ["shirt", "chance", "10.00"]]
    # the average was not measured before fit and has no chance level: its line has neither
    assert text.splitlines()[-1] == "val/average/Recall@1 (percent): 37.50 best (epoch 0) -> 37.50 last (epoch 1)"
