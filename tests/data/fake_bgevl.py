"""Fake BGE-VL evaluation data and a tiny CLIP in BGE-VL's published checkpoint layout, generated from a seed.

Data (the field layout of FlagEmbedding's ``research/BGE_VL/eval/data``)::

    <data_dir>/fashioniq_<cat>_corpus.jsonl     {"content": "B00...", "image": "./images/B00....png"}
    <data_dir>/fashioniq_<cat>_query_val.jsonl  {"q_img", "q_text", "positive_key", "positive_value", "hn_image"}
    <data_dir>/circo_corpus.jsonl               {"content": <int>, "image": "<12 digits>.jpg"}
    <data_dir>/circo_query.jsonl                {"id", "q_img", "q_text"}
    <image_dir>/images/<id>.png, <image_dir>/<12 digits>.jpg

Each category has ``num_corpus`` images and ``num_queries`` queries whose reference is a corpus image (as
in the real files) and whose ``positive_key`` is one id, or for every third query a list of two.

Checkpoint: the files of ``BAAI/BGE-VL-base`` / ``-large`` (config.json with ``auto_map`` pointing at
``modeling_MMRet_CLIP.CLIPModel``, model.safetensors, modeling_MMRet_CLIP.py, preprocessor_config.json,
special_tokens_map.json, tokenizer.json, tokenizer_config.json, vocab.json, merges.txt; no
processor_config.json), built from the tiny random CLIP. Its modeling file raises when imported: a loader
that ran the checkpoint's own code would fail.

    python -m tests.data.fake_bgevl OUT_DIR     # writes data/, images and bge-vl-tiny/ with the defaults
"""

from __future__ import annotations

import json
import random
import shutil
import string
import sys
from pathlib import Path

from PIL import Image

CATEGORIES = ("shirt", "dress", "toptee")
_WORDS = ["is red", "is blue and longer", "has short sleeves", "is darker", "has a print", "is plain",
          "has stripes", "is lighter, and shorter", "is sleeveless?", "has a collar."]


def _image(rng: random.Random, path: Path) -> None:
    """A 16x16 image of two random colours (so that tiny models tell images apart)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", (16, 16), tuple(rng.randrange(256) for _ in range(3)))
    image.paste(tuple(rng.randrange(256) for _ in range(3)), (rng.randrange(8), rng.randrange(8), 16, 16))
    image.save(path)


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def make_fake_bgevl(data_dir: str | Path, image_dir: str | Path, *, seed: int = 0,
                    categories: tuple[str, ...] = CATEGORIES, num_corpus: int = 24, num_queries: int = 8,
                    circo: bool = True) -> Path:
    """Write the fake files to ``data_dir`` and their images below ``image_dir``; returns ``data_dir``."""
    data_dir, image_dir = Path(data_dir), Path(image_dir)
    rng = random.Random(seed)
    used: set[str] = set()

    def new_id() -> str:
        while (image_id := "B00" + "".join(rng.choices(string.ascii_uppercase + string.digits, k=7))) in used:
            pass
        used.add(image_id)
        return image_id

    for cat in categories:
        ids = [new_id() for _ in range(num_corpus)]
        for image_id in ids:
            _image(rng, image_dir / "images" / f"{image_id}.png")
        _write_jsonl(data_dir / f"fashioniq_{cat}_corpus.jsonl",
                     [{"content": i, "image": f"./images/{i}.png"} for i in ids])
        queries = []
        for n in range(num_queries):
            reference, target, other = rng.sample(ids, 3)
            key = [target, other] if n % 3 == 2 else target
            queries.append({"q_img": f"./images/{reference}.png",
                            "q_text": f"{rng.choice(_WORDS)}, and {rng.choice(_WORDS)}",
                            "positive_key": key, "positive_value": f"./images/{target}.png",
                            "hn_image": [f"./images/{reference}.png"]})
        _write_jsonl(data_dir / f"fashioniq_{cat}_query_val.jsonl", queries)
    if circo:
        ids = rng.sample(range(1, 600000), num_corpus)
        for image_id in ids:
            _image(rng, image_dir / f"{image_id:012d}.jpg")
        _write_jsonl(data_dir / "circo_corpus.jsonl", [{"content": i, "image": f"{i:012d}.jpg"} for i in ids])
        _write_jsonl(data_dir / "circo_query.jsonl",
                     [{"id": n, "q_img": f"{rng.choice(ids):012d}.jpg",
                       "q_text": f"Find a picture that also {rng.choice(_WORDS)}, but {rng.choice(_WORDS)}."}
                      for n in range(num_queries)])
    return data_dir


def make_bgevl_clip(out_dir: str | Path, seed: int = 0) -> Path:
    """A tiny random CLIP in BGE-VL-base / -large's published file layout at ``out_dir``."""
    from cir_lightning.backbones.tiny import make_tiny_dual_encoder

    out = Path(out_dir)
    source = make_tiny_dual_encoder(out.with_name(out.name + "-source"), seed=seed)
    out.mkdir(parents=True)
    config = json.loads((source / "config.json").read_text())
    config["auto_map"] = {"AutoModel": "modeling_MMRet_CLIP.CLIPModel"}
    (out / "config.json").write_text(json.dumps(config, indent=2))
    shutil.copy(source / "model.safetensors", out / "model.safetensors")
    (out / "modeling_MMRet_CLIP.py").write_text('raise RuntimeError("the checkpoint\'s own code must not run")\n')
    processor = json.loads((source / "processor_config.json").read_text())
    (out / "preprocessor_config.json").write_text(json.dumps(processor["image_processor"], indent=2))
    tokenizer = json.loads((source / "tokenizer.json").read_text())
    (out / "tokenizer.json").write_text(json.dumps(tokenizer))
    (out / "vocab.json").write_text(json.dumps(tokenizer["model"]["vocab"]))
    merges = tokenizer["model"]["merges"]
    (out / "merges.txt").write_text("#version: 0.2\n" + "".join(
        (" ".join(m) if isinstance(m, list) else m) + "\n" for m in merges))
    tokenizer_config = json.loads((source / "tokenizer_config.json").read_text())
    tokenizer_config.pop("processor_class", None)
    (out / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2))
    special = {k: tokenizer_config[k] for k in ("bos_token", "eos_token", "pad_token", "unk_token")}
    (out / "special_tokens_map.json").write_text(json.dumps(special, indent=2))
    shutil.rmtree(source)
    return out


if __name__ == "__main__":
    root = Path(sys.argv[1])
    make_fake_bgevl(root / "data", root)
    print(make_bgevl_clip(root / "bge-vl-tiny"))
