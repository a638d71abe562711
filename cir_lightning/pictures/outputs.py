"""Where pictures go: PNG files (atomic, never overwriting) and the loggers that take images; the
pictures of an evaluation epoch's subsets."""

from __future__ import annotations

import io
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image

from cir_lightning.files import write_atomic
from cir_lightning.free_names import write_free
from cir_lightning.pictures.draw import retrieval_picture
from cir_lightning.pictures.rows import query_rows, sample_queries

if TYPE_CHECKING:
    from cir_lightning.data.datasets import GalleryDataset, QueryDataset


def picture_name(label: str, subset: str) -> str:
    """``retrievals-<label>-<subset>.png`` (``retrievals-<label>.png`` for the unnamed subset).

    Example:
        >>> from cir_lightning.pictures import picture_name
        >>> picture_name("validate", "dress"), picture_name("test", ""), picture_name("test", "a/b c")
        ('retrievals-validate-dress.png', 'retrievals-test.png', 'retrievals-test-a_b_c.png')
    """
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", subset)
    return f"retrievals-{label}{'-' + safe if safe else ''}.png"


def picture_info(label: str, subset: str | None, model: Mapping[str, Any] | None = None,
                 step: int | None = None) -> dict[str, str]:
    """The PNG text of a retrieval picture: what it shows (``label``, ``subset``: None for a picture of no
    benchmark's, the training ``step``), the model's identity (``Backbone.identity``, as JSON), the package
    version and the time it was drawn; read back with ``PIL.Image.open(path).text``.

    Example:
        >>> from cir_lightning.pictures import picture_info
        >>> info = picture_info("validate", "dress", {"weights": "ab12"})
        >>> info["label"], info["subset"], info["model"]
        ('validate', 'dress', '{"weights": "ab12"}')
    """
    import datetime

    from cir_lightning import __version__

    info = {"software": f"cir_lightning {__version__}", "label": label,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    if subset is not None:
        info["subset"] = subset
    if step is not None:
        info["step"] = str(step)
    if model is not None:
        info["model"] = json.dumps(model, default=str, sort_keys=True)
    return info


def save_picture(image: Image.Image, path: str | Path, overwrite: bool = False,
                 info: Mapping[str, str] | None = None) -> Path:
    """Write ``image`` as a PNG at ``path``, or, unless ``overwrite``, at the next free name beside it; ``info``
    becomes the PNG's text (``Image.open(path).text`` reads it back).

    Example:
        >>> from cir_lightning.pictures import save_picture
        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp())
        >>> [save_picture(Image.new("RGB", (4, 4)), folder / "a.png").name for _ in range(2)]
        ['a.png', 'a-1.png']
        >>> Image.open(save_picture(Image.new("RGB", (4, 4)), folder / "b.png", info={"label": "validate"})).text
        {'label': 'validate'}
    """
    from PIL.PngImagePlugin import PngInfo

    text = PngInfo()
    for key, value in (info or {}).items():
        text.add_itxt(key, value)  # international text: UTF-8 (a unicode model path)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True, pnginfo=text)
    if overwrite:
        return write_atomic(path, buffer.getvalue(), overwrite=True)
    return write_free(path, buffer.getvalue())  # another run may take the free name first: the next one


def log_picture(loggers: Sequence[Any], tag: str, image: Image.Image, step: int) -> list[str]:
    """Send ``image`` to the loggers that take images: TensorBoard (``experiment.add_image``) and loggers with
    a ``log_image`` method (Weights & Biases); others (CSV) are skipped. Returns the names of those used.

    Example:
        >>> from cir_lightning.pictures import log_picture
        >>> from lightning.pytorch.loggers import CSVLogger
        >>> import tempfile
        >>> log_picture([CSVLogger(tempfile.mkdtemp())], "val/retrievals", Image.new("RGB", (4, 4)), 0)
        []
    """
    import numpy as np

    used = []
    for logger in loggers:
        experiment = getattr(logger, "experiment", None)
        if callable(getattr(experiment, "add_image", None)):
            experiment.add_image(tag, np.asarray(image.convert("RGB")), global_step=step, dataformats="HWC")
        elif callable(getattr(logger, "log_image", None)):
            logger.log_image(key=tag, images=[image], step=step)
        else:
            continue
        used.append(type(logger).__name__)
    return used


def picture_title(label: str, subset: str, shown: int, total: int,
                  metrics: Mapping[str, Mapping[str, float]] | None = None) -> str:
    """The title of a subset's picture: what was evaluated, how many queries are shown, and up to four of the
    subset's metrics (MRR left out) in percent.

    Example:
        >>> from cir_lightning.pictures import picture_title
        >>> picture_title("validate", "", 8, 500, {"": {"Recall@1": 0.364, "Recall@5": 0.894, "MRR@10": 0.5}})
        'validate  ·  all  ·  8 of 500 queries  ·  Recall@1 36.4  Recall@5 89.4'
    """
    values = (metrics or {}).get(subset, {})
    recall = "  ".join(f"{k} {100 * v:.1f}" for k, v in [(k, v) for k, v in values.items()
                                                          if not k.startswith("MRR")][:4])
    return f"{label}  ·  {subset or 'all'}  ·  {shown} of {total} queries" + (f"  ·  {recall}" if recall else "")


def subset_pictures(pairs: Sequence[tuple[QueryDataset, GalleryDataset]], rankings: Mapping[str, Any],
                    scores: Mapping[str, Any], count: int, label: str,
                    metrics: Mapping[str, Mapping[str, float]] | None = None, seed: int = 0) -> dict[str, Image.Image]:
    """Subset name -> its retrieval picture of ``count`` seeded queries, for each (queries, gallery) pair of an
    evaluation whose subset was ranked.

    Args:
        pairs: the evaluation's query and gallery datasets (``run_outputs.dataset_pairs`` reads them from its
            loaders, a cached gallery's images in place of its stand-in).
        rankings: subset name -> (queries, depth) ranked gallery rows, -1 padded (the evaluator's).
        scores: subset name -> the scores of those rows (subsets without: ranks only).
        count: queries per picture.
        label: what was evaluated, for the titles (``validate``).
        metrics: subset name -> metric name -> fraction, for the titles.
        seed: of the query sample.

    Example:
        >>> from cir_lightning.pictures import subset_pictures
        >>> from cir_lightning.data.datasets import GalleryItem, GalleryDataset, Query, QueryDataset
        >>> import tempfile, torch
        >>> folder = Path(tempfile.mkdtemp())
        >>> Image.new("RGB", (8, 8), "red").save(folder / "a.png")
        >>> gallery = GalleryDataset([GalleryItem(f"g{i}", folder / "a.png", "gallery") for i in range(6)])
        >>> queries = QueryDataset([Query("q0", folder / "a.png", "make it red", (1,), "queries")])
        >>> pictures = subset_pictures([(queries, gallery)], {"": torch.tensor([[0, 1, 2, 3, 4, 5]])}, {}, 8, "validate")
        >>> {name: picture.size for name, picture in pictures.items()}
        {'': (1120, 222)}
    """
    out = {}
    for queries, gallery in pairs:
        name = queries.name
        if name not in rankings:
            continue
        picks = sample_queries(len(queries.records), count, seed)
        values = scores[name][picks].tolist() if name in scores else None
        rows = query_rows(queries, gallery, picks, rankings[name][picks].tolist(), values)
        out[name] = retrieval_picture(rows, picture_title(label, name, len(picks), len(queries.records), metrics))
    return out
