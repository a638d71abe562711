"""Tokenizers for the tiny checkpoints, trained here on a small built-in corpus (nothing is downloaded).

``train_bpe`` is the one BPE trainer: ``byte_level_tokenizer`` (the multimodal LLMs and xGen-MM) and
``tiny_clip_tokenizer`` (CLIP's own pipeline: lower-casing, ``</w>`` word ends) build on it. Common words
(colours, shapes, positions, the prompt words) become single tokens and any other text still tokenizes.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

# Words the tokenizers should keep whole: prompt vocabulary and the attributes of the synthetic data.
WORDS = """
given the reference image but modify it with describe new a an of and to in on at is are this that
make change turn move put replace same keep instead different color colour shape size position count
red green blue yellow purple orange white cyan magenta pink brown gray grey black
circle square triangle diamond cross star ring rectangle ellipse
small large big bigger smaller tiny huge medium
top bottom left right center middle upper lower corner
one two three four five more fewer objects object picture photo find also shirt dress
sleeveless longer shorter darker lighter pattern striped plain
""".split()
SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>", "<image>"]
CLIP_BOS, CLIP_EOS = "<|startoftext|>", "<|endoftext|>"


def spellings(words: Iterable[str], capitalised_alone: bool = True) -> list[str]:
    """Each word plain, after a space and capitalised after a space (and capitalised alone, if
    ``capitalised_alone``), so that every spelling becomes one token.

    Example:
        >>> from cir_lightning.backbones.tiny.tokenizer import spellings
        >>> spellings(["red"]), spellings(["red"], capitalised_alone=False)
        (['red', ' red', ' Red', 'Red'], ['red', ' red', ' Red'])
    """
    out: list[str] = []
    for word in words:
        out += [word, " " + word, " " + word.capitalize()] + ([word.capitalize()] if capitalised_alone else [])
    return out


def train_bpe(tokenizer: Any, corpus: Sequence[str], special_tokens: Sequence[str], vocab_size: int,
              **options: Any) -> Any:
    """Train the BPE model of a ``tokenizers.Tokenizer`` on ``corpus``; the byte-level alphabet is always
    in the vocabulary, so any text tokenizes.

    Args:
        tokenizer: a ``tokenizers.Tokenizer`` with a BPE model and its pre-tokenizer set.
        corpus: the training texts.
        special_tokens: tokens put first in the vocabulary, never split.
        vocab_size: target vocabulary size.
        **options: further ``BpeTrainer`` options (e.g. ``end_of_word_suffix``).

    Example:
        >>> from cir_lightning.backbones.tiny.tokenizer import train_bpe
        >>> from tokenizers import Tokenizer, models, pre_tokenizers
        >>> tok = Tokenizer(models.BPE(unk_token="<unk>"))
        >>> tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        >>> train_bpe(tok, ["red", " red"] * 8, ["<unk>"], 300).encode("red").tokens
        ['red']
    """
    from tokenizers import pre_tokenizers, trainers

    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(special_tokens),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
                                  **options)
    tokenizer.train_from_iterator(corpus, trainer=trainer)
    return tokenizer


def byte_level_tokenizer(corpus: Sequence[str], special_tokens: Sequence[str], vocab_size: int, *,
                         eos_token: str, pad_token: str, added: Sequence[str] = (),
                         extra_special_tokens: dict[str, str] | None = None) -> Any:
    """A left-padding ``PreTrainedTokenizerFast``: byte-level BPE trained on ``corpus``, ``<unk>`` / ``<s>``.

    Args:
        corpus: the training texts.
        special_tokens: tokens put first in the vocabulary.
        vocab_size: target vocabulary size.
        eos_token: the end-of-sequence token.
        pad_token: the padding token.
        added: special tokens added after the trained vocabulary (other families' tokens, so the default
            vocabulary stays the same).
        extra_special_tokens: named special tokens (e.g. ``{"image_token": "<image>"}``).

    Example:
        >>> from cir_lightning.backbones.tiny.tokenizer import byte_level_tokenizer
        >>> tok = byte_level_tokenizer([" red"] * 8, ["<unk>", "<s>", "</s>", "<pad>"], 300, eos_token="</s>",
        ...                            pad_token="<pad>", added=["<image>"])
        >>> tok.convert_ids_to_tokens(tok("<image> red")["input_ids"]), tok.padding_side
        (['<image>', 'Ġred'], 'left')
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    train_bpe(tok, corpus, special_tokens, vocab_size)
    if added:
        tok.add_special_tokens(list(added))
    named = {"extra_special_tokens": extra_special_tokens} if extra_special_tokens else {}
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token=eos_token,
                                   pad_token=pad_token, padding_side="left", **named)


def tiny_clip_tokenizer(vocab_size: int = 512, model_max_length: int = 77) -> Any:
    """A ``CLIPTokenizer`` with a BPE vocabulary trained offline on a small corpus.

    Args:
        vocab_size: target vocabulary size of the BPE merges (the byte alphabet and its ``</w>`` forms are
            always included, so any text tokenizes).
        model_max_length: the longest token sequence, special tokens included (CLIP: 77).

    Example:
        >>> from cir_lightning.backbones.tiny.tokenizer import tiny_clip_tokenizer
        >>> tok = tiny_clip_tokenizer()
        >>> ids = tok("Make it RED")["input_ids"]
        >>> tok.convert_ids_to_tokens(ids)
        ['<|startoftext|>', 'make</w>', 'it</w>', 'red</w>', '<|endoftext|>']
    """
    from tokenizers import pre_tokenizers
    from transformers import CLIPTokenizer

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    base: dict[str, int] = {}
    for token in [CLIP_BOS, CLIP_EOS, *alphabet, *(c + "</w>" for c in alphabet)]:
        base.setdefault(token, len(base))
    # CLIP's own normaliser and pre-tokeniser, trained on our corpus
    backend = CLIPTokenizer(vocab=base, merges=[]).backend_tokenizer
    corpus = [" ".join(WORDS[i:i + 6]) for i in range(len(WORDS))] + [". , ? ! ' -"]
    train_bpe(backend, corpus * 4, [CLIP_BOS, CLIP_EOS], vocab_size, end_of_word_suffix="</w>")
    model = json.loads(backend.to_str())["model"]
    vocab = dict(model["vocab"])
    for token in base:  # every byte, also as a word end, stays in the vocabulary
        vocab.setdefault(token, len(vocab))
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=model_max_length)
