"""What ``fit --ckpt_path`` resumes besides the weights: the optimizer's settings, Lightning's loop position (and
in it, the training order's: ``CIRModule.on_save_checkpoint`` calls ``record_training_order``) and the learning-rate
schedule's step (``record_schedule``, ``warn_other_schedule``).

``CIRModule.on_load_checkpoint`` calls ``check_resumed_training`` during ``fit``; Lightning restores the
optimizer and the loops from the same dictionary only afterwards, so what is checked or repaired here is what
the run then resumes with.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_warn

from cir_lightning.data.base import cir_datamodule
from cir_lightning.errors import CIRConfigError
from cir_lightning.optim import lr_factor, warmup_steps

_NOT_SETTINGS = ("params", "initial_lr", "lr", "foreach", "fused", "capturable", "differentiable")
"""Entries of an optimizer's parameter group that are not the user's settings (``lr`` is compared as the
schedule's base learning rate: the group's own follows the schedule)."""


def _fit_loop(checkpoint: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, Any]]:
    """Lightning's saved fit loop (edited in place), its epoch trackers (total, current) and its batch progress;
    empty where a checkpoint has none."""
    loop = (checkpoint.get("loops") or {}).get("fit_loop") or {}
    epochs = loop.get("epoch_progress") or {}
    return loop, [epochs.get(k, {}) for k in ("total", "current")], loop.get("epoch_loop.batch_progress") or {}


def _batches_done(checkpoint: dict[str, Any]) -> tuple[int, bool]:
    """The batches of the current epoch a checkpoint holds as trained, and whether the last one was its last."""
    batches = _fit_loop(checkpoint)[2]
    return (batches.get("current") or {}).get("ready", 0), bool(batches.get("is_last_batch"))


def check_resumed_training(module: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
    """Refuse optimizer settings that the checkpoint would replace, then repair the loop position."""
    if checkpoint.get("optimizer_states"):
        refuse_other_optimizer(module.optimizer_factory, checkpoint, module.trainer.ckpt_path)
    finish_epoch_end(checkpoint)
    reopen_stopped_epoch(checkpoint)
    datamodule = cir_datamodule(module.trainer)
    if datamodule is not None:
        refuse_other_order(checkpoint, datamodule.training_order(), module.trainer.ckpt_path)
    warn_split_step(checkpoint, module.trainer.accumulate_grad_batches, module.trainer.ckpt_path)


def record_training_order(module: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
    """``on_save_checkpoint``: keep what the position in the epoch is counted in (``CIRDataModule.training_order``)."""
    datamodule = cir_datamodule(module._trainer)
    order = datamodule.training_order() if datamodule is not None else None
    if order is not None:
        checkpoint.setdefault("cir_lightning", {})["training_order"] = order


_ORDER_SETTINGS = {"batch_size": "`data.batch_size`", "samples": "the number of training triplets",
                   "processes": "the number of processes (`trainer.devices` x `trainer.num_nodes`)",
                   "seed": "`seed_everything`"}


def refuse_other_order(checkpoint: dict[str, Any], now: dict[str, int] | None, path: Any) -> None:
    """A checkpoint written in the middle of an epoch holds the batches of it already trained, and the run resumes
    after that many batches of the epoch's order: with another batch size, number of training samples, of processes
    or seed, those are other rows (resumed with half the batch size, the second quarter of the epoch was trained
    twice; one written by ``every_n_train_steps`` at an epoch's last batch counts as in it: with another batch size
    Lightning trained half that epoch again). Refused, naming what differs; a checkpoint written once its epoch
    ended (``finish_epoch_end``) or before the order was recorded passes.

    Example:
        >>> order = {"batch_size": 16, "samples": 64, "processes": 1, "seed": 0}
        >>> saved = {"cir_lightning": {"training_order": order}, "epoch": 0, "loops": {"fit_loop": {
        ...     "epoch_loop.batch_progress": {"current": {"ready": 2}, "is_last_batch": False}}}}
        >>> refuse_other_order(saved, dict(order), "last.ckpt")  # the same order
        >>> refuse_other_order(saved, {**order, "batch_size": 8}, "last.ckpt")
        Traceback (most recent call last):
        ...
        cir_lightning.errors.CIRConfigError: `--ckpt_path last.ckpt` was written after 2 batch(es) of epoch 0 and \
