"""Tiny, random-initialised checkpoints of more multimodal-LLM families, built offline in seconds.

Each builder returns ``(model, processor)`` for one family, sized by a ``TinyModelSpec`` and using the
offline BPE tokenizer of ``cir_lightning.backbones.tiny`` with the family's own special tokens added.
``make_tiny_model(path, family=...)`` writes them as ordinary checkpoint folders that load back through
``AutoModelForImageTextToText`` + ``AutoProcessor``, like the real checkpoints of the same family:

=============  ==================================  =========================================
family         model class                         real checkpoints of the family
=============  ==================================  =========================================
llava_next     LlavaNextForConditionalGeneration   royokong/e5-v, BAAI/BGE-VL-MLLM-S1
llava          LlavaForConditionalGeneration       llava-hf/llava-1.5-7b-hf
idefics3       Idefics3ForConditionalGeneration    HuggingFaceTB/SmolVLM-256M-Instruct
qwen2_vl       Qwen2VLForConditionalGeneration     Qwen/Qwen2-VL-2B-Instruct, GME, LamRA
qwen2_5_vl     Qwen2_5_VLForConditionalGeneration  Qwen/Qwen2.5-VL-3B-Instruct
paligemma      PaliGemmaForConditionalGeneration   google/paligemma-3b-pt-224
=============  ==================================  =========================================

Qwen2-VL's processor also holds a video processor that needs torchvision; the tiny folders are written
without one and ``load_processor`` builds an image-only Qwen2-VL processor when torchvision is missing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

from cir_lightning.errors import CIRModelError

if TYPE_CHECKING:
    from cir_lightning.backbones.tiny import TinyModelSpec

Family = Literal["llava_next", "llava", "idefics3", "qwen2_vl", "qwen2_5_vl", "paligemma"]

# Special tokens of the Qwen2-VL chat format (plus LamRA's ``<emb>``), as the real tokenizers spell them.
QWEN_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
               "<|image_pad|>", "<|video_pad|>", "<emb>"]
IDEFICS3_TOKENS = ["<fake_token_around_image>", "<global-img>", "<end_of_utterance>"]


def _tokenizer(spec: TinyModelSpec, image_token: str = "<image>", added: tuple[str, ...] = (), **names: str):
    from cir_lightning.backbones.tiny import _train_tokenizer

    return _train_tokenizer(spec.vocab_size, image_token=image_token, added=added, **names)


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


def build_llava(spec: TinyModelSpec) -> tuple[Any, Any]:
    """LLaVA-1.5: CLIP vision tower (CLS dropped), MLP projector, Llama; one image = a fixed token count."""
    from transformers import LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor
    from transformers.models.llava import LlavaImageProcessorPil

    tokenizer = _tokenizer(spec)
    config = LlavaConfig(vision_config=_clip_vision(spec), text_config=_llama(spec, tokenizer),
                         image_token_index=tokenizer.convert_tokens_to_ids("<image>"), vision_feature_layer=-1,
                         vision_feature_select_strategy="default")
    image_processor = LlavaImageProcessorPil(
        size={"shortest_edge": spec.image_size}, crop_size={"height": spec.image_size, "width": spec.image_size},
        image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=spec.patch_size,
                               vision_feature_select_strategy="default", image_token="<image>",
                               num_additional_image_tokens=1)
    return LlavaForConditionalGeneration(config), processor


def build_idefics3(spec: TinyModelSpec) -> tuple[Any, Any]:
    """Idefics3 / SmolVLM: SigLIP-style vision tower, pixel-shuffle connector, Llama; no image splitting."""
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


def _qwen_text(spec: TinyModelSpec, tokenizer: Any) -> dict[str, Any]:
    half = spec.text_hidden // spec.text_heads // 2
    # M-RoPE: temporal / height / width sections summing to head_dim / 2 (Qwen2-VL-2B: 16, 24, 24 of 64)
    section = [half // 4, (half - half // 4) // 2, half - half // 4 - (half - half // 4) // 2]
    return {"vocab_size": len(tokenizer), **_text_sizes(spec),
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": section},
            "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id}


def _qwen_processor(spec: TinyModelSpec, tokenizer: Any, processor_class: Any) -> Any:
    from transformers.models.qwen2_vl import Qwen2VLImageProcessorPil

    side = spec.patch_size * 2  # one merged token covers 2 x 2 patches
    image_processor = Qwen2VLImageProcessorPil(
        size={"shortest_edge": side * side, "longest_edge": (2 * spec.image_size) ** 2},
        patch_size=spec.patch_size, temporal_patch_size=2, merge_size=2)
    return image_only_qwen_processor(processor_class, image_processor, tokenizer)


def _qwen_tokenizer(spec: TinyModelSpec) -> Any:
    return _tokenizer(spec, image_token="<|image_pad|>", added=tuple(QWEN_TOKENS), eos_token="<|im_end|>",
                      pad_token="<|endoftext|>", video_token="<|video_pad|>")


def build_qwen2_vl(spec: TinyModelSpec) -> tuple[Any, Any]:
    """Qwen2-VL: ViT with 2-D RoPE, 2x2 patch merger, Qwen2 decoder with M-RoPE (3-D positions)."""
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLProcessor

    tokenizer = _qwen_tokenizer(spec)
    ids = _ids(tokenizer, *QWEN_TOKENS)
    vision = {"depth": spec.vision_layers, "embed_dim": spec.vision_hidden, "hidden_size": spec.text_hidden,
              "num_heads": 2, "mlp_ratio": 2, "patch_size": spec.patch_size, "spatial_merge_size": 2,
              "temporal_patch_size": 2}
    config = Qwen2VLConfig(text_config=_qwen_text(spec, tokenizer), vision_config=vision,
                           image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
                           vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])
    return Qwen2VLForConditionalGeneration(config), _qwen_processor(spec, tokenizer, Qwen2VLProcessor)


def build_qwen2_5_vl(spec: TinyModelSpec) -> tuple[Any, Any]:
    """Qwen2.5-VL: like Qwen2-VL with a windowed-attention ViT (SwiGLU, RMSNorm)."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor

    tokenizer = _qwen_tokenizer(spec)
    ids = _ids(tokenizer, *QWEN_TOKENS)
    vision = {"depth": spec.vision_layers, "hidden_size": spec.vision_hidden, "out_hidden_size": spec.text_hidden,
              "intermediate_size": spec.vision_hidden * 2, "num_heads": 2, "patch_size": spec.patch_size,
              "spatial_merge_size": 2, "temporal_patch_size": 2, "window_size": 2 * spec.patch_size * 2,
              "fullatt_block_indexes": [spec.vision_layers - 1]}
    config = Qwen2_5_VLConfig(text_config=_qwen_text(spec, tokenizer), vision_config=vision,
                              image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
                              vision_start_token_id=ids["<|vision_start|>"],
                              vision_end_token_id=ids["<|vision_end|>"])
    return Qwen2_5_VLForConditionalGeneration(config), _qwen_processor(spec, tokenizer, Qwen2_5_VLProcessor)


