"""The catalogue of bad and unusual inputs: every one is answered by one clear line, nothing the user wrote changes.

Each case builds a small, otherwise valid world in ``tmp_path`` (a JSONL dataset of four images, the tiny
model, configs, checkpoints, caches), breaks one thing, and runs the real entry point (``main``, in this
process: a CLI start-up costs seconds) or the library call a Python user would make. Every case asserts:

- the exit code 2 (CLI) or the exception type (library): a ``CIRError``, never a library exception;
- that the message names the file and line, the id or the option, and what is wrong;
- that no traceback is shown;
- that no file the user wrote changed (checksums before and after).
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import pickle
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cir_lightning.cli import main
from cir_lightning.errors import CIRError, CIRFileError
from tests.data.test_images import write_png
from tests.test_cli import CONF


@dataclass
class World:
    """A valid set-up: user files under ``user/``, the run's output under ``run/``."""

    tmp: Path
    model: Path
    user: Path = field(init=False)
    data: Path = field(init=False)

    def __post_init__(self) -> None:
        self.user = self.tmp / "user"
        self.data = self.user / "data"
        (self.data / "img").mkdir(parents=True)
        colours = ["red", "green", "blue", "yellow"]
        for i, colour in enumerate(colours):
            Image.new("RGB", (16, 16), colour).save(self.data / "img" / f"{i}.png")
        self.write("gallery.jsonl", [{"image_id": str(i), "image_path": f"img/{i}.png"} for i in range(4)])
        self.write("val_queries.jsonl", [
            {"query_id": "q0", "reference_image": "img/0.png", "reference_id": "0", "modification": "make it green",
             "target_id": "1", "exclude_ids": ["0"]},
            {"query_id": "q1", "reference_image": "img/2.png", "reference_id": "2", "modification": "make it yellow",
             "target_id": "3", "exclude_ids": ["2"]}])
        self.write("train.jsonl", [
            {"reference_image": f"img/{i}.png", "target_image": f"img/{(i + 1) % 4}.png",
             "modification": f"make it {colours[(i + 1) % 4]}", "target_caption": f"a {colours[(i + 1) % 4]} square"}
            for i in range(4)])

    def write(self, name: str, rows: list[dict]) -> Path:
        path = self.data / name
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        return path

    def lines(self, name: str) -> list[str]:
        return (self.data / name).read_text().splitlines()

    def put_lines(self, name: str, lines: list[str]) -> None:
        (self.data / name).write_text("\n".join(lines) + "\n")

    def cli(self, stage: str = "validate", *extra: str) -> list[str]:
        return [stage, "--config", str(CONF), "--model.backbone.init_args.model_name_or_path", str(self.model),
                "--data", "cir_lightning.data.JsonlCIRDataModule", "--data.root", str(self.data),
                "--data.batch_size", "2", "--trainer.default_root_dir", str(self.tmp / "run"),
                "--trainer.max_steps", "1", *extra]

    def own_model(self) -> Path:
        """A copy of the tiny model the case may break (the shared one must stay intact)."""
        target = self.user / "model"
        shutil.copytree(self.model, target)
        self.model = target
        return target

    def ckpt(self, name: str, payload: object) -> Path:
        path = self.user / name
        buffer = io.BytesIO()
        torch.save(payload, buffer)
        path.write_bytes(buffer.getvalue())
        return path


class _Hostile:
    """A pickle that would run a shell command when loaded without weights_only."""

    def __reduce__(self):
        return (os.system, ("echo owned > /tmp/cir_lightning_owned",))


# ----------------------------------------------------------------------------------------------- the cases
# Each returns what to run: a CLI argv (list) or a callable, and the texts the message must contain.
Case = Callable[[World], tuple[list[str] | Callable[[], object], list[str]]]
CASES: dict[str, Case] = {}


def case(name: str):
    def register(fn: Case) -> Case:
        CASES[name] = fn
        return fn
    return register


# -- annotation files of the JSONL layout
@case("jsonl: malformed JSON line")
def _(w):
    lines = w.lines("val_queries.jsonl")
    lines[1] = lines[1][:-3]
    w.put_lines("val_queries.jsonl", lines)
    return w.cli(), [f"{w.data / 'val_queries.jsonl'}:2:", "JSON"]


@case("jsonl: 100,000 nested brackets")
def _(w):
    w.put_lines("val_queries.jsonl", [w.lines("val_queries.jsonl")[0], "[" * 100_000 + "]" * 100_000])
    return w.cli(), [f"{w.data / 'val_queries.jsonl'}:2:", "nested too deeply"]


@case("jsonl: a line that is a list, not an object")
def _(w):
    w.put_lines("gallery.jsonl", [*w.lines("gallery.jsonl"), "[1, 2]"])
    return w.cli(), [f"{w.data / 'gallery.jsonl'}:5:", "expected a JSON object"]


@case("jsonl: missing field")
def _(w):
    rows = [json.loads(x) for x in w.lines("train.jsonl")]
    del rows[2]["modification"]
    w.write("train.jsonl", rows)
    return w.cli("fit"), [f"{w.data / 'train.jsonl'}:3:", "`modification`"]


