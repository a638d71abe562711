"""Resuming `fit`: a run SIGKILLed in the middle of an epoch continues with `--ckpt_path last` exactly as if it
had never stopped; `last` finds the newest last.ckpt of the earlier run (Lightning alone looks in the new run's
empty version folder and silently starts from scratch); checkpoints are written atomically."""

from __future__ import annotations

import errno
import json
import os
import signal
import sys
import warnings
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import yaml

from cir_lightning.checkpointing import SafeCheckpointIO
from cir_lightning.cli import find_last_checkpoint, main, resolve_ckpt_path
from cir_lightning.errors import CIRConfigError, CIRFileError
from tests.test_cli import CONF, spawn

ROOT = Path(__file__).resolve().parents[1]


class KillAtStep(pl.Callback):
    """SIGKILLs its own process at the end of training step ``step``, as a crash or a pre-empted node would."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            sys.stdout.flush()
            os.kill(os.getpid(), signal.SIGKILL)


def _config(tmp_path: Path, kill_at: int | None) -> Path:
    callbacks = [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                  "init_args": {"save_last": True, "every_n_train_steps": 2, "save_top_k": -1}}]
    if kill_at is not None:
        callbacks.append({"class_path": "tests.test_resume.KillAtStep", "init_args": {"step": kill_at}})
    path = tmp_path / f"extra-{kill_at}.yaml"
    path.write_text(yaml.safe_dump({"trainer": {
        "callbacks": callbacks, "max_epochs": 2, "max_steps": -1, "limit_train_batches": None,
        "limit_val_batches": 0, "num_sanity_val_steps": 0,
        "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": "${trainer.default_root_dir}"}}}}))
    return path


@pytest.mark.slow
def test_fit_killed_mid_epoch_resumes_with_last_bit_identically(tmp_path, tiny_model_dir):
    env = {"PYTHONPATH": str(ROOT)}
    common = ["--config", str(CONF), "--model.backbone.init_args.model_name_or_path", str(tiny_model_dir),
              "--data.init_args.root", str(tmp_path / "data")]
    spawn("fit", *common, "--config", str(_config(tmp_path, None)), "--trainer.default_root_dir", "straight",
        cwd=tmp_path, env=env)
    # 4 batches an epoch, a checkpoint every 2 steps: killed at step 7, the newest checkpoint is step 6,
    # two batches into epoch 1
    killed = spawn("fit", *common, "--config", str(_config(tmp_path, 7)), "--trainer.default_root_dir", "crashed",
                 cwd=tmp_path, env=env, check=False)
    assert killed.returncode == -signal.SIGKILL
    last = tmp_path / "crashed" / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == 6
    before = {p: p.read_bytes() for p in (tmp_path / "crashed").rglob("*") if p.is_file()}
    resumed = spawn("fit", *common, "--config", str(_config(tmp_path, None)), "--trainer.default_root_dir", "crashed",
                  "--ckpt_path", "last", cwd=tmp_path, env=env)
    assert "resuming from crashed/lightning_logs/version_0/checkpoints/last.ckpt" in resumed.stdout + resumed.stderr
    assert "not resumable" not in resumed.stderr  # Lightning's warning for loaders that restart the epoch
    straight = torch.load(tmp_path / "straight/lightning_logs/version_0/checkpoints/last.ckpt", weights_only=True)
    (end,) = [p for p in (tmp_path / "crashed").rglob("last.ckpt") if p != last]  # the resumed run's own
    end = torch.load(end, weights_only=True)
    assert (straight["global_step"], end["global_step"]) == (8, 8)
    for name, weight in straight["state_dict"].items():  # same batches in the same order: same bits
        assert torch.equal(end["state_dict"][name], weight), name
    # nothing the killed run wrote was changed (its metrics.csv and checkpoints are kept)
    assert all(p.read_bytes() == data for p, data in before.items())


def test_last_without_any_checkpoint_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(CONF), "--trainer.default_root_dir", str(tmp_path / "new"), "--ckpt_path", "last"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "`--ckpt_path last`: there is no last.ckpt below" in err
    assert str(tmp_path / "new") in err
    assert "Traceback" not in err


def test_find_last_takes_the_newest_across_version_folders_and_deepspeed_folders(tmp_path):
    old = tmp_path / "logs/version_0/checkpoints/last.ckpt"
    new = tmp_path / "logs/version_1/checkpoints/last-v1.ckpt"
    folder = tmp_path / "logs/version_2/checkpoints/last.ckpt"  # DeepSpeed writes a folder
    for path in (old, new):
        path.parent.mkdir(parents=True)
        path.write_bytes(b"x")
    os.utime(old, (1, 1))
    assert find_last_checkpoint([tmp_path]) == new
    (folder / "checkpoint").mkdir(parents=True)
    os.utime(new, (2, 2))
    assert find_last_checkpoint([tmp_path]) == folder
    assert find_last_checkpoint([tmp_path / "absent"]) is None


def test_checkpoints_are_written_atomically_and_a_failed_write_keeps_the_previous_one(tmp_path, monkeypatch):
    io = SafeCheckpointIO()
    path = tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"step": 1, "w": torch.ones(2), "pytorch-lightning_version": pl.__version__}, path)
    assert io.load_checkpoint(path)["step"] == 1
    real_fsync = os.fsync

    def full_disk(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(CIRFileError, match=r"cannot write `.*last.ckpt`: no space left on the device"):
        io.save_checkpoint({"step": 2, "w": torch.zeros(2), "pytorch-lightning_version": pl.__version__}, path)
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert io.load_checkpoint(path)["step"] == 1  # the previous checkpoint, whole
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"]  # no temporary file left


def test_missing_or_foreign_ckpt_path_is_one_line(tmp_path, capsys):
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(os.urandom(2048))
    for ckpt, expected in ((str(tmp_path / "nope.ckpt"), "`--ckpt_path`: `" + str(tmp_path / "nope.ckpt") + "` does not exist"),
                           (str(tmp_path), "is a folder, not a checkpoint file")):
        with pytest.raises(SystemExit):
            main(["validate", "--config", str(CONF), "--trainer.default_root_dir", str(tmp_path / "run"),
                  "--ckpt_path", ckpt])
        err = capsys.readouterr().err
        assert expected in err
        assert "Traceback" not in err
    with pytest.raises(CIRConfigError, match="there is no last.ckpt below"):
        resolve_ckpt_path("last", {"trainer": {"default_root_dir": str(tmp_path / "empty")}})


@pytest.fixture(scope="module")
def stopped_at_max_steps(tmp_path_factory, tiny_model_dir):
    """An in-process `fit` of tests/conf/tiny.yaml: 4 steps, `max_steps` reached on the epoch's last batch."""
    cwd = tmp_path_factory.mktemp("resume")
    common = ["--config", str(CONF), "--model.backbone.init_args.model_name_or_path", str(tiny_model_dir),
              "--data.init_args.root", str(cwd / "data")]
    main(["fit", *common, "--trainer.default_root_dir", str(cwd / "run")])
    return cwd, common, cwd / "run" / "checkpoints" / "last.ckpt"


