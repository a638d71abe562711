"""``cir-lightning show RESULTS.json``: the Recall@K curves and the retrieval pictures of a results file.

The file must hold rankings (a ``validate`` / ``test`` run with ``--model.save_rankings true``); its scores are
drawn when it has them. The images are found by rebuilding the run's DataModule from the file
(``config.data_class_path`` and ``config.data``; relative paths are read from the
current folder), without writing anything there.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from cir_lightning.commands import COMMANDS
from cir_lightning.errors import CIRConfigError, CIRDataError, CIRError
from cir_lightning.messages import first_few


def _datamodule(document: Mapping[str, Any], path: Path) -> Any:
    """The run's DataModule, rebuilt from the results file and set up for its stage (nothing is written)."""
    from cir_lightning.data.base import CIRDataModule

    config = document.get("config") if isinstance(document.get("config"), dict) else {}
    data = config.get("data") if isinstance(config.get("data"), dict) else {}
    class_path = config.get("data_class_path")
    if not isinstance(class_path, str):
        raise CIRDataError("records no DataModule (`config.data_class_path`); it was not written by a cir_lightning "
                           "`validate` / `test`", path)
    module, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        raise CIRDataError(f"its DataModule `{class_path}` cannot be imported", path) from None
    if not (isinstance(cls, type) and issubclass(cls, CIRDataModule)):
        raise CIRDataError(f"`{class_path}` is not a cir_lightning DataModule", path)
    accepted = inspect.signature(cls).parameters
    args = {k: v for k, v in data.items() if k in accepted}
    lacking = [k for k, p in accepted.items() if p.default is p.empty and k not in args
               and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    if lacking:  # the constructor was not reached through ``super().__init__`` with its arguments (``hparams``)
        raise CIRDataError(f"records no {', '.join(f'`{k}`' for k in lacking)} of {cls.__name__} (`config.data`), "
                           "which its constructor needs: was the DataModule's `__init__` given its options and did it "
                           "call `super().__init__(...)`?", path)
    try:
        datamodule = cls(**args)
        datamodule.setup(str(document.get("stage", "validate")))
    except CIRError as err:
        raise CIRDataError(f"cannot rebuild its data ({cls.__name__}; relative paths are read from "
                           f"`{Path.cwd()}`): {err}", path) from None
    return datamodule


def _ranked_rows(name: str, qid: str, ranked_ids: Any, gindex: Mapping[str, int], path: Path) -> list[int]:
    if not isinstance(ranked_ids, list):
        raise CIRDataError(f"`rankings` of subset {name!r}, query {qid!r}: expected a list of gallery ids", path)
    unknown = [str(g) for g in ranked_ids if g not in gindex]
    if unknown:
        raise CIRDataError(f"query {qid!r} of subset {name!r} ranks gallery ids not in the rebuilt gallery: "
                           f"{first_few(unknown)} (is the data the run's?)", path)
    return [gindex[g] for g in ranked_ids]


def _scores(scores: Any, ids: Sequence[str], ranked: Sequence[Sequence[int]]) -> list[list[float]] | None:
    """The file's scores of these queries' rankings, or None (ranks only) unless every one is there and fits."""
    values = [scores.get(q) for q in ids] if isinstance(scores, dict) else []
    fits = len(values) == len(ids) and all(
        isinstance(v, list) and len(v) == len(r) and all(isinstance(x, int | float) for x in v)
        for v, r in zip(values, ranked, strict=True))
    return values if fits else None


def _check_document(document: Any, path: Path) -> None:
    """What is drawn from a results file has the shape ``write_results`` writes (a hand-edited or damaged file is one
    line, not a traceback while drawing)."""
    if not isinstance(document, dict) or not isinstance(document.get("metrics"), dict):
        raise CIRDataError("not a cir_lightning results file (no `metrics` object)", path)
    for name, values in document["metrics"].items():
        if not isinstance(values, dict) or not all(type(v) in (int, float) for v in values.values()):
            raise CIRDataError(f"`metrics` of subset {name!r} is not an object of metric -> number: the file is "
                               "damaged", path)
    for key in ("rankings", "scores"):
        entry = document.get(key)
        if entry is not None and not (isinstance(entry, dict) and all(isinstance(v, dict) for v in entry.values())):
            raise CIRDataError(f"`{key}` is not an object of subset -> query -> list: the file is damaged", path)


def render_results(results: str | Path, queries: Sequence[str] | None = None, subset: str | None = None,
                   count: int = 8, seed: int = 0) -> Image.Image:
    """The Recall@K curves of a results file (PositiveRecall@K or mAP@K when it has no Recall@K) and, below
    them, a retrieval picture per subset.

    Args:
        results: a ``results-<stage>.json`` with rankings (``--model.save_rankings true``).
        queries: the query ids to draw (default: a seeded sample of ``count`` per subset, the queries the
            pictures after ``validate`` / ``test`` show).
        subset: only this subset (``all`` names the unnamed one).
        count: queries per subset in the sample.
        seed: the sample's seed.

    Raises:
        CIRDataError: the file has no rankings, an unknown subset or query id, data that cannot be rebuilt
            or an image that cannot be read; one line naming the file.

    Example:
        >>> from cir_lightning.commands.show import render_results
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "results-validate.json"
        >>> _ = path.write_text('{"stage": "validate", "metrics": {"": {"Recall@1": 0.5}}}')
        >>> render_results(path)
        Traceback (most recent call last):
        ...
        cir_lightning.errors.CIRDataError: ...results-validate.json: holds no rankings: evaluate with `--model.save_rankings true`
    """
    from cir_lightning.pictures import (
        picture_title,
        query_rows,
        recall_curves,
        recall_points,
        retrieval_picture,
        sample_queries,
        stack,
    )
    from cir_lightning.reading import read_json

    path = Path(results)
    document = read_json(path, "results file")
    _check_document(document, path)
    rankings, scores = document.get("rankings"), document.get("scores") or {}
    if not isinstance(rankings, dict) or not rankings:
        raise CIRDataError("holds no rankings: evaluate with `--model.save_rankings true`", path)
    names = list(rankings)
    if subset is not None:
        subset = "" if subset == "all" and "" in rankings and "all" not in rankings else subset
        if subset not in rankings:
            raise CIRDataError(f"`--subset {subset}`: no rankings of that subset; it has "
                               f"{first_few([repr(n) for n in names], ', ')}", path)
        names = [subset]
    datamodule = _datamodule(document, path)
    sets = datamodule.test_sets if document.get("stage") == "test" else datamodule.val_sets
    pairs = {q.name: (q, g) for q, g in sets}
    pictures, found = [], set()
    for name in names:
        if name not in pairs:
            raise CIRDataError(f"subset {name!r} is not in the rebuilt data (it has {sorted(pairs)})", path)
        query_set, gallery = pairs[name]
        qindex = {r.query_id: i for i, r in enumerate(query_set.records)}
        gindex = {g.image_id: j for j, g in enumerate(gallery.records)}
        if queries:
            picks = [qindex[q] for q in queries if q in qindex]
            found |= {q for q in queries if q in qindex}
        else:
            picks = sample_queries(len(query_set.records), count, seed)
        if not picks:
            continue
        ids = [query_set.records[i].query_id for i in picks]
        missing = [q for q in ids if q not in rankings[name]]
        if missing:
            raise CIRDataError(f"subset {name!r} has no rankings of queries {first_few(missing, ', ')}", path)
        ranked = [_ranked_rows(name, q, rankings[name][q], gindex, path) for q in ids]
        rows = query_rows(query_set, gallery, picks, ranked, _scores(scores.get(name), ids, ranked))
        pictures.append(retrieval_picture(rows, picture_title(str(document.get("stage", "")), name, len(picks),
                                                              len(query_set.records), document["metrics"])))
    unknown = [q for q in queries or () if q not in found]
    if unknown:
        raise CIRDataError(f"`--queries`: no query {first_few(unknown, ', ')} in subsets "
                           f"{first_few([repr(n) for n in names], ', ')}", path)
    metrics = {n: v for n, v in document["metrics"].items() if subset is None or n == subset}
    family = next((f for f in ("Recall", "PositiveRecall", "mAP") if recall_points(metrics, f)), None)
    curves = [recall_curves(metrics, f"{family}@K  ·  {path.name}", family)] if family else []
    return stack(curves + pictures)


def main(argv: Sequence[str]) -> None:
    """``cir-lightning show RESULTS.json [--queries ID ...] [--subset NAME] [--out FILE.png]``."""
    from cir_lightning.checks import positive_int
    from cir_lightning.files import check_writable
    from cir_lightning.pictures import picture_info, save_picture
    from cir_lightning.writable import exists_error

    parser = argparse.ArgumentParser(allow_abbrev=False, prog="cir-lightning show", description=COMMANDS["show"][1])
    parser.add_argument("results", help="a results-<stage>.json written with `--model.save_rankings true`")
    parser.add_argument("--queries", nargs="+", metavar="ID", help="query ids to draw (default: a seeded sample)")
    parser.add_argument("--subset", help="only this subset (`all`: the unnamed one)")
    parser.add_argument("--count", type=int, default=8, help="queries per subset in the sample (default: 8)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sample (default: 0, as after validate / test)")
    parser.add_argument("--out", help="the PNG to write (default: beside the results file, named after it); an "
                                      "existing file is never overwritten")
    ns = parser.parse_args(argv[1:])
    positive_int("--count", ns.count)
    results = Path(ns.results)
    from cir_lightning.index_files import FAISS_FILE

    if (results if results.is_dir() else results.parent).joinpath(FAISS_FILE).is_file():  # the folder or its meta.json
        raise CIRDataError("is an image index written by `cir-lightning index`, not a results file: draw a search of it "
                           "with `cir-lightning search INDEX --image REF.jpg --text \"...\" --show OUT.png`", results)
    out = Path(ns.out) if ns.out else results.with_suffix(".png")
    if out.suffix.lower() != ".png":  # PNG bytes under another name
        raise CIRConfigError(f"`--out` writes a PNG: give a file name ending in .png, got `{out}`")
    if ns.out and out.exists():
        raise exists_error(out, "--out")
    check_writable(out.parent, "--out")
    image = render_results(results, ns.queries, ns.subset, ns.count, ns.seed)
    info = {**picture_info("show", ns.subset or ""), "results": str(results.absolute())}  # what it was drawn from
    print(f"picture written to {save_picture(image, out, info=info)}")
