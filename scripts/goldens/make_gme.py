"""Write the GME golden: the ORIGINAL ``GmeQwen2VL`` (the hub's ``gme_inference.py`` of
Alibaba-NLP/gme-Qwen2-VL-2B-Instruct) embedding the shared inputs with a tiny random Qwen2-VL checkpoint.

Runs in a side environment with the transformers the original needs (< 4.52: it calls the text decoder as
``Qwen2VLForConditionalGeneration.model``), never the project's::

    python3 -m venv /work/venvs/gme
    /work/venvs/gme/bin/pip install torch==2.13.0            # first: the CPU wheel
    /work/venvs/gme/bin/pip install transformers==4.51.3 pillow numpy safetensors tqdm requests
    /work/venvs/gme/bin/python scripts/goldens/make_gme.py --original /path/to/gme_inference.py \\
        --commit <commit of the copy> [--repository owner/name] [--out tests/goldens/gme]

The checkpoint is built here with the side transformers (a Qwen2 byte-level BPE tokenizer trained offline,
Qwen2-VL's default image processor limits, a 2-layer decoder and 2-block vision tower), its weights are
replaced by the seeded ones of ``tests/goldens/recipe.py``, and the original loads that folder. Its only
change: ``AutoModelForVision2Seq.from_pretrained`` inside the original's module is wrapped so the model
loads in float32 (the original hard-codes ``torch_dtype=torch.float16``) with eager attention; everything
else (``fetch_image``'s resize, the processor with ``min/max_image_tokens`` at their defaults 256 / 1280,
the prompt, the right padding, the pooling) runs as written.
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import shlex
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "goldens"))
import recipe  # noqa: E402

SEED = 20240611
QWEN_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
               "<|image_pad|>", "<|video_pad|>"]
# Qwen2's pre-tokenizer (tokenization_qwen2.PRETOKENIZE_REGEX), so the trained merges fit its pipeline
QWEN_SPLIT = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"""
              r"""\s*[\r\n]+|\s+(?!\S)|\s+""")
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def cir_instruction() -> str:
    """``_GME_CIR`` of ``cir_lightning/backbones/prompts.py``, read without importing the project."""
    tree = ast.parse((ROOT / "cir_lightning" / "backbones" / "prompts.py").read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "_GME_CIR" for t in node.targets):
            return ast.literal_eval(node.value)
    raise SystemExit("no _GME_CIR in cir_lightning/backbones/prompts.py")


def tiny_tokenizer(folder: Path):
    """Qwen2TokenizerFast from a byte-level BPE trained on the prompts' and inputs' words (+ Qwen tokens)."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers
    from transformers import Qwen2TokenizerFast

    texts = recipe.load_texts()
    corpus = texts["modifications"] + texts["captions"] + [
        "system user assistant You are a helpful assistant.", cir_instruction(),
        "red green blue dog cat parrot sofa dress shirt image photo picture one two a the of and with"] * 4
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.train_from_iterator(corpus * 8, trainers.BpeTrainer(
        vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    tok.model.save(str(folder))
    tokenizer = Qwen2TokenizerFast(vocab_file=str(folder / "vocab.json"), merges_file=str(folder / "merges.txt"),
                                   unk_token=None, bos_token=None, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   additional_special_tokens=QWEN_TOKENS, model_max_length=32768)
    tokenizer.add_special_tokens({"additional_special_tokens": QWEN_TOKENS})
    (folder / "vocab.json").unlink()
    (folder / "merges.txt").unlink()
    return tokenizer


def build_checkpoint(folder: Path) -> None:
    from transformers import (
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
        Qwen2VLImageProcessor,
        Qwen2VLProcessor,
    )

    tokenizer = tiny_tokenizer(folder)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_TOKENS}
    # Qwen2-VL's own image processor defaults (min 4, max 16384 tokens of 28 x 28 pixels), as the hub
    # checkpoints ship them; GmeQwen2VL overrides them with its min/max_image_tokens when it loads
    image_processor = Qwen2VLImageProcessor(min_pixels=4 * 28 * 28, max_pixels=16384 * 28 * 28, patch_size=14,
                                            temporal_patch_size=2, merge_size=2, image_mean=CLIP_MEAN,
                                            image_std=CLIP_STD)
    processor = Qwen2VLProcessor(image_processor=image_processor, tokenizer=tokenizer)
    config = Qwen2VLConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096, rms_norm_eps=1e-6,
        rope_theta=1000000.0, rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]},
        tie_word_embeddings=True, bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        vision_config={"depth": 2, "embed_dim": 32, "num_heads": 2, "mlp_ratio": 2, "hidden_size": 64,
                       "in_chans": 3, "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2},
        torch_dtype="float32")
    torch.manual_seed(0)
    Qwen2VLForConditionalGeneration(config).save_pretrained(folder, safe_serialization=True)
    processor.save_pretrained(folder)


def load_original(path: Path):
    """The original module, with ``AutoModelForVision2Seq`` loading float32 weights with eager attention."""
    import transformers

    spec = importlib.util.spec_from_file_location("gme_inference", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    class Float32Vision2Seq:
        """Stands in for ``AutoModelForVision2Seq`` in the original's namespace (dtype and kernel only)."""

        @staticmethod
        def from_pretrained(name, torch_dtype=None, **kwargs):
            return transformers.AutoModelForVision2Seq.from_pretrained(
                name, torch_dtype=torch.float32, attn_implementation="eager", **kwargs)

    module.AutoModelForVision2Seq = Float32Vision2Seq
    return module