resumes that epoch after as many batches of its order, which these settings change: `data.batch_size` 8 given, 16 in \
the checkpoint; ...
    """
    saved = (checkpoint.get("cir_lightning") or {}).get("training_order")
    done = _batches_done(checkpoint)[0]
    if not saved or now is None or not done:  # at 0 after ``finish_epoch_end``: the next epoch starts anew
        return
    changed = [f"{label} {now[k]} given, {saved[k]} in the checkpoint" for k, label in _ORDER_SETTINGS.items()
               if k in saved and now[k] != saved[k]]
    if changed:
        raise CIRConfigError(f"`--ckpt_path {Path(str(path))}` was written after {done} batch(es) of epoch "
                             f"{checkpoint.get('epoch', 0)} and resumes that epoch after as many batches of its order, "
                             f"which these settings change: {'; '.join(changed)}; resume with the checkpoint's, or from "
                             "one written once an epoch ended (not by `every_n_train_steps` in it), or start a new run "
                             "from its weights with `model.backbone.init_args.lora.init_adapter`")


def warn_split_step(checkpoint: dict[str, Any], accumulate: int, path: Any) -> str | None:
    """The position in an epoch is a count of batches, and the run resumes at the next one: exact at an optimizer
    step. A checkpoint written between the batches of one step (``accumulate_grad_batches`` > 1; e.g. by validation at a
    ``val_check_interval`` that is not a multiple of it) does not hold the gradients accumulated so far: the resumed
    step uses only the batches after it (the rows are right, the weights differ). Warned once, on rank zero; the
    warning is returned.

    Example:
        >>> saved = {"epoch": 0, "loops": {"fit_loop": {"epoch_loop.batch_progress": {"current": {"ready": 3}}}}}
        >>> warn_split_step(saved, 1, "mid.ckpt") is None, warn_split_step(saved, 3, "mid.ckpt") is None
        (True, True)
    """
    done, last = _batches_done(checkpoint)
    if accumulate <= 1 or not done % accumulate or last:
        return None
    warning = (f"`--ckpt_path {Path(str(path))}` was written after {done} batch(es) of epoch {checkpoint.get('epoch', 0)}, "
               f"inside an optimizer step of `trainer.accumulate_grad_batches` {accumulate}: checkpoints do not hold the "
               f"gradients of its first {done % accumulate} batch(es), so the resumed step uses only the "
               f"{accumulate - done % accumulate} after them; for an exact resume write checkpoints at steps "
               f"(`every_n_train_steps`, a `val_check_interval` that is a multiple of {accumulate})")
    rank_zero_warn(warning)
    return warning


def refuse_other_optimizer(factory: Any, checkpoint: dict[str, Any], path: Any) -> None:
    """Lightning restores the checkpoint's optimizer state, its parameter groups included, over the optimizer
    ``configure_optimizers`` built: ``--model.optimizer.init_args.lr 0.01`` (or another weight decay, or another
    optimizer) given to resume a run would be dropped without a word. Refused, naming what differs.

    Example:
        >>> adamw = lambda params: torch.optim.AdamW(params, lr=1e-3)
        >>> saved = {"optimizer_states": [adamw([torch.nn.Parameter(torch.zeros(1))]).state_dict()],
        ...          "lr_schedulers": [{"base_lrs": [1e-3]}]}
        >>> refuse_other_optimizer(adamw, saved, "last.ckpt")  # the same settings
        >>> refuse_other_optimizer(lambda p: torch.optim.AdamW(p, lr=1e-2), saved, "last.ckpt")
        Traceback (most recent call last):
        ...
        cir_lightning.errors.CIRConfigError: `--ckpt_path last.ckpt` resumes the optimizer of its run, whose \
