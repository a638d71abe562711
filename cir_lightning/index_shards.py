"""The unfinished build of an image index, ``<index>.partial/``: what a killed ``cir-lightning index`` keeps.

It holds the build's plan (``plan.json``: image folder, model, dtype, shrink; a rerun must match it), the
shards of embedded images (``shards/``, each a complete embedding-cache folder written by ``ShardWriter``),
the images found unreadable. Each shard records the size and modification time of each of its image files
before they were read (``file_stamps``). A rerun embeds only the images no shard holds as their files are
now (``current_rows``): an image whose file changed since (same name, new photo) is embedded again.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities.exceptions import SIGTERMException
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from cir_lightning.errors import CIRDataError
from cir_lightning.files import check_writable, write_atomic
from cir_lightning.messages import first_few
from cir_lightning.retrieval.cache import identity_differences, save_embeddings
from cir_lightning.retrieval.embedding_folder import ids_digest
from cir_lightning.retrieval.ground_truth import check_finite
from cir_lightning.retrieval.image_stamps import file_stamp

__all__ = ["SHARD_SPLIT", "ShardWriter", "current_rows", "file_stamps", "read_shards", "read_unreadable",
           "start_build"]

SHARD_SPLIT = "index-shard"


class ShardWriter(BasePredictionWriter):
    """Saves this process's embedded images in shards of ``shard_size`` (cache folders whose ids are the
    images' relative paths) below ``folder``, and at the end the unreadable ones beside it.

    Args:
        folder: the shards' folder (visible to every process).
        relpaths: the dataset's images, by row.
        shard_size: images per shard (what a kill can lose per process).
        identity: the model's identity (fingerprint and weights digest).
        root: the image folder (the shards' ``dataset``).
        dtype: ``"float32"`` or ``"float16"``.
        stamps: ``file_stamps`` of the images, taken before any was read (kept in each shard's meta.json).

    Example:
        >>> from cir_lightning.index_shards import ShardWriter
        >>> ShardWriter(Path("x.partial/shards"), ["a.png"], 1024, {}, "/photos").interval.on_batch
        True
    """

    def __init__(self, folder: Path, relpaths: Sequence[str], shard_size: int, identity: Mapping[str, Any],
                 root: str, dtype: str = "float32", stamps: Mapping[str, list[int]] | None = None) -> None:
        super().__init__("batch")
        self.folder, self.relpaths, self.shard_size = Path(folder), list(relpaths), shard_size
        self.identity, self.root, self.dtype, self.stamps = dict(identity), root, dtype, dict(stamps or {})
        self._buffer: list[tuple[np.ndarray, np.ndarray]] = []
        self._unreadable: dict[str, str] = {}
        self._token, self._seq = uuid.uuid4().hex[:8], 0

    def write_on_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, prediction: Any,
                           batch_indices: Sequence[int] | None, batch: Any, batch_idx: int,
                           dataloader_idx: int = 0) -> None:
        for row, reason in batch.get("unreadable", ()):
            self._unreadable[self.relpaths[int(row)]] = reason
        if prediction["embedding"] is not None:
            embeddings = prediction["embedding"].detach().float().cpu()
            check_finite(embeddings, "images' embeddings", prediction["index"].cpu(), ids=self.relpaths)  # before
            self._buffer.append((prediction["index"].cpu().numpy(), embeddings.numpy()))  # a shard or the index
            if sum(len(rows) for rows, _ in self._buffer) >= self.shard_size:
                self._flush(trainer.global_rank)
        if trainer.received_sigterm:  # Lightning's predict loop carries on after it: keep what is embedded, stop
            self._flush(trainer.global_rank)
            raise SIGTERMException  # `cli.main`: one line (what is kept), status 143

    def _flush(self, rank: int) -> None:
        if not self._buffer:
            return
        rows = np.concatenate([r for r, _ in self._buffer])
        embeddings = np.concatenate([e for _, e in self._buffer])
        self._buffer = []
        ids = [self.relpaths[r] for r in rows]
        save_embeddings(self.folder / f"{self._token}-r{rank:03d}-{self._seq:05d}", embeddings, ids, kind="gallery",
                        model=self.identity, dataset=self.root, split=SHARD_SPLIT, dtype=self.dtype,
                        extra={"stamps": {p: self.stamps.get(p) for p in ids}})
        self._seq += 1

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if isinstance(exception, KeyboardInterrupt):  # Ctrl-C: keep what is embedded, as on SIGTERM
            self._flush(trainer.global_rank)

    def on_predict_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._flush(trainer.global_rank)
        if self._unreadable:
            write_atomic(self.folder.parent / f"unreadable-{self._token}-r{trainer.global_rank:03d}.json",
                         json.dumps(self._unreadable))
        trainer.strategy.barrier()  # every process's shards are written


def read_shards(folder: Path, identity: Mapping[str, Any],
                partial: Path) -> list[tuple[Path, list[str], dict[str, Any]]]:
    """The finished shards below ``folder``, their ids and their files' stamps (unfinished shards are hidden
    temporary folders)."""
    found = []
    for shard in sorted(folder.iterdir()) if folder.is_dir() else []:
        if shard.name.startswith(".") or not shard.is_dir():
            continue
        meta, ids = _shard_files(shard, partial)
        problems = identity_differences("model", meta.get("model"), identity)
        if problems:
            raise CIRDataError(f"holds images embedded by another model ({'; '.join(problems)}); remove `{partial}` "
                               "to start again with this one, or index with the model it was started with", shard)
        found.append((shard, ids, meta.get("stamps") or {}))
    return found


def _shard_files(shard: Path, partial: Path) -> tuple[dict[str, Any], list[str]]:
    """A shard's ``meta.json`` and ids, after checking that its files agree (ids, their digest, the rows of
    ``embeddings.npy``): a damaged shard is refused here, not met as a library error while assembling."""
    redo = f"remove it (its images are embedded again) or `{partial}` (to start again)"
    try:
        meta = json.loads((shard / "meta.json").read_text(encoding="utf-8"))
        ids = json.loads((shard / "ids.json").read_text(encoding="utf-8"))
        rows = np.load(shard / "embeddings.npy", mmap_mode="r")
    except (OSError, UnicodeDecodeError, ValueError, EOFError) as err:  # JSONDecodeError is a ValueError
        raise CIRDataError(f"a shard of the unfinished index cannot be read ({err}); {redo}", shard) from None
    if not (isinstance(meta, dict) and isinstance(ids, list) and all(isinstance(i, str) for i in ids)
            and meta.get("ids_sha256") == ids_digest(ids) and rows.shape == (len(ids), meta.get("dim"))):
        raise CIRDataError(f"a shard of the unfinished index is damaged (its meta.json, ids.json and embeddings.npy "
                           f"do not agree); {redo}", shard)
    return meta, ids


def read_unreadable(partial: Path) -> dict[str, str]:
    """The images the processes of a build found unreadable (``unreadable-*.json``): relative path -> reason."""
    from cir_lightning.reading import read_json

    reasons: dict[str, str] = {}
    for file in sorted(partial.glob("unreadable-*.json")):
        listed = read_json(file, "list of unreadable images")
        if not isinstance(listed, dict) or not all(isinstance(v, str) for v in listed.values()):
            raise CIRDataError("is damaged (not an object of image -> reason); remove it: its images are tried again",
                               file)
        reasons.update(listed)
    return reasons


def start_build(partial: Path, plan: dict[str, Any]) -> None:
    """Check that an unfinished build at ``partial`` is this one (same folder, model, dtype, ``max_short_edge``),
    or begin one."""
    plan_file = partial / "plan.json"
    theirs = sorted(p.name for p in partial.iterdir() if not p.name.startswith(".") and p.name != "plan.json") \
        if partial.is_dir() and not plan_file.is_file() else []  # (rank 0's plan may appear meanwhile)
    if theirs or (partial.exists() and not partial.is_dir()):  # removed once the index is done: never the user's
        raise CIRDataError(f"is in the way: `index` keeps an unfinished index there (and removes it when done), but "
                           f"this is not one (no plan.json{'; it holds ' + first_few(theirs) if theirs else ''}); "
                           "move it, or choose another `--out`", partial)
    if rank_zero_only.rank == 0:  # locked before the plan is read or written: a build begun at the same moment
        check_writable(partial, "--out")  # has the lock, or waits for this one's plan
        lock_build(partial)
    if not plan_file.is_file():
        if rank_zero_only.rank == 0:
            write_atomic(plan_file, json.dumps(plan, indent=1, default=str))
        return
    try:
        begun = json.loads(plan_file.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise CIRDataError(f"cannot be read ({err}); remove `{partial}` to start again", plan_file) from None
    problems = identity_differences("index", begun, plan, ("begun with", "now"))
    if problems:
        raise CIRDataError("holds an unfinished index of other images or another model (" + "; ".join(problems)
                           + f"); remove `{partial}` to start again, or rerun the command that began it", partial)


_LOCKS: dict[str, Any] = {}  # the unfinished builds this process holds: folder -> its locked `.lock` file


def lock_build(partial: Path) -> None:
    """Hold ``partial/.lock`` while this process builds there: a second ``index`` run to the same ``--out``
    meanwhile is refused at its start (it would otherwise race this one's shards and assembly)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: builds are not locked
        return
    key = str(partial.resolve())
    if key in _LOCKS:
        return
    handle = (partial / ".lock").open("a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        pid = handle.read().strip()
        handle.close()
        holder = f"`{partial / '.lock'}`" + (f" (pid {pid})" if pid.isdigit() else "")
        raise CIRDataError(f"is being built by another `cir-lightning index` now, which holds {holder}; wait for it to "
                           "finish (or stop it), then run the command again", partial) from None
    handle.truncate(0)
    handle.write(str(os.getpid()))  # for the message of a build refused meanwhile
    handle.flush()
    _LOCKS[key] = handle


def unlock_build(partial: Path) -> None:
    """Let go of ``partial``'s lock (its index is complete, the folder removed)."""
    handle = _LOCKS.pop(str(partial.resolve()), None)
    if handle is not None:
        handle.close()


def file_stamps(root: Path, relpaths: Sequence[str]) -> dict[str, list[int]]:
    """``[size, modification time in ns]`` of each image file below ``root`` (a link: of the file it leads
    to); a file that cannot be stat'ed gets none (it will be found unreadable when it is read).

    Example:
        >>> import tempfile
        >>> root = Path(tempfile.mkdtemp())
        >>> _ = (root / "a.png").write_bytes(b"123")
        >>> stamps = file_stamps(root, ["a.png", "gone.png"])
        >>> stamps["a.png"][0], "gone.png" in stamps
        (3, False)
    """
    stamps = {relpath: file_stamp(root / relpath) for relpath in relpaths}
    return {relpath: stamp for relpath, stamp in stamps.items() if stamp is not None}


def current_rows(shards: list[tuple[Path, list[str], dict[str, Any]]],
                 now: Mapping[str, list[int]]) -> dict[str, tuple[Path, int]]:
    """Where each image's embedding is, among the shards' rows embedded from the file as it is now (``now``:
    the images' ``file_stamps``; a row's stamp then equals its file's; shards written before stamps never do):
    image -> (shard, row). An image whose file changed since it was embedded has none, so it is embedded again."""
    return {p: (shard, row) for shard, ids, stamps in shards for row, p in enumerate(ids)
            if stamps.get(p) == now.get(p)}