def test_a_run_stopped_by_max_steps_at_an_epoch_end_resumes_with_the_next_epoch(stopped_at_max_steps):
    """Lightning counted the finished epoch twice: resumed to `max_epochs: 2` it trained nothing (and exported the
    unchanged adapter as trained), resumed to 3 it trained one epoch in epoch 2's order."""
    cwd, common, last = stopped_at_max_steps
    assert torch.load(last, weights_only=True)["global_step"] == 4
    ends = {}
    for name, epochs in (("two", "2"), ("three", "3")):
        main(["fit", *common, "--trainer.default_root_dir", str(cwd / name), "--ckpt_path", str(last),
              "--trainer.max_steps", "8", "--trainer.max_epochs", epochs])
        ends[name] = torch.load(cwd / name / "checkpoints" / "last.ckpt", weights_only=True)
        assert (ends[name]["global_step"], ends[name]["epoch"]) == (8, 1), name
    for key, weight in ends["two"]["state_dict"].items():  # epoch 1's batches in epoch 1's order, either way
        assert torch.equal(ends["three"]["state_dict"][key], weight), key


@pytest.mark.parametrize(("option", "value", "detail"), [
    ("--model.optimizer.init_args.lr", "0.01", "`lr` 0.01 given, 0.001 in the checkpoint"),
    ("--model.optimizer.init_args.weight_decay", "0.5", "`weight_decay` 0.5 given, 0.01 in the checkpoint"),
    ("--model.optimizer", "torch.optim.SGD", "another optimizer (SGD given"),
])
def test_resuming_with_other_optimizer_settings_is_refused_not_silently_replaced(stopped_at_max_steps, option, value,
                                                                                 detail, capsys):
    """Lightning restores the checkpoint's optimizer state, its learning rate and weight decay included, over the
    optimizer given: `--model.optimizer.init_args.lr 0.01` was dropped without a word."""
    cwd, common, last = stopped_at_max_steps
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *common, "--trainer.default_root_dir", str(cwd / "other"), "--ckpt_path", str(last),
              "--trainer.max_steps", "8", "--trainer.max_epochs", "2", option, value])
    assert exit_info.value.code == 2
    line = capsys.readouterr().err.splitlines()[0]
    assert line.startswith(f"cir-lightning: error: `--ckpt_path {last}` resumes the optimizer of its run, whose "
                           "settings differ from those given: ")
    assert detail in line
    assert "`model.backbone.init_args.lora.init_adapter`" in line
    assert not list((cwd / "other").rglob("*.ckpt"))  # refused before any step


