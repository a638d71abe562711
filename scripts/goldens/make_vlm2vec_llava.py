"""Write the VLM2Vec LLaVA-NeXT golden: a tiny LLaVA-NeXT embedded by VLM2Vec's OWN code (TIGER-AI-Lab/VLM2Vec).

The backbone of TIGER-Lab/VLM2Vec-LLaVa-Next (``model_backbone llava_next``): llava-hf's LLaVA-1.6 Mistral
layout (CLIP tower, feature layer -2 without CLS, anyres crops, Mistral decoder, Llama-style SentencePiece
tokenizer with ``<image>`` / ``<pad>`` added). Runs in the side environment of ``make_vlm2vec.py``
(transformers 4.52.3) and reuses its import of VLM2Vec (``import_original``: stand-ins for modules this path
never calls) and its MMEB instruction rows. VLM2Vec's own code on this backbone:

- ``src/data/eval_dataset/image_i2i_vg_dataset.data_prepare`` (CIRR / FashionIQ rows, ``<image>`` from
  ``VLM_IMAGE_TOKENS['llava_next']``) and ``src/data/collator/eval_collator.MultimodalEvalDataCollator``
  (opens each image from its path, in its own mode) with ``src/model/processor.Llava_NEXT_process_fn``: one
  call per item of VLM2Vec's vendored ``LlavaNextProcessor`` (``src/model/baseline_backbone/llava_next``,
  which expands ``<image>``), ``tokenizer.pad`` on the tokenizer's padding side, pixel values stacked with
  ``np.array`` (every image of a batch must give the same number of anyres crops: see PINPOINTS);
- ``load_processor`` and ``MMEBModel.load`` (vendored ``LlavaNextForConditionalGeneration``; pooling
  ``last``, normalised); ``MMEBModel(qry=...)`` / ``(tgt=...)`` as ``eval.py`` calls it.

One repair of VLM2Vec's code, outside it: ``load_processor`` imports ``LlavaNextProcessor`` from a package that
does not export it (ImportError at this commit); ``vendored_processor_export`` exports the vendored class.
Captions go through ``Llava_NEXT_process_fn``'s text-only path with the presets' text template.
The padding side is the checkpoint tokenizer's (left, as llava-hf's files set it); everything is embedded a
second time with ``tokenizer.padding_side = "right"`` (``*_right``), VLM2Vec's other possible setting.
Deviations from a GPU run: float32 and eager attention instead of bf16 + flash-attention-2 (CPU).

Usage (from the repository root):
    /work/venvs/vlm2vec/bin/python scripts/goldens/make_vlm2vec_llava.py --original /work/originals/vlm2vec \\
        --commit $(git --git-dir=/work/.mirror/TIGER-AI-Lab+VLM2Vec/repo rev-parse HEAD)
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_vlm2vec as base  # noqa: E402  (also puts tests/goldens on sys.path)
import recipe  # noqa: E402

SEED = 20241220
CROP, PATCH = 16, 4  # the CLIP tower's crop and patch (336 / 14 in the real one): 4 x 4 features a crop
# anyres grids (height, width) of 2 x 2, 1 x 4 and 4 x 1 crops. VLM2Vec stacks a batch's pixel values with
# np.array, which needs the same number of crops for every image; LLaVA-1.6's own grids (1 x 2 ... 2 x 2) give
# 3 to 5 crops, so a batch of images of other shapes fails there (it runs for batches of one shape, or with
# `--image_resolution`). Four crops each keeps the square, tall and wide layouts of the shared images.
PINPOINTS = [[32, 32], [16, 64], [64, 16]]
CLIP_MEAN, CLIP_STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]
SPM = "\u2581"
ADDED = ["<image>", "<pad>"]  # llava-hf's LLaVA-1.6 Mistral: <image> 32000, <pad> 32001 after the 32000 pieces


def tiny_tokenizer():
    """Mistral's tokenizer layout (legacy SentencePiece-BPE as tokenizer.json: ``Prepend``/``Replace``
    normaliser, byte fallback, BOS added) with a tiny vocabulary trained on VLM2Vec's prompts."""
    from tokenizers import (
        AddedToken,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )
    from transformers import LlamaTokenizerFast

    texts = recipe.load_texts()
    corpus = [*base.INSTRUCTIONS.values(), base.TARGET_INSTRUCTION, *texts["modifications"], *texts["captions"]]
    corpus = [line.replace("<|image_1|>", "") for line in corpus]
    specials = ["<unk>", "<s>", "</s>"]
    trainer_tok = Tokenizer(models.BPE(unk_token="<unk>"))
    trainer_tok.normalizer = normalizers.Sequence([normalizers.Prepend(SPM), normalizers.Replace(" ", SPM)])
    trainer_tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement=SPM, prepend_scheme="never")
    trainer_tok.train_from_iterator(corpus * 4, trainers.BpeTrainer(vocab_size=400, special_tokens=specials,
                                                                    show_progress=False))
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m)
              for m in json.loads(trainer_tok.to_str())["model"]["merges"]]
    vocab = {t: i for i, t in enumerate(specials + [f"<0x{b:02X}>" for b in range(256)])}
    for token, _ in sorted(trainer_tok.get_vocab().items(), key=lambda kv: kv[1]):
        vocab.setdefault(token, len(vocab))
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend(SPM), normalizers.Replace(" ", SPM)])
    tok.decoder = decoders.Sequence([decoders.Replace(SPM, " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", 1)])
    tok.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in specials + ADDED])
    return LlamaTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                              pad_token="<pad>", add_bos_token=True, add_eos_token=False, legacy=True,
                              padding_side="left", clean_up_tokenization_spaces=False)


