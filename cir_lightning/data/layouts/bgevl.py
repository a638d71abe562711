"""BGE-VL's evaluation files and protocol (FlagOpen/FlagEmbedding, ``research/BGE_VL/eval``).

The files, in one folder (``data_dir``; BGE-VL's scripts read ``./eval/data``), one JSON object a line::

    fashioniq_<category>_corpus.jsonl     {"content": "B009PMCJLW", "image": "./images/B009PMCJLW.png"}
    fashioniq_<category>_query_val.jsonl  {"q_img": "./images/B005X4PL1G.png", "q_text": "is shiny, and ...",
                                           "positive_key": "B0084Y8XIU", "positive_value": "./images/B0084Y8XIU.png",
                                           "hn_image": ["./images/B005X4PL1G.png"]}
    circo_corpus.jsonl                    {"content": 265507, "image": ...}   (the same fields)
    circo_query.jsonl                     {"id": 0, "q_img": "000000281438.jpg", "q_text": "Find a picture ..."}

Image paths are relative to ``image_dir`` and may not leave it. ``positive_key`` is one corpus ``content``
or a list of them. As in BGE-VL's scripts: a query image whose path (judged by the first query) ends in
none of ``.jpg``, ``.png``, ``JPEG`` gets ``.jpg`` appended; corpus paths are used as written;
``positive_value`` and ``hn_image`` are not read; the reference is not excluded from the ranking.

Protocol of ``eval_fashioniq.py``: each category's queries search that category's whole corpus; MRR@K
(1 / rank of the first positive, 0 beyond K) and Recall@K = positives in the first K / positives
(``PositiveRecall@K`` here, "Recall@K" in BGE-VL's output) for K in ``EVAL_KS``; the summary is R@10 / R@50
per category and their plain mean. ``eval_Circo.py`` ranks the CIRCO test queries (no ground truth) and
writes ``{"<id>": [top-50 corpus contents]}``.

Stricter than the scripts (one error line instead of a silent miss): a positive that is not in the corpus,
a positive listed twice (it would halve the recall), a ``content`` given twice. A string ``positive_key``
is compared whole (the script's MRR tests ``content in positive_key``, a substring test: the same for
FashionIQ's ids, which all have 10 characters).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from lightning.pytorch.utilities import rank_zero_warn

from cir_lightning.data.datasets import GalleryDataset, GalleryItem, Query, QueryDataset, refuse_shared_images
from cir_lightning.data.images import resolve_image_path
from cir_lightning.data.missing import OnMissing, handle_missing
from cir_lightning.errors import CIRConfigError, CIRDataError
from cir_lightning.messages import first_few, short_repr
from cir_lightning.reading import iter_jsonl

__all__ = ["CATEGORIES", "EVAL_KS", "QUERY_MAX_TOKENS", "Category", "Task", "bgevl_files", "console_report",
           "cutoffs_within", "read_corpus", "read_eval_set", "read_queries"]

Category = Literal["shirt", "dress", "toptee"]
Task = Literal["fashioniq", "circo"]
CATEGORIES: tuple[Category, ...] = ("shirt", "dress", "toptee")
"""FashionIQ's categories in the order BGE-VL's script evaluates and prints them."""
EVAL_KS = (1, 5, 10, 20, 50, 100)
"""The cut-offs of BGE-VL's ``evaluate``."""
QUERY_MAX_TOKENS = 75
"""BGE-VL's evaluation cuts composed-query text at 75 tokens, special tokens included (``flag_mmret.py``:
``MMIT_Collator(caption_max_len=75)``; the script's ``max_query_length`` is never passed on)."""
CIRCO_DEPTH = 50  # eval_Circo.py keeps the top 50 of each ranking
_EXTENSIONS = (".jpg", ".png", "JPEG")  # what the script accepts as the end of a query image path


def bgevl_files(data_dir: Path, task: Task, category: str = "") -> tuple[Path, Path]:
    """The (corpus, queries) files of a FashionIQ category or of CIRCO.

    Example:
        >>> from cir_lightning.data.layouts.bgevl import bgevl_files
        >>> [p.name for p in bgevl_files(Path("eval/data"), "fashioniq", "shirt")]
        ['fashioniq_shirt_corpus.jsonl', 'fashioniq_shirt_query_val.jsonl']
        >>> [p.name for p in bgevl_files(Path("eval/data"), "circo")]
        ['circo_corpus.jsonl', 'circo_query.jsonl']
    """
    if task == "circo":
        return data_dir / "circo_corpus.jsonl", data_dir / "circo_query.jsonl"
    if task != "fashioniq":
        raise CIRConfigError(f"`task` must be 'fashioniq' or 'circo', got {task!r}")
    return data_dir / f"fashioniq_{category}_corpus.jsonl", data_dir / f"fashioniq_{category}_query_val.jsonl"


