"""Two runs at once on the same files: every check-then-act window of the writers, opened on purpose (the other
run's step is played inside it, or two processes meet at a barrier), must end in a whole file or folder of one
run, one clear line, or the next free name; a reader never mixes two runs' files."""

from __future__ import annotations

import multiprocessing
import os
from pathlib import Path

import pytest
import torch

from cir_lightning import files
from cir_lightning.errors import CIRDataError, CIRFileError
from cir_lightning.files import atomic_folder, write_folder
from cir_lightning.retrieval import cache
from cir_lightning.retrieval.cache import load_embeddings, save_embeddings


def _once(monkeypatch, module, name, before=None, after=None):
    """Patch ``module.name`` so that its first call runs ``before()`` first and ``after()`` after: the other run's
    step, inside this run's window."""
    real, done = getattr(module, name), []

    def patched(*args, **kwargs):
        first = not done
        done.append(1)
        if first and before:
            before()
        result = real(*args, **kwargs)
        if first and after:
            after()
        return result

    monkeypatch.setattr(module, name, patched)


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


# ---------------------------------------------------------------------------------------------------------- folders
def test_a_folder_another_run_renamed_into_place_first_is_kept_and_named_in_one_line(tmp_path, monkeypatch):
    path = tmp_path / "val-dress-gallery"
    theirs = lambda: write_folder(path, lambda f: (f / "a.txt").write_text("theirs"))  # noqa: E731

    def mine(folder: Path) -> None:
        (folder / "a.txt").write_text("mine")
        _once(monkeypatch, files.os, "rename", before=theirs)  # between the check and the rename

    with pytest.raises(CIRFileError, match=r"already exists; it is never overwritten"):
        write_folder(path, mine)
    assert (path / "a.txt").read_text() == "theirs"
    assert _leftovers(tmp_path) == []


def test_two_overwrites_at_once_end_with_the_last_one_whole_and_leave_nothing(tmp_path, monkeypatch):
    path = tmp_path / "cache"
    write_folder(path, lambda f: (f / "a.txt").write_text("old"))
    theirs = lambda: write_folder(path, lambda f: (f / "a.txt").write_text("theirs"), overwrite=True)  # noqa: E731
    with atomic_folder(path, overwrite=True) as tmp:
        (tmp / "a.txt").write_text("mine")
        _once(monkeypatch, files.os, "rename", after=theirs)  # the old folder moved aside: theirs goes in first
    assert (path / "a.txt").read_text() == "mine"
    assert _leftovers(tmp_path) == []  # no `.cache.*.old` left behind


# ---------------------------------------------------------------------------------------------------------- caches
IDENTITY = {"kind": "gallery", "dataset": "toy", "split": "val"}


def test_a_cache_replaced_while_it_is_read_is_never_mixed_from_two_runs(tmp_path, monkeypatch):
    path = tmp_path / "val-dress-gallery"
    mine, theirs = torch.eye(3), torch.full((3, 3), 7.0)
    save_embeddings(path, mine, ["a", "b", "c"], model={"weights": "mine"}, **IDENTITY)
    # another run, `overwrite_cache: true` with other weights, after this one checked meta.json
    other = lambda: save_embeddings(path, theirs, ["a", "b", "c"], model={"weights": "theirs"}, overwrite=True,  # noqa: E731
                                    **IDENTITY)
    _once(monkeypatch, cache, "ids_digest", before=other)
    embeddings, _ = load_embeddings(path, model={"weights": "mine"}, **IDENTITY)
    assert torch.equal(embeddings, mine)  # the rows the checked meta.json describes, not the other run's
    with pytest.raises(CIRDataError, match="cached 'theirs', expected 'mine'"):  # read again: the new one is refused
        load_embeddings(path, model={"weights": "mine"}, **IDENTITY)


# ------------------------------------------------------------------------------------------------------- free names
def test_a_free_name_another_run_takes_meanwhile_is_left_to_it_and_the_next_one_taken(tmp_path, monkeypatch):
    from cir_lightning import free_names

    results = tmp_path / "results.json"
    _once(monkeypatch, free_names, "free_path", after=lambda: results.write_text("theirs"))  # found free, then taken
    assert free_names.write_free(results, "mine").name == "results-1.json"
    assert results.read_text() == "theirs"
    predictions = tmp_path / "predictions"
    _once(monkeypatch, free_names, "free_path", after=lambda: predictions.mkdir())
    assert free_names.reserve_folder(predictions).name == "predictions-1"