class TermAtStep(pl.Callback):
    """Sends SIGTERM to its own process at the end of training step ``step``, as a scheduler ending a job would."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGTERM)


def test_a_fit_stopped_by_sigterm_exits_143_and_its_last_checkpoint_resumes(tmp_path, tiny_model_dir, capsys):
    """Lightning stops on SIGTERM with a bare SystemExit: the command exited 0 with no word, so `fit && test` went on
    to test a half-trained model. What the stopped run leaves is consistent: last.ckpt of the last finished step,
    no adapter exported as if trained."""
    previous = signal.getsignal(signal.SIGTERM)
    every_step = json.dumps({"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                             "init_args": {"save_last": True, "every_n_train_steps": 1}})
    common = ["--config", str(CONF), "--model.backbone.init_args.model_name_or_path", str(tiny_model_dir),
              "--data.init_args.root", str(tmp_path / "data"), "--trainer.default_root_dir", str(tmp_path / "run"),
              "--trainer.num_sanity_val_steps", "0"]
    try:
        with pytest.raises(SystemExit) as exit_info:
            main(["fit", *common, "--trainer.callbacks", every_step, "--trainer.callbacks+=tests.test_resume.TermAtStep",
                  "--trainer.callbacks.init_args.step", "2"])
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert exit_info.value.code == 143
    assert capsys.readouterr().err.splitlines()[-1] == (
        "cir-lightning: stopped by SIGTERM; `fit --ckpt_path last` resumes from its newest checkpoint")
    assert torch.load(tmp_path / "run/checkpoints/last.ckpt", weights_only=True)["global_step"] == 2
    assert not (tmp_path / "run" / "adapter").exists()
    main(["fit", *common, "--ckpt_path", "last"])
    assert torch.load(tmp_path / "run/checkpoints/last-v1.ckpt", weights_only=True)["global_step"] == 4  # resumed


class Rows(pl.Callback):
    """Records the dataset rows of every training batch."""

    def __init__(self) -> None:
        self.rows: list[int] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.rows += batch["index"].tolist()


def _fit(folder: Path, root: Path, model: Path, batch_size: int = 16, seed: int = 0, ckpt: Path | None = None,
         train_file: str = "train.jsonl", **trainer_args) -> Rows:
    """In-process `fit` of the tiny model on 64 synthetic triplets, a checkpoint every 2 steps."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    from cir_lightning.data import JsonlCIRDataModule
    from tests.test_module import make_module, trainer

    pl.seed_everything(seed)
    rows = Rows()
    every = [ModelCheckpoint(dirpath=folder, every_n_train_steps=2, save_top_k=-1),
             ModelCheckpoint(dirpath=folder / "epochs")]  # written once the epoch ended
    dm = JsonlCIRDataModule(str(root), train_file=train_file, batch_size=batch_size, val_queries_file=None)
    trainer_args = {"max_steps": -1, "max_epochs": 1, **trainer_args}
    trainer(folder, callbacks=[rows, *every], enable_checkpointing=True, **trainer_args).fit(
        make_module(model, export_adapter=False), dm, ckpt_path=ckpt)
    return rows


@pytest.fixture(scope="module")
def first_epoch(tmp_path_factory, tiny_model_dir, synthetic_root):
    """One epoch of 4 batches: checkpoints after step 2 (the middle of epoch 0), step 4 (its last batch) and once the
    epoch ended (`epochs/`)."""
    folder = tmp_path_factory.mktemp("first_epoch")
    rows = _fit(folder, synthetic_root, tiny_model_dir)
    return folder, rows.rows


def test_a_mid_epoch_checkpoint_resumes_with_the_rows_not_trained_yet(first_epoch, tiny_model_dir, synthetic_root,
                                                                       tmp_path):
    folder, epoch = first_epoch
    rows = _fit(tmp_path, synthetic_root, tiny_model_dir, ckpt=folder / "epoch=0-step=2.ckpt")
    assert rows.rows == epoch[32:]


