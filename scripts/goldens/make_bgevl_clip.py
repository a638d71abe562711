"""Write the goldens of BGE-VL-base / -large (MMRet CLIP) with the ORIGINAL code: FlagOpen/FlagEmbedding
``research/BGE_VL`` (``modeling_MMRet_CLIP.py``, the hub's remote code, and ``eval/flag_mmret.py``, its
evaluation), imported from a checkout, in a side environment with the transformers of its era (4.45.2,
which BGE-VL's README recommends). Run it there, not in the project's environment:

    python3 -m venv /work/venvs/bgevl_clip && /work/venvs/bgevl_clip/bin/pip install torch==2.13.0 \\
        transformers==4.45.2 pillow numpy safetensors tqdm
    /work/venvs/bgevl_clip/bin/python scripts/goldens/make_bgevl_clip.py \\
        --original /work/originals/flagembedding --commit "$(git --git-dir=... rev-parse HEAD)"

For each size it builds a tiny random CLIP in the published layout (``config.json`` with ``auto_map`` ->
``modeling_MMRet_CLIP.CLIPModel``, legacy ``eos_token_id: 2`` of the OpenAI CLIP configs they were trained
from, a CLIP BPE tokenizer laid out like CLIP's (bytes, bytes + ``</w>``, merges, then ``<|startoftext|>``
and ``<|endoftext|>``, the largest id), a ``CLIPImageProcessor``), base and large differing as the real ones
do (patch 16 vs 14, projection = text width, ...), scaled down. The golden keeps every file but the weights
(``recipe.json`` rebuilds them) and the modeling file (our loader must not need it; here it is copied from
the checkout into the temporary folder, where ``trust_remote_code=True`` loads it as the hub's does).

Outputs (float32, ``outputs.npz``), two ways the original embeds, both on the shared inputs:

- ``readme_*``: the README / hub usage: ``AutoModel.from_pretrained(..., trust_remote_code=True)``,
  ``set_processor``, ``model.encode(images=paths)`` (gallery), ``encode(text=captions)`` (text),
  ``encode(images=paths, text=modifications)`` (composed queries, text + image features, normalised).
- ``eval_*``: the evaluation, ``Flag_mmret(model_name, use_fp16=False, image_dir)`` (``AutoModel`` without
  remote code = transformers' ``CLIPModel``; ``AutoTokenizer``; ``CLIPImageProcessor``):
  ``encode_corpus(corpus_type="image")``, ``encode_queries(query_type="mm_it")`` whose collator cuts query
  text at 75 tokens, ``encode_text(max_length=77)``. Queries and texts get one more item, a text longer
  than 77 tokens (``long_modification`` with image 0, ``long_caption``), which the README path cannot take.
- ``eval_query_input_ids`` / ``eval_text_input_ids``: the token ids the evaluation fed (for diagnosis).
- ``*_eager``: the same two ``eval`` embeddings, gallery and queries, with eager attention.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import sys
import tempfile
import types
from collections import Counter
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests" / "goldens"))
import recipe  # noqa: E402

REPOSITORY = "https://github.com/FlagOpen/FlagEmbedding"
FILES = ["research/BGE_VL/modeling_MMRet_CLIP.py", "research/BGE_VL/eval/flag_mmret.py",
         "research/BGE_VL/eval/flag_dataset.py"]
LONG_MODIFICATION = (
    "is a much longer dress with no sleeves at all, a deep blue colour instead of red, a wide floral pattern "
    "across the whole front, small white buttons down the back, a thin brown leather belt at the waist, two "
    "deep pockets on the sides, a round neckline with lace trim, and a light flowing skirt that reaches the "
    "ankles, worn with sandals, a straw hat and a small woven bag on a sunny beach at noon")
LONG_CAPTION = (
    "A long sleeveless dress in deep blue with a wide floral pattern across the front, small white buttons "
    "down the back, a thin brown leather belt at the waist, two deep pockets on the sides, a round neckline "
    "with lace trim and a light flowing skirt reaching the ankles, worn with sandals and a straw hat by a "
    "woman walking on a sunny beach at noon next to the sea")
# tiny stand-ins of CLIP ViT-B/16 (BGE-VL-base) and ViT-L/14 (BGE-VL-large): patch 16 vs 14, the text
# tower narrower than the vision tower, projection = text width, vision deeper for large
SIZES = {
    "bgevl_base": {"seed": 1601, "projection_dim": 32, "image_size": 48,
                   "vision": {"hidden_size": 48, "intermediate_size": 192, "num_hidden_layers": 2,
                              "num_attention_heads": 4, "patch_size": 16},
                   "text": {"hidden_size": 32, "intermediate_size": 128, "num_hidden_layers": 2,
                            "num_attention_heads": 4}},
    "bgevl_large": {"seed": 1402, "projection_dim": 48, "image_size": 42,
                    "vision": {"hidden_size": 64, "intermediate_size": 256, "num_hidden_layers": 3,
                               "num_attention_heads": 4, "patch_size": 14},
                    "text": {"hidden_size": 48, "intermediate_size": 192, "num_hidden_layers": 2,
                             "num_attention_heads": 4}},
}
NUM_MERGES = 160


def bytes_to_unicode() -> dict[int, str]:
    """CLIP's (GPT-2's) byte -> printable character table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs), strict=True))


