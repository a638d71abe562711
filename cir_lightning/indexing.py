"""Building an image index (``cir-lightning index``): every image below a folder, embedded by a model.

``build_image_index`` runs Lightning's ``predict`` over the images (``ImageFolderDataset``; many devices
and nodes through the trainer's strategy, each process embedding its share). ``ShardWriter`` saves each
process's rows in shards of ``shard_size`` images as they come, each a complete embedding-cache folder,
under ``<index>.partial/shards/``: a build that is killed keeps every finished shard, and the same command
run again embeds only the images no shard holds (also with another number of processes). When all are
there, the first process assembles the index folder (``cir_lightning.image_index``) and removes the
partial folder. Images that cannot be decoded are listed at the end (their neighbours are embedded and
kept); they are an error unless ``skip_unreadable``.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from torch.utils.data import DataLoader

from cir_lightning.backbones.base import Backbone
from cir_lightning.data.folder import ImageFolderDataset, KeepReadable, scan_images
from cir_lightning.data.idle_rows import EveryProcessOne
from cir_lightning.data.images import DEFAULT_MAX_PIXELS
from cir_lightning.distributed import release_process_group
from cir_lightning.errors import CIRDataError
from cir_lightning.files import atomic_folder
from cir_lightning.image_index import partial_folder
from cir_lightning.index_files import FAISS_FILE, INDEX_VERSION
from cir_lightning.index_shards import (
    ShardWriter,
    current_rows,
    file_stamps,
    read_shards,
    read_unreadable,
    start_build,
    unlock_build,
)
from cir_lightning.index_update import OldIndex, check_out, check_same_rows, open_old, update_counts
from cir_lightning.messages import first_few
from cir_lightning.paths import resolved
from cir_lightning.pixels import SHRINK
from cir_lightning.predictions import ImagesProgressBar
from cir_lightning.retrieval.backends import build_index_from
from cir_lightning.retrieval.embedding_folder import finish_embeddings, new_embeddings
from cir_lightning.retrieval.image_stamps import stamps_array
from cir_lightning.retrieval.rowfile import RowFile
from cir_lightning.retrieval.search_config import SearchConfig, built_factory
from cir_lightning.trainer_options import check_trainer, refused_options

__all__ = ["EmbedImages", "ShardWriter", "build_image_index"]


class EmbedImages(pl.LightningModule):
    """``predict_step`` = the backbone's gallery embeddings of a batch (none for a batch of unreadable images).

    Example:
        >>> import torch
        >>> from cir_lightning.indexing import EmbedImages
        >>> module = EmbedImages(torch.nn.Identity())
        >>> module.predict_step({"index": torch.empty(0, dtype=torch.long), "unreadable": [(0, "corrupt")]}, 0)
        {'index': tensor([], dtype=torch.int64), 'embedding': None}
    """

    def __init__(self, backbone: Backbone) -> None:
        super().__init__()
        self.backbone = backbone

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        if not len(batch["index"]):
            return {"index": batch["index"], "embedding": None}
        return {"index": batch["index"], "embedding": self.backbone.embed_batch(batch, "gallery")}


def build_image_index(image_folder: str | Path, out: str | Path, backbone: Backbone, *,
                      backbone_config: Mapping[str, Any], trainer_options: Mapping[str, Any] | None = None,
                      batch_size: int = 16, num_workers: int = 0, max_short_edge: int | None = None,
                      max_image_pixels: int | None = DEFAULT_MAX_PIXELS, shard_size: int = 1024,
                      skip_unreadable: bool = False, search: SearchConfig | None = None, dtype: str = "float32",
                      source: Mapping[str, Any] | None = None, reuse: str | Path | None = None,
                      reuse_moved: bool = False, overwrite: bool = False) -> Path | None:
    """Embed every image below ``image_folder`` with ``backbone`` into the index folder ``out`` (resuming an
    unfinished build of the same folder and model). Returns ``out`` in the first process, None in others.

    Args:
        image_folder: the images (searched recursively).
        out: the index folder to write (must not exist).
        backbone: the model, with its trained weights.
        backbone_config: ``class_path`` / ``init_args`` that rebuild ``backbone`` (stored in the index).
        trainer_options: ``accelerator``, ``devices``, ``strategy``, ``num_nodes``, ``precision`` ...
        batch_size, num_workers: of the DataLoader.
        max_short_edge, max_image_pixels: image options (as a DataModule's), also applied to queries.
        shard_size: images per shard of a process.
        skip_unreadable: leave out images that cannot be decoded (else they are an error, listed).
        search: the faiss index type built over the embeddings (default exact ``Flat``; with ``reuse``, its type).
        dtype: ``"float32"`` or ``"float16"`` storage.
        source: what to record of how the model was made (config files, checkpoint, adapter).
        reuse: an earlier index of the folder by the same model and options: its rows of unchanged files are
            taken, only the other images are embedded (``cir_lightning.index_update``; it is only read).
        reuse_moved: ``reuse`` was built over another folder, whose images are now below ``image_folder``.
        overwrite: ``out`` may be ``reuse``, replaced (atomically) when the update is complete.

    Example:
        >>> from cir_lightning.indexing import build_image_index
        >>> import tempfile
        >>> build_image_index(tempfile.mkdtemp(), tempfile.mkdtemp() + "/index", None, backbone_config={})
        Traceback (most recent call last):
        ...
        cir_lightning.errors.CIRDataError: ...: holds no image files (looked for .bmp, .gif, .jpeg, ...)
    """
    root, out = resolved(image_folder, "image_folder"), resolved(out, "--out")
    partial = partial_folder(out)
    if root == partial or partial in root.parents:  # its unfinished work, removed when the index is done
        raise CIRDataError(f"is inside `{partial}`, where `index --out {out}` keeps its unfinished work and which it "
                           "removes when done; choose another `--out`", root)
    scan = scan_images(root, leave_out=[out, partial])  # what it passes over is counted, in meta.json
    relpaths = scan.relpaths
    in_place = check_out(out, reuse, overwrite)
    old = open_old(reuse, root, moved=reuse_moved, dtype=dtype) if reuse is not None else None
    search = search or (old.search_config() if old else SearchConfig())
    identity = backbone.identity((trainer_options or {}).get("precision", "32-true"))  # bf16 rows are not fp32 ones
    if old is not None:
        check_same_rows(old, identity, max_short_edge)
    # max_short_edge changes the pixels, so the rows of two runs must share it (max_image_pixels only changes
    # which images load, and may be raised to let a refused one in)
    start_build(partial, {"root": str(root), "model": identity, "dtype": dtype, "max_short_edge": max_short_edge,
                          "upright": True,  # builds begun before EXIF orientation was applied did not turn photos
                          **({"shrink": SHRINK} if max_short_edge else {})})  # ... nor shrink with LANCZOS
    stamps = file_stamps(root, relpaths)  # before any image is read: a file changed later is embedded again
    done = current_rows(read_shards(partial / "shards", identity, partial) + ([old.source()] if old else []), stamps)
    remaining = [p for p in relpaths if p not in done]
    reused = sum(done[p][0] == old.folder for p in relpaths if p in done) if old else 0
    if len(relpaths) - len(remaining) > reused and rank_zero_only.rank == 0:
        print(f"resuming: {len(relpaths) - len(remaining) - reused} of {len(relpaths) - reused} images were embedded "
              f"by an earlier run (kept in {partial}); embedding the other {len(remaining)}", flush=True)
    if old and rank_zero_only.rank == 0:
        print(f"`--reuse` {old.folder}: {reused} of its {len(old.relpaths)} rows are of unchanged files and are "
              f"reused; {len(relpaths) - reused} images are new or changed", file=sys.stderr, flush=True)
    if remaining:
        writer = ShardWriter(partial / "shards", remaining, shard_size, identity, str(root), dtype, stamps)
        options = {"accelerator": "auto", "devices": "auto", "enable_progress_bar": True, **(trainer_options or {})}
        bar = [ImagesProgressBar()] if options["enable_progress_bar"] else []
        with refused_options():  # `--trainer.devices 0`: Lightning's traceback
            trainer = check_trainer(pl.Trainer(**options, logger=False, callbacks=[writer, *bar],
                                               enable_checkpointing=False, enable_model_summary=False,
                                               default_root_dir=str(partial)))
        data = ImageFolderDataset(root, remaining, max_short_edge, upright=True)  # photos as they are viewed
        data.max_pixels = max_image_pixels
        loader = DataLoader(EveryProcessOne(data, trainer.world_size), batch_size=batch_size, num_workers=num_workers,
                            collate_fn=KeepReadable(backbone.collator.gallery))
        trainer.predict(EmbedImages(backbone), dataloaders=loader, return_predictions=False)
        first = trainer.is_global_zero
        del trainer
        release_process_group()
        if not first:
            return None
    elif rank_zero_only.rank != 0:  # all embedded already (torchrun started every process): the first assembles
        return None
    return _assemble(root, out, partial, relpaths, backbone, identity, dict(
        version=INDEX_VERSION, root=str(root), backbone=dict(backbone_config), max_short_edge=max_short_edge, upright=True,
        max_image_pixels=max_image_pixels, search={"factory": search.factory, "nprobe": search.nprobe,
                                                   "ef_search": search.ef_search}, source=dict(source or {}),
        left_out=scan.counts()),
        skip_unreadable, search, dtype, in_place,
        (lambda: open_old(reuse, root, moved=reuse_moved, dtype=dtype)) if reuse is not None else None)


def _assemble(root: Path, out: Path, partial: Path, relpaths: list[str], backbone: Backbone,
              identity: dict[str, Any], info: dict[str, Any], skip_unreadable: bool, search: SearchConfig,
              dtype: str, in_place: bool, reopen: Callable[[], OldIndex] | None) -> Path:
    # image -> (shard or reused index, row), as the files are now (one changed during the build is not taken);
    # the reused index read again: one removed or replaced since is not taken for the one checked at the start
    now = file_stamps(root, relpaths)
    old = reopen() if reopen else None
    if old is not None:
        check_same_rows(old, identity, info["max_short_edge"])
    done = current_rows(read_shards(partial / "shards", identity, partial) + ([old.source()] if old else []), now)
    missing = [p for p in relpaths if p not in done]
    reasons = read_unreadable(partial)
    unexplained = [p for p in missing if p not in reasons]
    if unexplained:
        raise CIRDataError(f"{len(unexplained)} images were not embedded, or their files changed while they were "
                           f"(first: {first_few(unexplained)}); run the same command again to embed them", partial)
    if missing and not skip_unreadable:
        raise CIRDataError(f"{len(missing)} of {len(relpaths)} images cannot be read: "
                           f"{first_few([reasons[p] for p in missing])}. Fix or remove them, or add `--skip-unreadable`"
                           f" to index the others (the {len(done.keys() & set(relpaths))} embedded images are kept in "
                           f"`{partial}`: the rerun only assembles the index)", root)
    keep = [p for p in relpaths if p in done]
    if not keep:
        raise CIRDataError(f"none of its {len(relpaths)} images can be read (first: {first_few(missing)})", root)
    info["skipped"] = [[p, reasons[p]] for p in missing]
    if old is not None:
        info["update"] = update_counts(old, done, keep)
    row = {p: i for i, p in enumerate(keep)}
    with atomic_folder(out, overwrite=in_place) as tmp:
        new_embeddings(tmp, len(keep), backbone.embedding_dim, dtype).flush()  # an empty file of the right size
        with RowFile(tmp / "embeddings.npy", writable=True) as rows:  # plain writes: nothing stays resident
            by_shard: dict[Path, list[tuple[int, int]]] = {}
            for p in keep:  # each image once, from a shard that embedded its file as it is now
                by_shard.setdefault(done[p][0], []).append((row[p], done[p][1]))
            for shard, pairs in by_shard.items():
                at, source = np.array(pairs, dtype=np.int64).T
                rows.write(at, np.load(shard / "embeddings.npy", mmap_mode="r")[source])  # a reused index: its rows
            info["adapter"] = None
            if backbone.lora is not None:
                backbone.save_adapter(tmp / "adapter")
                info["adapter"] = "adapter"
            # `auto` made concrete (its nprobe too: a reopened index is searched with it)
            config = SearchConfig(factory=search.factory, nprobe=search.nprobe, ef_search=search.ef_search)
            config = config.resolved(rows.shape[0])
            index = build_index_from(rows.read, rows.shape, config)
        import faiss

        built = built_factory(index, config.factory)
        given = search.nprobe if search.factory.strip() == "auto" else None  # not auto's own: an update keeps it
        info["search"] = {"factory": built, "nprobe": config.nprobe, "ef_search": config.ef_search,
                          **({"asked": search.factory} if search.factory != built else {}),
                          **({"asked_nprobe": given} if given else {})}
        faiss.write_index(index, str(tmp / FAISS_FILE))
        info["faiss_index"] = type(faiss.downcast_index(index)).__name__
        del index
        # the files as embedded (a row's stamp equals its file's now): search tells a photo replaced since
        finish_embeddings(tmp, keep, kind="gallery", model=identity, dataset=str(root), split="index",
                          extra={"image_index": info}, stamps=stamps_array(now.get(p) for p in keep))
    shutil.rmtree(partial, ignore_errors=True)
    unlock_build(partial)  # after: a run waiting for it never sees the folder half removed
    return out
