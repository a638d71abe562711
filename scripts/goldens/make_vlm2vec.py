"""Write the VLM2Vec golden: a tiny Qwen2-VL checkpoint embedded by VLM2Vec's OWN code (TIGER-AI-Lab/VLM2Vec).

Runs in a side virtual environment with the transformers version VLM2Vec pins (4.52.3), never in the
project's. It builds a tiny random Qwen2-VL with VLM2Vec's vendored model class, saves it, seeds its weights
(``recipe.write_recipe``) and then embeds the shared inputs the way VLM2Vec's MMEB evaluation does:

- ``src/data/eval_dataset/image_i2i_vg_dataset.data_prepare`` turns MMEB's CIRR / FashionIQ instruction rows
  into query and candidate texts (``process_input_text``: the backbone's image token, "\\n" rules);
- ``src/data/collator/eval_collator.MultimodalEvalDataCollator`` opens the images from their paths and calls
  ``src/model/processor.Qwen2_VL_process_fn`` (one processor call per item, then ``tokenizer.pad``);
- ``src/model/processor.load_processor`` and ``src/model/model.MMEBModel.load`` (pooling ``last``,
  ``normalize``) load the checkpoint; ``MMEBModel(qry=...)`` / ``(tgt=...)`` embed as ``eval.py`` does.

Captions (text-only items, which MMEB's CIRR / FashionIQ do not have) go through the same
``Qwen2_VL_process_fn`` text-only path with our preset's text template.

Deviations from a GPU run, all numeric settings rather than semantics: float32 weights and no bf16
autocast (VLM2Vec loads bf16), eager attention instead of flash-attention-2 (CPU). Modules that VLM2Vec
imports but this path never calls (flash_attn, deepspeed, timm, torchvision, ...) are replaced by empty
stand-ins before the import. ``src.data.eval_dataset`` is imported without its ``__init__`` (which imports
every MMEB-v2 loader).

Usage (from the repository root):
    /work/venvs/vlm2vec/bin/python scripts/goldens/make_vlm2vec.py --original /work/originals/vlm2vec \\
        --commit $(git --git-dir=/work/.mirror/TIGER-AI-Lab+VLM2Vec/repo rev-parse HEAD)
"""

from __future__ import annotations

import argparse
import importlib.abc
import importlib.machinery
import shlex
import sys
import tempfile
import types
from pathlib import Path

import torch
import transformers  # noqa: F401  (imported before the stand-ins, so its availability checks see the real env)

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests" / "goldens"))
import recipe  # noqa: E402

# imported by VLM2Vec modules on import, never called on the Qwen2-VL image embedding path
STUBS = {"flash_attn", "deepspeed", "timm", "einops", "decord", "cv2", "torchvision", "sklearn", "skimage",
         "datasets", "wandb"}
QWEN_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
               "<|image_pad|>", "<|video_pad|>"]
# MMEB's instruction rows (qry_inst / tgt_inst as in MMEB_Test_Instruct; data_prepare normalises them)
INSTRUCTIONS = {
    "cirr": "<|image_1|>\nGiven an image, find a similar everyday image with the described changes:",
    "fashioniq": "<|image_1|>\nFind an image to match the fashion image and style note:",
}
TARGET_INSTRUCTION = "<|image_1|>\nRepresent the given image."
TEXT_TEMPLATE = "{text}\n"  # the vlm2vec_* presets' text template (captions are not part of MMEB's CIR tasks)
SEED = 20240


def _stub_attribute(attr: str) -> type:
    if attr.startswith("__"):  # no __file__, __spec__ ...: inspect and importlib treat it as a bare module
        raise AttributeError(attr)
    return type(attr, (), {"__init__": lambda self, *a, **k: None})


