"""Write the LamRA golden (``tests/goldens/lamra``) by running LamRA's OWN embedding code.

Runs in a side virtual environment with the transformers LamRA pins (a 4.45.0.dev0 commit; 4.45.0 is its
release), e.g. ``/work/venvs/lamra``:

    /work/venvs/lamra/bin/python scripts/goldens/make_lamra.py --original /work/originals/lamra \\
        --commit $(git --git-dir=/work/.mirror/Code-kunkun+LamRA/repo rev-parse HEAD)

``--original`` is a checkout of Code-kunkun/LamRA; nothing of it is copied here, it is imported from there:
``models/qwen2_vl.py`` (``Qwen2VLRetForConditionalGeneration``, whose ``forward(..., inference=True)``
takes the hidden state before the first ``<emb>``), ``collators/eval_collator.py`` (``EvalDataCollator``:
chat template, ``process_vision_info`` of ``collators/qwen2_vision_process.py``, processor, padding),
``dataset/datasets_circo.py`` (``CIRCODataset.get_instance`` / ``construct_messages``: the zero-shot CIR
query, the gallery and text messages) and ``add_embed_token`` of ``eval/eval_zeroshot/eval_circo.py``
(read from the file and executed). The steps of ``eval_circo.eval`` that embed are repeated here: load,
add ``<emb>``, collate, ``model(**batch, inference=True)``, ``F.normalize``.

The tiny checkpoint mirrors what LamRA's pipeline sees: the Qwen2-VL base processor folder (the
``--original_model_id`` of LamRA's scripts: tokenizer without ``<emb>``, Qwen2-VL's chat template and
image processor settings) and the retrieval checkpoint (``--model_id``: embeddings already sized for
``<emb>``, which LamRA added with ``tokenizer.add_tokens`` before training; its tokenizer holds ``<emb>``
added the same way, as our backbone needs it). Only the latter goes into the golden.
"""

from __future__ import annotations

import argparse
import ast
import importlib.machinery
import sys
import tempfile
import types
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests" / "goldens"))
import recipe  # noqa: E402

SEED = 20240901
REPOSITORY = "https://github.com/Code-kunkun/LamRA"
FILES = ["models/qwen2_vl.py", "collators/eval_collator.py", "collators/base.py",
         "collators/qwen2_vision_process.py", "dataset/datasets_circo.py", "eval/eval_zeroshot/eval_circo.py"]
QWEN_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
                "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
                "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>"]
# Qwen2-VL-*-Instruct's chat template (chat_template.json of the hub checkpoints)
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}"
    "<|im_end|>\n{% else %}{% for content in message['content'] %}{% if content['type'] == 'image' or 'image' in "
    "content or 'image_url' in content %}{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}"
    "Picture {{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>{% elif content['type']"
    " == 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}"
    "Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>{% elif 'text' in content"
    " %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt "
    "%}<|im_start|>assistant\n{% endif %}")
PRETOKENIZE_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                     r"\s*[\r\n]+|\s+(?!\S)|\s+")
# one more gallery image, larger than process_vision_info's 300 * 28 * 28 pixel cap (drawn as the shared ones)
LARGE = ("RGB", 640, 480, 2000)
CLIP_MEAN, CLIP_STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]


