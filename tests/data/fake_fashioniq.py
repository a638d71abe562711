"""A tiny fake FashionIQ in the official layout, generated from a seed (real JSON formats, 8x8 images).

Per category: ``num_train`` training triplets over ``num_train + 1`` images (triplet i: image i -> i+1);
``num_val`` val queries over the first ``num_val`` val images (query i: image i -> image (i+1) mod
num_val) and ``num_extra`` more val images that are in ``split.<cat>.val.json`` but in no val pair (so
a test can tell the whole-split gallery from the "VAL protocol" one); a test split without targets.

    python -m tests.data.fake_fashioniq OUT_DIR     # writes one with the defaults
"""

from __future__ import annotations

import json
import random
import string
import sys
from pathlib import Path
from typing import Literal

from PIL import Image

CATEGORIES = ("dress", "shirt", "toptee")
_COLOURS = ["red", "blue", "green", "black", "white", "pink", "grey", "yellow"]
_PARTS = ["sleeves", "a collar", "buttons", "a print", "stripes", "a belt", "pockets", "a hood"]
_TEMPLATES = ["is {c}", "is {c} and shorter", "has {p}", "has {p} and is {c}", "is more {c}", "lacks {p}"]


def _caption(rng: random.Random, stray_whitespace: bool) -> str:
    text = rng.choice(_TEMPLATES).format(c=rng.choice(_COLOURS), p=rng.choice(_PARTS))
    text += rng.choice(["", ".", "?", " ."])
    if stray_whitespace:
        text = rng.choice([" ", "", "\n"]) + text + rng.choice([" ", "  ", "\t"])
    return text


def make_fake_fashioniq(
    root: str | Path,
    *,
    seed: int = 0,
    categories: tuple[str, ...] = CATEGORIES,
    num_train: int = 6,
    num_val: int = 5,
    num_extra: int = 3,
    ext: Literal["png", "jpg", "mixed"] = "png",
    per_category_folder: bool = False,
    stray_whitespace: bool = False,
    image_size: int = 8,
) -> Path:
    """Write the fake dataset under ``root`` and return ``root``.

    Args:
        root: output folder (created).
        seed: everything (ids, captions, colours) follows from it.
        categories: the categories written.
        num_train: training triplets per category.
        num_val: val queries per category.
        num_extra: val gallery images per category that are in no val pair.
        ext: image file type; ``mixed`` alternates .png and .jpg between images.
        per_category_folder: put images under ``images/<category>/`` instead of ``images/``.
        stray_whitespace: surround every val and train caption with stray whitespace.
        image_size: side of the square images.
    """
    root = Path(root)
    rng = random.Random(seed)
    for sub in ("captions", "image_splits", "images"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    used: set[str] = set()

    def new_id() -> str:
        while True:
            image_id = "B00" + "".join(rng.choices(string.ascii_uppercase + string.digits, k=7))
            if image_id not in used:
                used.add(image_id)
                return image_id

    def write(name: str, data: object) -> None:
        (root / name).write_text(json.dumps(data, indent=1))

    count = 0
    for cat in categories:
        folder = root / "images" / cat if per_category_folder else root / "images"
        folder.mkdir(parents=True, exist_ok=True)
        train = [new_id() for _ in range(num_train + 1)]
        val = [new_id() for _ in range(num_val + num_extra)]
        test = [new_id() for _ in range(3)]
        for image_id in train + val + test:
            suffix = ext if ext != "mixed" else ("png", "jpg")[count % 2]
            count += 1
            colour = tuple(rng.randrange(256) for _ in range(3))
            Image.new("RGB", (image_size, image_size), colour).save(folder / f"{image_id}.{suffix}")

        def captions() -> list[str]:
            return [_caption(rng, stray_whitespace), _caption(rng, stray_whitespace)]

        write(f"captions/cap.{cat}.train.json",
              [{"target": train[i + 1], "candidate": train[i], "captions": captions()}
               for i in range(num_train)])
        write(f"captions/cap.{cat}.val.json",
              [{"target": val[(i + 1) % num_val], "candidate": val[i], "captions": captions()}
               for i in range(num_val)])
        write(f"captions/cap.{cat}.test.json", [{"candidate": test[0], "captions": captions()}])
        write(f"image_splits/split.{cat}.train.json", train)
        write(f"image_splits/split.{cat}.val.json", val)
        write(f"image_splits/split.{cat}.test.json", test)
    return root


if __name__ == "__main__":
    print(make_fake_fashioniq(sys.argv[1]))
