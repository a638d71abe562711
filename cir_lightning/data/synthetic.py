"""A synthetic composed-image-retrieval benchmark, drawn with PIL in seconds, deterministic from a seed.

Each image shows one object on a black background. A scene has four attributes: shape (4), colour (8),
size (2) and position on a 3 x 3 grid (9), so there are 576 distinct scenes and the gallery holds one
image of each. A query is a reference scene plus a text that changes exactly one attribute ("make it
red", "move it to the top left"); its target is the reference with that change. Every gallery image that
differs from the target in one attribute is a hard negative. Chance Recall@1 is 1/576 = 0.17 %.

The output is the custom JSONL layout (see ``cir_lightning.data.jsonl``)::

    root/images/scene_000.png ... scene_575.png
    root/train.jsonl            triplets with reference/target captions
    root/val_queries.jsonl      held-out (reference, modification) pairs, the reference excluded
    root/gallery.jsonl          all 576 scenes
    root/synthetic.json         the generator's arguments (used to refuse mismatching reuse)
"""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

from PIL import Image, ImageDraw

from cir_lightning.checks import non_negative_int, positive_int
from cir_lightning.data.images import DEFAULT_MAX_PIXELS
from cir_lightning.data.jsonl import JsonlCIRDataModule
from cir_lightning.errors import CIRConfigError, CIRDataError, CIRFileError
from cir_lightning.files import atomic_folder
from cir_lightning.messages import short_repr
from cir_lightning.reading import read_json
from cir_lightning.writable import exists_error

SHAPES = ["circle", "square", "triangle", "diamond"]
COLOURS = {
    "red": (230, 30, 30), "green": (30, 200, 40), "blue": (40, 70, 240), "yellow": (240, 230, 30),
    "purple": (150, 40, 200), "orange": (250, 140, 20), "white": (245, 245, 245), "cyan": (30, 220, 230),
}
SIZES = ["small", "large"]
POSITIONS = ["top left", "top", "top right", "left", "center", "right", "bottom left", "bottom", "bottom right"]
ATTRIBUTES = ("shape", "colour", "size", "position")
SCENES = list(itertools.product(SHAPES, COLOURS, SIZES, POSITIONS))
MAX_IMAGE_SIZE = 1024
"""The largest ``image_size``: 576 scenes of 1024 x 1024 pixels are already 1.7 GB of pixels."""

_TEMPLATES = {
    "colour": ["make it {v}", "change the colour to {v}", "paint it {v}", "make the object {v}"],
    "shape": ["turn it into a {v}", "make it a {v}", "change the shape to a {v}"],
    "position": ["move it to the {v}", "put it at the {v}", "move the object to the {v}"],
    "size": ["make it {v}", "make the object {v}"],
}
_SIZE_WORDS = {"small": ["small", "smaller"], "large": ["large", "bigger"]}


def scene_id(scene: tuple[str, str, str, str]) -> str:
    """The image id of a scene, e.g. ``scene_000``."""
    return f"scene_{SCENES.index(scene):03d}"


def caption(scene: tuple[str, str, str, str]) -> str:
    """A fine-grained caption: ``"a large red circle at the top left"``."""
    shape, colour, size, position = scene
    return f"a {size} {colour} {shape} at the {position}"


def draw_scene(scene: tuple[str, str, str, str], image_size: int = 64) -> Image.Image:
    """Render one scene as an RGB image of ``image_size`` pixels a side."""
    shape, colour, size, position = scene
    img = Image.new("RGB", (image_size, image_size), (0, 0, 0))
    draw = ImageDraw.Draw(img)
    cell = image_size / 3
    row, col = divmod(POSITIONS.index(position), 3)
    cx, cy = (col + 0.5) * cell, (row + 0.5) * cell
    r = cell * (0.45 if size == "large" else 0.22)
    fill = COLOURS[colour]
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "square":
        draw.rectangle([cx - r * 0.85, cy - r * 0.85, cx + r * 0.85, cy + r * 0.85], fill=fill)
    elif shape == "triangle":
        draw.polygon([(cx, cy - r), (cx - r, cy + r * 0.8), (cx + r, cy + r * 0.8)], fill=fill)
    else:
        draw.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=fill)
    return img


def _all_changes() -> list[tuple[tuple, str, str]]:
    changes = []
    options = {"shape": SHAPES, "colour": list(COLOURS), "size": SIZES, "position": POSITIONS}
    for scene in SCENES:
        for a, attr in enumerate(ATTRIBUTES):
            changes += [(scene, attr, v) for v in options[attr] if v != scene[a]]
    return changes