def build_checkpoint(folder: Path, o) -> None:
    """Tiny LLaVA-NeXT (2-layer CLIP tower of 32, 2-layer Mistral of 64 with GQA 4/2, rope_theta 1e6, no
    sliding window) saved by VLM2Vec's vendored model class, and llava-hf's processor files."""
    from transformers import (
        CLIPVisionConfig,
        LlavaNextConfig,
        LlavaNextImageProcessor,
        LlavaNextProcessor,
        MistralConfig,
    )

    tokenizer = tiny_tokenizer()
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in ADDED}
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                              image_size=CROP, patch_size=PATCH, projection_dim=32, hidden_act="quick_gelu")
    text = MistralConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         rope_theta=1000000.0, sliding_window=None, rms_norm_eps=1e-5, bos_token_id=1,
                         eos_token_id=2, pad_token_id=ids["<pad>"], tie_word_embeddings=False)
    config = LlavaNextConfig(vision_config=vision.to_dict(), text_config=text.to_dict(),
                             image_token_index=ids["<image>"], image_grid_pinpoints=PINPOINTS,
                             vision_feature_layer=-2, vision_feature_select_strategy="default",
                             image_seq_length=(CROP // PATCH) ** 2, projector_hidden_act="gelu",
                             tie_word_embeddings=False, pad_token_id=ids["<pad>"])
    for sub in (config, config.text_config, config.vision_config):
        sub._attn_implementation = "eager"
    torch.manual_seed(0)
    model = o.mmeb_processor.backbone2model[o.mmeb_processor.LLAVA_NEXT](config)
    model.save_pretrained(folder, safe_serialization=True)
    image_processor = LlavaNextImageProcessor(
        size={"shortest_edge": CROP}, crop_size={"height": CROP, "width": CROP}, image_grid_pinpoints=PINPOINTS,
        image_mean=CLIP_MEAN, image_std=CLIP_STD)
    LlavaNextProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=PATCH,
                       vision_feature_select_strategy="default", image_token="<image>",
                       num_additional_image_tokens=1).save_pretrained(folder)


def vendored_processor_export() -> None:
    """``load_processor`` imports ``LlavaNextProcessor`` from ``src.model.baseline_backbone.llava_next``, whose
    ``__init__`` exports only the model class (ImportError at this commit); v1 imported it from the package's
    ``processing_llava_next`` (``src/utils.py`` at 90cbbd8), the class meant: export it from the package."""
    import src.model.baseline_backbone.llava_next as package
    from src.model.baseline_backbone.llava_next.processing_llava_next import LlavaNextProcessor

    assert not hasattr(package, "LlavaNextProcessor")
    package.LlavaNextProcessor = LlavaNextProcessor


def cpu_loader(o) -> None:
    """MMEBModel.load asks for flash-attention-2 and bf16; on CPU load the same class eager and float32."""
    cls = o.mmeb_processor.backbone2model[o.mmeb_processor.LLAVA_NEXT]

    class _Eager:
        @staticmethod
        def from_pretrained(name, config=None, **kwargs):
            for sub in (config, config.text_config, config.vision_config):
                sub._attn_implementation = "eager"
            return cls.from_pretrained(name, config=config, torch_dtype=torch.float32, attn_implementation="eager")

    o.mmeb_model.backbone2model[o.mmeb_processor.LLAVA_NEXT] = _Eager


def embed(model, batch: dict, side: str) -> torch.Tensor:
    with torch.no_grad():
        return model(**{side: dict(batch)})[f"{side}_reps"].detach()