class _StubFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Empty modules for STUBS: every attribute is a fresh do-nothing class (usable as a base class too)."""

    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in STUBS:
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
        return None

    def create_module(self, spec):
        module = types.ModuleType(spec.name)
        module.__path__ = []
        module.__getattr__ = _stub_attribute
        return module

    def exec_module(self, module):
        pass


def import_original(original: Path) -> types.SimpleNamespace:
    sys.meta_path.insert(0, _StubFinder())
    sys.path.insert(0, str(original))
    import src  # noqa: F401

    for name in ("src.data", "src.data.eval_dataset"):  # their __init__ import every training / MMEB-v2 loader
        package = types.ModuleType(name)
        package.__path__ = [str(original.joinpath(*name.split(".")))]
        sys.modules[name] = package
    from src import arguments
    from src.data.collator import eval_collator
    from src.data.eval_dataset import image_i2i_vg_dataset
    from src.model import model as mmeb_model
    from src.model import processor as mmeb_processor
    from src.model.vlm_backbone.qwen2_vl import (
        configuration_qwen2_vl,
        image_processing_qwen2_vl,
        processing_qwen2_vl,
        tokenization_qwen2_fast,
    )

    return types.SimpleNamespace(
        DataArguments=arguments.DataArguments, ModelArguments=arguments.ModelArguments,
        MultimodalEvalDataCollator=eval_collator.MultimodalEvalDataCollator,
        data_prepare=image_i2i_vg_dataset.data_prepare, mmeb_model=mmeb_model, mmeb_processor=mmeb_processor,
        Qwen2VLConfig=configuration_qwen2_vl.Qwen2VLConfig,
        Qwen2VLImageProcessor=image_processing_qwen2_vl.Qwen2VLImageProcessor,
        Qwen2VLProcessor=processing_qwen2_vl.Qwen2VLProcessor,
        Qwen2TokenizerFast=tokenization_qwen2_fast.Qwen2TokenizerFast)


def build_tokenizer(folder: Path, o: types.SimpleNamespace):
    """A tiny byte-level BPE with Qwen2's own pipeline (VLM2Vec's vendored Qwen2TokenizerFast builds it from
    vocab.json + merges.txt), trained on the instructions and the shared texts, plus Qwen2-VL's special tokens."""
    from src.model.vlm_backbone.qwen2_vl.tokenization_qwen2 import PRETOKENIZE_REGEX
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import AddedToken

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    texts = recipe.load_texts()
    corpus = list(INSTRUCTIONS.values()) + [TARGET_INSTRUCTION] + texts["modifications"] + texts["captions"]
    trainer = trainers.BpeTrainer(vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(corpus * 4, trainer=trainer)
    tok.model.save(str(folder))  # vocab.json, merges.txt
    # special tokens as Qwen2-VL's tokenizer_config.json sets them (no unk, no bos)
    tokenizer = o.Qwen2TokenizerFast(vocab_file=str(folder / "vocab.json"), merges_file=str(folder / "merges.txt"),
                                     unk_token=None, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tokenizer.add_special_tokens({"additional_special_tokens": [
        AddedToken(t, special=True, normalized=False) for t in QWEN_TOKENS if t != "<|endoftext|>"]})
    return tokenizer


def build_checkpoint(folder: Path, o: types.SimpleNamespace) -> None:
    """Tiny Qwen2-VL (2 text layers of 64, GQA 4/2 heads; 2 vision layers of 32, real 14-px patches, 2x2
    merge), saved by VLM2Vec's vendored classes with the hub layout of Qwen2-VL checkpoints."""
    tokenizer = build_tokenizer(folder, o)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_TOKENS}
    config = o.Qwen2VLConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024, rope_theta=1000000.0,
        rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]},
        vision_config={"depth": 2, "embed_dim": 32, "hidden_size": 64, "num_heads": 2, "mlp_ratio": 2,
                       "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2,
                       "initializer_range": 0.02},
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"])
    config._attn_implementation = "eager"
    torch.manual_seed(0)
    model = o.mmeb_processor.backbone2model[o.mmeb_processor.QWEN2_VL](config)
    model.save_pretrained(folder, safe_serialization=True)
    # the pixel limits VLM2Vec's load_processor imposes (DataArguments.resize_min/max_pixels)
    data_args = o.DataArguments()
    size = {"shortest_edge": data_args.resize_min_pixels, "longest_edge": data_args.resize_max_pixels}
    image_processor = o.Qwen2VLImageProcessor(size=size, min_pixels=size["shortest_edge"],
                                              max_pixels=size["longest_edge"])
    o.Qwen2VLProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)
    for name in ("vocab.json", "merges.txt"):  # save_pretrained rewrote them; keep one copy each
        assert (folder / name).exists()


def cpu_loader(o: types.SimpleNamespace) -> None:
    """MMEBModel.load asks for flash-attention-2 and bf16; on CPU load the same class eager and float32."""
    cls = o.mmeb_processor.backbone2model[o.mmeb_processor.QWEN2_VL]

    class _Eager:
        @staticmethod
        def from_pretrained(name, config=None, **kwargs):
            config._attn_implementation = "eager"
            config.vision_config._attn_implementation = "eager"
            return cls.from_pretrained(name, config=config, torch_dtype=torch.float32, attn_implementation="eager")

    o.mmeb_model.backbone2model[o.mmeb_processor.QWEN2_VL] = _Eager


