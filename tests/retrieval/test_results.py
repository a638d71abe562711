"""Results files and tables: names never cut (a file, a narrow terminal), the per-subset protocol record,
and splits without ground truth (rankings kept, no table)."""

from __future__ import annotations

import io
import json
import sys

import pytest
from rich.cells import cell_len

from cir_lightning.retrieval import EvalSubset
from cir_lightning.retrieval.results import format_table, report_results
from cir_lightning.retrieval.tables import output_width

# CIRR's columns: the long ones were cut to `Recall_subs…` when standard output was not a terminal
CIRR = {**{f"Recall@{k}": 0.1 * i for i, k in enumerate((1, 5, 10, 50), 1)},
        **{f"Recall_subset@{k}": 0.5 + 0.1 * k for k in (1, 2, 3)}, "Avg": 0.55,
        **{f"MRR@{k}": 0.05 * k for k in (1, 5, 10, 50)}}


def _cells(text: str) -> list[str]:
    """The cell texts of every table row in ``text``."""
    return [c.strip() for line in text.splitlines() if line.startswith(("┃", "│")) for c in line[1:-1].split(line[0])]


def test_a_table_written_to_a_file_keeps_every_name_whole_on_one_line(monkeypatch):
    monkeypatch.setattr(sys, "stdout", io.StringIO())  # not a terminal: no width limit
    assert output_width() is None
    text = format_table(CIRR, title="validate (val/...), percent")
    assert "…" not in text
    header = next(line for line in text.splitlines() if line.startswith("┃"))
    assert [c.strip() for c in header[1:-1].split("┃")] == ["subset", *CIRR]  # one table, every name whole
    assert "60.00" in text  # Recall_subset@1 = 0.6, in percent


@pytest.mark.parametrize("width", [40, 60, 100])
def test_a_narrow_terminal_gets_the_columns_wrapped_into_several_tables(width):
    text = format_table(CIRR, width=width)
    assert "…" not in text
    assert max(cell_len(line) for line in text.splitlines()) <= width
    cells = _cells(text)
    for name in CIRR:  # every metric once, in full, with its value
        assert cells.count(name) == 1
    assert cells.count("subset") == text.count("┏")  # each piece repeats the label column
    assert text.count("┏") > 1
    values = [c for c in cells if c.replace(".", "").isdigit()]
    assert values == [f"{100 * v:.2f}" for v in CIRR.values()]


def test_the_terminal_width_is_used_when_standard_output_is_one(monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr(sys, "stdout", Terminal())
    monkeypatch.setenv("COLUMNS", "50")
    assert output_width() == 50
    assert max(cell_len(line) for line in format_table(CIRR).splitlines()) <= 50


def _fashioniq_like() -> EvalSubset:
    return EvalSubset("dress", positives=[[1], [2], [2]], excluded=[[], [], [0]], num_gallery=200,
                      query_ids=["a", "b", "c"], gallery_ids=[f"g{i}" for i in range(200)],
                      metrics={"recall": [1, 5, 10, 20, 50, 100], "mrr": [10]})


def test_results_record_the_cutoffs_each_subset_really_used(tmp_path, capsys):
    subsets = [_fashioniq_like(), EvalSubset("", [[0]], [[]], 4)]  # the second uses the evaluator's Ks
    metrics = {"dress/Recall@10": 0.5, "Recall@1": 1.0}
    path = report_results(tmp_path, "validate", "val", metrics, subsets, model={}, config={"model": {}},
                          default_ks=[1, 3])
    protocol = json.loads(path.read_text())["protocol"]
    assert protocol["dress"]["metrics"] == {"recall": [1, 5, 10, 20, 50, 100], "mrr": [10]}
    assert protocol[""]["metrics"] == {"recall": [1, 3], "mrr": [1, 3]}
    # chance: one positive among 200 (199 for the query whose row 0 is excluded), the first K of a random order
    assert protocol["dress"]["chance"]["Recall@10"] == pytest.approx((10 / 200 + 10 / 200 + 10 / 199) / 3)
    assert protocol[""]["chance"] == {"Recall@1": 0.25, "Recall@3": 0.75}
    assert "Recall@10" in capsys.readouterr().out


def test_a_split_without_ground_truth_keeps_its_rankings_and_prints_no_table(tmp_path, capsys):
    sub = EvalSubset("", positives=None, excluded=[[0], [1]], num_gallery=3, query_ids=["p1", "p2"],
                     gallery_ids=["x", "y", "z"])
    rankings = {"": {"p1": ["z", "y"], "p2": ["x", "z"]}}
    path = report_results(tmp_path, "test", "test", {}, [sub], model={"class": "M"}, config={}, rankings=rankings)
    document = json.loads(path.read_text())
    assert document["rankings"] == rankings
    assert document["metrics"] == {}
    assert document["protocol"] == {"": {"metrics": {}, "chance": {}}}
    out = capsys.readouterr().out
    assert "┏" not in out
    assert "no public ground truth" in out
    assert f"results written to {path}" in out