def _claim(barrier, folder: str, queue) -> None:
    from cir_lightning.free_names import reserve_folder, write_free

    barrier.wait()
    names = [write_free(Path(folder) / "config.yaml", str(os.getpid())).name for _ in range(10)]
    queue.put(names + [reserve_folder(Path(folder) / "predictions").name for _ in range(10)])


def test_two_processes_taking_free_names_at_once_never_get_the_same(tmp_path):
    context = multiprocessing.get_context("fork")
    barrier, queue = context.Barrier(2), context.Queue()
    workers = [context.Process(target=_claim, args=(barrier, str(tmp_path), queue)) for _ in range(2)]
    for worker in workers:
        worker.start()
    names = queue.get(timeout=30) + queue.get(timeout=30)
    for worker in workers:
        worker.join(timeout=30)
    assert len(names) == len(set(names)) == 40
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names)  # nothing else, nothing half-written


def test_the_saved_config_takes_the_next_free_name_when_another_run_writes_config_yaml_first(tmp_path, monkeypatch):
    import types

    from cir_lightning import free_names, run_folder

    parser = types.SimpleNamespace(dump=lambda config, skip_none: "mine: 1\n")
    callback = run_folder.KeepConfigCallback(parser, config={})
    trainer = types.SimpleNamespace(log_dir=str(tmp_path), default_root_dir=str(tmp_path), is_global_zero=True,
                                    strategy=types.SimpleNamespace(broadcast=lambda value: value), loggers=[])
    _once(monkeypatch, free_names, "write_atomic", before=lambda: (tmp_path / "config.yaml").write_text("theirs: 1\n"))
    callback.setup(trainer, None, "fit")
    assert (tmp_path / "config.yaml").read_text() == "theirs: 1\n"
    assert (tmp_path / "config-fit.yaml").read_text() == "mine: 1\n"
    assert callback.config_filename == "config-fit.yaml"


# ---------------------------------------------------------------------------------------------------------- index
def test_two_index_builds_begun_at_once_one_is_refused_in_one_line_naming_the_lock_and_its_pid(tmp_path, monkeypatch):
    import fcntl
    import json

    from cir_lightning import index_shards

    partial, plan = tmp_path / "photos-index.partial", {"root": "/photos", "model": {"m": 1}}
    held = []

    def other_build():  # one step ahead: it holds the lock and writes its plan
        partial.mkdir()
        held.append((partial / ".lock").open("a+"))
        fcntl.flock(held[0], fcntl.LOCK_EX | fcntl.LOCK_NB)
        held[0].write("4242")
        held[0].flush()
        (partial / "plan.json").write_text(json.dumps({**plan, "model": {"m": 2}}))

    _once(monkeypatch, index_shards, "check_writable", before=other_build)  # after this one found no plan
    try:
        with pytest.raises(CIRDataError) as info:
            index_shards.start_build(partial, plan)
    finally:
        held[0].close()
    assert str(info.value) == (f"{partial}: is being built by another `cir-lightning index` now, which holds "
                               f"`{partial / '.lock'}` (pid 4242); wait for it to finish (or stop it), then run the "
                               "command again")
    assert json.loads((partial / "plan.json").read_text())["model"] == {"m": 2}  # theirs, untouched


# ---------------------------------------------------------------------------------------------------------- fit
@pytest.mark.parametrize("logger", ["CSVLogger", "TensorBoardLogger"])
def test_two_runs_started_at_once_in_one_folder_get_their_own_version_folder(tmp_path, monkeypatch, logger):
    import lightning.pytorch as pl
    from lightning.pytorch import loggers

    from cir_lightning.cli import CIRLightningCLI
    from cir_lightning.run_folder import VersionClaims

    kind = getattr(loggers, logger)
    theirs = kind(tmp_path)  # the other run listed the folder first: version_0, made when it first writes
    assert theirs.version == 0
    _once(monkeypatch, kind, "_get_next_version", after=lambda: Path(theirs.log_dir).mkdir(parents=True))
    cli = CIRLightningCLI.__new__(CIRLightningCLI)  # just the step that makes the trainer
    cli.version_claims = VersionClaims()
    monkeypatch.setattr(pl.cli.LightningCLI, "instantiate_trainer",
                        lambda self, **kwargs: pl.Trainer(logger=kind(tmp_path), enable_progress_bar=False))
    trainer = cli.instantiate_trainer()
    assert Path(trainer.log_dir) == tmp_path / "lightning_logs" / "version_1"  # not the other run's version_0
    assert Path(trainer.log_dir).is_dir()