def tiny_tokenizer():
    """Qwen2's tokenizer pipeline (NFC, Qwen2's split regex, byte-level BPE) with a tiny vocabulary trained
    on the prompt words, then Qwen2-VL's special tokens; pad ``<|endoftext|>``, EOS ``<|im_end|>``."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import Qwen2TokenizerFast

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    texts = recipe.load_texts()
    corpus = texts["modifications"] + texts["captions"] + [
        "system user assistant You are a helpful assistant.",
        "I'm looking for a similar everyday image with the described changes.",
        "Summarize above image and sentence in one word: ", "Summarize above sentence in one word: "]
    trainer = trainers.BpeTrainer(vocab_size=420, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(corpus * 4, trainer=trainer)
    tok.add_special_tokens(QWEN_SPECIAL)  # after the vocabulary, in Qwen2's order
    return Qwen2TokenizerFast(tokenizer_object=tok, unk_token=None, bos_token=None, eos_token="<|im_end|>",
                              pad_token="<|endoftext|>", additional_special_tokens=QWEN_SPECIAL[1:],
                              model_max_length=32768)


def build(base: Path, checkpoint: Path) -> None:
    """Save the Qwen2-VL base processor to ``base`` and the LamRA retrieval checkpoint to ``checkpoint``."""
    from transformers import (
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
        Qwen2VLImageProcessor,
        Qwen2VLProcessor,
    )

    tokenizer = tiny_tokenizer()
    images = Qwen2VLImageProcessor(min_pixels=3136, max_pixels=12845056, patch_size=14,
                                   temporal_patch_size=2, merge_size=2, image_mean=CLIP_MEAN, image_std=CLIP_STD)
    Qwen2VLProcessor(image_processor=images, tokenizer=tokenizer, chat_template=CHAT_TEMPLATE).save_pretrained(base)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_SPECIAL}
    assert tokenizer.add_tokens(["<emb>"]) == 1  # as LamRA's add_embed_token adds it
    emb = tokenizer.convert_tokens_to_ids("<emb>")
    config = Qwen2VLConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, hidden_act="silu", max_position_embeddings=4096,
        rms_norm_eps=1e-6, rope_theta=1000000.0, tie_word_embeddings=False, use_sliding_window=False,
        rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]},  # head_dim 16: sections sum to 8
        vision_config={"depth": 2, "embed_dim": 32, "hidden_size": 64, "hidden_act": "quick_gelu", "mlp_ratio": 2,
                       "num_heads": 2, "in_channels": 3, "patch_size": 14, "spatial_merge_size": 2,
                       "temporal_patch_size": 2},
        bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"],
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        vision_token_id=ids["<|vision_pad|>"], emb_token_ids=[emb], torch_dtype="float32")
    Qwen2VLForConditionalGeneration(config).save_pretrained(checkpoint, safe_serialization=True)
    Qwen2VLProcessor(image_processor=images, tokenizer=tokenizer,
                     chat_template=CHAT_TEMPLATE).save_pretrained(checkpoint)


def stub_torchvision() -> None:
    """``collators/qwen2_vision_process.py`` imports torchvision at the top but uses it for videos only."""
    if "torchvision" in sys.modules:
        return
    names = ["torchvision", "torchvision.io", "torchvision.transforms"]
    for name in names:
        module = types.ModuleType(name)
        module.__spec__ = importlib.machinery.ModuleSpec(name, None)
        sys.modules[name] = module
    sys.modules["torchvision"].io = sys.modules["torchvision.io"]
    sys.modules["torchvision"].transforms = sys.modules["torchvision.transforms"]
    sys.modules["torchvision.transforms"].InterpolationMode = types.SimpleNamespace(BICUBIC="bicubic")


def lamra_add_embed_token(original: Path):
    """``add_embed_token`` as ``eval/eval_zeroshot/eval_circo.py`` defines it inside ``eval``."""
    tree = ast.parse((original / "eval/eval_zeroshot/eval_circo.py").read_text())
    node = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == "add_embed_token")
    namespace: dict = {}
    exec(compile(ast.Module(body=[node], type_ignores=[]), "eval_circo.py", "exec"), namespace)
    return namespace["add_embed_token"]


def run_original(original: Path, base: Path, checkpoint: Path, attn: str, suffix: str = "") -> dict:
    import transformers  # noqa: F401  (its availability checks run before the torchvision stub exists)
    from transformers import AutoProcessor

    stub_torchvision()
    sys.path.insert(0, str(original))
    from collators.eval_collator import EvalDataCollator
    from dataset.datasets_circo import CIRCODataset
    from models.qwen2_vl import Qwen2VLRetForConditionalGeneration

    # eval_circo.eval: bfloat16 there, float32 here (the comparison is in float32); LamRA passes no
    # attn_implementation (transformers picks sdpa), the golden holds both eager and sdpa runs
    model = Qwen2VLRetForConditionalGeneration.from_pretrained(checkpoint, torch_dtype=torch.float32,
                                                               low_cpu_mem_usage=True, attn_implementation=attn)
    processor = AutoProcessor.from_pretrained(base)  # "processor is not changed": the base model's
    tokenizer = processor.tokenizer
    lamra_add_embed_token(original)(tokenizer, model)
    model.eval()
    paths = [str(p) for p in recipe.image_paths()]
    texts = recipe.load_texts()
    # CIRCODataset without its annotation files: the fields get_instance reads, one query per shared image
    dataset = object.__new__(CIRCODataset)
    dataset.img_paths, dataset.img_ids_indexes_map = paths, {str(i): i for i in range(len(paths))}
    dataset.annotations = [{"id": i, "relative_caption": m, "reference_img_id": i}
                           for i, m in enumerate(texts["modifications"])]
    collator = EvalDataCollator(tokenizer=tokenizer, processor=processor)
    out = {"model_class": type(model).__name__}

    def embed(kind: str, items: list) -> None:
        batch = collator(items)
        with torch.no_grad():
            raw, _ = model(**batch, inference=True)
        out[f"{kind}_raw{suffix}"], out[f"{kind}{suffix}"] = raw, F.normalize(raw, dim=-1)
        if suffix:
            return
        out[f"{kind}_input_ids"], out[f"{kind}_attention_mask"] = batch["input_ids"], batch["attention_mask"]
        if batch["image_grid_thw"] is not None:
            out[f"{kind}_image_grid_thw"] = batch["image_grid_thw"]

    dataset.type = "image"
    embed("gallery", [dataset[i] for i in range(len(paths))])
    dataset.type = "query"
    embed("query", [dataset[i] for i in range(len(paths))])
    # CIRCO has no text items; the text-only branch of the same construct_messages
    embed("text", [(CIRCODataset.construct_messages(dataset, text=c), i) for i, c in enumerate(texts["captions"])])
    if not suffix:  # the large image alone, as a file like the others
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "large.png"
            recipe._draw(*LARGE[:3], seed=LARGE[3]).save(path)
            dataset.type, dataset.img_paths = "image", [str(path)]
            embed("large", [dataset[0]])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--original", type=Path, required=True, help="checkout of Code-kunkun/LamRA")
    parser.add_argument("--commit", required=True, help="the checkout's commit")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[2] / "tests/goldens/lamra")
    args = parser.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        base, checkpoint = Path(tmp) / "qwen2-vl-base", Path(tmp) / "lamra-ret"
        build(base, checkpoint)
        recipe.write_recipe(checkpoint, args.out, SEED)
        out = run_original(args.original.resolve(), base, checkpoint, "eager")
        out.update(run_original(args.original.resolve(), base, checkpoint, "sdpa", suffix="_sdpa"))
    arrays = {k: v for k, v in out.items() if isinstance(v, torch.Tensor)}
    recipe.save_outputs(args.out, **arrays)
    recipe.write_provenance(
        args.out, REPOSITORY, args.commit, FILES, ["torch", "transformers", "tokenizers", "accelerate", "numpy", "pillow"],
        command="python scripts/goldens/make_lamra.py --original <LamRA checkout> --commit " + args.commit,
        notes=(f"{out['model_class']} from models/qwen2_vl.py, float32 on CPU (eval_circo.py uses bfloat16), "
               "attention 'eager' (<kind>, <kind>_raw) and 'sdpa' (<kind>_sdpa, <kind>_raw_sdpa; "
               "transformers' default, LamRA passes none). Processor from the "
               "Qwen2-VL base folder (no <emb>), <emb> added by eval_circo.py's add_embed_token (ids equal "
               "the checkpoint's). Messages from dataset/datasets_circo.py (CIRCODataset.get_instance for "
               "query and gallery, construct_messages(text=...) for captions); images given as file paths, "
               "as CIRCO does; process_vision_info's defaults (min 4*28*28, max 300*28*28 pixels). One batch "
               "of 5 per kind, the tokenizer's default (right) padding. torchvision is stubbed with empty "
               "modules (qwen2_vision_process.py imports it for videos only). <kind>: normalised, what "
               "eval_circo.py compares; <kind>_raw: before normalising; the collated input_ids / "
               "attention_mask / image_grid_thw. large*: one more gallery image, recipe._draw('RGB', 640, 480, "
               "seed=2000) saved as PNG (above the 300 * 28 * 28 pixel cap), eager only."))
    print({k: tuple(v.shape) for k, v in arrays.items()})


if __name__ == "__main__":
    main()
