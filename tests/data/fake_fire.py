"""Tiny data in FiRE's release layout, where its example configs look for it (tests only).

Below ``folder``: ``data/images/<colour>.png`` (six plain images), ``data/annotations/fire_train.jsonl``
(8 training lines with captions), ``eval_queries.jsonl`` (6 queries: colour i -> colour i+1, the
reference in ``exclude_ids``) and ``eval_gallery.jsonl`` (the six images). ``fire_config`` copies one of
tests/fixtures/fire/*.yaml with the model swapped for a local tiny one (and no loader workers: the test
machine has two cores).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from PIL import Image

COLOURS = ["red", "green", "blue", "yellow", "white", "black"]
EXAMPLES = Path(__file__).resolve().parents[1] / "fixtures" / "fire"


def _jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def make_fake_fire_data(folder: Path) -> list[dict[str, Any]]:
    """Write the data below ``folder`` and return the evaluation queries."""
    images, annotations = folder / "data" / "images", folder / "data" / "annotations"
    images.mkdir(parents=True)
    annotations.mkdir(parents=True)
    for i, colour in enumerate(COLOURS):
        Image.new("RGB", (40 + 8 * i, 30), colour).save(images / f"{colour}.png")
    pairs = list(zip(COLOURS, COLOURS[1:] + COLOURS[:1], strict=True))
    _jsonl(annotations / "fire_train.jsonl",
           [{"reference_image": f"{a}.png", "target_image": f"{b}.png", "modification": f"make it {b}",
             "target_caption": f"a {b} image"} for a, b in pairs[:4] * 2])
    queries = [{"query_id": f"q{i}", "reference_image": f"{a}.png", "reference_id": a,
                "modification": f"make it {b}", "target_id": b, "exclude_ids": [a]} for i, (a, b) in enumerate(pairs)]
    _jsonl(annotations / "eval_queries.jsonl", queries)
    _jsonl(annotations / "eval_gallery.jsonl", [{"image_id": c, "image_path": f"{c}.png"} for c in COLOURS])
    return queries


def fire_config(example: str, folder: Path, model: Path, **changes: Any) -> Path:
    """``tests/fixtures/fire/<example>.example.yaml`` with ``model.base_model`` = ``model``, no loader
    workers and ``changes`` (dotted keys) applied, written to ``folder/<example>.yaml``."""
    config = yaml.safe_load((EXAMPLES / f"{example}.example.yaml").read_text())
    for key, value in {"model.base_model": str(model), "data.num_workers": 0, **changes}.items():
        *sections, leaf = key.split(".")
        node = config
        for section in sections:
            node = node.setdefault(section, {})
        node[leaf] = value
    path = folder / f"{example}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path