def _runs_that_make_their_trainer(monkeypatch, tmp_path, steps):
    """``CIRLightningCLI`` whose LightningCLI part only makes the trainer (through the CLI's own
    ``instantiate_trainer``, which claims its ``version_N``) and then runs ``steps(cli, folder)``."""
    import lightning.pytorch as pl
    from lightning.pytorch.loggers import CSVLogger

    def lightning_cli(self, *args, **kwargs):
        self.instantiate_trainer()
        steps(self, Path(self.trainer_made.log_dir))

    def make(self, **kwargs):
        self.trainer_made = pl.Trainer(logger=CSVLogger(tmp_path), enable_progress_bar=False)
        return self.trainer_made

    monkeypatch.setattr(pl.cli.LightningCLI, "__init__", lightning_cli)
    monkeypatch.setattr(pl.cli.LightningCLI, "instantiate_trainer", make)


def test_a_run_refused_after_its_trainer_was_made_leaves_no_empty_version_folder(tmp_path, monkeypatch, capsys):
    """A claimed `version_N` is made with the trainer: a run refused after that (a monitor, a model that cannot
    load) left an empty folder per attempt. A folder the run wrote into stays, and so does a run's that ended well."""
    from cir_lightning import cli
    from cir_lightning.errors import CIRConfigError

    def steps(run, folder):
        if run.writes:
            (folder / "metrics.csv").write_text("epoch\n")
        if run.refused:
            raise CIRConfigError("refused after the trainer was made")

    class Run(cli.CIRLightningCLI):
        def __init__(self, args, writes: bool = False, refused: bool = True) -> None:
            self.writes, self.refused = writes, refused
            super().__init__(args)

    _runs_that_make_their_trainer(monkeypatch, tmp_path, steps)
    monkeypatch.setattr(cli, "check_config_files", lambda argv: None)
    for writes in (False, True):  # two in-process runs: the second's claim is its own, not the first's too
        with pytest.raises(SystemExit) as exit_info:
            cli.main(["validate"], cli_class=Run, writes=writes)
        assert exit_info.value.code == 2
    assert "refused after the trainer was made" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "lightning_logs").iterdir()) == ["version_0"]  # the one written into
    assert (tmp_path / "lightning_logs" / "version_0" / "metrics.csv").is_file()
    cli.main(["validate"], cli_class=Run, refused=False)  # ends well, writing nothing: its folder stays
    assert sorted(p.name for p in (tmp_path / "lightning_logs").iterdir()) == ["version_0", "version_1"]


def test_a_failing_run_removes_only_its_own_claims_not_another_runs_started_before(tmp_path, monkeypatch):
    """Two runs in one process at once: B starts, A starts and claims, B claims, A is refused. A's empty folder
    goes; B's, empty too while B runs, stays (claims were one list per process: A removed B's folder as well)."""
    import threading

    from cir_lightning.cli import CIRLightningCLI
    from cir_lightning.errors import CIRConfigError
    from cir_lightning.run_folder import VersionClaims

    a_claimed, b_claimed, a_failed, folders = threading.Event(), threading.Event(), threading.Event(), {}

    def steps(run, folder):
        folders[run.name] = folder
        if run.name == "a":
            a_claimed.set()
            assert b_claimed.wait(60)
            raise CIRConfigError("a is refused")
        assert a_failed.wait(60)  # B still running while A fails
        (folder / "metrics.csv").write_text("epoch\n")

    class Run(CIRLightningCLI):
        def __init__(self, name: str) -> None:
            self.name = name
            super().__init__([])

    _runs_that_make_their_trainer(monkeypatch, tmp_path, steps)
    real_claim = VersionClaims.claim

    def claim(self, trainer):  # B claims after A has claimed (A holds version_0, B version_1)
        if threading.current_thread() is not threading.main_thread():
            assert a_claimed.wait(60)
            claimed = real_claim(self, trainer)
            b_claimed.set()
            return claimed
        return real_claim(self, trainer)

    monkeypatch.setattr(VersionClaims, "claim", claim)
    b = threading.Thread(target=Run, args=("b",))
    b.start()
    with pytest.raises(CIRConfigError, match="a is refused"):
        Run("a")
    a_failed.set()
    b.join(60)
    assert not folders["a"].exists()
    assert (folders["b"] / "metrics.csv").is_file()  # B's folder was there to write into