def make_synthetic_cir(out_dir: str | Path, seed: int = 0, num_train: int = 7400, num_val: int = 500,
                       image_size: int = 64) -> Path:
    """Write the synthetic benchmark to ``out_dir`` (which must not exist) and return its path.

    The folder appears complete or not at all: everything is written into a temporary folder beside it,
    which is renamed when done (``cir_lightning.files.atomic_folder``); a failure (a full disk) removes
    it and raises ``CIRFileError``. An existing ``out_dir`` is never touched.

    Args:
        out_dir: folder to create; it must not exist (an empty one is refused too).
        seed: seed of the split and of the modification wording.
        num_train: training triplets; ``num_train + num_val`` may not exceed 10944 (all single changes).
        num_val: validation queries, disjoint from the training (reference, change) pairs.
        image_size: side of the square images in pixels.

    Example:
        >>> from cir_lightning.data import make_synthetic_cir
        >>> import json
        >>> import tempfile
        >>> root = make_synthetic_cir(tempfile.mkdtemp() + "/d", num_train=5, num_val=3)
        >>> sorted(p.name for p in root.iterdir())
        ['gallery.jsonl', 'images', 'synthetic.json', 'train.jsonl', 'val_queries.jsonl']
        >>> json.loads((root / "train.jsonl").read_text().splitlines()[0])["target_caption"]
        'a small cyan square at the top left'
    """
    out = Path(out_dir)
    non_negative_int("num_train", num_train)
    positive_int("num_val", num_val)
    if positive_int("image_size", image_size) > MAX_IMAGE_SIZE:
        raise CIRConfigError(f"`image_size` = {image_size}: the benchmark draws 576 scenes of that side; at most "
                             f"{MAX_IMAGE_SIZE} (a model sees them shrunk anyway: `max_short_edge`)")
    changes = _all_changes()
    if num_train + num_val > len(changes):
        raise CIRDataError(f"`num_train` + `num_val` = {num_train + num_val} exceeds the {len(changes)} "
                           "distinct (scene, change) pairs")
    if out.exists():
        raise exists_error(out)
    rng = random.Random(seed)
    rng.shuffle(changes)

    def modify(scene: tuple, attr: str, value: str) -> tuple[tuple, str]:
        target = tuple(value if a == attr else v for a, v in zip(ATTRIBUTES, scene, strict=True))
        word = rng.choice(_SIZE_WORDS[value]) if attr == "size" else value
        return target, rng.choice(_TEMPLATES[attr]).format(v=word)

    gallery = [{"image_id": scene_id(scene), "image_path": f"images/{scene_id(scene)}.png"} for scene in SCENES]
    val = []
    for i, (scene, attr, value) in enumerate(changes[:num_val]):
        target, text = modify(scene, attr, value)
        ref = scene_id(scene)
        val.append({"query_id": f"val_{i:05d}", "reference_image": f"images/{ref}.png", "reference_id": ref,
                    "modification": text, "target_id": scene_id(target), "exclude_ids": [ref]})
    train = []
    for i, (scene, attr, value) in enumerate(changes[num_val:num_val + num_train]):
        target, text = modify(scene, attr, value)
        train.append({"sample_id": f"train_{i:05d}", "reference_image": f"images/{scene_id(scene)}.png",
                      "target_image": f"images/{scene_id(target)}.png", "modification": text,
                      "reference_id": scene_id(scene), "target_id": scene_id(target),
                      "reference_caption": caption(scene), "target_caption": caption(target)})
    args = {"seed": seed, "num_train": num_train, "num_val": num_val, "image_size": image_size}
    with atomic_folder(out) as tmp:
        (tmp / "images").mkdir()
        for scene in SCENES:
            draw_scene(scene, image_size).save(tmp / "images" / f"{scene_id(scene)}.png")
        for name, rows in (("gallery.jsonl", gallery), ("val_queries.jsonl", val), ("train.jsonl", train)):
            (tmp / name).write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        (tmp / "synthetic.json").write_text(json.dumps(args, indent=2) + "\n", encoding="utf-8")
    return out


class SyntheticCIRDataModule(JsonlCIRDataModule):
    """``JsonlCIRDataModule`` over the synthetic benchmark, generated in ``prepare_data`` when absent.

    An existing ``root`` is reused only if it was written by the generator with the same arguments;
    anything else there is left untouched and reported. The loader and image options are
    ``CIRDataModule``'s.

    Args:
        root: where the benchmark is (or will be written).
        seed: generator seed.
        num_train: training triplets.
        num_val: validation queries.
        image_size: image side in pixels.
        with_captions: put the reference / target captions into training samples.

    Example:
        >>> from cir_lightning.data import SyntheticCIRDataModule
        >>> import tempfile
        >>> dm = SyntheticCIRDataModule(tempfile.mkdtemp() + "/synthetic", num_train=8, num_val=4, batch_size=4)
        >>> dm.prepare_data()  # writes the benchmark; a later run reuses it
        >>> dm.setup("fit")
        >>> len(dm.train_set), len(dm.val_sets[0][0])
        (8, 4)
        >>> SyntheticCIRDataModule(str(dm.root), num_train=9, num_val=4).prepare_data()
        Traceback (most recent call last):
        ...
        cir_lightning.errors.CIRDataError: ...: holds synthetic data made with ..., not with ...
    """

    def __init__(self, root: str, seed: int = 0, num_train: int = 7400, num_val: int = 500,
                 image_size: int = 64, batch_size: int = 16, eval_batch_size: int | None = None,
                 num_workers: int = 0, max_short_edge: int | None = None, with_captions: bool = False,
                 max_image_pixels: int | None = DEFAULT_MAX_PIXELS) -> None:
        super().__init__(root, batch_size=batch_size, eval_batch_size=eval_batch_size, num_workers=num_workers,
                         max_short_edge=max_short_edge, with_captions=with_captions, max_image_pixels=max_image_pixels)
        self.generator_args = {"seed": seed, "num_train": num_train, "num_val": num_val, "image_size": image_size}

    def prepare_data(self) -> None:
        if not self.root.exists():
            try:
                make_synthetic_cir(self.root, **self.generator_args)
                return
            except (CIRDataError, CIRFileError):
                if not self.root.exists():
                    raise
            # another process wrote it meanwhile: reuse it as any existing folder, if it fits
        marker = self.root / "synthetic.json"
        if not marker.is_file():
            raise CIRDataError("exists but was not written by the synthetic generator; choose another `root`",
                               self.root)
        made_with = read_json(marker, "marker file of the synthetic generator")
        if made_with != self.generator_args:
            raise CIRDataError(
                f"holds synthetic data made with {short_repr(made_with)}, not with {self.generator_args}; "
                "choose another `root` or delete it yourself", self.root)
