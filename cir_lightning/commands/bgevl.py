"""BGE-VL's evaluation scripts (VectorSpaceLab/MegaPairs ``eval``, also FlagEmbedding's ``research/BGE_VL/eval``) on the library.

``scripts/eval_fashioniq.py`` and ``scripts/eval_circo.py`` call ``main_fashioniq`` / ``main_circo``. Each
takes the original's flags and defaults (``HfArgumentParser`` style: ``--fp16`` alone or ``--fp16 true``,
``--model-name`` as well as ``--model_name``) plus ``--data_dir`` (the original reads ``./eval/data``),
``--categories``, ``--num_workers``, ``--devices``, ``--search_device`` and ``--search_float16``, and runs a Lightning
``Trainer.validate`` (DDP over all GPUs when there are several): ``DualEncoderBackbone`` (BGE-VL's fusion,
query text cut at 75 tokens), ``BGEVLDataModule``, ``CIRModule`` and its evaluator. Standard output is the
original's: ``eval_fashioniq.py`` prints the working folder, then per category ``FashionIQ tasks (shirt):``
and its metrics dict, then the R@10 / R@50 summary; ``eval_circo.py`` prints where the results go.

What the original gets wrong, fixed with its interface kept: ``--fp16`` runs the model in half precision
(the original ignores it); ``--load_embedding`` skips encoding and refuses a file that does not fit, or whose
corpus images changed since they were embedded (the original crashes); ``--save_embedding`` writes one file per FashionIQ category (the original writes every
category into the same file; CIRCO's one corpus goes to ``--save_path`` itself, as there) and never over an
existing one (``cir_lightning.retrieval.memmap``).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cir_lightning.data.layouts.bgevl import CATEGORIES, QUERY_MAX_TOKENS, Task
from cir_lightning.errors import user_error_line
from cir_lightning.interrupts import stops
from cir_lightning.rank_lines import say

__all__ = ["build_parser", "main_circo", "main_fashioniq", "run"]

_DEFAULT_IMAGE_DIR = {"fashioniq": "YOUR_FASHIONIQ_IMAGE_DIRECTORY", "circo": "YOUR_COCO_IMAGE_DIRECTORY"}
_SCRIPT = {"fashioniq": "eval_fashioniq.py", "circo": "eval_circo.py"}


def _bool(value: str) -> bool:
    """``HfArgumentParser``'s booleans: yes / true / t / y / 1 and no / false / f / n / 0, any case."""
    if value.lower() in ("yes", "true", "t", "y", "1"):
        return True
    if value.lower() in ("no", "false", "f", "n", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean (true / false), got {value!r}")


def _positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return number


def build_parser(task: Task) -> argparse.ArgumentParser:
    """The flags of BGE-VL's ``eval_fashioniq.py`` (``task="fashioniq"``) or ``eval_Circo.py`` (``"circo"``).

    Example:
        >>> from cir_lightning.commands.bgevl import build_parser
        >>> args = build_parser("fashioniq").parse_args(["--fp16", "--model-name", "clip"])
        >>> args.model_name, args.fp16, args.batch_size, args.k, args.save_path, args.max_query_length
        ('clip', True, 256, 100, 'embeddings.memmap', 64)
        >>> build_parser("circo").parse_args(["--load_emb"]).load_embedding  # a prefix, as the original takes
        True
    """
    parser = argparse.ArgumentParser(prog=_SCRIPT[task], description=f"BGE-VL's {_SCRIPT[task]} on cir_lightning")

    def add(name: str, **kwargs: Any) -> None:
        dashed = name.replace("_", "-")
        parser.add_argument(f"--{name}", *([f"--{dashed}"] if dashed != name else []), dest=name, **kwargs)

    def flag(name: str, help: str) -> None:
        add(name, type=_bool, nargs="?", const=True, default=False, help=help)

    add("model_name", default="BAAI/BGE-VL-large", help="the model: hub name or checkpoint folder")
    if task == "circo":
        add("result_save_path", default="./eval/mmret_large_circo.json", help="where to write the results "
            "(never over an existing file)")
    add("image_dir", default=_DEFAULT_IMAGE_DIR[task], help="the folder the image paths of the files are relative to")
    flag("fp16", "run the model in half precision")
    add("max_query_length", type=int, default=64, help="read but unused, as in BGE-VL: composed queries "
        f"are cut at {QUERY_MAX_TOKENS} tokens")
    add("max_passage_length", type=int, default=77, help="read but unused, as in BGE-VL: the corpus is images")
    add("batch_size", type=_positive, default=256, help="batch size per process (the original: per GPU)")
    add("index_factory", default="Flat", help="faiss index_factory string (inner product)")
    add("k", type=_positive, default=100, help="neighbours retrieved per query")
    flag("save_embedding", "write the corpus embeddings to --save_path (FashionIQ: one file per category)")
    flag("load_embedding", "read the corpus embeddings from --save_path instead of embedding the images")
    add("save_path", default="embeddings.memmap", help="embedding file (CIRCO: this file; FashionIQ: category "
        "NAME uses <stem>.NAME<suffix>)")
    add("data_dir", default="./eval/data", help="the folder of BGE-VL's .jsonl files")
    if task == "fashioniq":
        add("categories", nargs="+", choices=CATEGORIES, default=list(CATEGORIES), help="categories, in print order")
    add("num_workers", type=int, default=8, help="DataLoader worker processes per device (the original: 8)")
    add("devices", default="auto", help="Lightning `devices`: auto (every GPU, else one CPU process), N, or a list")
    add("search_device", choices=("cpu", "cuda"), default="cpu", help="where each process's faiss index lives")
    flag("search_float16", "store a --search_device cuda index in float16, as BGE-VL's GPU index does (near-ties "
         "may reorder)")
    return parser


def _progress_bar() -> Any:
    """Lightning's progress bar, on standard error as BGE-VL's tqdm bars are (standard output stays its)."""
    from lightning.pytorch.callbacks import TQDMProgressBar
    from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm

    class StderrBar(TQDMProgressBar):
        def _bar(self, desc: str) -> Tqdm:
            return Tqdm(desc=desc, position=2 * self.process_position, disable=self.is_disabled, leave=True,
                        dynamic_ncols=True, file=sys.stderr, bar_format=self.BAR_FORMAT)

        def init_validation_tqdm(self) -> Tqdm:
            return self._bar("Inference Embeddings")

        def init_test_tqdm(self) -> Tqdm:
            return self._bar("Inference Embeddings")

    return StderrBar()


def run(args: argparse.Namespace, task: Task) -> Any:
    """Evaluate as BGE-VL's script does; returns the ``BGEVLDataModule`` and the epoch's results (rank zero
    prints; every rank returns)."""
    import lightning.pytorch as pl
    from lightning.pytorch.utilities import rank_zero_only

    from cir_lightning.backbones.dual_encoder import DualEncoderBackbone
    from cir_lightning.data.bgevl import BGEVLDataModule
    from cir_lightning.module import CIRModule
    from cir_lightning.retrieval.memmap import MemmapGalleries
    from cir_lightning.retrieval.search_config import SearchConfig
    from cir_lightning.trainer_options import refused_options
    from cir_lightning.writable import exists_error

    note = print if rank_zero_only.rank == 0 else (lambda *a, **k: None)
    results_file = getattr(args, "result_save_path", None)
    if results_file and Path(results_file).exists():  # before the model loads; named as the user typed it
        raise exists_error(results_file, "--result_save_path")
    for name, default in (("max_query_length", 64), ("max_passage_length", 77)):
        if getattr(args, name) != default:
            note(f"note: `--{name}` is read but, as in BGE-VL's script, changes nothing (composed queries are "
                f"cut at {QUERY_MAX_TOKENS} tokens; the corpus is images)", file=sys.stderr)
    dtype = "float16" if args.fp16 else "float32"
    backbone = DualEncoderBackbone(args.model_name, fusion="sum_raw", max_text_tokens=QUERY_MAX_TOKENS,
                                   truncation="silent", dtype=dtype)
    data = BGEVLDataModule(args.data_dir, args.image_dir, task=task, categories=getattr(args, "categories", CATEGORIES),
                           k=args.k, results_file=results_file,
                           batch_size=args.batch_size, num_workers=args.num_workers)
    search = SearchConfig(factory=args.index_factory, device=args.search_device, float16=args.search_float16)
    module = CIRModule(backbone, search=search,
                         write_results=False, export_adapter=False, pictures=0)  # BGE-VL's script writes nothing else
    if args.save_embedding or args.load_embedding:
        store = MemmapGalleries(args.save_path, backbone.embedding_dim, save=args.save_embedding,
                                load=args.load_embedding, identity={"dtype": dtype}, single=task == "circo")
        module.evaluation.use_cache(store)  # in place of a GalleryCache
    with refused_options(option="--devices"):  # `--devices 0`: Lightning's traceback
        trainer = pl.Trainer(accelerator="auto", devices=args.devices, logger=False, enable_checkpointing=False,
                             enable_model_summary=False, callbacks=[_progress_bar()], default_root_dir=os.getcwd())
    trainer.validate(module, datamodule=data, verbose=False)
    return data, module.evaluation.last_results  # the metrics as computed (float64), not as logged (float32)


def _main(task: Task, argv: Sequence[str] | None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = build_parser(task)
    args = parser.parse_args(argv)
    if args.search_float16 and args.search_device != "cuda":
        parser.error("--search_float16 stores a GPU index: add --search_device cuda")
    from lightning.pytorch.utilities import rank_zero_only

    first = rank_zero_only.rank == 0
    if first and task == "fashioniq":
        print(os.getcwd())  # the original's first line
    if first and task == "circo":
        print(f"Results will be saved in {args.result_save_path}")
    try:
        with stops(_SCRIPT[task], "bgevl"):  # Ctrl-C, SIGTERM: one line, status 130 / 143, nothing half-written
            data, results = run(args, task)
    except Exception as err:
        line = user_error_line(err, _SCRIPT[task])
        if line is None:
            raise
        say(line)  # once for a run of several processes
        return 2
    if first and task == "fashioniq" and results is not None:
        print(data.report(results.metrics))
    return 0


def main_fashioniq(argv: Sequence[str] | None = None) -> int:
    """``eval_fashioniq.py``: MRR@K and Recall@K per FashionIQ category, then the R@10 / R@50 summary.

    Example:
        >>> from cir_lightning.commands.bgevl import main_fashioniq
        >>> main_fashioniq(["--k", "0"])
        Traceback (most recent call last):
        ...
        SystemExit: 2
    """
    return _main("fashioniq", argv)


def main_circo(argv: Sequence[str] | None = None) -> int:
    """``eval_Circo.py``: ranks the CIRCO test queries and writes ``{"<id>": [top-50 corpus contents]}`` to
    ``--result_save_path``.

    Example:
        >>> from cir_lightning.commands.bgevl import main_circo
        >>> main_circo(["--fp16", "maybe"])  # BGE-VL's boolean flags take true / false or nothing
        Traceback (most recent call last):
        SystemExit: 2
    """
    return _main("circo", argv)