@case("jsonl: a field of the wrong type")
def _(w):
    rows = [json.loads(x) for x in w.lines("train.jsonl")]
    rows[0]["modification"] = ["make", "it", "red"]
    w.write("train.jsonl", rows)
    return w.cli("fit"), [f"{w.data / 'train.jsonl'}:1:", "`modification`", "string"]


@case("jsonl: not UTF-8")
def _(w):
    (w.data / "val_queries.jsonl").write_bytes((w.data / "val_queries.jsonl").read_bytes() + b'{"q": "\xff\xfe"}\n')
    return w.cli(), [f"{w.data / 'val_queries.jsonl'}:3:", "UTF-8"]


@case("jsonl: path leaving the image root")
def _(w):
    rows = [json.loads(x) for x in w.lines("gallery.jsonl")]
    rows[1]["image_path"] = "../../etc/passwd"
    w.write("gallery.jsonl", rows)
    return w.cli(), [f"{w.data / 'gallery.jsonl'}:2:", "outside the image root"]


@case("jsonl: absolute image path")
def _(w):
    rows = [json.loads(x) for x in w.lines("gallery.jsonl")]
    rows[3]["image_path"] = str(w.data / "img" / "3.png")
    w.write("gallery.jsonl", rows)
    return w.cli(), [f"{w.data / 'gallery.jsonl'}:4:", "absolute"]


@case("jsonl: duplicate gallery id")
def _(w):
    rows = [json.loads(x) for x in w.lines("gallery.jsonl")]
    rows[2]["image_id"] = "1"
    w.write("gallery.jsonl", rows)
    return w.cli(), [f"{w.data / 'gallery.jsonl'}:3:", "duplicate", "'1'"]


@case("jsonl: duplicate query id")
def _(w):
    rows = [json.loads(x) for x in w.lines("val_queries.jsonl")]
    rows[1]["query_id"] = "q0"
    w.write("val_queries.jsonl", rows)
    return w.cli(), [f"{w.data / 'val_queries.jsonl'}:2:", "duplicate", "'q0'"]


@case("jsonl: a positive that is not in the gallery")
def _(w):
    rows = [json.loads(x) for x in w.lines("val_queries.jsonl")]
    rows[1]["target_id"] = "7"
    w.write("val_queries.jsonl", rows)
    return w.cli(), [f"{w.data / 'val_queries.jsonl'}:2", "'q1'", "'7'", "not in the gallery"]


@case("jsonl: an exclude id with a typo")
def _(w):
    rows = [json.loads(x) for x in w.lines("val_queries.jsonl")]
    rows[0]["exclude_ids"] = ["O"]  # the letter O, not the id "0"
    w.write("val_queries.jsonl", rows)
    return w.cli(), [f"{w.data / 'val_queries.jsonl'}:1", "'O'", "exclude"]


@case("jsonl: a misspelt field name (exclude_id)")
def _(w):
    rows = [json.loads(x) for x in w.lines("val_queries.jsonl")]
    rows[1]["exclude_id"] = rows[1].pop("exclude_ids")  # ignored, the reference would stay in the ranking
    w.write("val_queries.jsonl", rows)
    return w.cli(), [f"{w.data / 'val_queries.jsonl'}:2:", "`exclude_id`", "did you mean `exclude_ids`?"]


@case("jsonl: a modification holding the image placeholder")
def _(w):
    rows = [json.loads(x) for x in w.lines("val_queries.jsonl")]
    rows[1]["modification"] = "make it <image> yellow"  # the model would read a second image
    w.write("val_queries.jsonl", rows)
    return w.cli(), [f"{w.data / 'val_queries.jsonl'}:2:", "'make it <image> yellow'",
                     "a placeholder the model fills with an image"]  # named at set-up, with its line


@case("fit: LightningCLI's own --lr_scheduler")
def _(w):  # it was ignored: the model's warm-up and schedule ran instead
    return w.cli("fit", "--lr_scheduler", "torch.optim.lr_scheduler.StepLR", "--lr_scheduler.step_size", "1"), [
        "`--lr_scheduler` is LightningCLI's", "`--model.lr_schedule`"]


@case("fit: LightningCLI's own --optimizer")
def _(w):  # it replaced the model's optimizer, warm-up and schedule
    return w.cli("fit", "--optimizer", "torch.optim.SGD", "--optimizer.lr", "0.5"), [
        "`--optimizer` is LightningCLI's", "`--model.optimizer`"]


@case("fit: a batch of one triplet (no in-batch negatives)")
def _(w):  # the loss is constant and its gradient 0: it trained nothing and exported the untrained adapter
    return w.cli("fit", "--data.batch_size", "1"), ["`data.batch_size` = 1", "nothing is learned"]


@case("fit: every training triplet has the same target (no negatives)")
def _(w):  # the loss was constant and its gradient 0: it trained nothing and exported the untrained adapter
    w.write("train.jsonl", [{"reference_image": f"img/{i}.png", "target_image": "img/0.png", "modification": "m"}
                            for i in range(4)])
    return w.cli("fit"), [f"{w.data / 'train.jsonl'}: all 4 training triplets have the same target image",
                          "no negative"]


@case("loss: every weight 0")
def _(w):
    from cir_lightning.losses import FireLoss

    return lambda: FireLoss(contrastive_weight=0, recall_weights=[0, 0]), ["`loss.contrastive_weight`", "are 0"]