def cutoffs_within(k: int, ks: Sequence[int] = EVAL_KS) -> dict[int, int]:
    """Each cut-off K -> the cut-off it is computed at when only ``k`` neighbours are retrieved (the
    script's ``--k``: a ranking of ``k`` items has the same metrics at every K >= k).

    Example:
        >>> from cir_lightning.data.layouts.bgevl import cutoffs_within
        >>> cutoffs_within(100)[50], cutoffs_within(20)
        (50, {1: 1, 5: 5, 10: 10, 20: 20, 50: 20, 100: 20})
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise CIRConfigError(f"`k` must be an integer >= 1, got {k!r}")
    return {K: min(K, k) for K in ks}


def _key(value: object, path: Path, line: int, field: str) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int) or (isinstance(value, str) and not value.strip()):
        raise CIRDataError(f"`{field}` must be a non-empty string or an integer id, got {short_repr(value)}",
                           path, line)
    return str(value)


def read_corpus(path: Path, image_dir: Path) -> tuple[list[GalleryItem], dict[str, Any]]:
    """The corpus images in file order, and each id's ``content`` as the file gives it (str or int).

    Example:
        >>> import tempfile
        >>> from cir_lightning.data.layouts.bgevl import read_corpus
        >>> root = Path(tempfile.mkdtemp())
        >>> _ = (root / "c.jsonl").write_text('{"content": "B1", "image": "./images/B1.png"}\\n'
        ...                                   '{"content": "B1", "image": "./images/B2.png"}\\n')
        >>> read_corpus(root / "c.jsonl", root)
        Traceback (most recent call last):
        ...
        cir_lightning.errors.CIRDataError: .../c.jsonl:2: `content` 'B1' is given twice (first on line 1)
    """
    items, contents, first = [], {}, {}
    for line, obj in iter_jsonl(path, "corpus file", "set `data_dir` to the folder of BGE-VL's evaluation files"):
        key = _key(obj.get("content"), path, line, "content")
        if key in first:
            raise CIRDataError(f"`content` {key!r} is given twice (first on line {first[key]})", path, line)
        first[key], contents[key] = line, obj["content"]
        image = resolve_image_path(image_dir, obj.get("image"), path, line, "image")
        items.append(GalleryItem(key, image, f"{path}:{line}"))
    if not items:
        raise CIRDataError("no corpus images: the gallery would be empty", path)
    refuse_shared_images(items)
    return items, contents


def _positives(value: object, path: Path, line: int) -> list[str]:
    keys = value if isinstance(value, list) else [value]
    if not keys:
        raise CIRDataError("`positive_key` is an empty list", path, line)
    keys = [_key(k, path, line, "positive_key") for k in keys]
    twice = sorted({k for k in keys if keys.count(k) > 1})
    if twice:
        raise CIRDataError(f"`positive_key` lists {', '.join(map(repr, twice))} more than once (it would count "
                           "twice in Recall's denominator)", path, line)
    return keys


def read_queries(path: Path, image_dir: Path, rows: Mapping[str, int], name: str,
                 with_positives: bool = True) -> list[Query]:
    """The queries of a BGE-VL query file, positives as corpus rows (``rows``: content -> row).

    Query ids are ``<name>-<n>`` (``n`` counts queries from 0), or the ``id`` field where there is no
    ground truth (CIRCO). Positives that are not in the corpus are one error listing them.

    Example:
        >>> import tempfile
        >>> from cir_lightning.data.layouts.bgevl import read_queries
        >>> root = Path(tempfile.mkdtemp())
        >>> _ = (root / "q.jsonl").write_text('{"q_img": "./images/a.png", "q_text": "is red, and longer", '
        ...                                   '"positive_key": ["b", "c"]}\\n')
        >>> [(q.query_id, q.modification, q.positives) for q in read_queries(root / "q.jsonl", root,
        ...                                                                  {"a": 0, "b": 1, "c": 2}, "dress")]
        [('dress-0', 'is red, and longer', (1, 2))]
    """
    records, absent, seen = [], [], {}
    entries = list(iter_jsonl(path, "query file", "set `data_dir` to the folder of BGE-VL's evaluation files"))
    if not entries:
        raise CIRDataError("no queries", path)
    first_image = entries[0][1].get("q_img")
    append_jpg = not (isinstance(first_image, str) and first_image[-4:] in _EXTENSIONS)
    if append_jpg:
        rank_zero_warn(f"{path}: query images have no file extension (judged by the first query, as BGE-VL's "
                       "script does): '.jpg' is appended to every `q_img`")
    for n, (line, obj) in enumerate(entries):
        image = obj.get("q_img")
        if append_jpg and isinstance(image, str):
            image = image + ".jpg"
        text = obj.get("q_text")
        if not isinstance(text, str) or not text.strip():
            raise CIRDataError(f"`q_text` must be a non-empty string, got {short_repr(text)}", path, line)
        query_id = f"{name}-{n}"
        positives: tuple[int, ...] = ()
        if with_positives:
            if "positive_key" not in obj:
                raise CIRDataError("missing field `positive_key`", path, line)
            keys = _positives(obj["positive_key"], path, line)
            if any(k not in rows for k in keys):
                absent.append(f"line {line}: {', '.join(repr(k) for k in keys if k not in rows)}")
                continue
            positives = tuple(rows[k] for k in keys)
        else:
            query_id = _key(obj.get("id"), path, line, "id")
            if query_id in seen:
                raise CIRDataError(f"`id` {query_id!r} is given twice (first on line {seen[query_id]})", path, line)
            seen[query_id] = line
        records.append(Query(query_id, resolve_image_path(image_dir, image, path, line, "q_img"), text, positives,
                             f"{path}:{line}"))
    if absent:
        raise CIRDataError(f"{len(absent)} query(ies) have a `positive_key` that is not in the corpus; it could "
                           f"never be retrieved (BGE-VL's script counts it as a miss): {first_few(absent)}", path)
    return records


def read_eval_set(data_dir: Path, image_dir: Path, task: Task, category: str, ks: Sequence[int],
                  on_missing: OnMissing = "error", max_short_edge: int | None = None,
                  ) -> tuple[QueryDataset, GalleryDataset, dict[str, Any]]:
    """The queries and corpus of a FashionIQ category (metrics ``mrr`` and ``positive_recall`` at ``ks``) or
    of CIRCO (no ground truth: rankings of depth 50), and each corpus id's ``content`` as the file has it.

    Example:
        >>> import tempfile
        >>> from cir_lightning.data.layouts.bgevl import read_eval_set
        >>> root = Path(tempfile.mkdtemp())
        >>> read_eval_set(root, root, "fashioniq", "shirt", [10])
        Traceback (most recent call last):
        ...
        cir_lightning.errors.CIRDataError: .../fashioniq_shirt_corpus.jsonl: corpus file does not exist; set `data_dir` ...
    """
    corpus_path, query_path = bgevl_files(data_dir, task, category)
    name = category if task == "fashioniq" else "circo"
    gallery, contents = read_corpus(corpus_path, image_dir)
    gallery = handle_missing(gallery, lambda g: [g.path], lambda g: f"{g.source} ({g.image_id!r})",
                             what=f"corpus images of {name}", where=corpus_path, on_missing=on_missing)
    rows = {g.image_id: i for i, g in enumerate(gallery)}
    with_positives = task == "fashioniq"
    queries = read_queries(query_path, image_dir, rows, name, with_positives)
    queries = handle_missing(queries, lambda q: [q.reference], lambda q: q.source, what=f"queries of {name}",
                             where=query_path, on_missing=on_missing)
    if with_positives:
        metrics = {"mrr": list(ks), "positive_recall": list(ks)}
        query_set = QueryDataset(queries, max_short_edge, name=name, metrics=metrics)
    else:
        query_set = QueryDataset(queries, max_short_edge, name=name, depth=CIRCO_DEPTH, has_ground_truth=False)
    return query_set, GalleryDataset(gallery, max_short_edge), contents


def console_report(metrics: Mapping[str, float], categories: Sequence[str], k: int = 100) -> str:
    """What ``eval_fashioniq.py`` prints: per category ``FashionIQ tasks (<category>):`` and its metrics dict
    (``MRR@K`` then ``Recall@K``), then ``<category>: R@10 / R@50`` in percent and ``overall`` (their mean,
    summed in the script's order); ``k`` is the script's ``--k`` (see ``cutoffs_within``).

    Example:
        >>> from cir_lightning.data.layouts.bgevl import console_report
        >>> m = {f"shirt/{name}@{K}": 0.5 for name in ("MRR", "PositiveRecall") for K in (1, 5, 10, 20, 50, 100)}
        >>> print(console_report(m, ["shirt"]))  # doctest: +ELLIPSIS
        FashionIQ tasks (shirt):
        {'MRR@1': 0.5, 'MRR@5': 0.5, ..., 'Recall@100': 0.5}
        shirt: 50.00 / 50.00
        overall: 50.00 / 50.00
    """
    at = cutoffs_within(k)
    lines, recalls = [], []
    for cat in categories:
        values = {f"{label}@{K}": metrics[f"{cat}/{name}@{at[K]}"]
                  for label, name in (("MRR", "MRR"), ("Recall", "PositiveRecall")) for K in EVAL_KS}
        lines += [f"FashionIQ tasks ({cat}):", repr({key: float(v) for key, v in values.items()})]
        recalls.append((values["Recall@10"], values["Recall@50"]))
    lines += [f"{cat}: {r10 * 100:.2f} / {r50 * 100:.2f}" for cat, (r10, r50) in zip(categories, recalls, strict=True)]
    if recalls:
        lines.append(f"overall: {_sum(r[0] for r in recalls) * 100 / len(recalls):.2f} / "
                     f"{_sum(r[1] for r in recalls) * 100 / len(recalls):.2f}")
    return "\n".join(lines)


def _sum(values: Any) -> float:
    total = 0.0
    for v in values:  # left to right, as the script's `a + b + c`
        total = total + v
    return total