def write_clip_bpe(folder: Path, corpus: list[str]) -> None:
    """``vocab.json`` + ``merges.txt`` in CLIP's layout, with merges learnt greedily from ``corpus``."""
    table = bytes_to_unicode()
    words = Counter()
    for text in corpus:
        for word in re.findall(r"[^\W\d_]+|\d|[^\s\w]+", text.lower()):
            chars = [table[b] for b in word.encode("utf-8")]
            words[tuple(chars[:-1] + [chars[-1] + "</w>"])] += 1
    merges: list[tuple[str, str]] = []
    for _ in range(NUM_MERGES):
        pairs = Counter()
        for symbols, count in words.items():
            for pair in zip(symbols, symbols[1:], strict=False):
                pairs[pair] += count
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))  # most frequent, ties by the pair itself
        merges.append(best)
        merged = Counter()
        for symbols, count in words.items():
            out, i = [], 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                    out.append(symbols[i] + symbols[i + 1])
                    i += 2
                else:
                    out.append(symbols[i])
                    i += 1
            merged[tuple(out)] += count
        words = merged
    vocab = list(table.values())
    vocab += [v + "</w>" for v in vocab]
    vocab += ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges),
                                       encoding="utf-8")


def build_checkpoint(folder: Path, size: dict) -> None:
    """The tiny checkpoint, saved by this environment's transformers as the published one was."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizerFast

    texts = recipe.load_texts()
    vocab_dir = folder.parent / (folder.name + "-vocab")
    vocab_dir.mkdir()
    write_clip_bpe(vocab_dir, texts["modifications"] + texts["captions"] + [LONG_MODIFICATION, LONG_CAPTION])
    tokenizer = CLIPTokenizerFast(vocab_file=str(vocab_dir / "vocab.json"),
                                  merges_file=str(vocab_dir / "merges.txt"), model_max_length=77)
    side = size["image_size"]
    image_processor = CLIPImageProcessor(size={"shortest_edge": side}, crop_size={"height": side, "width": side})
    text = {**size["text"], "vocab_size": len(tokenizer), "max_position_embeddings": 77, "hidden_act": "quick_gelu",
            "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1}  # as OpenAI's CLIP configs have them
    vision = {**size["vision"], "image_size": side, "hidden_act": "quick_gelu"}
    config = CLIPConfig(text_config=text, vision_config=vision, projection_dim=size["projection_dim"])
    config.architectures = ["CLIPModel"]
    config.auto_map = {"AutoModel": "modeling_MMRet_CLIP.CLIPModel"}
    CLIPModel(config).save_pretrained(folder, safe_serialization=True)
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)
    shutil.rmtree(vocab_dir)


def readme_outputs(folder: Path) -> dict[str, torch.Tensor]:
    """BGE-VL's README: the hub's remote code, ``set_processor`` and ``encode``."""
    from transformers import AutoModel

    texts, paths = recipe.load_texts(), [str(p) for p in recipe.image_paths()]
    model = AutoModel.from_pretrained(str(folder), trust_remote_code=True)
    assert type(model).__module__.endswith("modeling_MMRet_CLIP"), type(model).__module__
    # loading remote code registers its class for CLIPConfig in AutoModel for the rest of the process; undo
    # that, so that Flag_mmret's AutoModel (no remote code) gets transformers' CLIPModel, as in its own run
    AutoModel._model_mapping._extra_content.pop(type(model.config), None)
    model.set_processor(str(folder))
    model.eval()
    with torch.no_grad():
        return {"readme_gallery": model.encode(images=paths),
                "readme_text": model.encode(text=texts["captions"]),
                "readme_query": model.encode(images=paths, text=texts["modifications"])}


def eval_outputs(folder: Path, eval_dir: Path) -> dict[str, torch.Tensor]:
    """BGE-VL's evaluation (``eval_fashioniq.py`` / ``eval_Circo.py``): ``Flag_mmret``, float32."""
    if "datasets" not in sys.modules:  # flag_dataset imports it but never uses it
        try:
            import datasets  # noqa: F401
        except ImportError:
            sys.modules["datasets"] = types.ModuleType("datasets")
    sys.path.insert(0, str(eval_dir))
    from flag_dataset import MMIT_Collator
    from flag_mmret import Flag_mmret

    texts = recipe.load_texts()
    names = [p.name for p in recipe.image_paths()]
    flag = Flag_mmret(model_name=str(folder), use_fp16=False, image_dir=str(recipe.INPUTS / "images"))
    assert type(flag.model).__module__ == "transformers.models.clip.modeling_clip", type(flag.model).__module__
    assert flag.model.config._attn_implementation == "sdpa"  # this transformers' default, as ours
    modifications = texts["modifications"] + [LONG_MODIFICATION]
    captions = texts["captions"] + [LONG_CAPTION]
    query_images = names + names[:1]
    out = {}
    for suffix, attention in (("", None), ("_eager", "eager")):
        if attention:  # the same model, loaded again with another attention implementation
            flag.model = type(flag.model).from_pretrained(str(folder), attn_implementation=attention).eval()
            assert flag.model.config._attn_implementation == attention
        out["eval_gallery" + suffix] = flag.encode_corpus({"image": names}, corpus_type="image")
        out["eval_query" + suffix] = flag.encode_queries([modifications, query_images], query_type="mm_it")
        if not attention:
            out["eval_text"] = flag.encode_text(captions, max_length=77)
    pixels = {"pixel_values": [np.zeros((3, 2, 2), np.float32)]}  # the collator's tokens, without images
    q = MMIT_Collator(flag.tokenizer, caption_max_len=75)([(m, pixels) for m in modifications])[0]
    t = flag.tokenizer(captions, padding=True, truncation=True, return_tensors="pt", max_length=77)
    out.update(eval_query_input_ids=q["input_ids"], eval_text_input_ids=t["input_ids"])
    return {k: torch.as_tensor(v) for k, v in out.items()}


