"""The temporary files a killed run left (SIGKILL, power loss) are removed by the next write into their folder; a live
run's, another machine's and a user's hidden files are never touched."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cir_lightning import leftovers
from cir_lightning.files import atomic_folder, write_atomic
from cir_lightning.leftovers import temp_suffix


@pytest.fixture
def dead_pid() -> int:
    """The id of a process that has ended (ids are not handed out again this soon)."""
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    return int(proc.stdout)


@pytest.fixture(autouse=True)
def _each_folder_swept_afresh(monkeypatch):
    monkeypatch.setattr(leftovers, "_swept", {})


def _as_of(suffix: str, pid: int) -> str:
    return suffix.replace(f".{os.getpid()}-", f".{pid}-", 1)


def test_a_killed_run_s_temporary_files_go_and_nothing_else(tmp_path, dead_pid):
    ours, stale = temp_suffix(), _as_of(temp_suffix(), dead_pid)
    (tmp_path / f".results.json.k2j3h4ab{stale}").write_text("half")  # killed while writing results.json
    (tmp_path / f".adapter.q9w8e7r6{stale}").mkdir()  # ... while writing a folder
    (tmp_path / f".adapter.q9w8e7r6{stale}" / "adapter_model.safetensors").write_bytes(b"x")
    kept = [f".config.yaml.abcdefgh{ours}",  # a live run's (this one)
            f".other.json.abcdefgh.{dead_pid}-0123abcd.tmp",  # another machine's: its process cannot be asked
            ".notes.json.abcdefgh.tmp",  # no pid: written before names had one, or a user's
            ".notes.tmp", "notes.tmp", f"results.json.k2j3h4ab{stale}"]  # a user's (not hidden)
    for name in kept:
        (tmp_path / name).write_text("keep")
    write_atomic(tmp_path / "results.json", "{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*kept, "results.json"])
    assert all((tmp_path / name).read_text() == "keep" for name in kept)


def test_a_reused_pid_does_not_keep_an_entry_written_before_its_process_started(tmp_path, monkeypatch):
    entry = tmp_path / f".a.json.abcdefgh{temp_suffix()}"  # this process's id, as if written before a restart
    entry.write_text("")
    os.utime(entry, (0, 1_000_000))  # a modification time of 1970 does not make it stale: this process runs
    with atomic_folder(tmp_path / "a"):
        pass
    assert entry.exists()
    monkeypatch.setattr(leftovers, "_swept", {})
    monkeypatch.setattr(leftovers, "_started", lambda pid: time.time() + 3600)  # the id's process started later
    with atomic_folder(tmp_path / "b"):
        pass
    assert not entry.exists()


def test_an_overwrite_killed_between_its_renames_gets_the_old_folder_back(tmp_path, dead_pid):
    aside = tmp_path / f".index.abcdefgh{_as_of(temp_suffix('old'), dead_pid)}"  # moved aside, new one not in yet
    aside.mkdir()
    (aside / "ids.json").write_text("[]")
    done = tmp_path / f".cache.abcdefgh{_as_of(temp_suffix('old'), dead_pid)}"  # its new folder was put in place
    done.mkdir()
    (tmp_path / "cache").mkdir()
    write_atomic(tmp_path / "results.json", "{}")
    assert (tmp_path / "index" / "ids.json").read_text() == "[]"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "index", "results.json"]


def test_a_write_killed_by_sigkill_is_cleaned_by_the_next(tmp_path):
    script = ("import os, signal, tempfile; from cir_lightning.leftovers import temp_suffix; "
              f"tempfile.mkstemp(prefix='.a.json.', suffix=temp_suffix(), dir={str(tmp_path)!r}); "
              "os.kill(os.getpid(), signal.SIGKILL)")
    killed = subprocess.run([sys.executable, "-c", script], cwd=Path(__file__).parents[1])
    assert killed.returncode == -signal.SIGKILL
    (left,) = tmp_path.iterdir()
    assert left.name.startswith(".a.json.")
    write_atomic(tmp_path / "a.json", "{}")
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_a_long_lived_process_sweeps_a_folder_again_a_minute_after_without_scanning_at_every_write(
        tmp_path, dead_pid, monkeypatch):
    """A notebook running two commands in a folder where a run of another process was killed in between: the second
    left that run's leftovers, and the folder its overwrite had set aside stayed hidden (once per process)."""
    scans = []
    stale_entries = leftovers.stale_entries
    monkeypatch.setattr(leftovers, "stale_entries", lambda folder: scans.append(folder) or stale_entries(folder))
    write_atomic(tmp_path / "results.json", "{}")  # the first command
    assert scans == [tmp_path]
    half = tmp_path / f".results-1.json.k2j3h4ab{_as_of(temp_suffix(), dead_pid)}"  # then another process, killed
    half.write_text("half")
    aside = tmp_path / f".cache.abcdefgh{_as_of(temp_suffix('old'), dead_pid)}"  # ... between an overwrite's renames
    aside.mkdir()
    write_atomic(tmp_path / "a.json", "{}")  # a write right after: no scan of the folder at every write
    assert scans == [tmp_path]
    assert half.exists()
    leftovers._swept[os.path.abspath(tmp_path)] -= 61  # the second command, a minute later
    write_atomic(tmp_path / "b.json", "{}")
    assert scans == [tmp_path, tmp_path]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.json", "cache", "results.json"]
