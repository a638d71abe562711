"""A tiny fake CIRCO in the official layout, deterministic from a seed (run as a script to write one).

Real file formats, fake content: ``annotations/{val,test}.json`` with the official fields,
``COCO2017_unlabeled/annotations/image_info_unlabeled2017.json`` in COCO's image-info format and
``COCO2017_unlabeled/unlabeled2017/<12-digit id>.jpg`` images of a few pixels. Image ids are random
(not 0..N-1) so that ids, file names and gallery rows cannot be confused; query ids run from 0.

    python tests/data/fake_circo.py OUT_DIR
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

from PIL import Image

CONCEPTS = ["a teddy bear", "two people wearing a suit", "a red bus", "a cat on a sofa", "a kite in the sky"]
CAPTIONS = ["is held by a little girl", "wear blue ties", "is parked in the snow", "is asleep", "is green"]
ASPECTS = ["cardinality", "addition", "negation", "direct_addressing", "viewpoint"]


def make_fake_circo(root: str | Path, num_gallery: int = 60, num_val: int = 6, num_test: int = 5,
                    image_size: int = 8, seed: int = 0) -> Path:
    """Write the fake CIRCO under ``root`` and return it; val queries have 1-3 ground truths."""
    rng = random.Random(seed)
    root = Path(root)
    images = root / "COCO2017_unlabeled" / "unlabeled2017"
    images.mkdir(parents=True)
    (root / "COCO2017_unlabeled" / "annotations").mkdir()
    (root / "annotations").mkdir()
    ids = rng.sample(range(1, 600_000), num_gallery)
    infos = []
    for image_id in ids:
        name = f"{image_id:012d}.jpg"
        colour = tuple(rng.randrange(256) for _ in range(3))
        Image.new("RGB", (image_size, image_size), colour).save(images / name, quality=90)
        infos.append({"license": 1, "file_name": name, "coco_url": f"http://images.cocodataset.org/unlabeled2017/{name}",
                      "height": image_size, "width": image_size, "date_captured": "2013-11-14 11:18:45",
                      "id": image_id})
    info = {"info": {"description": "fake COCO 2017 unlabeled", "year": 2017}, "licenses": [{"id": 1, "name": "x"}],
            "images": infos, "categories": []}
    (root / "COCO2017_unlabeled" / "annotations" / "image_info_unlabeled2017.json").write_text(json.dumps(info))

    def query(qid: int) -> dict:
        return {"id": qid, "reference_img_id": rng.choice(ids), "relative_caption": rng.choice(CAPTIONS),
                "shared_concept": rng.choice(CONCEPTS)}

    val = []
    for qid in range(num_val):
        q = query(qid)
        gt = rng.sample([i for i in ids if i != q["reference_img_id"]], rng.randint(1, 3))
        val.append({"reference_img_id": q["reference_img_id"], "target_img_id": gt[0],
                    "relative_caption": q["relative_caption"], "shared_concept": q["shared_concept"],
                    "gt_img_ids": gt, "id": qid, "semantic_aspects": rng.sample(ASPECTS, 2)})
    (root / "annotations" / "val.json").write_text(json.dumps(val, indent=4))
    (root / "annotations" / "test.json").write_text(json.dumps([query(qid) for qid in range(num_test)], indent=4))
    return root


if __name__ == "__main__":
    print(make_fake_circo(sys.argv[1]))