@case("validate: --ckpt_path best in a new command")
def _(w):  # Lightning's own error was a traceback
    return w.cli("validate", "--ckpt_path", "best"), ["`--ckpt_path best`", "give the best checkpoint's path"]


@case("fit: a checkpoint monitoring a metric the validation never logs")
def _(w):  # it failed after the first epoch, in Lightning's traceback
    callbacks = ('[{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": '
                 '{"monitor": "val/Recall@1", "mode": "max"}}]')
    return w.cli("fit", "--model.eval_ks", "[5, 10]", "--trainer.callbacks", callbacks), [
        "monitors `val/Recall@1`, which this validation never logs", "val/Recall@5", "`model.eval_ks`"]


@case("search: an empty --text")
def _(w):  # a composed query needs its modification, as annotation files do
    return ["search", str(w.tmp / "no-index"), "--image", str(w.data / "img" / "0.png"), "--text", " "], [
        "`--text` is empty"]


@case("fit: fewer training triplets than a batch")
def _(w):  # training drops the incomplete batch: nothing would be trained, and an untrained adapter saved
    return w.cli("fit", "--data.batch_size", "8"), ["4 triplet(s)", "`batch_size` = 8"]


@case("jsonl: a query that excludes its own target")
def _(w):
    rows = [json.loads(x) for x in w.lines("val_queries.jsonl")]
    rows[0]["exclude_ids"] = ["0", "1"]
    w.write("val_queries.jsonl", rows)
    return w.cli(), [f"{w.data / 'val_queries.jsonl'}:1:", "excludes its own positive"]


@case("jsonl: empty target_ids")
def _(w):
    rows = [json.loads(x) for x in w.lines("val_queries.jsonl")]
    del rows[0]["target_id"]
    rows[0]["target_ids"] = []
    w.write("val_queries.jsonl", rows)
    return w.cli(), [f"{w.data / 'val_queries.jsonl'}:1:", "`target_ids`"]


@case("jsonl: an empty gallery file")
def _(w):
    (w.data / "gallery.jsonl").write_text("\n\n")
    return w.cli(), [str(w.data / "gallery.jsonl"), "empty"]


@case("jsonl: the annotation file does not exist")
def _(w):
    return w.cli("validate", "--data.val_queries_file", "typo.jsonl"), [str(w.data / "typo.jsonl"), "does not exist"]


@case("jsonl: an image file that does not exist")
def _(w):
    (w.data / "img" / "2.png").unlink()
    return w.cli(), [str(w.data / "img" / "2.png"), "gallery.jsonl:3"]


@case("jsonl: a folder where an image should be")
def _(w):
    rows = [json.loads(x) for x in w.lines("gallery.jsonl")]
    (w.data / "img" / "x.png").mkdir()
    rows[3]["image_path"] = "img/x.png"
    w.write("gallery.jsonl", rows)
    return w.cli(), [str(w.data / "img" / "x.png"), "folder"]


@case("jsonl: stage 1 without target captions")
def _(w):
    rows = [json.loads(x) for x in w.lines("train.jsonl")]
    del rows[1]["target_caption"]
    w.write("train.jsonl", rows)
    return w.cli("fit", "--data.with_captions", "true", "--model.objective", "caption"), \
        [f"{w.data / 'train.jsonl'}:2:", "`target_caption`"]


@case("jsonl: image_root is not a folder")
def _(w):
    return w.cli("validate", "--data.image_root", str(w.data / "gallery.jsonl")), [str(w.data / "gallery.jsonl"),
                                                                                   "image root"]


# -- images
@case("jsonl: image_root is a loop of symbolic links")
def _(w):  # pathlib's RuntimeError
    (w.tmp / "loop").symlink_to(w.tmp / "loop")
    return w.cli("validate", "--data.image_root", str(w.tmp / "loop")), ["`image_root`", "loop of symbolic links"]


@case("image: a text file named .png")
def _(w):
    (w.data / "img" / "3.png").write_text("not an image")
    return w.cli(), [str(w.data / "img" / "3.png"), "gallery.jsonl:4", "cannot be read"]


