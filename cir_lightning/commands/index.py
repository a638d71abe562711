"""``cir-lightning index IMAGE_FOLDER --config CONFIG --out INDEX``: embed your own images for search.

The model is built from the config exactly as ``fit`` builds it (``CIRLightningCLI``, so any config and
any ``--model.*`` / ``--data.*`` / ``--trainer.*`` override that ``fit`` takes works here too); its trained
weights come from ``--ckpt_path`` (a checkpoint of ``fit``, read with ``weights_only=True``) or
``--adapter`` (an adapter folder: what ``fit`` exports, or ``save_adapter`` writes), both loaded as
``lora.init_adapter`` loads them. The config's trainer settings (``accelerator``, ``devices``,
``strategy``, ``num_nodes``, ``precision``) run the embedding, so ``--trainer.devices 8`` embeds on
eight GPUs; the data section gives the image options (``max_short_edge``, ``max_image_pixels``) and the
loader's batch size and workers. See ``cir_lightning.indexing`` for the resumable build.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from cir_lightning.commands import COMMANDS

_PASSED = ("--model.", "--data.", "--trainer.", "--seed_everything")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        allow_abbrev=False, prog="cir-lightning index", description=COMMANDS["index"][1],
        epilog="Options of the config may follow, as for `fit`: --model.*, --data.*, --trainer.* (e.g. "
               "--trainer.devices 4 --trainer.accelerator gpu). Killed? Run the same command again: it continues.")
    parser.add_argument("image_folder", help="the images to index (every image below it, recursively)")
    parser.add_argument("--config", action="append", required=True, help="the model's config (as for `fit`)")
    parser.add_argument("--out", required=True, help="the index folder to write (must not exist)")
    parser.add_argument("--reuse", metavar="OLD_INDEX",
                        help="an earlier index of this folder by the same model and options: its rows of unchanged "
                             "files (same path, size, modification time) are reused, only new or changed images "
                             "are embedded (it is not modified)")
    parser.add_argument("--reuse-moved", action="store_true",
                        help="the `--reuse` index was built over another folder whose images are now IMAGE_FOLDER")
    parser.add_argument("--overwrite", action="store_true",
                        help="`--out` is the `--reuse` index: replace it when the update is complete")
    weights = parser.add_mutually_exclusive_group()
    weights.add_argument("--ckpt_path", help="trained weights: a checkpoint written by `fit`")
    weights.add_argument("--adapter", help="trained weights: a LoRA adapter folder (`fit` exports <log_dir>/adapter)")
    parser.add_argument("--skip-unreadable", action="store_true",
                        help="leave out images that cannot be decoded (default: they are an error, listed)")
    parser.add_argument("--batch-size", type=int, help="images per batch (default: the data's eval_batch_size)")
    parser.add_argument("--num-workers", type=int, help="DataLoader workers (default: the data's)")
    parser.add_argument("--max-short-edge", type=int, help="shrink images to this short edge (default: the data's)")
    parser.add_argument("--shard-size", type=int, default=1024,
                        help="images per saved shard of each process: what a kill can lose (default: 1024)")
    parser.add_argument("--factory",
                        help="faiss index type (index_factory string): Flat (exact, default; with --reuse, its type), "
                             "auto (Flat below 4M images, else IVF), HNSW32, IVF1024,Flat ...")
    parser.add_argument("--nprobe", type=int, help="IVF lists visited per query")
    parser.add_argument("--ef-search", type=int, help="HNSW search depth")
    parser.add_argument("--dtype", choices=["float32", "float16"], default="float32", help="embedding storage")
    return parser


def _check_options(ns: argparse.Namespace) -> None:
    from cir_lightning.checks import non_negative_int, positive_int
    from cir_lightning.errors import CIRConfigError, CIRFileError
    from cir_lightning.messages import path_problem
    from cir_lightning.paths import resolved

    positive_int("--batch-size", ns.batch_size, optional=True)
    non_negative_int("--num-workers", ns.num_workers, optional=True)
    positive_int("--max-short-edge", ns.max_short_edge, optional=True)
    positive_int("--shard-size", ns.shard_size)
    resolved(ns.out, "--out")  # a loop of symbolic links: refused before the model is loaded
    if ns.reuse is not None:
        resolved(ns.reuse, "--reuse")
    if ns.reuse_moved and ns.reuse is None:
        raise CIRConfigError("`--reuse-moved` says the `--reuse` index was built over another folder, and no "
                             "`--reuse` is given")
    if ns.ckpt_path is not None:
        problem = path_problem(ns.ckpt_path, "a checkpoint file")
        if problem is not None and not (Path(ns.ckpt_path) / "checkpoint").is_dir():  # DeepSpeed's are folders
            raise CIRFileError(f"`--ckpt_path`: `{ns.ckpt_path}` {problem}")
    if ns.adapter is not None:
        adapter = Path(ns.adapter)
        problem = (path_problem(adapter, "an adapter folder") or "is a file, not an adapter folder") \
            if not adapter.is_dir() else None if (adapter / "adapter_config.json").is_file() \
            else "is not an adapter folder (no adapter_config.json)"
        if problem is not None:
            raise CIRFileError(f"`--adapter`: `{ns.adapter}` {problem}")


@contextlib.contextmanager
def _flag_names(*more: tuple[str, str]) -> Iterator[None]:
    """Errors name the options they were given as (`search.nprobe`, the weights' `lora.init_adapter`); here those
    are flags (`--nprobe`, and ``more`` such as ``("lora.init_adapter", "--ckpt_path")``). Errors that name none of
    them are raised as they are."""
    from cir_lightning.errors import CIRConfigError, embedded_error

    try:
        yield
    except (Exception, SystemExit) as err:  # the model's errors arrive wrapped by jsonargparse
        ours = embedded_error(err)
        if ours is None:
            raise
        message = str(ours)
        for option, flag in (("search.factory", "--factory"), ("search.nprobe", "--nprobe"),
                             ("search.ef_search", "--ef-search"), *more):
            message = message.replace(f"`{option}`", f"`{flag}`")
        if message == str(ours):
            raise
        raise CIRConfigError(message) from None


def build_model(configs: Sequence[str], overrides: Sequence[str], weights: str | None) -> Any:
    """The ``CIRModule`` a ``fit`` with these configs and overrides would build, with ``weights`` (a checkpoint or
    adapter folder) as its LoRA adapter, and the parsed config; no trainer is made."""
    from cir_lightning.cli import CIRLightningCLI

    class ModelOnly(CIRLightningCLI):
        def before_instantiate_classes(self) -> None:
            init = self.config.model.backbone.init_args
            path = init.get("model_name_or_path")  # a local folder by its absolute path: the index is searched from anywhere
            if isinstance(path, str) and (Path(path).exists() or init.get("make_tiny_if_missing")):
                init.model_name_or_path = str(Path(path).resolve())

        def instantiate_trainer(self, **kwargs: Any) -> None:
            return None

    args = [a for config in configs for a in ("--config", config)] + list(overrides)
    if weights is not None:
        args += ["--model.backbone.init_args.lora.init_adapter", str(Path(weights).resolve())]
    with warnings.catch_warnings():  # Lightning's note that `args` and sys.argv both exist: here they must
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
        cli = ModelOnly(args=args, run=False, save_config_callback=None)
    return cli.model, cli.config


def main(argv: Sequence[str]) -> None:
    """Index the images below ``IMAGE_FOLDER`` into ``--out`` (see the module)."""
    parser = _parser()
    ns, overrides = parser.parse_known_args(list(argv)[1:])
    unknown = [a for a in overrides if a.startswith("-") and not a.startswith(_PASSED)]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    _check_options(ns)
    from cir_lightning.cli import check_config_files
    from cir_lightning.data.folder import list_images
    from cir_lightning.data.images import DEFAULT_MAX_PIXELS
    from cir_lightning.image_index import partial_folder
    from cir_lightning.index_update import check_out, open_old
    from cir_lightning.indexing import build_image_index
    from cir_lightning.retrieval.search_config import SearchConfig

    out = Path(ns.out)
    found = list_images(ns.image_folder, leave_out=[out, partial_folder(out)])  # before the model is loaded
    check_out(out, ns.reuse, ns.overwrite)
    old = open_old(ns.reuse, Path(ns.image_folder).resolve(), moved=ns.reuse_moved, dtype=ns.dtype) \
        if ns.reuse is not None else None
    with _flag_names():
        kept = old.search_config() if old and ns.factory is None else SearchConfig()  # an update keeps its type
        given = {k: v for k, v in (("factory", ns.factory), ("nprobe", ns.nprobe), ("ef_search", ns.ef_search))
                 if v is not None}  # `--nprobe 0` is refused, not taken for "not given"
        search = SearchConfig(**{"factory": kept.factory, "nprobe": kept.nprobe, "ef_search": kept.ef_search, **given})
        search.check_count(len(found))  # before any image is embedded
    check_config_files([a for config in ns.config for a in ("--config", config)])
    weights = ("lora.init_adapter", "--ckpt_path" if ns.ckpt_path else "--adapter")
    with _flag_names(*([weights] if ns.ckpt_path or ns.adapter else [])):  # the weights' errors name the flag given
        module, config = build_model(ns.config, overrides, ns.ckpt_path or ns.adapter)
    backbone = module.backbone
    with _flag_names():
        search.check(backbone.embedding_dim)
    stored = config.model.backbone.as_dict()
    if isinstance(stored.get("init_args", {}).get("lora"), dict):
        stored["init_args"]["lora"]["init_adapter"] = None  # the index keeps its own copy of the weights
    data = (config.get("data") or {}).get("init_args") or {}
    trainer = config.trainer
    options = {k: trainer.get(k) for k in ("accelerator", "devices", "num_nodes", "precision")  # 0 too: refused
               if trainer.get(k) is not None}
    options["enable_progress_bar"] = trainer.get("enable_progress_bar") is not False
    if isinstance(trainer.get("strategy"), str):
        options["strategy"] = trainer.get("strategy")
    source = {"image_folder": str(Path(ns.image_folder).resolve()), "config": [str(Path(c).resolve()) for c in ns.config],
              "overrides": list(overrides), "ckpt_path": ns.ckpt_path and str(Path(ns.ckpt_path).resolve()),
              "adapter": ns.adapter and str(Path(ns.adapter).resolve())}
    written = build_image_index(
        ns.image_folder, out, backbone, backbone_config=stored, trainer_options=options,
        batch_size=ns.batch_size or data.get("eval_batch_size") or data.get("batch_size") or 16,
        num_workers=ns.num_workers if ns.num_workers is not None else data.get("num_workers") or 0,
        max_short_edge=ns.max_short_edge or data.get("max_short_edge"),
        max_image_pixels=data.get("max_image_pixels", DEFAULT_MAX_PIXELS),
        shard_size=ns.shard_size, skip_unreadable=ns.skip_unreadable, search=search, dtype=ns.dtype, source=source,
        reuse=ns.reuse, reuse_moved=ns.reuse_moved, overwrite=ns.overwrite)
    if written is None:  # not the first process
        return
    from cir_lightning.data.folder import left_out_line
    from cir_lightning.image_index import ImageIndex

    index = ImageIndex.open(written)
    skipped = index.info["skipped"]
    print(f"index written to {written}: {len(index.relpaths)} of {len(found)} images below {index.root} "
          f"({index.meta['dim']}-dim {index.meta['dtype']} embeddings, faiss {index.info['search']['factory']})"
          + (f"; {len(skipped)} unreadable left out (listed in meta.json)" if skipped else ""))
    passed_over = left_out_line(index.info.get("left_out") or {})
    if passed_over:
        print(passed_over)
    if "update" in index.info:
        from cir_lightning.index_update import update_line

        print(update_line(index.info["update"]), file=sys.stderr)
    print(f"search it: cir-lightning search {written} --image REFERENCE.jpg --text \"make it red\"")