def padded(rows: list[np.ndarray]) -> np.ndarray:
    out = np.full((len(rows), max(len(r) for r in rows)), -1, dtype=np.int64)
    for i, row in enumerate(rows):
        out[i, :len(row)] = row
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--original", type=Path, required=True, help="gme_inference.py, or the folder holding it")
    parser.add_argument("--commit", required=True, help="commit of the copy of gme_inference.py")
    parser.add_argument("--repository", default="Jingchensun/Tiger-VLM2Vec", help="repository of that copy")
    parser.add_argument("--out", type=Path, default=ROOT / "tests" / "goldens" / "gme")
    args = parser.parse_args()
    original = args.original / "gme_inference.py" if args.original.is_dir() else args.original
    torch.set_num_threads(1)  # one thread: the same reduction order on every run

    module = load_original(original)
    texts, images = recipe.load_texts(), recipe.load_images()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "checkpoint"
        folder.mkdir()
        build_checkpoint(folder)
        recipe.write_recipe(folder, args.out, SEED)
        gme = module.GmeQwen2VL(model_path=str(folder), device="cpu")  # min/max_image_tokens: 256 / 1280
        seen: dict[str, list] = {}
        forward = gme.forward

        def recording(**inputs):  # the token ids and image grids the original's processor produced
            mask = inputs["attention_mask"].bool()
            seen.setdefault("ids", []).append([ids[m].numpy() for ids, m in zip(inputs["input_ids"], mask, strict=True)])
            seen.setdefault("grid", []).append(inputs.get("image_grid_thw"))
            return forward(**inputs)

        gme.forward = recording
        common = {"show_progress_bar": False}
        gallery = gme.get_image_embeddings(images=images, is_query=False, **common)
        query = gme.get_fused_embeddings(texts=texts["modifications"], images=images, is_query=True,
                                         instruction=cir_instruction(), **common)
        text = gme.get_text_embeddings(texts=texts["captions"], **common)
    assert [len(batch) for batch in seen["ids"]] == [5, 5, 5], "one batch per kind expected"
    recipe.save_outputs(args.out, gallery=gallery, query=query, text=text,
                        gallery_ids=padded(seen["ids"][0]), query_ids=padded(seen["ids"][1]),
                        text_ids=padded(seen["ids"][2]), gallery_grid=seen["grid"][0], query_grid=seen["grid"][1])
    notes = ("Original run unchanged except AutoModelForVision2Seq.from_pretrained in its namespace, wrapped to "
             "load float32 (it hard-codes torch_dtype=torch.float16) with attn_implementation='eager'. "
             "GmeQwen2VL(model_path=<tiny checkpoint>, device='cpu') with its defaults min_image_tokens=256, "
             "max_image_tokens=1280, max_length=1800. gallery: get_image_embeddings(images, is_query=False); query: "
             "get_fused_embeddings(texts=modifications, images, is_query=True, instruction=_GME_CIR of "
             "cir_lightning/backbones/prompts.py); text: get_text_embeddings(captions) (default instruction). "
             "*_ids: each row's real tokens (-1 pads), *_grid: image_grid_thw, as the original's processor made "
             "them. The same file also exists in a later hub revision as a PreTrainedModel (GmeQwen2VLConfig, "
             "require_version transformers<4.52) with the same fetch_image, prompt, decoder call and pooling.")
    command = "python scripts/goldens/make_gme.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    recipe.write_provenance(args.out, args.repository, args.commit, [original.name],
                            ["torch", "transformers", "tokenizers", "pillow", "numpy", "safetensors"], command, notes)
    print(f"wrote {args.out}: gallery {tuple(gallery.shape)}, query {tuple(query.shape)}, text {tuple(text.shape)}")


if __name__ == "__main__":
    main()
