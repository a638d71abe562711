"""What ``fit`` shows when it ends: the retrieval tables of the best and of the last validation, and what
training changed, side by side with where the metrics started and with chance.

``FitHistory`` keeps the metrics of every complete validation inside ``fit``: the one before training
(``CIRModule(validate_before_fit=True)``) and those after the epochs. "Best" is chosen as the run's
``ModelCheckpoint`` chooses: by its ``monitor`` and ``mode``, the earliest of equal values; without a
checkpoint that monitors a retrieval metric, the last validation is also the best. The chance levels
come from the subsets' protocol (``retrieval.protocol.chance_level``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

from cir_lightning.retrieval.evaluator import EvalSubset
from cir_lightning.retrieval.protocol import chance_level, subset_families
from cir_lightning.retrieval.results import format_table
from cir_lightning.retrieval.tables import format_rows

__all__ = ["FitHistory", "Validation", "monitored", "stale_last_warning", "watched", "watchers"]


@dataclass
class Validation:
    """One complete validation inside ``fit``: when it ran and its metrics (no stage prefix)."""

    epoch: int
    step: int
    metrics: dict[str, float]


def monitored(trainer: Any) -> list[tuple[str, str]]:
    """``(monitor, mode)`` of each checkpoint callback of ``trainer`` that monitors a metric, in order.

    Example:
        >>> from types import SimpleNamespace
        >>> from cir_lightning.fit_summary import monitored
        >>> from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
        >>> trainer = SimpleNamespace(checkpoint_callbacks=[ModelCheckpoint(save_last=True),
        ...                                                 ModelCheckpoint(monitor="val/Avg", mode="max")])
        >>> monitored(trainer)
        [('val/Avg', 'max')]
    """
    return [(cb.monitor, cb.mode) for cb in trainer.checkpoint_callbacks
            if isinstance(cb, ModelCheckpoint) and cb.monitor is not None]


def watchers(trainer: Any) -> list[tuple[str, str]]:
    """``(class name, monitor)`` of each of ``trainer``'s ModelCheckpoints and EarlyStoppings that watches a metric.

    Example:
        >>> from types import SimpleNamespace
        >>> from cir_lightning.fit_summary import watchers
        >>> from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
        >>> watchers(SimpleNamespace(callbacks=[ModelCheckpoint(monitor="val/Avg"), ModelCheckpoint(),
        ...                                     EarlyStopping(monitor="val/Recall@10")]))
        [('ModelCheckpoint', 'val/Avg'), ('EarlyStopping', 'val/Recall@10')]
    """
    return [(type(cb).__name__, cb.monitor) for cb in trainer.callbacks
            if isinstance(cb, ModelCheckpoint | EarlyStopping) and cb.monitor]


def watched(trainer: Any) -> set[str]:
    """The metrics ``trainer``'s ModelCheckpoints and EarlyStoppings watch (``watchers``): ``fit`` shows them in
    the progress bar."""
    return {monitor for _, monitor in watchers(trainer)}


def stale_last_warning(trainer: Any) -> str | None:
    """What to tell when ``last.ckpt`` will not hold the newest weights: Lightning (2.6) rewrites it only when
    the same callback saves a checkpoint at that step, so with a ``monitor`` it keeps the last *best* epoch,
    and ``validate --ckpt_path last`` or a resume would silently use older weights. None when a callback
    without ``monitor`` (saving every time it is triggered) keeps ``last.ckpt``.

    Example:
        >>> from types import SimpleNamespace
        >>> from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
        >>> stale_last_warning(SimpleNamespace(checkpoint_callbacks=[ModelCheckpoint(monitor="val/Avg",
        ...                                                                          save_last=True)]))[:40]
        "ModelCheckpoint(monitor='val/Avg', save_"
        >>> stale_last_warning(SimpleNamespace(checkpoint_callbacks=[ModelCheckpoint(save_last=True)])) is None
        True
    """
    callbacks = [cb for cb in trainer.checkpoint_callbacks if isinstance(cb, ModelCheckpoint)]
    if any(cb.save_last and cb.monitor is None for cb in callbacks):
        return None
    stale = [cb.monitor for cb in callbacks if cb.save_last and cb.monitor is not None]
    if not stale:
        return None
    return (f"ModelCheckpoint(monitor={stale[0]!r}, save_last=True) rewrites last.ckpt only when it saves a new "
            "best checkpoint, so last.ckpt may hold an earlier epoch than the last (and `--ckpt_path last` would use "
            "it): add a ModelCheckpoint without `monitor`, with `save_last: true`, to keep the newest weights there "
            "(configs/demo.yaml shows how)")


class FitHistory:
    """The validations of one ``fit`` and the summary printed at its end.

    Args:
        prefix: the logged names' stage prefix (``val`` gives ``val/Recall@1``).

    Example:
        >>> from cir_lightning.fit_summary import FitHistory
        >>> from cir_lightning.retrieval import EvalSubset
        >>> history = FitHistory()
        >>> sub = EvalSubset("", positives=[[1], [2]], excluded=[[0], [0]], num_gallery=5)
        >>> history.record({"Recall@1": 0.0}, [sub], epoch=0, step=0, before=True)
        >>> history.record({"Recall@1": 0.5}, [sub], epoch=0, step=10)
        >>> history.record({"Recall@1": 0.5}, [sub], epoch=1, step=20)
        >>> history.best([("val/Recall@1", "max")]).epoch  # the earliest of equal values, as ModelCheckpoint
        0
        >>> print(history.summary([("val/Recall@1", "max")], default_ks=[1]).splitlines()[-1])
        val/Recall@1 (percent): 0.00 before fit -> 50.00 best (epoch 0) -> 50.00 last (epoch 1); chance 25.00
    """

    def __init__(self, prefix: str = "val") -> None:
        self.prefix = prefix
        self.reset()

    def reset(self) -> None:
        """Forget the validations of an earlier ``fit``."""
        self.before: dict[str, float] | None = None
        self.validations: list[Validation] = []
        self.subsets: list[EvalSubset] = []

    def record(self, metrics: Mapping[str, float], subsets: Sequence[EvalSubset], *, epoch: int, step: int,
               before: bool = False) -> None:
        """Keep a validation's metrics; ``before``: the one before training."""
        if not metrics:
            return
        self.subsets = list(subsets)
        if before:
            self.before = dict(metrics)
        else:
            self.validations.append(Validation(epoch, step, dict(metrics)))

    def _key(self, monitor: str) -> str | None:
        name = monitor.removeprefix(f"{self.prefix}/")
        return name if name != monitor and any(name in v.metrics for v in self.validations) else None

    def best(self, monitors: Sequence[tuple[str, str]]) -> Validation | None:
        """The best validation by the first monitor that names a recorded metric (else the last)."""
        if not self.validations:
            return None
        for monitor, mode in monitors:
            key = self._key(monitor)
            if key is not None:
                scored = [v for v in self.validations if not math.isnan(v.metrics.get(key, math.nan))]
                if scored:
                    pick = max if mode == "max" else min
                    return pick(scored, key=lambda v: v.metrics[key])  # the first of equal values
        return self.validations[-1]

    def _label(self, validation: Validation) -> str:
        same_epoch = sum(v.epoch == validation.epoch for v in self.validations) > 1
        return f"epoch {validation.epoch}" + (f", step {validation.step}" if same_epoch else "")

    def chance(self, default_ks: Sequence[int]) -> dict[str, float]:
        """The chance level of every metric that has one, named as the logged metrics (without prefix)."""
        out = {}
        for sub in self.subsets:
            values = chance_level(sub, subset_families(sub, default_ks))
            out.update({f"{sub.name}/{k}" if sub.name else k: v for k, v in values.items()})
        return out

    def summary(self, monitors: Sequence[tuple[str, str]], default_ks: Sequence[int]) -> str:
        """The tables (percent) of the best and the last validation, what training changed (before / best / last /
        chance, for the metrics with a chance level) and one line for the monitored metric; "" if no
        validation was complete."""
        best = self.best(monitors)
        if best is None:
            return ""
        last = self.validations[-1]
        key = next((k for k in (self._key(m) for m, _ in monitors) if k is not None), None)
        if key is None:
            parts = [f"fit: last validation, {self._label(last)} (no checkpoint monitors a {self.prefix}/ metric: "
                     "no best)", format_table(last.metrics)]
        elif best is last:
            parts = [f"fit: best validation by {self.prefix}/{key}, the last: {self._label(best)}",
                     format_table(best.metrics)]
        else:
            parts = [f"fit: best validation by {self.prefix}/{key}: {self._label(best)}", format_table(best.metrics),
                     f"fit: last validation: {self._label(last)}", format_table(last.metrics)]
        chance = self.chance(default_ks)
        stages = [("before fit", self.before), (f"best ({self._label(best)})", best.metrics if key else None),
                  (f"last ({self._label(last)})", last.metrics), ("chance", chance)]
        names = sorted({k.rpartition("/")[0] for k in chance}, key=[s.name for s in self.subsets].index)
        rows = []
        for name in names:
            for label, metrics in stages:
                if metrics is not None:
                    values = {k.rpartition("/")[2]: metrics[k] for k in chance if k.rpartition("/")[0] == name
                              and k in metrics}
                    rows.append(([name or "all", label] if len(names) > 1 else [label], values))
        if rows:
            header = ["subset", "weights"] if len(names) > 1 else ["weights"]
            parts += ["what training changed (percent):", format_rows(header, rows, sections=len(names) > 1)]
        if key is not None:
            line = [f"{self.before[key] * 100:.2f} before fit"] if self.before and key in self.before else []
            line += [f"{best.metrics[key] * 100:.2f} best ({self._label(best)})",
                     f"{last.metrics[key] * 100:.2f} last ({self._label(last)})"]
            tail = f"; chance {chance[key] * 100:.2f}" if key in chance else ""
            parts.append(f"{self.prefix}/{key} (percent): {' -> '.join(line)}{tail}")
        return "\n".join(parts)