settings differ from those given: `lr` 0.01 given, 0.001 in the checkpoint; ...
    """
    given = factory([torch.nn.Parameter(torch.zeros(1))])
    saved_group = checkpoint["optimizer_states"][0]["param_groups"][0]
    now_group = given.state_dict()["param_groups"][0]
    saved = {k: v for k, v in saved_group.items() if k not in _NOT_SETTINGS}
    now = {k: v for k, v in now_group.items() if k not in _NOT_SETTINGS}
    schedulers = checkpoint.get("lr_schedulers") or [{}]
    saved["lr"] = (schedulers[0].get("base_lrs") or [saved_group.get("initial_lr", saved_group["lr"])])[0]
    now["lr"] = now_group["lr"]
    if set(saved) != set(now):
        changed = [f"another optimizer ({type(given).__name__} given, with settings {sorted(now)}; the checkpoint's "
                   f"has {sorted(saved)})"]
    else:
        changed = [f"`{k}` {now[k]!r} given, {saved[k]!r} in the checkpoint" for k in sorted(now)
                   if _differs(now[k], saved[k])]
    if changed:
        raise CIRConfigError(f"`--ckpt_path {Path(str(path))}` resumes the optimizer of its run, whose settings "
                             f"differ from those given: {'; '.join(changed)}; give the checkpoint's "
                             "`model.optimizer` to resume it, or start a new run from its weights with "
                             "`model.backbone.init_args.lora.init_adapter`")


def _differs(a: Any, b: Any) -> bool:
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) != len(b) or any(_differs(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float | int) and isinstance(b, float | int) and not isinstance(a, bool):
        return abs(float(a) - float(b)) > 1e-12 * max(abs(float(a)), abs(float(b)), 1e-300)
    return a != b


def finish_epoch_end(checkpoint: dict[str, Any]) -> None:
    """A checkpoint written after an epoch's last batch (``on_train_epoch_end``, e.g. when ``max_steps`` is reached
    there) holds that epoch as processed but not completed, and its batches as this epoch's. With ``max_steps``
    set, Lightning 2.6 resumes it as "restarted on epoch end": the old epoch is counted twice and its batches as
    the new one's, so a run resumed to ``max_epochs: 2`` trained nothing, and one resumed to 3 trained one epoch in
    epoch 2's order. The epoch's training is over: it is marked completed and the next epoch starts at its first
    batch, as Lightning itself does without ``max_steps``.

    Example:
        >>> epoch = {"ready": 1, "started": 1, "processed": 1, "completed": 0}
        >>> batches = {"ready": 4, "started": 4, "processed": 4, "completed": 4}
        >>> loop = {"epoch_progress": {"total": dict(epoch), "current": dict(epoch)},
        ...         "epoch_loop.batch_progress": {"total": dict(batches), "current": dict(batches), "is_last_batch": True}}
        >>> finish_epoch_end({"loops": {"fit_loop": loop}})
        >>> loop["epoch_progress"]["current"]["completed"], loop["epoch_loop.batch_progress"]["current"]["ready"]
        (1, 0)
    """
    loop, over, batches = _fit_loop(checkpoint)
    if not batches.get("is_last_batch") or not all(
            t.get("ready") == t.get("started") == t.get("processed") and
            t.get("completed") in (t.get("processed", 0) - 1, t.get("processed")) for t in over):
        return
    for tracker in over:
        tracker["completed"] = tracker["processed"]
    batches["is_last_batch"] = False
    for name in ("epoch_loop.batch_progress", "epoch_loop.scheduler_progress"):
        current = (loop.get(name) or {}).get("current") or {}
        current.update(dict.fromkeys(current, 0))
    optimizer = (loop.get("epoch_loop.automatic_optimization.optim_progress") or {}).get("optimizer") or {}
    for part in optimizer.values():
        current = part.get("current") or {}
        current.update(dict.fromkeys(current, 0))


def reopen_stopped_epoch(checkpoint: dict[str, Any]) -> None:
    """A run that ``max_steps`` (or a callback's ``should_stop``) stopped in the middle of an epoch ends that epoch's loop
    early, and its checkpoint, written at ``on_train_epoch_end``, holds the epoch as processed: Lightning resumed it
    with the next epoch, so the rest of the stopped one was never trained (``max_steps: 2`` of 4 batches, resumed to
    ``max_epochs: 2``: 6 steps instead of 8, and with ``max_epochs: 1`` none). The epoch is marked unprocessed again:
    the run resumes at its next untrained batch, as if it had never stopped.

    Example:
        >>> epoch = {"ready": 1, "started": 1, "processed": 1, "completed": 0}
        >>> batches = {"ready": 2, "started": 2, "processed": 2, "completed": 2}
        >>> loop = {"epoch_progress": {"total": dict(epoch), "current": dict(epoch)},
        ...         "epoch_loop.batch_progress": {"total": dict(batches), "current": dict(batches), "is_last_batch": False}}
        >>> reopen_stopped_epoch({"loops": {"fit_loop": loop}})
        >>> loop["epoch_progress"]["current"]["processed"], loop["epoch_loop.batch_progress"]["current"]["ready"]
        (0, 2)
    """
    loop, over, batches = _fit_loop(checkpoint)
    done = batches.get("current") or {}
    if batches.get("is_last_batch") or not done.get("ready") or done.get("completed") != done.get("ready") or not all(
            t.get("ready") == t.get("started") == t.get("processed") and t.get("completed") == t.get("processed", 0) - 1
            for t in over):
        return
    for tracker in over:
        tracker["processed"] = tracker["completed"]


def record_schedule(checkpoint: dict[str, Any], steps: float | None) -> None:
    """``on_save_checkpoint``: keep the optimizer steps the learning-rate schedule is laid over (Lightning's
    ``estimated_stepping_batches`` when ``configure_optimizers`` made it; None: no schedule made in this run)."""
    if steps is not None:
        checkpoint.setdefault("cir_lightning", {})["schedule_steps"] = float(steps)


def resumed_schedule(checkpoint: dict[str, Any]) -> tuple[float, int] | None:
    """The steps a checkpoint's schedule was laid over and the step it had reached; None for a checkpoint that
    did not record them (written before ``record_schedule``) or holds no scheduler."""
    steps = (checkpoint.get("cir_lightning") or {}).get("schedule_steps")
    schedulers = checkpoint.get("lr_schedulers") or []
    if steps is None or not schedulers or not isinstance(schedulers[0], dict):
        return None
    return float(steps), int(schedulers[0].get("last_epoch", 0))


def _length(steps: float) -> int:
    """The optimizer steps a schedule is laid over, as ``optim.lr_scheduler`` counts them (1 when unknown)."""
    return max(1, int(steps)) if steps != float("inf") else 1


def warn_other_schedule(schedule: str, warmup: float, resumed: tuple[float, int], steps: float, path: Any) -> str | None:
    """Lightning restores the scheduler's step count over the schedule ``configure_optimizers`` lays over this run's
    optimizer steps: a run resumed with another length (``max_epochs``, ``max_steps``, batch size, processes,
    ``accumulate_grad_batches``) continues on another curve than the one it trained on, its learning rate jumping
    (a linear schedule ended at 0, resumed to twice the epochs: back to half of ``lr``). Warned once, on rank zero,
    with both rates at the step resumed; the warning is returned.

    Example:
        >>> warn_other_schedule("linear", 0.0, (4.0, 4), 4.0, "last.ckpt") is None  # the same length
        True
        >>> warn_other_schedule("constant", 0.0, (4.0, 4), 8.0, "last.ckpt") is None  # the same rate
        True
        >>> print(warn_other_schedule("linear", 0.0, (4.0, 4), 8.0, "last.ckpt"))  # doctest: +ELLIPSIS
        `--ckpt_path last.ckpt` resumes at step 4 a learning-rate schedule (`lr_schedule: linear`, `warmup: 0.0`) laid over 4 optimizer steps; this run lays it over 8 (...), so the learning rate goes from 0% of `lr` to 50%: ...
    """
    (then, step), total = resumed, _length
    before, after = (lr_factor(schedule, warmup_steps(warmup, total(n)), total(n))(step) for n in (then, steps))
    if total(then) == total(steps) or abs(before - after) <= 1e-9:
        return None
    warning = (f"`--ckpt_path {Path(str(path))}` resumes at step {step} a learning-rate schedule (`lr_schedule: "
               f"{schedule}`, `warmup: {warmup}`) laid over {total(then)} optimizer steps; this run lays it over "
               f"{total(steps)} (another `max_epochs`, `max_steps`, batch size, number of processes or "
               f"`accumulate_grad_batches`), so the learning rate goes from {before:.0%} of `lr` to {after:.0%}: the "
               "run follows neither schedule whole; resume with the run's length to keep its schedule, or start a new "
               "run from its weights with `model.backbone.init_args.lora.init_adapter`")
    rank_zero_warn(warning)
    return warning