def run(o, model, processor, model_args, data_args) -> dict[str, object]:
    """Queries of both tasks, the gallery and the captions, as VLM2Vec embeds them."""
    llava = o.mmeb_processor.LLAVA_NEXT
    texts = recipe.load_texts()
    names = [p.name for p in recipe.image_paths()]
    kwargs = {"image_resolution": None, "model_backbone": llava, "image_root": str(recipe.INPUTS / "images")}
    out: dict[str, object] = {}

    def keep(key: str, batch: dict, emb: torch.Tensor) -> None:
        out[f"{key}_input_ids"], out[f"{key}_attention_mask"], out[key] = batch["input_ids"], batch["attention_mask"], emb
        if batch["pixel_values"].dim() == 5:  # (images, crops, 3, h, w): per-crop sums, and the sizes
            out[f"{key}_pixel_values_sum"] = batch["pixel_values"].double().sum(dim=(2, 3, 4))
            out[f"{key}_image_sizes"] = batch["image_sizes"]

    for task, instruction in base.INSTRUCTIONS.items():
        rows = o.data_prepare({"qry_inst": [instruction] * 5, "qry_text": texts["modifications"],
                               "qry_img_path": names, "tgt_inst": [base.TARGET_INSTRUCTION] * 5,
                               "tgt_text": [[""] * 5] * 5, "tgt_img_path": [names] * 5}, **kwargs)
        queries = [{"query_text": t, "query_image": i, "dataset_infos": d}
                   for t, i, d in zip(rows["query_text"], rows["query_image"], rows["dataset_infos"], strict=True)]
        batch, _ = o.MultimodalEvalDataCollator(processor, model_args, data_args, "qry")(queries)
        out[f"query_{task}_prompts"] = [t[0] for t in rows["query_text"]]
        keep(f"query_{task}", batch, embed(model, batch, "qry"))
    cands = [{"cand_text": [t], "cand_image": [i], "dataset_infos": {"cand_name": n}}
             for t, i, n in zip(rows["cand_text"][0], rows["cand_image"][0], names, strict=True)]
    batch, _ = o.MultimodalEvalDataCollator(processor, model_args, data_args, "cand")(cands)
    out["gallery_prompts"] = rows["cand_text"][0]
    keep("gallery", batch, embed(model, batch, "tgt"))
    captions = [base.TEXT_TEMPLATE.format(text=c) for c in texts["captions"]]
    batch = o.mmeb_processor.Llava_NEXT_process_fn({"text": captions, "images": [None] * 5}, processor)
    out["text_prompts"] = captions
    keep("text", batch, embed(model, batch, "tgt"))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--original", type=Path, required=True, help="checkout of TIGER-AI-Lab/VLM2Vec")
    parser.add_argument("--commit", required=True, help="the checkout's commit")
    parser.add_argument("--out", type=Path, default=Path("tests/goldens/vlm2vec_llava_next"))
    args = parser.parse_args()
    o = base.import_original(args.original.resolve())
    llava = o.mmeb_processor.LLAVA_NEXT
    vendored_processor_export()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "tiny-vlm2vec-llava-next"
        folder.mkdir()
        build_checkpoint(folder, o)
        recipe.write_recipe(folder, args.out, SEED)
        model_args = o.ModelArguments(model_name=str(folder), pooling="last", normalize=True, model_backbone=llava)
        data_args = o.DataArguments()
        processor = o.mmeb_processor.load_processor(model_args, data_args)
        assert type(processor).__module__.startswith("src.model.baseline_backbone.llava_next"), type(processor)
        cpu_loader(o)
        model = o.mmeb_model.MMEBModel.load(model_args, is_trainable=False)
        model.eval()
        assert model.encoder.config._attn_implementation == "eager"
        out = run(o, model, processor, model_args, data_args)
        out["padding_side"] = processor.tokenizer.padding_side
        processor.tokenizer.padding_side = "right"
        right = run(o, model, processor, model_args, data_args)
        embedded = {"gallery", "text", *(f"query_{task}" for task in base.INSTRUCTIONS)}
        out.update({f"{k}_right": v for k, v in right.items() if k in embedded or k.endswith("attention_mask")})
    assert out["padding_side"] == "left"
    assert bool((out["gallery_attention_mask_right"][:, 0] == 1).all())
    recipe.save_outputs(args.out, **out)
    files = ["src/model/model.py", "src/model/processor.py", "src/data/collator/eval_collator.py",
             "src/data/eval_dataset/image_i2i_vg_dataset.py", "src/model/baseline_backbone/llava_next/"]
    recipe.write_provenance(
        args.out, "https://github.com/TIGER-AI-Lab/VLM2Vec", args.commit, files,
        ["torch", "transformers", "tokenizers", "peft", "accelerate", "numpy", "pillow"],
        " ".join(shlex.quote(a) for a in [Path(sys.executable).name, *sys.argv]),
        notes="LLaVA-NeXT backbone (TIGER-Lab/VLM2Vec-LLaVa-Next; llava-hf LLaVA-1.6 Mistral layout). float32 and "
              "eager attention instead of bf16 + flash-attention-2 (CPU). image_resolution None (DataArguments' "
              "default): images at their own sizes. Anyres grids of 4 crops each (np.array stacking in "
              "Llava_NEXT_process_fn). Tokenizer padding side left as saved; *_right: the same with "
              "tokenizer.padding_side='right'. Stand-in modules (imported, never called): "
              + ", ".join(sorted(base.STUBS)) + ".")
    for key in ("gallery", "query_cirr", "text"):
        print(key, tuple(out[key].shape), "tokens:", out[f"{key}_attention_mask"].sum(1).tolist())


if __name__ == "__main__":
    main()