def make(name: str, size: dict, original: Path, commit: str, out: Path, command: str) -> None:
    golden = out / name
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / name
        build_checkpoint(folder, size)
        recipe.write_recipe(folder, golden, size["seed"])
        shutil.copy(original / "research/BGE_VL/modeling_MMRet_CLIP.py", folder)  # as the hub has it
        outputs = {**eval_outputs(folder, original / "research/BGE_VL/eval"), **readme_outputs(folder)}
    for key, value in outputs.items():
        if value.is_floating_point():
            assert torch.isfinite(value).all(), key
    recipe.save_outputs(golden, long_modification=np.array(LONG_MODIFICATION),
                        long_caption=np.array(LONG_CAPTION), **outputs)
    notes = ("readme_*: AutoModel(trust_remote_code=True) + set_processor + encode; eval_*: Flag_mmret "
             "(use_fp16=False; transformers' CLIPModel, AutoTokenizer, CLIPImageProcessor; query text cut at "
             "75 tokens by MMIT_Collator, encode_text max_length=77), default (sdpa) attention; *_eager: the "
             "same with eager attention. Extra item: long_modification (with image 0) and long_caption. "
             f"Tiny config: {json.dumps(size)}. `datasets` (imported, unused by flag_dataset) stubbed if absent.")
    recipe.write_provenance(golden, REPOSITORY, commit, FILES,
                            ["torch", "transformers", "tokenizers", "numpy", "pillow", "safetensors"],
                            command, notes)
    print(f"{golden}: " + ", ".join(f"{k} {tuple(v.shape)}" for k, v in outputs.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--original", type=Path, required=True, help="checkout holding research/BGE_VL")
    parser.add_argument("--commit", required=True, help="the checkout's commit")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[2] / "tests" / "goldens")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # Flag_mmret forks DataLoader workers
    torch.manual_seed(0)
    torch.set_num_threads(1)  # CPU kernels split work by thread count; the test runs on one thread too
    command = "python scripts/goldens/make_bgevl_clip.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    with tempfile.TemporaryDirectory() as modules:
        os.environ["HF_MODULES_CACHE"] = modules  # the remote code's import cache, not the user's
        for name, size in SIZES.items():
            make(name, size, args.original.resolve(), args.commit, args.out, command)


if __name__ == "__main__":
    main()
