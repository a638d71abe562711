"""The tiny tokenizer of the xGen-MM goldens (``make_xgenmm.py``), run in its side environment."""

from __future__ import annotations

import json
from pathlib import Path

import recipe

PHI3_SPECIAL = ["<|endoftext|>", "<|assistant|>", "<|placeholder1|>", "<|placeholder2|>", "<|placeholder3|>",
                "<|placeholder4|>", "<|system|>", "<|end|>", "<|placeholder5|>", "<|placeholder6|>", "<|user|>"]


def build_tokenizer(folder: Path) -> None:
    """A tiny tokenizer with the pipeline of xGen-MM's (Phi-3's) tokenizer.json: Prepend + Replace("▁")
    normalizer, BPE with byte fallback, no pre-tokenizer; <unk> <s> </s> first, the Phi-3 chat tokens after
    the vocabulary (``<|end|>`` etc. with rstrip, as published), then ``<pad>``."""
    from tokenizers import Tokenizer, decoders, models, normalizers, trainers
    from transformers import LlamaTokenizerFast

    texts = recipe.load_texts()
    corpus = texts["modifications"] + texts["captions"] + [
        "Given the reference image but modify it with: . Describe the new image ?", "Describe the image ?"]
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    tok.train_from_iterator(corpus * 4, trainers.BpeTrainer(vocab_size=160, special_tokens=["<unk>", "<s>", "</s>"],
                                                            show_progress=False))
    raw = json.loads(tok.to_str())
    learned = [t for t, _ in sorted(raw["model"]["vocab"].items(), key=lambda kv: kv[1]) if t not in ("<unk>", "<s>", "</s>")]
    vocab = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + learned
    raw["model"]["vocab"] = {t: i for i, t in enumerate(vocab)}
    added = [{"id": 0, "content": "<unk>", "special": True, "rstrip": False},
             {"id": 1, "content": "<s>", "special": True, "rstrip": False},
             {"id": 2, "content": "</s>", "special": False, "rstrip": True}]
    for i, t in enumerate(PHI3_SPECIAL + ["<pad>"]):
        added.append({"id": len(vocab) + i, "content": t, "special": True,
                      "rstrip": t not in ("<|endoftext|>", "<pad>")})
    raw["added_tokens"] = [{"single_word": False, "lstrip": False, "normalized": False, **a} for a in added]
    raw["pre_tokenizer"] = None
    raw["post_processor"] = {"type": "TemplateProcessing", "single": [{"Sequence": {"id": "A", "type_id": 0}}],
                             "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
                             "special_tokens": {}}
    fast = LlamaTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(raw)), bos_token="<s>",
                              eos_token="<|endoftext|>", unk_token="<unk>", pad_token="<pad>", add_bos_token=False,
                              add_eos_token=False, legacy=False, padding_side="left", model_max_length=4096,
                              clean_up_tokenization_spaces=False)
    fast.save_pretrained(str(folder))