@pytest.mark.parametrize(("step", "change", "detail"), [
    (2, {"batch_size": 8}, "`data.batch_size` 8 given, 16 in the checkpoint"),  # trained rows 16-31 twice
    (2, {"batch_size": 32}, "`data.batch_size` 32 given, 16 in the checkpoint"),  # trained the whole epoch again
    (2, {"train_file": "train48.jsonl"}, "the number of training triplets 48 given, 64 in the checkpoint"),  # another order
    (2, {"seed": 1}, "`seed_everything` 1 given, 0 in the checkpoint"),  # another order
    (4, {"batch_size": 8}, "`data.batch_size` 8 given, 16 in the checkpoint"),  # its second half trained again
])
def test_a_mid_epoch_resume_with_another_training_order_is_refused(first_epoch, tiny_model_dir, synthetic_root,
                                                                    tmp_path, step, change, detail):
    """Lightning counts the batches of the epoch already trained, and the run skipped that many batches of the
    new order: other rows than were trained, silently."""
    folder, _ = first_epoch
    if "train_file" in change:
        lines = (synthetic_root / "train.jsonl").read_text().splitlines(keepends=True)
        (tmp_path / "train48.jsonl").write_text("".join(lines[:48]))
        change = {"train_file": str(tmp_path / "train48.jsonl")}
    ckpt = folder / f"epoch=0-step={step}.ckpt"
    with pytest.raises(CIRConfigError) as error:
        _fit(tmp_path / "run", synthetic_root, tiny_model_dir, ckpt=ckpt, **change)
    assert str(error.value).startswith(f"`--ckpt_path {ckpt}` was written after {step} batch(es) of epoch 0 and "
                                       "resumes that epoch after as many batches of its order, which these settings "
                                       "change: ")
    assert detail in str(error.value)
    assert not list((tmp_path / "run").rglob("*.ckpt"))  # refused before any step


def test_an_epoch_end_checkpoint_resumes_with_another_batch_size(first_epoch, tiny_model_dir, synthetic_root, tmp_path):
    folder, _ = first_epoch
    rows = _fit(tmp_path, synthetic_root, tiny_model_dir, batch_size=8, ckpt=folder / "epochs" / "epoch=0-step=4.ckpt",
                max_epochs=2)
    assert sorted(rows.rows) == list(range(64))  # the next epoch, whole, in batches of 8


def test_a_run_stopped_by_max_steps_mid_epoch_resumes_that_epoch(tiny_model_dir, synthetic_root, tmp_path):
    """Its checkpoint, written when the stopped epoch's loop ended, held that epoch as processed: the resumed run went
    on with the next epoch, and the stopped epoch's last two batches were never trained (6 steps instead of 8)."""
    straight = _fit(tmp_path / "straight", synthetic_root, tiny_model_dir, max_epochs=2)
    stopped = _fit(tmp_path / "stopped", synthetic_root, tiny_model_dir, max_steps=2, max_epochs=2)
    resumed = _fit(tmp_path / "resumed", synthetic_root, tiny_model_dir, max_epochs=2,
                   ckpt=tmp_path / "stopped" / "epochs" / "epoch=0-step=2.ckpt")
    assert stopped.rows + resumed.rows == straight.rows
    ends = [torch.load(tmp_path / run / "epochs" / "epoch=1-step=8.ckpt", weights_only=True)["state_dict"]
            for run in ("straight", "resumed")]
    for name, weight in ends[0].items():  # the same batches in the same order: the same bits
        assert torch.equal(ends[1][name], weight), name


def test_a_stage_one_checkpoint_resumed_as_stage_two_is_refused(stopped_at_max_steps, tmp_path, capsys):
    """`--model.objective retrieval` is the default, so the checkpoint's `caption` replaced it silently: `fit
    --ckpt_path stage1.ckpt` of a stage-2 config trained stage 1 on."""
    cwd, common, last = stopped_at_max_steps
    checkpoint = torch.load(last, weights_only=True)
    checkpoint["hyper_parameters"]["objective"] = "caption"  # what a stage-1 run's checkpoint holds
    stage1 = tmp_path / "stage1.ckpt"
    torch.save(checkpoint, stage1)
    for objective in ([], ["--model.objective", "retrieval"]):
        with pytest.raises(SystemExit) as exit_info:
            main(["fit", *common, "--trainer.default_root_dir", str(tmp_path / "stage2"), "--ckpt_path", str(stage1),
                  "--trainer.max_steps", "8", *objective])
        assert exit_info.value.code == 2
        line = capsys.readouterr().err.splitlines()[0]
        assert line.startswith(f"cir-lightning: error: `--ckpt_path {stage1}` resumes a run with its own training "
                               "settings, which differ from those given: `model.objective` 'retrieval' given, 'caption' "
                               "in the checkpoint; ")
        assert "`model.backbone.init_args.lora.init_adapter`" in line
    assert not (tmp_path / "stage2").exists()


