"""A seeded generator of a tiny fake CIRR copy in the official layout (tests only).

Real file formats, smaller numbers::

    <annotations>/captions/cap.rc2.{train,val,test1}.json     pairs: pairid, reference, caption, img_set
                                                             (+ target_hard, target_soft but in test1)
    <annotations>/image_splits/split.rc2.{split}.json         {name: "./dev/dev-3-1-img0.png", ...}
    <images>/train/<k>/train-*.png, <images>/dev/dev-*.png, <images>/test1/test1-*.png   8x8 PNGs

Images come in sets of 6 (CIRR's img_set); every pair takes its reference (and target) from one set.
``images`` says where the image folders go, relative to the annotation folder: ``"root"`` (inside it),
``"img_raw"`` / ``"images"`` (in that sub-folder), ``"beside"`` (next to it: the annotations are then
``<folder>/cirr``), ``"elsewhere"`` (``<folder>/pictures``, found only with an explicit ``image_root``).

    python -m tests.data.fake_cirr OUT_DIR      # writes a copy, prints the annotation root
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path
from typing import Literal

from PIL import Image

Layout = Literal["root", "img_raw", "images", "beside", "elsewhere"]
PREFIX = {"train": "train", "val": "dev", "test1": "test1"}  # split -> image folder and name prefix
WORDS = ["red", "dog", "two", "bigger", "grass", "remove", "the", "cat", "add", "left", "darker", "a", "car"]


def image_dir(folder: Path, images: Layout) -> Path:
    """Where ``make_fake_cirr(folder, images=...)`` puts the train/ dev/ test1/ folders."""
    return {"root": folder, "img_raw": folder / "img_raw", "images": folder / "images", "beside": folder,
            "elsewhere": folder / "pictures"}[images]


def make_fake_cirr(folder: str | Path, *, seed: int = 0, images: Layout = "img_raw",
                   num_sets: dict[str, int] | None = None, num_pairs: dict[str, int] | None = None,
                   size: int = 8) -> Path:
    """Write the fake copy under ``folder`` and return its annotation root.

    Args:
        folder: output folder (created).
        seed: everything (names, pairs, captions, pixels) follows from it.
        images: where the image folders go (see the module docstring).
        num_sets: image sets of 6 per split (default train 4, val 10, test1 10: 60 images, enough for
            the 50-long test submission lists).
        num_pairs: pairs per split (default train 8, val 6, test1 6).
        size: image side in pixels.
    """
    folder = Path(folder)
    root = folder / "cirr" if images == "beside" else folder
    pictures = image_dir(folder, images)
    sets = {"train": 4, "val": 10, "test1": 10, **(num_sets or {})}
    pairs_per = {"train": 8, "val": 6, "test1": 6, **(num_pairs or {})}
    rng = random.Random(seed)
    (root / "captions").mkdir(parents=True, exist_ok=True)
    (root / "image_splits").mkdir(parents=True, exist_ok=True)
    pairid = 0
    for split, prefix in PREFIX.items():
        split_file, groups = {}, []
        for s in range(sets[split]):
            group = [f"{prefix}-{100 + s}-{i % 2}-img{i // 2}" for i in range(6)]
            rng.shuffle(group)
            groups.append(group)
            for name in group:
                sub = f"{s % 3}/" if split == "train" else ""  # the real train folder has numbered sub-folders
                rel = f"./{prefix}/{sub}{name}.png"
                split_file[name] = rel
                path = pictures / rel
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.new("RGB", (size, size), tuple(rng.randrange(256) for _ in range(3))).save(path)
        entries = []
        for p in range(pairs_per[split]):
            members = groups[p % len(groups)]
            reference, target = rng.sample(members, 2)
            entry = {"pairid": pairid, "reference": reference,
                     "caption": " ".join(rng.choices(WORDS, k=rng.randint(3, 8))),
                     "img_set": {"id": p % len(groups), "members": list(members),
                                 "reference_rank": members.index(reference)}}
            if split != "test1":
                other = rng.choice([m for m in members if m not in (reference, target)])
                entry["target_hard"] = target
                entry["target_soft"] = {target: 1.0, other: rng.choice([0.5, -1.0])}
                entry["img_set"]["target_rank"] = members.index(target)
            entries.append(entry)
            pairid += 1
        (root / "captions" / f"cap.rc2.{split}.json").write_text(json.dumps(entries, indent=4))
        (root / "image_splits" / f"split.rc2.{split}.json").write_text(json.dumps(split_file, indent=4))
    return root


if __name__ == "__main__":
    print(make_fake_cirr(sys.argv[1]))