@case("image: a PNG cut in half")
def _(w):
    path = w.data / "img" / "1.png"
    Image.effect_noise((64, 64), 50).convert("RGB").save(path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return w.cli(), [str(path), "gallery.jsonl:2", "truncated"]


@case("image: a 50000 x 50000 decompression bomb")
def _(w):
    write_png(w.data / "img" / "0.png", 50_000, 50_000, 8, 0, b"\x00" * 64)  # only the header is that large
    return w.cli(), [str(w.data / "img" / "0.png"), "50000x50000", "max_image_pixels"]


@case("image: over a user-given pixel limit")
def _(w):
    return w.cli("validate", "--data.max_image_pixels", "100"), ["16x16", "max_image_pixels"]


# -- numeric options, checked when set (before any work)
for _option, _value, _name in [
    ("--data.batch_size", "-4", "batch_size"), ("--data.batch_size", "0", "batch_size"),
    ("--data.eval_batch_size", "0", "eval_batch_size"), ("--data.num_workers", "-1", "num_workers"),
    ("--data.max_short_edge", "0", "max_short_edge"), ("--data.max_short_edge", "-3", "max_short_edge"),
    ("--data.max_image_pixels", "0", "max_image_pixels"),
    ("--model.eval_ks", "[0]", "eval_ks"), ("--model.eval_ks", "[-1, 5]", "eval_ks"), ("--model.eval_ks", "[]", "eval_ks"),
    ("--model.eval_ks", "[5, 5]", "eval_ks"), ("--model.warmup", "-1", "warmup"),
    ("--model.warmup", "1.5", "warmup"),  # 1 step
    ("--model.search.chunk_size", "0", "search.chunk_size"), ("--model.search.factory", "Foo12", "search.factory"),
    ("--model.search.ef_search", "8", "search.ef_search"),
    ("--model.backbone.init_args.lora.r", "0", "lora.r"), ("--model.backbone.init_args.lora.alpha", "-1", "lora.alpha"),
    ("--model.backbone.init_args.lora.dropout", "1.5", "lora.dropout"),
    ("--model.backbone.init_args.lora.rank_pattern", "{q_proj: 0}", "lora.rank_pattern['q_proj']"),
    ("--model.backbone.init_args.lora.alpha_pattern", "{v_proj: -2}", "lora.alpha_pattern['v_proj']"),
    ("--model.backbone.init_args.max_text_tokens", "0", "max_text_tokens"),
    ("--model.backbone.init_args.eos_block_size", "-1", "eos_block_size"),
    ("--model.max_caption_tokens", "0", "max_caption_tokens"),
]:
    def _option_case(w, option=_option, value=_value, name=_name):
        return w.cli("validate", option, value), [f"`{name}`"]

    CASES[f"option: {_option} {_value}"] = _option_case


# -- Lightning's Trainer options: refused by Lightning with a traceback, or taken and failed on mid-run / ignored
for _option, _value, _name in [
    ("--trainer.devices", "0", "trainer.devices"), ("--trainer.devices", "abc", "trainer.devices"),
    ("--trainer.max_steps", "-5", "trainer.max_steps"), ("--trainer.num_nodes", "0", "trainer.num_nodes"),
    ("--trainer.limit_val_batches", "-1", "trainer.limit_val_batches"), ("--trainer.max_time", "abc", "trainer.max_time"),
    ("--seed_everything", "-1", "seed_everything"),  # Lightning's ValueError
    ("--trainer.accumulate_grad_batches", "0", "trainer.accumulate_grad_batches"),  # a ZeroDivisionError mid-fit
    ("--trainer.accumulate_grad_batches", "-1", "trainer.accumulate_grad_batches"),  # a schedule of one step
    ("--trainer.check_val_every_n_epoch", "0", "trainer.check_val_every_n_epoch"),  # a ZeroDivisionError mid-fit
    ("--trainer.gradient_clip_val", "-1", "trainer.gradient_clip_val"),  # nothing clipped
]:
    def _trainer_case(w, option=_option, value=_value, name=_name):
        return w.cli("fit", option, value), [f"`{name}`"]

    CASES[f"trainer: {_option} {_value}"] = _trainer_case


def _index(w: World, *extra: str) -> list[str]:
    return ["index", str(w.data / "img"), "--config", str(CONF), "--model.backbone.init_args.model_name_or_path",
            str(w.model), "--out", str(w.tmp / "run" / "index"), *extra]


for _flags, _name in [(("--nprobe", "0"), "--nprobe"), (("--ef-search", "0"), "--ef-search"),  # taken for "not given"
                      (("--factory", ""), "--factory"),  # taken for "not given": Flat
                      (("--trainer.devices", "0"), "trainer.devices"),  # Lightning's traceback
                      (("--trainer.num_nodes", "0"), "trainer.num_nodes")]:  # an int 0: was dropped, 1 node used
    def _index_case(w, flags=_flags, name=_name):
        return _index(w, *flags), [f"`{name}`"]

    CASES[f"index: {' '.join(_flags)}"] = _index_case


@case("option: IVF nprobe 0 (a faiss assertion after embedding, before)")
def _(w):
    return w.cli("validate", "--model.search.factory", "IVF2,Flat", "--model.search.nprobe", "0"), ["`search.nprobe`"]


@case("option: an index type the embedding size cannot take (PQ48 on 64 dimensions)")
def _(w):
    return w.cli("validate", "--model.search.factory", "PQ48"), ["`search.factory` 'PQ48'", "dimension 64"]


@case("option: a learning rate torch refuses")
def _(w):  # torch's ValueError when the optimizer was made, with its traceback
    return w.cli("fit", "--model.optimizer.init_args.lr", "-1"), ["`model.optimizer`", "Invalid learning rate: -1.0"]


@case("option: loss temperature 0")
def _(w):
    return w.cli("fit", "--model.loss", "cir_lightning.losses.FireLoss", "--model.loss.tau2", "0"), ["`loss.tau2`"]


@case("option: a LoRA rank pattern naming no adapted module")
def _(w):
    return w.cli("validate", "--model.backbone.init_args.lora.rank_pattern", "{k_projj: 4}"), \
        ["`lora.rank_pattern` pattern 'k_projj' matches none of the modules LoRA adapts"]


@case("tool: make-synthetic-data with a negative size")
def _(w):
    return ["make-synthetic-data", str(w.tmp / "syn"), "--image-size", "-8"], ["`image_size`", "-8"]


@case("tool: make-tiny-model over a folder with files")
def _(w):
    return ["make-tiny-model", str(w.data)], [f"`{w.data}` already exists; it is never overwritten unless asked (choose "
                                              "another name, or pass `overwrite=True` (`--overwrite` on the command "
                                              "line) to replace it)"]


@case("tool: make-synthetic-data over an existing folder")
def _(w):
    return ["make-synthetic-data", str(w.data)], [f"`{w.data}` already exists; it is never overwritten (choose another "
                                                  "name, or remove it)"]


@case("tool: make-tiny-model with a seed torch cannot take")
def _(w):  # torch's ValueError "Overflow when unpacking long long"
    return ["make-tiny-model", str(w.tmp / "run" / "tiny"), "--seed", str(2**64)], ["`seed`", str(2**64)]


@case("tool: make-synthetic-data with images too large to draw")
def _(w):
    return ["make-synthetic-data", str(w.tmp / "syn"), "--image-size", "100000"], ["`image_size` = 100000", "at most 1024"]


@case("tool: make-tiny-model onto a file (kept, even with --overwrite)")
def _(w):
    (w.user / "notes.txt").write_text("precious")
    return ["make-tiny-model", str(w.user / "notes.txt"), "--overwrite"], [str(w.user / "notes.txt"), "is a file"]


# -- config files
@case("config: YAML syntax error")
def _(w):
    bad = w.user / "bad.yaml"
    bad.write_text("trainer:\n  max_epochs: 1\n   oops: [\n")
    return ["fit", "--config", str(bad)], [f"{bad}:3:", "YAML syntax error"]


@case("config: an empty file")
def _(w):  # jsonargparse: "Unexpected config: " and nothing more
    (w.user / "empty.yaml").write_text("# nothing yet\n")
    return w.cli("validate", "--config", str(w.user / "empty.yaml")), ["empty.yaml", "a config is a mapping", "got nothing"]


@case("config: a YAML list")
def _(w):
    (w.user / "list.yaml").write_text("- trainer\n- model\n")
    return w.cli("validate", "--config", str(w.user / "list.yaml")), ["list.yaml", "got a YAML list"]


@case("config: the file does not exist")
def _(w):
    return ["validate", "--config", str(w.user / "nope.yaml")], [str(w.user / "nope.yaml"), "does not exist"]


@case("config: a folder given as the config")
def _(w):
    return ["validate", "--config", str(w.user)], [str(w.user), "folder"]


# -- checkpoints
@case("ckpt: does not exist")
def _(w):
    return w.cli("validate", "--ckpt_path", str(w.user / "nope.ckpt")), [str(w.user / "nope.ckpt"), "does not exist"]


@case("ckpt: cut short")
def _(w):
    path = w.ckpt("cut.ckpt", {"state_dict": {"w": torch.randn(64, 64)}})
    path.write_bytes(path.read_bytes()[:8000])
    return w.cli("validate", "--ckpt_path", str(path)), [str(path), "truncated"]


@case("ckpt: random bytes")
def _(w):
    path = w.user / "random.ckpt"
    path.write_bytes(np.random.default_rng(0).bytes(20_000))
    return w.cli("validate", "--ckpt_path", str(path)), [str(path), "not a torch checkpoint"]


@case("ckpt: a hostile pickle")
def _(w):
    path = w.ckpt("hostile.ckpt", {"state_dict": {}, "payload": _Hostile()})
    return w.cli("validate", "--ckpt_path", str(path)), [str(path), "not a safe checkpoint", "system",
                                                          "--weights_only false"]


@case("ckpt: a plain pickle")
def _(w):
    path = w.user / "plain.ckpt"
    path.write_bytes(pickle.dumps(_Hostile()))
    return w.cli("validate", "--ckpt_path", str(path)), [str(path), "not a safe checkpoint"]


@case("ckpt: empty file")
def _(w):
    (w.user / "empty.ckpt").write_bytes(b"")
    return w.cli("validate", "--ckpt_path", str(w.user / "empty.ckpt")), [str(w.user / "empty.ckpt"), "empty"]


@case("ckpt: a folder")
def _(w):
    return w.cli("validate", "--ckpt_path", str(w.data / "img")), [str(w.data / "img"), "folder"]


@case("ckpt: a torch file that is not a cir_lightning checkpoint")
def _(w):
    path = w.ckpt("foreign.ckpt", {"state_dict": {"w": torch.ones(2)}})
    return w.cli("validate", "--ckpt_path", str(path)), [str(path), "not written by cir_lightning"]


@case("ckpt: last with no earlier run")
def _(w):
    return w.cli("fit", "--ckpt_path", "last"), ["`--ckpt_path last`", "no last.ckpt", str(w.tmp / "run")]


# -- outputs
@case("output: predictions.folder lies under a file")
def _(w):
    (w.user / "afile").write_text("mine")
    return w.cli("predict", "--predictions.folder", str(w.user / "afile" / "p")), \
        ["`predictions.folder`", str(w.user / "afile"), "a file stands where a folder is needed"]


@case("output: predictions.folder is an empty string")
def _(w):  # it was taken for "not given": nothing written, without a word
    return w.cli("predict", "--predictions.folder", ""), ["`predictions.folder` is an empty string, not a path"]


@case("output: embedding_cache is an empty string")
def _(w):  # it was taken for "no cache"
    return w.cli("validate", "--model.embedding_cache", ""), ["`embedding_cache` is an empty string, not a path"]


@case("data: image_root is an empty string")
def _(w):  # it was taken for "not given" (root's images)
    return w.cli("validate", "--data.image_root", ""), ["`image_root` is an empty string, not a path"]


def _empty_path(module: str, option: str, **given: str) -> Case:
    """A DataModule of ``cir_lightning.data`` built with ``option=""`` (other options as ``given``)."""
    def build(w):
        import cir_lightning.data as data

        return (lambda: getattr(data, module)(**{**given, option: ""})), [f"`{option}` is an empty string"]
    return build


for _module, _option, _given in [("FashionIQDataModule", "image_root", {"root": "fiq"}),
                                 ("CIRRDataModule", "root", {}), ("CIRCODataModule", "gallery_root", {"root": "c"}),
                                 ("CIRCODataModule", "image_info_file", {"root": "c"}),
                                 ("JsonlCIRDataModule", "train_file", {"root": "j"}),
                                 ("BGEVLDataModule", "results_file", {"task": "circo"})]:
    case(f"data: {_module}'s {_option} is an empty string")(_empty_path(_module, _option, **_given))


@case("output: a results file's folder is a file")
def _(w):
    from cir_lightning.files import write_atomic

    (w.user / "afile").write_text("mine")
    return (lambda: write_atomic(w.user / "afile" / "results.json", "{}")), \
        [f"cannot create the folder `{w.user / 'afile'}`", "a file stands where a folder is needed"]


# -- adapters
@case("adapter: init_adapter does not exist")
def _(w):
    return w.cli("fit", "--model.backbone.init_args.lora.init_adapter", str(w.user / "nope")), \
        [str(w.user / "nope"), "does not exist"]


@case("adapter: init_adapter is an empty string")
def _(w):  # it trained from peft's initialisation, as if none were given
    return w.cli("fit", "--model.backbone.init_args.lora.init_adapter", ""), \
        ["`lora.init_adapter` is an empty string, not a path"]


@case("adapter: init_adapter is random bytes")
def _(w):
    path = w.user / "adapter.ckpt"
    path.write_bytes(np.random.default_rng(1).bytes(4096))
    return w.cli("fit", "--model.backbone.init_args.lora.init_adapter", str(path)), [str(path), "not a torch checkpoint"]


@case("adapter: init_adapter is a folder without an adapter")
def _(w):
    (w.user / "empty_adapter").mkdir()
    return w.cli("fit", "--model.backbone.init_args.lora.init_adapter", str(w.user / "empty_adapter")), \
        [str(w.user / "empty_adapter"), "adapter_config.json"]


# -- model folders
@case("model: weights are a broken symbolic link")
def _(w):
    model = w.own_model()
    (model / "model.safetensors").unlink()
    (model / "model.safetensors").symlink_to(w.user / "moved-away.safetensors")
    return w.cli(), [str(model / "model.safetensors"), "broken symbolic link"]


@case("model: config.json is a folder")
def _(w):
    model = w.own_model()
    (model / "config.json").unlink()
    (model / "config.json").mkdir()
    return w.cli(), [str(model / "config.json"), "folder"]


@case("model: no config.json")
def _(w):
    model = w.own_model()
    (model / "config.json").unlink()
    return w.cli(), [str(model), "config.json"]


@case("model: model_name_or_path is an empty string")
def _(w):  # it was read as the current folder: "model folder `.` has no config.json"
    return w.cli("validate", "--model.backbone.init_args.model_name_or_path", ""), \
        ["`model_name_or_path` is an empty string, not a path"]


def _empty_model(backbone: str) -> Case:
    """``cir_lightning.backbones.<backbone>("")``: every backbone class and ``build_backbone``."""
    def build(w):
        import cir_lightning.backbones as backbones

        return (lambda: getattr(backbones, backbone)("")), ["is an empty string, not a path"]
    return build


for _backbone in ["HFMultimodalBackbone", "DualEncoderBackbone", "XGenMMBackbone", "build_backbone"]:
    case(f"model: {_backbone}'s model_name_or_path is an empty string")(_empty_model(_backbone))


# -- output folders and caches
@case("output: default_root_dir under a file")
def _(w):
    (w.user / "afile").write_text("x")
    return [*w.cli(), "--trainer.default_root_dir", str(w.user / "afile" / "run")], \
        ["`trainer.default_root_dir`", str(w.user / "afile" / "run"), "cannot write"]


@case("output: the embedding cache folder cannot be written")
def _(w):
    (w.user / "cachefile").write_text("x")
    return w.cli("validate", "--model.embedding_cache", str(w.user / "cachefile")), \
        ["`model.embedding_cache`", str(w.user / "cachefile")]


def _cache(w: World) -> Path:
    from cir_lightning.retrieval.cache import save_embeddings

    return save_embeddings(w.user / "cache" / "val-0-gallery", torch.randn(4, 8), ["0", "1", "2", "3"],
                           kind="gallery", model={"m": 1}, dataset="toy", split="val")


def _load(path: Path, model: dict | None = None) -> Callable[[], object]:
    from cir_lightning.retrieval.cache import load_embeddings

    return lambda: load_embeddings(path, kind="gallery", model=model or {"m": 1}, dataset="toy", split="val")


@case("cache: embeddings.npy cut short")
def _(w):
    path = _cache(w)
    npy = path / "embeddings.npy"
    npy.write_bytes(npy.read_bytes()[:100])
    return _load(path), [str(path), "embeddings.npy", "overwrite_cache"]


@case("cache: meta.json damaged")
def _(w):
    path = _cache(w)
    (path / "meta.json").write_text("{")
    return _load(path), [str(path), "not a readable embedding cache"]


@case("cache: made by another model")
def _(w):
    return _load(_cache(w), {"m": 2}), [str(w.user / "cache"), "does not match", "model"]


@case("cache: ids.json edited")
def _(w):
    path = _cache(w)
    (path / "ids.json").write_text(json.dumps(["0", "1", "3", "2"]))
    return _load(path), [str(path), "ids.json was changed"]


@case("results: the disk is full")
def _(w):
    from cir_lightning.retrieval.results import write_results

    def run():
        real = os.fsync

        def full(fd):
            raise OSError(errno.ENOSPC, "No space left on device")

        os.fsync = full
        try:
            write_results(w.tmp / "out" / "results.json", {"Recall@1": 0.5}, stage="validate", subsets={},
                          model={}, config={})
        finally:
            os.fsync = real
        return None

    return run, [str(w.tmp / "out" / "results.json"), "no space left"]


# -- official layouts (the DataModule, as a Python user sets it up)
def _fashioniq(w: World, captions: str, split: str = '["a", "b"]') -> Callable[[], object]:
    from cir_lightning.data import FashionIQDataModule

    root = w.user / "fashioniq"
    for sub in ("captions", "image_splits", "images"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for name in "ab":
        Image.new("RGB", (8, 8)).save(root / "images" / f"{name}.png")
    (root / "image_splits" / "split.dress.val.json").write_text(split)
    (root / "captions" / "cap.dress.val.json").write_text(captions)
    return lambda: FashionIQDataModule(str(root), categories=["dress"]).setup("validate")


@case("fashioniq: captions not a list of two strings")
def _(w):
    caps = '[\n {"candidate": "a", "target": "b", "captions": ["x", "y"]},\n {"candidate": "a", "target": "b", "captions": "x"}\n]'
    return _fashioniq(w, caps), ["cap.dress.val.json:3", "entry 2", "`captions`"]


@case("fashioniq: a target outside the gallery")
def _(w):
    caps = '[{"candidate": "a", "target": "zz", "captions": ["x", "y"]}]'
    return _fashioniq(w, caps), ["cap.dress.val.json", "'zz'", "gallery"]


@case("fashioniq: split file is not JSON")
def _(w):
    return _fashioniq(w, "[]", split='["a",\n "b"'), ["split.dress.val.json:2", "JSON"]


def _cirr(w: World, edit: Callable[[list[dict], dict], None]) -> Callable[[], object]:
    from cir_lightning.data import CIRRDataModule

    root = w.user / "cirr"
    (root / "captions").mkdir(parents=True)
    (root / "image_splits").mkdir()
    (root / "dev").mkdir()
    names = [f"dev-{i}" for i in range(7)]
    for n in names:
        Image.new("RGB", (8, 8)).save(root / "dev" / f"{n}.png")
    split = {n: f"./dev/{n}.png" for n in names}
    pairs = [{"pairid": 1, "reference": "dev-0", "target_hard": "dev-1", "caption": "x", "target_soft": {},
              "img_set": {"id": 1, "members": names[:6]}}]
    edit(pairs, split)
    (root / "captions" / "cap.rc2.val.json").write_text(json.dumps(pairs, indent=1))
    (root / "image_splits" / "split.rc2.val.json").write_text(json.dumps(split, indent=1))
    return lambda: CIRRDataModule(str(root)).setup("validate")


@case("cirr: img_set with five members")
def _(w):
    return _cirr(w, lambda pairs, split: pairs[0]["img_set"].update(members=["dev-0", "dev-1", "dev-2", "dev-3", "dev-4"])), \
        ["cap.rc2.val.json", "pairid 1", "6 distinct"]


@case("cirr: a split entry that is not a path")
def _(w):
    return _cirr(w, lambda pairs, split: split.update({"dev-6": 7})), ["split.rc2.val.json", "dev-6"]


@case("cirr: pairid repeated")
def _(w):
    return _cirr(w, lambda pairs, split: pairs.append(dict(pairs[0]))), ["cap.rc2.val.json", "pairid"]


def _circo(w: World, queries: str, info: dict | None = None) -> Callable[[], object]:
    from cir_lightning.data import CIRCODataModule

    root = w.user / "CIRCO"
    (root / "annotations").mkdir(parents=True)
    (root / "COCO2017_unlabeled" / "annotations").mkdir(parents=True)
    (root / "COCO2017_unlabeled" / "unlabeled2017").mkdir()
    for i in (1, 2):
        Image.new("RGB", (8, 8)).save(root / "COCO2017_unlabeled" / "unlabeled2017" / f"{i:012d}.jpg")
    info = info or {"images": [{"id": 1, "file_name": f"{1:012d}.jpg"}, {"id": 2, "file_name": f"{2:012d}.jpg"}]}
    (root / "COCO2017_unlabeled" / "annotations" / "image_info_unlabeled2017.json").write_text(json.dumps(info))
    (root / "annotations" / "val.json").write_text(queries)
    return lambda: CIRCODataModule(str(root)).setup("validate")


@case("circo: gt_img_ids not a list")
def _(w):
    q = '[\n{"id": 0, "reference_img_id": 1, "target_img_id": 2, "relative_caption": "x", "shared_concept": "y", "gt_img_ids": 2}\n]'
    return _circo(w, q), ["val.json:2", "(id 0)", "`gt_img_ids`"]


@case("circo: a ground truth outside the image list")
def _(w):
    q = '[{"id": 0, "reference_img_id": 1, "target_img_id": 9, "relative_caption": "x", "shared_concept": "y", "gt_img_ids": [9]}]'
    return _circo(w, q), ["val.json", "query 0", "9", "image-info list"]


@case("circo: image list entry without an integer id")
def _(w):
    q = '[{"id": 0, "reference_img_id": 1, "target_img_id": 2, "relative_caption": "x", "shared_concept": "y", "gt_img_ids": [2]}]'
    return _circo(w, q, {"images": [{"id": "one"}]}), ["image_info_unlabeled2017.json", "`id`"]


@case("circo: deeply nested annotation file")
def _(w):
    return _circo(w, "[" * 100_000 + "]" * 100_000), ["val.json", "nested too deeply"]


# ------------------------------------------------------------------------------------------------- running
def _checksums(folder: Path) -> dict[str, str]:
    out = {}
    for path in sorted(folder.rglob("*")):
        if path.is_symlink():
            out[str(path)] = "link:" + os.readlink(path)
        elif path.is_file():
            out[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
        elif path.is_dir():
            out[str(path)] = "dir"
    return out


def test_the_catalogue_is_large():
    assert len(CASES) >= 60


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_one_clear_line_and_changes_nothing(name, tmp_path, tiny_model_dir, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    world = World(tmp_path, tiny_model_dir)
    action, expected = CASES[name](world)
    before = _checksums(world.user)
    if isinstance(action, list):
        with pytest.raises(SystemExit) as exit_info:
            main(action)
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if line.startswith("cir-lightning: error:")]
        assert len(lines) == 1, err[-3000:]
        message = lines[0]
        assert "Traceback" not in err
    else:
        with pytest.raises(CIRError) as info:
            action()
        message = str(info.value)
        assert "\n" not in message.strip(), message
    for text in expected:
        assert text in message, f"{text!r} not in {message!r}"
    assert _checksums(world.user) == before  # nothing the user wrote was changed, nothing added among it
    assert not Path("/tmp/cir_lightning_owned").exists()


def test_a_full_disk_leaves_no_partial_results_file(tmp_path, monkeypatch):
    from cir_lightning.retrieval.results import write_results

    monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(errno.ENOSPC, "full")))
    with pytest.raises(CIRFileError, match="no space left on the device"):
        write_results(tmp_path / "results.json", {"Recall@1": 0.5}, stage="validate", subsets={}, model={}, config={})
    assert list(tmp_path.iterdir()) == []


def test_a_symbolic_link_inside_the_image_root_is_followed(tmp_path, tiny_model_dir):
    """The decision recorded in the threat model (docs/checks.md): annotation paths are checked lexically (no `..`,
    nothing absolute), while links the user put inside the image root are theirs and are followed."""
    from cir_lightning.data import JsonlCIRDataModule

    world = World(tmp_path, tiny_model_dir)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (world.data / "img" / "3.png").rename(outside / "3.png")
    (world.data / "img" / "3.png").symlink_to(outside / "3.png")
    dm = JsonlCIRDataModule(str(world.data))
    dm.setup("validate")
    gallery = dm.val_sets[0][1]
    assert gallery[3]["image"].getpixel((0, 0)) == (255, 255, 0)  # the yellow image, through the link


def test_embedding_dim_is_the_size_of_the_embeddings(backbone):
    image = Image.new("RGB", (16, 16))
    assert backbone.encode_gallery([image]).shape[1] == backbone.embedding_dim


@pytest.mark.parametrize(("code", "reason"), [(errno.EACCES, "permission denied"),
                                              (errno.EROFS, "the file system is read-only"),
                                              (errno.ENOSPC, "no space left on the device")])
def test_an_unwritable_output_folder_is_named_with_the_reason(tmp_path, monkeypatch, code, reason):
    """Root can write anywhere, so the kernel's refusals are simulated where the probe file is created."""
    import tempfile

    from cir_lightning.files import check_writable

    def refuse(*args, **kwargs):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    with pytest.raises(CIRFileError) as info:
        check_writable(tmp_path / "out", "trainer.default_root_dir")
    assert str(info.value) == f"`trainer.default_root_dir`: cannot write in `{tmp_path / 'out'}`: {reason}"