def test_the_order_check_names_another_number_of_processes_and_passes_older_checkpoints():
    """A DDP checkpoint's position counts every rank's batches: resumed in one process, the sampler skipped one rank's
    share of rows, not all of them (checked here without starting processes)."""
    from cir_lightning.resume import refuse_other_order

    order = {"batch_size": 16, "samples": 64, "processes": 2, "seed": 0}
    loops = {"fit_loop": {"epoch_loop.batch_progress": {"current": {"ready": 1}, "is_last_batch": False}}}
    saved = {"cir_lightning": {"training_order": order}, "epoch": 3, "loops": loops}
    with pytest.raises(CIRConfigError, match=r"after 1 batch\(es\) of epoch 3 .*: the number of processes "
                                             r"\(`trainer.devices` x `trainer.num_nodes`\) 1 given, 2 in the checkpoint;"):
        refuse_other_order(saved, {**order, "processes": 1}, "last.ckpt")
    refuse_other_order({"epoch": 3, "loops": loops}, {**order, "processes": 1}, "last.ckpt")  # nothing recorded


def test_a_checkpoint_inside_an_accumulated_step_warns_that_its_gradients_are_lost():
    """Lightning restores the batches trained, not the gradients accumulated from them: resumed after 3 batches with
    `accumulate_grad_batches: 2`, the rows were right but step 2 used batch 4's gradient alone (other weights than an
    uninterrupted run's, silently)."""
    from cir_lightning.resume import warn_split_step

    def saved(ready: int, last: bool = False) -> dict:
        batches = {"current": {"ready": ready}, "is_last_batch": last}
        return {"epoch": 1, "loops": {"fit_loop": {"epoch_loop.batch_progress": batches}}}

    with pytest.warns(UserWarning, match=r"`--ckpt_path mid.ckpt` was written after 3 batch\(es\) of epoch 1, inside an "
                                         r"optimizer step of `trainer.accumulate_grad_batches` 2: .* first 1 batch\(es\)"):
        assert warn_split_step(saved(3), 2, "mid.ckpt")
    for ready, accumulate, last in ((4, 2, False), (3, 1, False), (0, 2, False), (3, 2, True)):  # at a step: exact
        assert warn_split_step(saved(ready, last), accumulate, "mid.ckpt") is None


def test_a_resume_with_another_training_length_warns_that_the_schedule_jumps(tiny_model_dir, synthetic_root, tmp_path):
    """Lightning restores the scheduler's step count over the schedule laid over this run's steps: a linear schedule
    that ended at 0 after one epoch, resumed to two, went back to half the learning rate without a word."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    from cir_lightning.backbones import HFMultimodalBackbone, LoRA, Prompts
    from cir_lightning.data import JsonlCIRDataModule
    from cir_lightning.module import CIRModule
    from tests.test_module import trainer

    def fit(folder: Path, max_epochs: int, ckpt: Path | None = None) -> list[str]:
        pl.seed_everything(0)
        backbone = HFMultimodalBackbone(str(tiny_model_dir), prompts=Prompts("short"), lora=LoRA(r=4, alpha=8))
        module = CIRModule(backbone, lr_schedule="linear", warmup=0.0, export_adapter=False,
                           optimizer=lambda p: torch.optim.AdamW(p, lr=1e-3))
        data = JsonlCIRDataModule(str(synthetic_root), batch_size=16, val_queries_file=None)
        every = ModelCheckpoint(dirpath=folder, every_n_train_steps=2, save_top_k=-1)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            trainer(folder, callbacks=[every], enable_checkpointing=True, max_steps=-1, max_epochs=max_epochs).fit(
                module, data, ckpt_path=ckpt)
        return [str(w.message) for w in caught if "learning-rate schedule" in str(w.message)]

    assert fit(tmp_path / "one", 1) == []  # 4 steps
    assert fit(tmp_path / "same", 1, tmp_path / "one" / "epoch=0-step=2.ckpt") == []  # the same length: its schedule
    ended = tmp_path / "one" / "epoch=0-step=4.ckpt"
    assert torch.load(ended, weights_only=True)["cir_lightning"]["schedule_steps"] == 4
    [warning] = fit(tmp_path / "two", 2, ended)
    assert warning.startswith(f"`--ckpt_path {ended}` resumes at step 4 a learning-rate schedule (`lr_schedule: "
                              "linear`, `warmup: 0.0`) laid over 4 optimizer steps; this run lays it over 8 ")
    assert "the learning rate goes from 0% of `lr` to 50%" in warning