def build_paligemma(spec: TinyModelSpec) -> tuple[Any, Any]:
    """PaliGemma: SigLIP vision tower, linear projector, Gemma; the processor puts the image first."""
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
    sizes = _text_sizes(spec)
    text = GemmaConfig(vocab_size=len(tokenizer), head_dim=spec.text_hidden // spec.text_heads,
                       bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                       pad_token_id=tokenizer.pad_token_id, **sizes)
    config = PaliGemmaConfig(vision_config=vision, text_config=text, projection_dim=spec.text_hidden,
                             image_token_index=tokenizer.convert_tokens_to_ids("<image>"))
    return PaliGemmaForConditionalGeneration(config), processor


BUILDERS: dict[str, Callable[[TinyModelSpec], tuple[Any, Any]]] = {
    "llava": build_llava,
    "idefics3": build_idefics3,
    "qwen2_vl": build_qwen2_vl,
    "qwen2_5_vl": build_qwen2_5_vl,
    "paligemma": build_paligemma,
}
"""Builders of the tiny families other than the default ``llava_next`` (see ``make_tiny_model``)."""


def image_only_qwen_processor(processor_class: Any, image_processor: Any, tokenizer: Any,
                              chat_template: str | None = None) -> Any:
    """A Qwen2-VL-family processor without its video processor (which needs torchvision).

    With torchvision installed this is the ordinary processor with ``video_processor=None``; without it,
    a subclass whose only sub-processors are the image processor and the tokenizer. Images, text and
    the ``image_grid_thw`` / ``mm_token_type_ids`` outputs are the same either way; videos are refused.
    """
    from transformers.utils import is_torchvision_available

    if is_torchvision_available():
        return processor_class(image_processor=image_processor, tokenizer=tokenizer, video_processor=None,
                               chat_template=chat_template)
    image_only = _IMAGE_ONLY.get(processor_class)
    if image_only is None:
        def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):  # noqa: N807
            # the parent's __init__ would register a video processor; set what it sets, minus that
            self.image_token = getattr(tokenizer, "image_token", "<|image_pad|>")
            self.video_token = getattr(tokenizer, "video_token", "<|video_pad|>")
            self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
            self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
            super(processor_class, self).__init__(image_processor, tokenizer, chat_template=chat_template)

        def to_dict(self):  # saved folders name the ordinary class, so AutoProcessor loads them anywhere
            return {**processor_class.to_dict(self), "processor_class": processor_class.__name__}

        image_only = type(f"ImageOnly{processor_class.__name__}", (processor_class,),
                          {"__init__": __init__, "to_dict": to_dict})
        _IMAGE_ONLY[processor_class] = image_only
    return image_only(image_processor=image_processor, tokenizer=tokenizer, chat_template=chat_template)


_IMAGE_ONLY: dict[Any, Any] = {}


def load_processor(name: str, **kwargs: Any) -> Any:
    """``AutoProcessor.from_pretrained``, falling back to an image-only processor for Qwen2-VL-family
    checkpoints when torchvision (needed by their video processor) is not installed.

    Raises:
        CIRModelError: a processor that needs torchvision and has no image-only fallback.
    """
    from transformers import AutoConfig, AutoImageProcessor, AutoProcessor, AutoTokenizer
    from transformers.utils import is_torchvision_available

    if is_torchvision_available():
        return AutoProcessor.from_pretrained(name, **kwargs)
    model_type = AutoConfig.from_pretrained(name, **kwargs).model_type
    fallback = _image_only_classes().get(model_type)
    if fallback is None:
        try:
            return AutoProcessor.from_pretrained(name, **kwargs)
        except (ImportError, AttributeError) as err:
            raise CIRModelError(f"the processor of `{name}` ({model_type}) needs torchvision, which is not "
                                f"installed ({err}); install torchvision (`pip install torchvision`)") from err
    tokenizer = AutoTokenizer.from_pretrained(name, **kwargs)
    image_processor = AutoImageProcessor.from_pretrained(name, **kwargs)
    return image_only_qwen_processor(fallback, image_processor, tokenizer,
                                     chat_template=getattr(tokenizer, "chat_template", None))


def _image_only_classes() -> dict[str, Any]:
    from transformers import Qwen2_5_VLProcessor, Qwen2VLProcessor

    return {"qwen2_vl": Qwen2VLProcessor, "qwen2_5_vl": Qwen2_5_VLProcessor}
