"""The evaluation loop's forward share: how much of ``validate``'s loop over queries and gallery the model spends
in its forward, the rest being time the loop waits for the DataLoader (decode, collate) or does bookkeeping.

The demo's config (synthetic benchmark, ``CIRModule``) with a random LLaVA-NeXT-style model whose language
model is ``--text-hidden`` x ``--text-layers`` (the demo's own is 64 x 2: its forward is cheaper than
decoding an image). A callback times the loop from the first batch's start to the last batch's end (the
search and metrics after it are left out), and the backbone's ``forward`` is wrapped to sum its own time.

    python scripts/bench_eval_loop.py --num-val 2000 --workers 1 --text-hidden 512 --text-layers 6

It prints one JSON line per configuration: loop seconds, forward seconds, their ratio.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import lightning.pytorch as pl

from cir_lightning.backbones.tiny import TinyModelSpec, make_tiny_model
from cir_lightning.cli import CIRLightningCLI

DEMO = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"


class LoopClock(pl.Callback):
    """Wall time from the first validation batch's start to the last one's end."""

    def __init__(self) -> None:
        self.first: float | None = None
        self.last = 0.0

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        if self.first is None:
            self.first = time.perf_counter()

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self.last = time.perf_counter()


def run(root: str, model: Path, num_val: int, workers: int, batch_size: int) -> dict[str, float]:
    cli = CIRLightningCLI(args=["--config", str(DEMO), "--trainer.default_root_dir", root,
                                "--model.backbone.init_args.model_name_or_path", str(model),
                                "--model.backbone.init_args.make_tiny_if_missing", "false",
                                "--model.backbone.init_args.lora", "null", "--model.pictures", "0",
                                "--model.write_results", "false",
                                "--data.init_args.root", f"{root}/data", "--data.init_args.num_train", "16",
                                "--data.init_args.num_val", str(num_val), "--data.init_args.num_workers", str(workers),
                                "--data.init_args.eval_batch_size", str(batch_size)], run=False)
    backbone, spent = cli.model.backbone, [0.0]
    forward = backbone.forward

    def timed(*args, **kwargs):
        start = time.perf_counter()
        try:
            return forward(*args, **kwargs)
        finally:
            spent[0] += time.perf_counter() - start

    backbone.forward = timed
    clock = LoopClock()
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[clock],
                         default_root_dir=root)
    trainer.validate(cli.model, datamodule=cli.datamodule, verbose=False)
    loop = clock.last - clock.first
    return {"loop_s": round(loop, 2), "forward_s": round(spent[0], 2), "forward_share": round(spent[0] / loop, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-val", type=int, default=2000)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--text-hidden", type=int, default=512)
    parser.add_argument("--text-layers", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as root:
        model = make_tiny_model(Path(root) / "model", spec=TinyModelSpec(
            text_hidden=args.text_hidden, text_layers=args.text_layers, text_heads=max(4, args.text_hidden // 64)))
        for repeat in range(args.repeats):
            for workers in args.workers:
                print(json.dumps({"repeat": repeat, "workers": workers, "num_val": args.num_val,
                                  "model": f"text {args.text_hidden}x{args.text_layers}",
                                  **run(root, model, args.num_val, workers, args.batch_size)}), flush=True)


if __name__ == "__main__":
    main()
