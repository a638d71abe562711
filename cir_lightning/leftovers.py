"""The temporary files and folders of runs that were killed (SIGKILL, a power loss), removed by the next run that
writes in their folder.

``cir_lightning.files`` writes every file and folder under a hidden temporary name beside its final one, and
removes it when the write fails or is interrupted; a process that is killed outright cannot. So each temporary
name says whose it is: ``.<name>.<random>.<pid>-<machine>.tmp`` (``.old`` for a folder an ``overwrite`` moved
aside), ``machine`` a digest of the host name and its process namespace. A process's first write into a folder
(``sweep``), and its next one there once a minute has passed since, removes the entries of that form which are

- of this machine (a process of another host, or of another container, cannot be asked whether it still runs), and
- of a process that is gone: no process has that id, or the one that has it started after the entry was last
  written (the id was reused, after a restart too; a minute's margin for the clocks of a network file system).
  "Written" is the entry's status change time: a rename sets it (an ``.old`` folder keeps its contents' modification
  time when moved aside, which would make a live run's look old), ``os.utime`` cannot.

Anything else is left as it is: a live run's temporary files, another machine's, a name of any other form (a
user's ``.notes.tmp``, temporary files written before names carried a pid). A stale ``.old`` folder whose final
name is missing (a kill between the two renames of an overwrite) is put back under that name, so the user keeps
what they had; beside a final name, it is removed. A reader that finds a folder missing asks ``put_back``: it waits
while a live overwrite puts the new folder in place, and puts back a stale ``.old`` as ``sweep`` would.

Once per process would not do: a long-lived process (a notebook running command after command, ``serve``, a
training writing checkpoints for days) would leave what another run killed meanwhile left in the same folder, and a
folder that run's overwrite had set aside would stay hidden, until some other process wrote there. Sweeping again
at every write would scan the folder at every file written; once a minute per folder bounds that to a scan a minute.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import re
import shutil
import socket
import time
from pathlib import Path

__all__ = ["put_back", "stale_entries", "sweep", "temp_suffix"]

_NAME = re.compile(r"^\.(?P<name>.+)\.[a-z0-9_]{8}\.(?P<pid>\d+)-(?P<machine>[0-9a-f]{8})\.(?P<kind>tmp|old)$")
_MARGIN_S = 60.0  # a process that started this much after an entry's last write cannot have written it
_AGAIN_S = 60.0  # a folder this process swept is swept again at its first write this long after
_swept: dict[str, float] = {}  # folder -> when this process last swept it (time.monotonic)


def _machine() -> str:
    try:
        namespace = os.readlink("/proc/self/ns/pid")  # containers sharing a host name and a folder: other pids
    except OSError:
        namespace = ""
    return hashlib.sha256(f"{socket.gethostname()}\0{namespace}".encode()).hexdigest()[:8]


def temp_suffix(kind: str = "tmp") -> str:
    """The end of a temporary name of this process (``tempfile``'s ``suffix``), which tells ``sweep`` whose it is.

    Example:
        >>> import os
        >>> from cir_lightning.leftovers import temp_suffix
        >>> temp_suffix().startswith(f".{os.getpid()}-"), temp_suffix("old")[-4:]
        (True, '.old')
    """
    return f".{os.getpid()}-{_machine()}.{kind}"


def _started(pid: int) -> float | None:
    """When process ``pid`` started (seconds since the epoch); None when there is none; 0.0 when it runs but its
    start is unknown (then it counts as a process that may have written anything)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:  # another user's process: it runs
        pass
    try:
        ticks = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
        boot = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime "))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return 0.0


def stale_entries(folder: str | Path) -> list[Path]:
    """The temporary files and folders in ``folder`` that a killed run of this machine left (see the module).

    Example:
        >>> import os, tempfile
        >>> from cir_lightning.leftovers import stale_entries, temp_suffix
        >>> folder = Path(tempfile.mkdtemp())
        >>> _ = (folder / f".a.json.abcd1234{temp_suffix()}").write_text("")  # this process's: it runs
        >>> _ = (folder / ".a.json.abcd1234.tmp").write_text("")  # no pid: anyone's
        >>> stale_entries(folder)
        []
    """
    machine, found = _machine(), []
    with contextlib.suppress(OSError), os.scandir(folder) as entries:
        for entry in entries:
            match = _NAME.match(entry.name)
            if match is None or match["machine"] != machine:
                continue
            try:
                written = entry.stat(follow_symlinks=False).st_ctime  # renames and writes set it, utime cannot
            except OSError:  # removed meanwhile
                continue
            started = _started(int(match["pid"]))
            if started is None or started > written + _MARGIN_S:
                found.append(Path(entry.path))
    return sorted(found)


def sweep(folder: str | Path) -> list[Path]:
    """Remove the stale temporary entries of ``folder`` (``stale_entries``; a stale ``.old`` folder whose final name
    is missing is put back there instead), at the first call for a folder and then at most once a minute (see the
    module). Returns what was removed or put back. Never raises: an entry another run removes first, or one that
    cannot be removed, is passed over."""
    key, now = os.path.abspath(folder), time.monotonic()
    if now - _swept.get(key, -math.inf) < _AGAIN_S:
        return []
    _swept[key] = now
    done = []
    for path in stale_entries(folder):
        match = _NAME.match(path.name)
        final = path.with_name(match["name"]) if match else path
        try:
            if match and match["kind"] == "old" and not (final.exists() or final.is_symlink()):
                os.rename(path, final)  # the overwrite was cut between its renames: what the user had
            elif path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                os.unlink(path)
        except OSError:
            continue
        done.append(path)
    return done


def put_back(path: str | Path, wait_s: float = 10.0) -> bool:
    """For a reader that finds the folder ``path`` missing: where an ``overwrite`` of this machine moved it aside as
    ``.old``, wait (up to ``wait_s``) while that run lives (it puts the new folder in place in a moment), and put back
    one whose run is gone (stopped between its renames), as ``sweep`` would. Returns whether ``path`` is there now.
    Never raises."""
    path = Path(path)
    deadline = time.monotonic() + wait_s
    while not (path.exists() or path.is_symlink()):
        olds = _olds_of(path)
        if not olds:
            return False
        stale = set(stale_entries(path.parent))
        for old in (p for p in olds if p in stale):
            with contextlib.suppress(OSError):  # another reader or writer put it back first
                os.rename(old, path)
        if stale & set(olds) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    return path.exists()


def _olds_of(path: Path) -> list[Path]:
    """The ``.old`` entries beside ``path`` that an overwrite of ``path`` on this machine moved aside."""
    machine = _machine()
    with contextlib.suppress(OSError), os.scandir(path.parent) as entries:
        return sorted(Path(entry.path) for entry in entries if (match := _NAME.match(entry.name))
                      and (match["name"], match["kind"], match["machine"]) == (path.name, "old", machine))
    return []