def embed(model, batch, side: str) -> torch.Tensor:
    """``eval.encode_embeddings`` for one batch, checked to be the same as a newly loaded model's first batch
    and any later one: the vendored Qwen2-VL runs ``get_rope_index`` only while its cached ``rope_deltas`` is
    None, later batches get ``arange`` over the padded row. With VLM2Vec's prompts (no <|vision_start|>, so
    get_rope_index sees no image: 1-D positions over the real tokens) and right padding both are the same."""
    reps = []
    for cached in (None, torch.zeros(1, dtype=torch.long)):
        model.encoder.rope_deltas = cached
        with torch.no_grad():
            reps.append(model(**{side: batch})[f"{side}_reps"].detach())
    assert torch.equal(reps[0], reps[1]), "first and later batches differ"
    return reps[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--original", type=Path, required=True, help="checkout of TIGER-AI-Lab/VLM2Vec")
    parser.add_argument("--commit", required=True, help="the checkout's commit")
    parser.add_argument("--out", type=Path, default=Path("tests/goldens/vlm2vec"))
    args = parser.parse_args()
    o = import_original(args.original.resolve())
    qwen = o.mmeb_processor.QWEN2_VL
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "tiny-vlm2vec-qwen2vl"
        folder.mkdir()
        build_checkpoint(folder, o)
        recipe.write_recipe(folder, args.out, SEED)
        model_args = o.ModelArguments(model_name=str(folder), pooling="last", normalize=True, model_backbone=qwen)
        data_args = o.DataArguments()
        processor = o.mmeb_processor.load_processor(model_args, data_args)
        cpu_loader(o)
        model = o.mmeb_model.MMEBModel.load(model_args, is_trainable=False)
        model.eval()

        paths = [str(p) for p in recipe.image_paths()]
        texts = recipe.load_texts()
        root = str(recipe.INPUTS / "images")
        names = [Path(p).name for p in paths]
        kwargs = {"image_resolution": None, "model_backbone": qwen, "image_root": root}
        out: dict[str, object] = {}
        for task, instruction in INSTRUCTIONS.items():
            rows = o.data_prepare({"qry_inst": [instruction] * 5, "qry_text": texts["modifications"],
                                   "qry_img_path": names, "tgt_inst": [TARGET_INSTRUCTION] * 5,
                                   "tgt_text": [[""] * 5] * 5, "tgt_img_path": [names] * 5}, **kwargs)
            queries = [{"query_text": t, "query_image": i, "dataset_infos": d}
                       for t, i, d in zip(rows["query_text"], rows["query_image"], rows["dataset_infos"], strict=True)]
            batch, _ = o.MultimodalEvalDataCollator(processor, model_args, data_args, "qry")(queries)
            out[f"query_{task}_prompts"] = rows["query_text"]
            out[f"query_{task}_input_ids"], out[f"query_{task}_attention_mask"] = batch["input_ids"], batch["attention_mask"]
            out[f"query_{task}"] = embed(model, batch, "qry")
        # candidates: eval.py flattens them to one row per (text, image)
        cands = [{"cand_text": [t], "cand_image": [i], "dataset_infos": {"cand_name": n}}
                 for t, i, n in zip(rows["cand_text"][0], rows["cand_image"][0], names, strict=True)]
        batch, _ = o.MultimodalEvalDataCollator(processor, model_args, data_args, "cand")(cands)
        out["gallery_prompts"] = rows["cand_text"][0]
        out["gallery_input_ids"], out["gallery_attention_mask"] = batch["input_ids"], batch["attention_mask"]
        out["gallery_image_grid_thw"] = torch.cat([torch.as_tensor(g) for g in batch["image_grid_thw"]])
        out["gallery"] = embed(model, batch, "tgt")
        captions = [TEXT_TEMPLATE.format(text=c) for c in texts["captions"]]
        batch = o.mmeb_processor.Qwen2_VL_process_fn({"text": captions, "images": [None] * 5}, processor)
        out["text_prompts"] = captions
        out["text_input_ids"], out["text_attention_mask"] = batch["input_ids"], batch["attention_mask"]
        out["text"] = embed(model, batch, "tgt")
        out["padding_side"] = processor.tokenizer.padding_side
    recipe.save_outputs(args.out, **out)
    files = ["src/model/model.py", "src/model/processor.py", "src/data/collator/eval_collator.py",
             "src/data/eval_dataset/image_i2i_vg_dataset.py", "src/model/vlm_backbone/qwen2_vl/"]
    recipe.write_provenance(
        args.out, "https://github.com/TIGER-AI-Lab/VLM2Vec", args.commit, files,
        ["torch", "transformers", "tokenizers", "peft", "accelerate", "numpy", "pillow", "qwen-vl-utils"],
        " ".join(shlex.quote(a) for a in [Path(sys.executable).name, *sys.argv]),
        notes="Qwen2-VL backbone (VLM2Vec-V2.0, VLM2Vec-Qwen2VL-2B/7B). float32 and eager attention instead of "
              "bf16 + flash-attention-2 (CPU). Stand-in modules (imported, never called): " + ", ".join(sorted(STUBS))
              + ". Each embedding is the same for a freshly loaded model's first batch and any later batch (checked).")


if __name__ == "__main__":
    main()
