"""Tiny, random-initialised CLIP and SigLIP dual encoders for tests and demos, built offline.

``make_tiny_dual_encoder`` writes an ordinary checkpoint folder (config, safetensors weights, a
``CLIPTokenizer`` and a PIL image processor at a small resolution) that loads back through
``AutoModel`` + ``AutoProcessor`` exactly like ``openai/clip-vit-base-patch32`` or
``google/siglip-base-patch16-224``. The tokenizer is CLIP's own pipeline (lower-casing, byte-level,
``</w>`` word ends) over a BPE vocabulary trained here on a small built-in corpus, so nothing is downloaded.
The SigLIP variant reuses that tokenizer (real SigLIP uses a SentencePiece one) padded to a fixed length.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from cir_lightning.backbones.tiny import _WORDS, _write
from cir_lightning.errors import CIRConfigError

BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def tiny_clip_tokenizer(vocab_size: int = 512, model_max_length: int = 77):
    """A ``CLIPTokenizer`` with a BPE vocabulary trained offline on a small corpus.

    Args:
        vocab_size: target vocabulary size of the BPE merges (the byte alphabet and its ``</w>`` forms are
            always included, so any text tokenizes).
        model_max_length: the longest token sequence, special tokens included (CLIP: 77).

    Example:
        >>> tok = tiny_clip_tokenizer()
        >>> ids = tok("Make it RED")["input_ids"]
        >>> tok.convert_ids_to_tokens(ids)
        ['<|startoftext|>', 'make</w>', 'it</w>', 'red</w>', '<|endoftext|>']
    """
    from tokenizers import pre_tokenizers, trainers
    from transformers import CLIPTokenizer

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    base: dict[str, int] = {}
    for token in [BOS, EOS, *alphabet, *(c + "</w>" for c in alphabet)]:
        base.setdefault(token, len(base))
    # CLIP's own normaliser and pre-tokeniser, trained on our corpus
    backend = CLIPTokenizer(vocab=base, merges=[]).backend_tokenizer
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[BOS, EOS], initial_alphabet=alphabet,
                                  end_of_word_suffix="</w>", show_progress=False)
    corpus = [" ".join(_WORDS[i:i + 6]) for i in range(len(_WORDS))] + [". , ? ! ' -"]
    backend.train_from_iterator(corpus * 4, trainer=trainer)
    model = json.loads(backend.to_str())["model"]
    vocab = dict(model["vocab"])
    for token in base:  # every byte, also as a word end, stays in the vocabulary
        vocab.setdefault(token, len(vocab))
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=model_max_length)


def make_tiny_dual_encoder(out_dir: str | Path, family: Literal["clip", "siglip"] = "clip", seed: int = 0,
                           image_size: int = 32, patch_size: int = 8, hidden: int = 32,
                           overwrite: bool = False) -> Path:
    """Build a tiny CLIP (or SigLIP) checkpoint folder at ``out_dir`` and return its path.

    Args:
        out_dir: folder to write; it must not exist or be empty unless ``overwrite`` is true.
        family: ``"clip"`` (CLIPModel, text length 77) or ``"siglip"`` (SiglipModel, text length 16).
        seed: seed of the random weights.
        image_size: side of the square images the vision tower sees, in pixels.
        patch_size: vision patch size.
        hidden: hidden size of both towers (also the projection size).
        overwrite: replace the files of an existing checkpoint folder.

    Example:
        >>> import tempfile
        >>> from transformers import AutoModel
        >>> path = make_tiny_dual_encoder(tempfile.mkdtemp() + "/clip")
        >>> type(AutoModel.from_pretrained(path)).__name__
        'CLIPModel'
    """
    import torch
    from transformers import CLIPConfig, CLIPModel, CLIPProcessor, SiglipConfig, SiglipModel, SiglipProcessor
    from transformers.models.clip import CLIPImageProcessorPil
    from transformers.models.siglip import SiglipImageProcessorPil

    out = Path(out_dir)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise CIRConfigError(f"`{out}` already exists and is not empty; choose another folder or pass "
                             "overwrite=True to replace it.")
    if image_size % patch_size:
        raise CIRConfigError(f"`image_size` {image_size} is not a multiple of `patch_size` {patch_size}")
    max_len = 77 if family == "clip" else 16
    tokenizer = tiny_clip_tokenizer(model_max_length=max_len)
    bos, eos = tokenizer.convert_tokens_to_ids(BOS), tokenizer.convert_tokens_to_ids(EOS)
    towers = {"hidden_size": hidden, "intermediate_size": 2 * hidden, "num_hidden_layers": 2,
              "num_attention_heads": 2}
    text = {**towers, "vocab_size": len(tokenizer), "max_position_embeddings": max_len,
            "bos_token_id": bos, "eos_token_id": eos, "pad_token_id": eos}
    vision = {**towers, "image_size": image_size, "patch_size": patch_size}
    torch.manual_seed(seed)
    if family == "clip":
        config = CLIPConfig(text_config=text, vision_config=vision, projection_dim=hidden)
        model = CLIPModel(config).eval()
        image_processor = CLIPImageProcessorPil(size={"shortest_edge": image_size},
                                                crop_size={"height": image_size, "width": image_size})
        processor = CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)
    elif family == "siglip":
        config = SiglipConfig(text_config={**text, "projection_size": hidden}, vision_config=vision)
        model = SiglipModel(config).eval()
        image_processor = SiglipImageProcessorPil(size={"height": image_size, "width": image_size})
        processor = SiglipProcessor(image_processor=image_processor, tokenizer=tokenizer)
    else:
        raise CIRConfigError(f"`family` must be 'clip' or 'siglip', not {family!r}")
    return _write(out, model, processor, overwrite)
