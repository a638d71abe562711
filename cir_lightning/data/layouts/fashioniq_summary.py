"""FashionIQ's reported numbers: the average over categories (with the benchmark's ``Recall@10+50``) and the
BGE-VL script's summary lines."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

__all__ = ["average_over_categories", "summary_lines"]


def average_over_categories(metrics: Mapping[str, float], categories: Sequence[str]) -> dict[str, float]:
    """``average/<metric>`` over ``categories`` for each metric all of them have, plus
    ``average/Recall@10+50`` = (average R@10 + average R@50) / 2; nothing unless every category is there.

    Example:
        >>> from cir_lightning.data.layouts.fashioniq_summary import average_over_categories
        >>> m = {"dress/Recall@10": 0.2, "dress/Recall@50": 0.4,
        ...      "shirt/Recall@10": 0.3, "shirt/Recall@50": 0.6}
        >>> {k: round(v, 3) for k, v in average_over_categories(m, ["dress", "shirt"]).items()}
        {'average/Recall@10': 0.25, 'average/Recall@50': 0.5, 'average/Recall@10+50': 0.375}
        >>> average_over_categories(m, ["dress", "toptee"])
        {}
    """
    per = [{k[len(c) + 1:]: v for k, v in metrics.items() if k.startswith(f"{c}/")} for c in categories]
    if not per or not all(per):
        return {}
    common = [name for name in per[0] if all(name in p for p in per)]
    out = {f"average/{name}": sum(p[name] for p in per) / len(per) for name in common}
    if "average/Recall@10" in out and "average/Recall@50" in out:
        out["average/Recall@10+50"] = (out["average/Recall@10"] + out["average/Recall@50"]) / 2
    return out


def summary_lines(metrics: Mapping[str, float], categories: Sequence[str]) -> list[str]:
    """The BGE-VL script's summary: ``<category>: R@10 / R@50`` in percent, then ``overall`` (their mean).

    Example:
        >>> from cir_lightning.data.layouts.fashioniq_summary import summary_lines
        >>> summary_lines({"dress/Recall@10": 0.45671, "dress/Recall@50": 0.6789}, ["dress"])
        ['dress: 45.67 / 67.89', 'overall: 45.67 / 67.89']
    """
    rows = [(c, metrics[f"{c}/Recall@10"], metrics[f"{c}/Recall@50"]) for c in categories
            if f"{c}/Recall@10" in metrics and f"{c}/Recall@50" in metrics]
    lines = [f"{c}: {100 * r10:.2f} / {100 * r50:.2f}" for c, r10, r50 in rows]
    if rows and len(rows) == len(categories):
        lines.append(f"overall: {100 * sum(r[1] for r in rows) / len(rows):.2f} / "
                     f"{100 * sum(r[2] for r in rows) / len(rows):.2f}")
    return lines
