"""What a base checkpoint IS: a digest of the files that make its embeddings, and a check that they can be read.

A backbone's fingerprint (stored in checkpoints, embedding caches and results files) must change when
the base weights change, also when the folder keeps its name (a checkpoint replaced by another, a
model re-downloaded at another revision). ``checkpoint_digest`` is a SHA-256 over the relative name,
size and content hash of every file of the folder that ``from_pretrained`` reads (weights, their index,
configs, tokenizer and processor files; see ``DIGESTED_SUFFIXES``). It stays cheap for 17 GB checkpoints:

- files in the Hugging Face hub cache are symlinks to ``.../blobs/<sha256>`` for large (LFS) files: the
  blob's name IS the SHA-256 of its content, so nothing is read;
- other large files are hashed once; their hash is remembered in a small digest store keyed by (real
  path, size, mtime_ns, inode), under ``$CIR_LIGHTNING_CACHE`` (default ``$XDG_CACHE_HOME/cir_lightning``
  or ``~/.cache/cir_lightning``). A store that cannot be written only costs time (a warning says so).

Both give the SHA-256 of the content, so the same files copied or moved to another folder (or a local
copy of a hub snapshot) have the same digest.

``check_readable`` walks the same files before a model is loaded and names the first that cannot be
read (transformers reports an unreadable file as "No such file or directory").
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

from cir_lightning.errors import CIRModelError
from cir_lightning.messages import path_problem

__all__ = ["DIGESTED_SUFFIXES", "check_readable", "checkpoint_digest", "checkpoint_files", "digest_store_path"]

DIGESTED_SUFFIXES: tuple[str, ...] = (
    ".safetensors", ".bin", ".pt", ".pth",  # weights (and ``*.safetensors.index.json`` through ".json")
    ".json",  # config, generation / processor / tokenizer configs, vocabularies, weight indexes
    ".model", ".txt", ".tiktoken", ".jinja",  # SentencePiece models, merges / vocab lists, chat templates
    ".py",  # a checkpoint's own code (trust_remote_code)
)
"""Suffixes of the top-level files digested and checked; other files (README, LICENSE, images, other
frameworks' weights such as ``tf_model.h5``) and sub-folders are not read by ``from_pretrained``."""

_SKIPPED_STEMS = ("readme", "license", "licence", "notice", "use_policy", "responsible_use")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_REMEMBER_FROM = 16 * 2**20  # files from this size on have their hash remembered in the store
_STORE_ENTRIES = 4096  # most recently used entries kept in the store
_CHUNK = 8 * 2**20


def digest_store_path() -> Path:
    """Where the hashes of large files are remembered (``$CIR_LIGHTNING_CACHE/file-digests.json``).

    Example:
        >>> digest_store_path().name
        'file-digests.json'
    """
    folder = os.environ.get("CIR_LIGHTNING_CACHE")
    if not folder:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        folder = os.path.join(base, "cir_lightning")
    return Path(folder) / "file-digests.json"


def _digested(name: str) -> bool:
    lower = name.lower()
    return (not name.startswith(".") and lower.endswith(DIGESTED_SUFFIXES)
            and not lower.startswith(_SKIPPED_STEMS))


def checkpoint_files(folder: str | Path) -> list[Path]:
    """The files of a checkpoint folder that make its embeddings (sorted), after checking each is a file.

    Raises:
        CIRModelError: ``folder`` is not a folder, or one of its files is a dangling symbolic link (naming
            where it points) or a folder.

    Example:
        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp())
        >>> for name in ("config.json", "model.safetensors", "README.md", ".gitattributes"):
        ...     _ = (folder / name).write_text("{}")
        >>> [p.name for p in checkpoint_files(folder)]
        ['config.json', 'model.safetensors']
    """
    folder = Path(folder)
    try:
        names = sorted(os.listdir(folder))
    except NotADirectoryError:
        raise CIRModelError(f"model `{folder}` is a file, not a checkpoint folder") from None
    except OSError as err:
        raise CIRModelError(f"cannot list the model folder `{folder}`: {err.strerror or err}") from None
    files = []
    for name in filter(_digested, names):
        path = folder / name
        problem = path_problem(path)
        if problem is not None:  # a broken link (download or copy it again), a folder, ...
            raise CIRModelError(f"model file `{path}` {problem}; the checkpoint folder is damaged: download or "
                                "copy it again")
        files.append(path)
    return files


def check_readable(folder: str | Path) -> None:
    """Before loading a local checkpoint folder: every file of it can be read, and ``config.json`` and the
    weight shards named in an index exist. Raises one ``CIRModelError`` naming the first bad file.

    Example:
        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp())
        >>> check_readable(folder)
        Traceback (most recent call last):
        ...
        cir_lightning.errors.CIRModelError: model folder `...` has no config.json: is it a checkpoint folder?
        >>> _ = (folder / "config.json").write_text("{}")
        >>> (folder / "model.safetensors").symlink_to(folder / "gone")
        >>> check_readable(folder)
        Traceback (most recent call last):
        ...
        cir_lightning.errors.CIRModelError: model file `.../model.safetensors` is a broken symbolic link (to `.../gone`); the checkpoint folder is damaged: download or copy it again
    """
    folder = Path(folder)
    files = checkpoint_files(folder)
    if folder / "config.json" not in files:
        raise CIRModelError(f"model folder `{folder}` has no config.json: is it a checkpoint folder?")
    for path in files:
        try:
            with open(path, "rb") as f:
                f.read(1)
        except OSError as err:
            reason = "permission denied" if isinstance(err, PermissionError) else (err.strerror or str(err))
            raise CIRModelError(f"model file `{path}` cannot be read: {reason}; check its permissions "
                                "(the model folder's files must be readable by this user)") from None
        if path.name.endswith(".index.json"):
            _check_shards(path)


def _check_shards(index: Path) -> None:
    try:
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise CIRModelError(f"weight index `{index}` is not a readable index (no `weight_map`: {err})") from None
    missing = [s for s in shards if not (index.parent / s).is_file()]
    if missing:
        raise CIRModelError(f"weight index `{index}` names {len(missing)} shard(s) that are not in the folder "
                            f"(first: `{missing[0]}`); download the missing files")


def _hash_file(path: str) -> str:
    """SHA-256 of a file's content (read in chunks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


class _Store:
    """The remembered hashes of large files: ``key -> [sha256, last used]``, in one small JSON file."""

    def __init__(self) -> None:
        self.path = digest_store_path()
        self.entries: dict[str, list] = {}
        self.changed = False
        with contextlib.suppress(OSError, ValueError, TypeError, AttributeError):
            raw = json.loads(self.path.read_text())
            self.entries = {k: v for k, v in raw["files"].items() if isinstance(v, list) and len(v) == 2
                            and isinstance(v[0], str) and isinstance(v[1], int | float)}

    def get(self, key: str) -> str | None:
        entry = self.entries.get(key)
        if entry is None:
            return None
        if time.time() - entry[1] > 86400:  # refresh the last use (which decides what is kept) once a day
            entry[1], self.changed = time.time(), True
        return str(entry[0])

    def put(self, key: str, sha: str) -> None:
        self.entries[key], self.changed = [sha, time.time()], True

    def save(self) -> None:
        """Write the entries back if they changed; a store that cannot be written is warned about here, once
        per ``checkpoint_digest`` (one store per call, one call per model loaded): no process-wide flag, so
        every run warns, also the second of two in one process (tests, notebooks, ``reproduce``)."""
        if not self.changed:
            return
        from cir_lightning.files import write_atomic

        kept = sorted(self.entries.items(), key=lambda kv: kv[1][1])[-_STORE_ENTRIES:]
        try:
            write_atomic(self.path, json.dumps({"format": 1, "files": dict(kept)}), overwrite=True)
        except OSError as err:  # CIRFileError is an OSError: the run goes on, only slower next time
            from lightning.pytorch.utilities import rank_zero_only

            if rank_zero_only.rank == 0:  # registry None: Python's default filter would say it once per process
                warnings.warn_explicit(f"cannot remember checkpoint file digests ({err}); large model files will "
                                       "be hashed again at every start: set `CIR_LIGHTNING_CACHE` to a writable "
                                       "folder", UserWarning, __file__, 0, registry=None)


def _content_hash(path: Path, store: _Store) -> tuple[int, str]:
    """(size, SHA-256 of the content) of one file, reading it only when neither the hub's blob name nor
    the store knows it."""
    real = os.path.realpath(path)
    st = os.stat(real)
    blob = Path(real)
    if blob.parent.name == "blobs" and _SHA256.fullmatch(blob.name):  # hub cache: named by its SHA-256
        return st.st_size, blob.name
    if st.st_size < _REMEMBER_FROM:
        return st.st_size, _hash_file(real)
    key = f"{real}|{st.st_size}|{st.st_mtime_ns}|{st.st_ino}"
    sha = store.get(key)
    if sha is None:
        sha = _hash_file(real)
        store.put(key, sha)
    return st.st_size, sha


def _records(folder: Path) -> Iterator[str]:
    store = _Store()
    try:
        for path in checkpoint_files(folder):
            try:
                size, sha = _content_hash(path, store)
            except OSError as err:
                raise CIRModelError(f"model file `{path}` cannot be read to identify the checkpoint: "
                                    f"{err.strerror or err}") from None
            yield f"{path.name}\0{size}\0{sha}\n"
    finally:
        store.save()


def _hub_snapshot(name: str, revision: str | None) -> Path | None:
    """The downloaded snapshot of hub repository ``name`` at ``revision``, or None (never downloads)."""
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id=name, revision=revision, local_files_only=True))
    except Exception:  # not downloaded, not a repository name, no huggingface_hub: nothing found
        return None


def checkpoint_digest(name_or_folder: str | Path, revision: str | None = None) -> str:
    """SHA-256 (hex) of a checkpoint's content: the name, size and content hash of each of its files.

    Args:
        name_or_folder: a local checkpoint folder, or a hub repository name whose snapshot at ``revision``
            was downloaded (it is looked up in the local hub cache only; nothing is downloaded).
        revision: hub revision (branch, tag or commit) of a repository name.

    A hub name with no downloaded snapshot cannot be digested: then the result is
    ``"name:<repository>@<revision>"`` (``main`` when None), which identifies the checkpoint only by its
    name, as fingerprints did before base digests.

    Raises:
        CIRModelError: a file of the folder cannot be read (naming it).

    Example:
        >>> import shutil, tempfile
        >>> a = Path(tempfile.mkdtemp()) / "model"
        >>> a.mkdir()
        >>> _ = (a / "config.json").write_text('{"hidden_size": 8}')
        >>> b = Path(shutil.copytree(a, Path(tempfile.mkdtemp()) / "moved"))
        >>> checkpoint_digest(a) == checkpoint_digest(b)  # the content counts, not the place
        True
        >>> _ = (b / "config.json").write_text('{"hidden_size": 9}')
        >>> checkpoint_digest(a) == checkpoint_digest(b)
        False
        >>> checkpoint_digest("no-such-org/no-such-model")
        'name:no-such-org/no-such-model@main'
    """
    folder = Path(name_or_folder)
    if not folder.exists():
        snapshot = _hub_snapshot(str(name_or_folder), revision)
        if snapshot is None:
            return f"name:{name_or_folder}@{revision or 'main'}"
        folder = snapshot
    digest = hashlib.sha256(b"cir_lightning checkpoint digest v1\n")
    for record in _records(folder):
        digest.update(record.encode())
    return digest.hexdigest()
