"""Tiny, random-initialised multimodal LLMs for tests, demos and debugging, built offline.

``make_tiny_model`` writes an ordinary Hugging Face checkpoint folder (config, safetensors weights,
tokenizer, image processor, processor) for a LLaVA-NeXT-style model: a tiny CLIP vision tower, a
projector and a tiny Llama. The tokenizer is a byte-level BPE trained here with ``tokenizers`` on a
small built-in corpus, so common words (colours, shapes, positions, the prompt words) are single tokens
and any other text still tokenizes. Nothing is downloaded: the folder loads back through the same
``from_pretrained`` path as a real checkpoint such as ``royokong/e5-v``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cir_lightning.errors import CIRConfigError, CIRFileError
from cir_lightning.files import write_folder

if TYPE_CHECKING:
    from cir_lightning.backbones.tiny_families import Family

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>", "<image>"]

# Words the tokenizer should keep whole: prompt vocabulary and the attributes of the synthetic data.
_WORDS = """
given the reference image but modify it with describe new a an of and to in on at is are this that
make change turn move put replace same keep instead different color colour shape size position count
red green blue yellow purple orange white cyan magenta pink brown gray grey black
circle square triangle diamond cross star ring rectangle ellipse
small large big bigger smaller tiny huge medium
top bottom left right center middle upper lower corner
one two three four five more fewer objects object picture photo find also shirt dress
sleeveless longer shorter darker lighter pattern striped plain
""".split()


@dataclass(frozen=True)
class TinyModelSpec:
    """Sizes of the tiny model; the defaults train in minutes on two CPU cores.

    Args:
        image_size: side of the square crops the vision tower sees, in pixels.
        patch_size: vision patch size; ``(image_size // patch_size) ** 2`` tokens per crop.
        vision_hidden: hidden size of the CLIP vision tower.
        vision_layers: number of vision transformer layers.
        text_hidden: hidden size of the Llama language model.
        text_layers: number of Llama decoder layers.
        text_heads: attention heads of the Llama model.
        vocab_size: target vocabulary size of the BPE tokenizer.
    """

    image_size: int = 32
    patch_size: int = 8
    vision_hidden: int = 32
    vision_layers: int = 2
    text_hidden: int = 64
    text_layers: int = 2
    text_heads: int = 4
    vocab_size: int = 1024


def _train_tokenizer(vocab_size: int, image_token: str = "<image>", added: tuple[str, ...] = (),
                     eos_token: str = "</s>", pad_token: str = "<pad>", **extra: str):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    # Each word in three spellings (plain, with a leading space, capitalised) so all become one token.
    corpus = [w for word in _WORDS for w in (word, " " + word, " " + word.capitalize(), word.capitalize())]
    corpus += [". ? , : ; ! - ' \" ( )"] * 4
    tok.train_from_iterator(corpus * 8, trainer=trainer)
    # other families' special tokens go after the trained vocabulary, so the default model is unchanged
    tok.add_special_tokens([t for t in (image_token, *added) if t not in SPECIAL_TOKENS])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token=eos_token,
        pad_token=pad_token,
        extra_special_tokens={"image_token": image_token, **{f"{k}": v for k, v in extra.items()}},
        padding_side="left",
    )


def make_tiny_model(out_dir: str | Path, seed: int = 0, spec: TinyModelSpec | None = None,
                    overwrite: bool = False, family: Family = "llava_next") -> Path:
    """Build a tiny checkpoint folder at ``out_dir`` (LLaVA-NeXT-style by default) and return its path.

    Args:
        out_dir: folder to write; it must not exist or be empty unless ``overwrite`` is true.
        seed: seed of the random weights.
        spec: model sizes (``TinyModelSpec()`` by default).
        overwrite: replace the files of an existing checkpoint folder.
        family: model family: ``llava_next`` (the default), ``llava``, ``idefics3``, ``qwen2_vl``,
            ``qwen2_5_vl`` or ``paligemma`` (see ``cir_lightning.backbones.tiny_families``).

    Example:
        >>> import tempfile
        >>> from transformers import AutoModelForImageTextToText, AutoProcessor
        >>> path = make_tiny_model(tempfile.mkdtemp() + "/tiny")
        >>> type(AutoModelForImageTextToText.from_pretrained(path)).__name__
        'LlavaNextForConditionalGeneration'
        >>> AutoProcessor.from_pretrained(path).tokenizer.padding_side
        'left'
        >>> path = make_tiny_model(tempfile.mkdtemp() + "/tiny", family="llava")
        >>> type(AutoModelForImageTextToText.from_pretrained(path)).__name__
        'LlavaForConditionalGeneration'
    """
    import torch
    from transformers import (
        CLIPVisionConfig,
        LlamaConfig,
        LlavaNextConfig,
        LlavaNextForConditionalGeneration,
        LlavaNextProcessor,
    )
    from transformers.models.llava_next import LlavaNextImageProcessorPil

    spec = spec or TinyModelSpec()
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise CIRConfigError(
            f"`{out}` already exists and is not empty; choose another folder or pass overwrite=True "
            "(`--overwrite` on the command line) to replace it."
        )
    if spec.image_size % spec.patch_size:
        raise CIRConfigError(f"`image_size` {spec.image_size} is not a multiple of `patch_size` {spec.patch_size}")

    if family != "llava_next":
        from cir_lightning.backbones.tiny_families import BUILDERS

        if family not in BUILDERS:
            raise CIRConfigError(f"unknown tiny model `family` {family!r}; known: llava_next, {', '.join(BUILDERS)}")
        torch.manual_seed(seed)
        model, processor = BUILDERS[family](spec)
        return _write(out, model.eval(), processor, overwrite)

    tokenizer = _train_tokenizer(spec.vocab_size)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    vision = CLIPVisionConfig(
        hidden_size=spec.vision_hidden,
        intermediate_size=spec.vision_hidden * 2,
        num_hidden_layers=spec.vision_layers,
        num_attention_heads=2,
        image_size=spec.image_size,
        patch_size=spec.patch_size,
        projection_dim=spec.vision_hidden,
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=spec.text_hidden,
        intermediate_size=spec.text_hidden * 2,
        num_hidden_layers=spec.text_layers,
        num_attention_heads=spec.text_heads,
        num_key_value_heads=spec.text_heads,
        max_position_embeddings=1024,
        bos_token_id=ids["<s>"],
        eos_token_id=ids["</s>"],
        pad_token_id=ids["<pad>"],
    )
    config = LlavaNextConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=ids["<image>"],
        image_grid_pinpoints=[[spec.image_size, spec.image_size]],
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
    )
    torch.manual_seed(seed)
    model = LlavaNextForConditionalGeneration(config).eval()

    image_processor = LlavaNextImageProcessorPil(
        size={"shortest_edge": spec.image_size},
        crop_size={"height": spec.image_size, "width": spec.image_size},
        image_grid_pinpoints=[[spec.image_size, spec.image_size]],
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )
    processor = LlavaNextProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=spec.patch_size,
        vision_feature_select_strategy="default",
        image_token="<image>",
        num_additional_image_tokens=1,
    )
    return _write(out, model, processor, overwrite)


def save_atomically(out: Path, write: Callable[[Path], None], overwrite: bool = False) -> Path:
    """Run ``write(folder)`` so that ``out`` appears complete or not at all (``cir_lightning.files.atomic_folder``).

    The files go to a temporary folder beside ``out`` that is renamed to it once complete, with the modes the
    user's umask gives new files. Processes racing to build the same folder (DDP ranks) never see a
    half-written checkpoint: one that finds ``out`` complete when it is done drops its copy (for the same seed
    the contents are identical). An existing empty folder counts as absent. With ``overwrite`` an existing
    ``out`` is swapped out only once the new folder is complete, then removed: no file of it survives.

    Example:
        >>> import tempfile
        >>> out = Path(tempfile.mkdtemp()) / "m"
        >>> _ = save_atomically(out, lambda f: (f / "a.txt").write_text("1"))
        >>> _ = save_atomically(out, lambda f: (f / "b.txt").write_text("2"), overwrite=True)
        >>> sorted(p.name for p in out.iterdir())
        ['b.txt']
    """
    out = Path(out)
    if out.is_dir() and not any(out.iterdir()):
        with contextlib.suppress(OSError):  # not empty any more: another process filled it meanwhile
            out.rmdir()
    replace = overwrite and out.exists()
    if out.exists() and not replace:
        return out  # another process built it since the caller looked
    try:
        write_folder(out, write, overwrite=replace)
    except CIRFileError:
        if not replace and out.is_dir() and any(out.iterdir()):
            return out  # another process finished first: our copy is dropped
        raise
    return out


def _write(out: Path, model, processor, overwrite: bool = False) -> Path:
    def write(folder: Path) -> None:
        model.save_pretrained(folder)
        processor.save_pretrained(folder)

    return save_atomically(out, write, overwrite)
