"""Builders of tiny, random-initialised multimodal LLMs, one per family, in seconds and offline.

Each builder returns ``(model, processor)`` sized by a ``TinyModelSpec``, with the offline byte-level BPE
tokenizer of ``tiny.tokenizer`` plus the family's own special tokens; ``make_tiny_model`` (see
``tiny.registry``) writes them as ordinary checkpoint folders that load back through
``AutoModelForImageTextToText`` + ``AutoProcessor`` like the real checkpoints of the same family.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cir_lightning.backbones.processors import image_only_qwen_processor
from cir_lightning.backbones.tiny.tokenizer import SPECIAL_TOKENS, WORDS, byte_level_tokenizer, spellings

# Special tokens of the Qwen2-VL chat format (plus LamRA's ``<emb>``), as the real tokenizers spell them.
QWEN_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
               "<|image_pad|>", "<|video_pad|>", "<emb>"]
IDEFICS3_TOKENS = ["<fake_token_around_image>", "<global-img>", "<end_of_utterance>"]


@dataclass(frozen=True)
class TinyModelSpec:
    """Sizes of the tiny model; the defaults train in minutes on two CPU cores.

    Args:
        image_size: side of the square crops the vision tower sees, in pixels.
        patch_size: vision patch size; ``(image_size // patch_size) ** 2`` tokens per crop.
        vision_hidden: hidden size of the vision tower.
        vision_layers: number of vision transformer layers.
        text_hidden: hidden size of the language model.
        text_layers: number of decoder layers.
        text_heads: attention heads of the language model.
        vocab_size: target vocabulary size of the BPE tokenizer.

    Example:
        >>> from cir_lightning.backbones.tiny import TinyModelSpec
        >>> TinyModelSpec(text_layers=1).text_layers
        1
    """

    image_size: int = 32
    patch_size: int = 8
    vision_hidden: int = 32
    vision_layers: int = 2
    text_hidden: int = 64
    text_layers: int = 2
    text_heads: int = 4
    vocab_size: int = 1024


def _tokenizer(spec: TinyModelSpec, image_token: str = "<image>", added: tuple[str, ...] = (),
               eos_token: str = "</s>", pad_token: str = "<pad>", **extra: str) -> Any:
    corpus = spellings(WORDS) + [". ? , : ; ! - ' \" ( )"] * 4
    # other families' special tokens go after the trained vocabulary, so the default model is unchanged
    return byte_level_tokenizer(corpus * 8, SPECIAL_TOKENS, spec.vocab_size, eos_token=eos_token, pad_token=pad_token,
                                added=[t for t in (image_token, *added) if t not in SPECIAL_TOKENS],
                                extra_special_tokens={"image_token": image_token, **extra})


def _ids(tokenizer: Any, *tokens: str) -> dict[str, int]:
    return {t: tokenizer.convert_tokens_to_ids(t) for t in tokens}


def _clip_vision(spec: TinyModelSpec) -> Any:
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(hidden_size=spec.vision_hidden, intermediate_size=spec.vision_hidden * 2,
                            num_hidden_layers=spec.vision_layers, num_attention_heads=2, image_size=spec.image_size,
                            patch_size=spec.patch_size, projection_dim=spec.vision_hidden)


def _text_sizes(spec: TinyModelSpec) -> dict[str, int]:
    return {"hidden_size": spec.text_hidden, "intermediate_size": spec.text_hidden * 2,
            "num_hidden_layers": spec.text_layers, "num_attention_heads": spec.text_heads,
            "num_key_value_heads": spec.text_heads, "max_position_embeddings": 1024}


def _llama(spec: TinyModelSpec, tokenizer: Any) -> Any:
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                       eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **_text_sizes(spec))


def _llava(spec: TinyModelSpec, config_class: Any, model_class: Any, processor_class: Any,
           image_processor_class: Any, **anyres: Any) -> tuple[Any, Any]:
    """A LLaVA-style model (CLIP vision tower, MLP projector, Llama) of the given classes."""
    tokenizer = _tokenizer(spec)
    config = config_class(vision_config=_clip_vision(spec), text_config=_llama(spec, tokenizer),
                          image_token_index=tokenizer.convert_tokens_to_ids("<image>"), vision_feature_layer=-1,
                          vision_feature_select_strategy="default", **anyres)
    image_processor = image_processor_class(
        size={"shortest_edge": spec.image_size}, crop_size={"height": spec.image_size, "width": spec.image_size},
        image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5], **anyres)
    processor = processor_class(image_processor=image_processor, tokenizer=tokenizer, patch_size=spec.patch_size,
                                vision_feature_select_strategy="default", image_token="<image>",
                                num_additional_image_tokens=1)
    return model_class(config), processor


def build_llava_next(spec: TinyModelSpec) -> tuple[Any, Any]:
    """LLaVA-NeXT (E5-V, BGE-VL-MLLM): CLIP vision tower, MLP projector, Llama; one anyres grid of one crop.

    Example:
        >>> from cir_lightning.backbones.tiny.mllm import TinyModelSpec, build_llava_next
        >>> model, processor = build_llava_next(TinyModelSpec())
        >>> type(model).__name__, processor.tokenizer.padding_side
        ('LlavaNextForConditionalGeneration', 'left')
    """
    from transformers import LlavaNextConfig, LlavaNextForConditionalGeneration, LlavaNextProcessor
    from transformers.models.llava_next import LlavaNextImageProcessorPil

    return _llava(spec, LlavaNextConfig, LlavaNextForConditionalGeneration, LlavaNextProcessor,
                  LlavaNextImageProcessorPil, image_grid_pinpoints=[[spec.image_size, spec.image_size]])


def build_llava(spec: TinyModelSpec) -> tuple[Any, Any]:
    """LLaVA-1.5: CLIP vision tower (CLS dropped), MLP projector, Llama; one image = a fixed token count.

    Example:
        >>> from cir_lightning.backbones.tiny.mllm import TinyModelSpec, build_llava
        >>> type(build_llava(TinyModelSpec())[0]).__name__
        'LlavaForConditionalGeneration'
    """
    from transformers import LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor
    from transformers.models.llava import LlavaImageProcessorPil

    return _llava(spec, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor, LlavaImageProcessorPil)


def build_idefics3(spec: TinyModelSpec) -> tuple[Any, Any]:
    """Idefics3 / SmolVLM: SigLIP-style vision tower, pixel-shuffle connector, Llama; no image splitting.

    Example:
        >>> from cir_lightning.backbones.tiny.mllm import TinyModelSpec, build_idefics3
        >>> model, processor = build_idefics3(TinyModelSpec())
        >>> model.config.scale_factor, processor.image_processor.do_image_splitting, processor.image_seq_len
        (2, False, 4)
    """
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration, Idefics3Processor
    from transformers.models.idefics3 import Idefics3ImageProcessorPil
    from transformers.models.idefics3.configuration_idefics3 import Idefics3VisionConfig

    tokenizer = _tokenizer(spec, added=tuple(IDEFICS3_TOKENS))
    scale = 2
    vision = Idefics3VisionConfig(hidden_size=spec.vision_hidden, intermediate_size=spec.vision_hidden * 2,
                                  num_hidden_layers=spec.vision_layers, num_attention_heads=2,
                                  image_size=spec.image_size, patch_size=spec.patch_size)
    config = Idefics3Config(vision_config=vision, text_config=_llama(spec, tokenizer), scale_factor=scale,
                            image_token_id=tokenizer.convert_tokens_to_ids("<image>"))
    image_processor = Idefics3ImageProcessorPil(
        do_image_splitting=False, size={"longest_edge": spec.image_size},
        max_image_size={"longest_edge": spec.image_size}, image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])
    seq_len = (spec.image_size // spec.patch_size) ** 2 // scale**2
    processor = Idefics3Processor(image_processor=image_processor, tokenizer=tokenizer, image_seq_len=seq_len)
    return Idefics3ForConditionalGeneration(config), processor


def _qwen(spec: TinyModelSpec, config_class: Any, model_class: Any, processor_class: Any,
          vision: dict[str, Any]) -> tuple[Any, Any]:
    """A Qwen2(.5)-VL model of the given classes: chat tokens, M-RoPE text config, image-only processor."""
    from transformers.models.qwen2_vl import Qwen2VLImageProcessorPil

    tokenizer = _tokenizer(spec, image_token="<|image_pad|>", added=tuple(QWEN_TOKENS), eos_token="<|im_end|>",
                           pad_token="<|endoftext|>", video_token="<|video_pad|>")
    half = spec.text_hidden // spec.text_heads // 2
    # M-RoPE: temporal / height / width sections summing to head_dim / 2 (Qwen2-VL-2B: 16, 24, 24 of 64)
    section = [half // 4, (half - half // 4) // 2, half - half // 4 - (half - half // 4) // 2]
    text = {"vocab_size": len(tokenizer), **_text_sizes(spec),
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": section},
            "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id}
    ids = _ids(tokenizer, *QWEN_TOKENS)
    config = config_class(text_config=text, vision_config=vision, image_token_id=ids["<|image_pad|>"],
                          video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
                          vision_end_token_id=ids["<|vision_end|>"])
    side = spec.patch_size * 2  # one merged token covers 2 x 2 patches
    image_processor = Qwen2VLImageProcessorPil(
        size={"shortest_edge": side * side, "longest_edge": (2 * spec.image_size) ** 2},
        patch_size=spec.patch_size, temporal_patch_size=2, merge_size=2)
    return model_class(config), image_only_qwen_processor(processor_class, image_processor, tokenizer)


def build_qwen2_vl(spec: TinyModelSpec) -> tuple[Any, Any]:
    """Qwen2-VL: ViT with 2-D RoPE, 2x2 patch merger, Qwen2 decoder with M-RoPE (3-D positions).

    Example:
        >>> from cir_lightning.backbones.tiny.mllm import TinyModelSpec, build_qwen2_vl
        >>> type(build_qwen2_vl(TinyModelSpec())[0]).__name__
        'Qwen2VLForConditionalGeneration'
    """
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLProcessor

    vision = {"depth": spec.vision_layers, "embed_dim": spec.vision_hidden, "hidden_size": spec.text_hidden,
              "num_heads": 2, "mlp_ratio": 2, "patch_size": spec.patch_size, "spatial_merge_size": 2,
              "temporal_patch_size": 2}
    return _qwen(spec, Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLProcessor, vision)


def build_qwen2_5_vl(spec: TinyModelSpec) -> tuple[Any, Any]:
    """Qwen2.5-VL: like Qwen2-VL with a windowed-attention ViT (SwiGLU, RMSNorm).

    Example:
        >>> from cir_lightning.backbones.tiny.mllm import TinyModelSpec, build_qwen2_5_vl
        >>> model, processor = build_qwen2_5_vl(TinyModelSpec())
        >>> type(model).__name__, model.config.vision_config.window_size, processor.image_token
        ('Qwen2_5_VLForConditionalGeneration', 32, '<|image_pad|>')
    """
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor

    vision = {"depth": spec.vision_layers, "hidden_size": spec.vision_hidden, "out_hidden_size": spec.text_hidden,
              "intermediate_size": spec.vision_hidden * 2, "num_heads": 2, "patch_size": spec.patch_size,
              "spatial_merge_size": 2, "temporal_patch_size": 2, "window_size": 2 * spec.patch_size * 2,
              "fullatt_block_indexes": [spec.vision_layers - 1]}
    return _qwen(spec, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor, vision)


def build_paligemma(spec: TinyModelSpec) -> tuple[Any, Any]:
    """PaliGemma: SigLIP vision tower, linear projector, Gemma; the processor puts the image first.

    Example:
        >>> from cir_lightning.backbones.tiny.mllm import TinyModelSpec, build_paligemma
        >>> model, processor = build_paligemma(TinyModelSpec())
        >>> type(model).__name__, processor.image_seq_length
        ('PaliGemmaForConditionalGeneration', 16)
    """
    from transformers import (
        GemmaConfig,
        PaliGemmaConfig,
        PaliGemmaForConditionalGeneration,
        PaliGemmaProcessor,
    )
    from transformers.models.siglip import SiglipImageProcessorPil, SiglipVisionConfig

    tokenizer = _tokenizer(spec)
    image_processor = SiglipImageProcessorPil(size={"height": spec.image_size, "width": spec.image_size},
                                              image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])
    image_processor.image_seq_length = (spec.image_size // spec.patch_size) ** 2
    processor = PaliGemmaProcessor(image_processor=image_processor, tokenizer=tokenizer)
    vision = SiglipVisionConfig(hidden_size=spec.vision_hidden, intermediate_size=spec.vision_hidden * 2,
                                num_hidden_layers=spec.vision_layers, num_attention_heads=2,
                                image_size=spec.image_size, patch_size=spec.patch_size,
                                projection_dim=spec.text_hidden)
    text = GemmaConfig(vocab_size=len(tokenizer), head_dim=spec.text_hidden // spec.text_heads,
                       bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                       pad_token_id=tokenizer.pad_token_id, **_text_sizes(spec))
    config = PaliGemmaConfig(vision_config=vision, text_config=text, projection_dim=spec.text_hidden,
                             image_token_index=tokenizer.convert_tokens_to_ids("<image>"))
    return PaliGemmaForConditionalGeneration(config), processor
