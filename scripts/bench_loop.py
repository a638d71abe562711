"""Lightning's overhead on FiRE training: the demo's model, data, loss and optimizer trained for the same steps
by Lightning's ``Trainer`` and by a hand-written loop, interleaved, in one process.

Both start from the same seed and weights and draw the same batches (the DataModule's ``EpochSampler`` order
depends only on the seed and the epoch), so their losses must be equal step by step; the script prints the
largest difference and each loop's time (the minimum over the repeats) and their ratio. The hand-written loop
does what ``CIRModule.training_step`` does without Lightning: embed queries and targets, FiRE's loss,
backward, AdamW and the learning-rate schedule step; no logging, no callbacks, no checkpoints.

    python scripts/bench_loop.py --steps 40 --repeats 3

It prints one JSON line per repeat and a summary line.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import lightning.pytorch as pl
import torch

from cir_lightning.cli import CIRLightningCLI
from cir_lightning.losses import distributed_loss
from cir_lightning.optim import lr_scheduler
from cir_lightning.targets import target_keys

DEMO = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"


class _Losses(pl.Callback):
    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(outputs["loss"]))


def _build(root: str, steps: int, batch_size: int) -> CIRLightningCLI:
    pl.seed_everything(42, verbose=False)
    return CIRLightningCLI(args=["--config", str(DEMO), "--trainer.default_root_dir", root,
                                 "--data.init_args.num_train", str(steps * batch_size),
                                 "--data.init_args.batch_size", str(batch_size),
                                 "--data.init_args.num_workers", "0"], run=False)


def with_lightning(root: str, steps: int, batch_size: int) -> tuple[float, list[float]]:
    cli = _build(root, steps, batch_size)
    record = _Losses()
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_steps=steps, max_epochs=1, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         limit_val_batches=0, num_sanity_val_steps=0, callbacks=[record],
                         default_root_dir=root)
    cli.model.export_adapter = False
    start = time.perf_counter()
    trainer.fit(cli.model, datamodule=cli.datamodule)
    return time.perf_counter() - start, record.losses


def by_hand(root: str, steps: int, batch_size: int) -> tuple[float, list[float]]:
    cli = _build(root, steps, batch_size)
    module, data = cli.model, cli.datamodule
    start = time.perf_counter()
    data.setup("fit")
    module.setup("fit")
    data.connect(module.backbone.collator, None)
    loader = data.train_dataloader()
    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = module.optimizer_factory(params)
    scheduler = lr_scheduler(optimizer, module.lr_schedule, module.warmup, len(loader))
    module.train()
    losses = []
    for step, batch in enumerate(loader):
        if step == steps:
            break
        query, target = module.backbone(batch["query"]), module.backbone(batch["target"])
        keys = target_keys(batch, False)
        loss = distributed_loss(module.loss, query, target, keys, cross_rank=False)["loss"]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        scheduler.step()
        losses.append(float(loss.detach()))
    return time.perf_counter() - start, losses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    root = tempfile.mkdtemp(prefix="bench-loop-")
    _build(root, 1, args.batch_size)  # the demo's data and tiny model, made once
    times: dict[str, list[float]] = {"lightning": [], "hand": []}
    difference = 0.0
    for repeat in range(args.repeats):
        seconds_l, losses_l = with_lightning(root, args.steps, args.batch_size)
        seconds_h, losses_h = by_hand(root, args.steps, args.batch_size)
        times["lightning"].append(seconds_l)
        times["hand"].append(seconds_h)
        difference = max(difference, max(abs(a - b) for a, b in zip(losses_l, losses_h, strict=True)))
        print(json.dumps({"repeat": repeat, "lightning_s": round(seconds_l, 3), "hand_s": round(seconds_h, 3),
                          "steps": len(losses_l), "max_loss_difference": max(abs(a - b) for a, b in
                                                                            zip(losses_l, losses_h, strict=True))}))
    best_l, best_h = min(times["lightning"]), min(times["hand"])
    print(json.dumps({"steps": args.steps, "batch_size": args.batch_size, "threads": torch.get_num_threads(),
                      "lightning_min_s": round(best_l, 3), "hand_min_s": round(best_h, 3),
                      "ratio_lightning_to_hand": round(best_l / best_h, 3), "max_loss_difference": difference}))


if __name__ == "__main__":
    main()
