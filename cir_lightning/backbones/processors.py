"""Loading a checkpoint's processor, with an image-only fallback for Qwen2-VL-family checkpoints.

Qwen2-VL's processor also holds a video processor, which needs torchvision. Retrieval never feeds video,
so without torchvision ``load_processor`` builds an image-only processor of the same class: images, text
and the ``image_grid_thw`` / ``mm_token_type_ids`` outputs are the same either way; videos are refused.
GME's image preparation before its processor is ``backbones.gme_images``.
"""

from __future__ import annotations

import functools
from typing import Any

from cir_lightning.errors import CIRModelError


def load_processor(name: str, **kwargs: Any) -> Any:
    """``AutoProcessor.from_pretrained`` with PIL image processing (``with_pil_images``), falling back to an
    image-only processor for Qwen2-VL-family checkpoints when torchvision (needed by their video processor)
    is not installed.

    Args:
        name: hub name or checkpoint folder.
        **kwargs: passed to ``from_pretrained`` (``revision``, ``trust_remote_code``).

    Raises:
        CIRModelError: a processor that needs torchvision and has no image-only fallback.

    Example:
        >>> from cir_lightning.backbones.processors import load_processor
        >>> import tempfile
        >>> from cir_lightning.backbones.tiny import make_tiny_model
        >>> folder = make_tiny_model(tempfile.mkdtemp() + "/qwen", family="qwen2_vl")
        >>> load_processor(str(folder)).image_token
        '<|image_pad|>'
    """
    from transformers import AutoConfig, AutoImageProcessor, AutoProcessor, AutoTokenizer
    from transformers.utils import is_torchvision_available

    if is_torchvision_available():
        return with_pil_images(AutoProcessor.from_pretrained(name, **kwargs), name, **kwargs)
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


def is_torchvision_backend(image_processor: Any) -> bool:
    """Whether ``image_processor`` runs on transformers' torchvision backend (its resizing differs from PIL's)."""
    try:
        from transformers.image_processing_backends import TorchvisionBackend
    except ImportError:  # a transformers without backends: its processors resize with PIL
        return False
    return isinstance(image_processor, TorchvisionBackend)


def with_pil_images(processor: Any, name: str, **kwargs: Any) -> Any:
    """``processor`` with its image processor on the PIL backend.

    With torchvision installed, transformers 5 picks the torchvision backend by default, whose resize
    gives slightly different pixels from PIL's; the original code of every preset (see the golden tests)
    resized with PIL, so the PIL backend keeps our embeddings equal to theirs on any installation.
    """
    if is_torchvision_backend(getattr(processor, "image_processor", None)):
        from transformers import AutoImageProcessor

        processor.image_processor = AutoImageProcessor.from_pretrained(name, backend="pil", **kwargs)
    return processor


def complete_legacy_processor(processor: Any, model: Any) -> Any:
    """Give a LLaVA / LLaVA-NeXT processor saved by an older transformers what transformers 5 needs to expand
    ``<image>`` into exactly one token per image feature the model fills:

    - ``patch_size`` (and ``vision_feature_select_strategy``) from the model's config where the processor
      has none: processors saved before 4.45 (``royokong/e5-v``; kongds/E5-V issue #26) fail on the
      first image without it;
    - ``num_additional_image_tokens = 1`` where the processor says 0 and the vision tower has a CLS token:
      processors saved before 4.47 (E5-V's, BGE-VL-MLLM's) have no such field and always counted the CLS
      token, while transformers 5 reads the missing field as 0 (one ``<image>`` token short per image).

    Other processors are returned as they are.

    Example:
        >>> from types import SimpleNamespace as NS
        >>> from cir_lightning.backbones.processors import complete_legacy_processor
        >>> tower = NS(vision_model=NS(embeddings=NS(class_embedding=0)))
        >>> model = NS(config=NS(vision_config=NS(patch_size=14), vision_feature_select_strategy="default"),
        ...            model=NS(vision_tower=tower))
        >>> legacy = NS(patch_size=None, vision_feature_select_strategy=None, num_additional_image_tokens=0)
        >>> vars(complete_legacy_processor(legacy, model))
        {'patch_size': 14, 'vision_feature_select_strategy': 'default', 'num_additional_image_tokens': 1}
    """
    config = model.config
    vision = getattr(config, "vision_config", None)
    if getattr(processor, "patch_size", 0) is None and getattr(vision, "patch_size", None) is not None:
        processor.patch_size = vision.patch_size
        if getattr(processor, "vision_feature_select_strategy", None) is None:
            processor.vision_feature_select_strategy = getattr(config, "vision_feature_select_strategy", None)
    if getattr(processor, "num_additional_image_tokens", None) == 0:
        tower = getattr(getattr(model, "model", model), "vision_tower", None)
        embeddings = getattr(getattr(tower, "vision_model", tower), "embeddings", None)
        if hasattr(embeddings, "class_embedding"):
            processor.num_additional_image_tokens = 1
    return processor


def image_only_qwen_processor(processor_class: Any, image_processor: Any, tokenizer: Any,
                              chat_template: str | None = None) -> Any:
    """A Qwen2-VL-family processor without its video processor (which needs torchvision).

    With torchvision installed this is the ordinary processor with ``video_processor=None``; without it,
    a subclass whose only sub-processors are the image processor and the tokenizer. Saved folders name the
    ordinary class, so ``AutoProcessor`` loads them anywhere.

    Args:
        processor_class: ``Qwen2VLProcessor`` or ``Qwen2_5_VLProcessor``.
        image_processor: the image processor.
        tokenizer: the tokenizer (with the ``<|image_pad|>`` / ``<|video_pad|>`` tokens).
        chat_template: the processor's chat template.

    Example:
        >>> from cir_lightning.backbones.processors import image_only_qwen_processor
        >>> import tempfile
        >>> from transformers import AutoImageProcessor, AutoTokenizer, Qwen2VLProcessor
        >>> from cir_lightning.backbones.tiny import make_tiny_model
        >>> folder = make_tiny_model(tempfile.mkdtemp() + "/qwen", family="qwen2_vl")
        >>> processor = image_only_qwen_processor(Qwen2VLProcessor, AutoImageProcessor.from_pretrained(folder),
        ...                                       AutoTokenizer.from_pretrained(folder))
        >>> isinstance(processor, Qwen2VLProcessor), processor.image_token
        (True, '<|image_pad|>')
    """
    from transformers.utils import is_torchvision_available

    if is_torchvision_available():
        return processor_class(image_processor=image_processor, tokenizer=tokenizer, video_processor=None,
                               chat_template=chat_template)
    return _image_only_class(processor_class)(image_processor=image_processor, tokenizer=tokenizer,
                                              chat_template=chat_template)


@functools.cache
def _image_only_class(processor_class: type) -> type:
    """The image-only subclass of ``processor_class``, made once per class and process: a class holds no run's
    state (only methods), and one class per processor class keeps every processor built from it one type
    (``isinstance``, ``type(a) is type(b)``) instead of a new class per model loaded."""
    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):  # noqa: N807
        # the parent's __init__ would register a video processor; set what it sets, minus that
        self.image_token = getattr(tokenizer, "image_token", "<|image_pad|>")
        self.video_token = getattr(tokenizer, "video_token", "<|video_pad|>")
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
        self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
        super(processor_class, self).__init__(image_processor, tokenizer, chat_template=chat_template)

    def to_dict(self):  # saved folders name the ordinary class, so AutoProcessor loads them anywhere
        return {**processor_class.to_dict(self), "processor_class": processor_class.__name__}

    return type(f"ImageOnly{processor_class.__name__}", (processor_class,), {"__init__": __init__, "to_dict": to_dict})


def _image_only_classes() -> dict[str, Any]:
    from transformers import Qwen2_5_VLProcessor, Qwen2VLProcessor

    return {"qwen2_vl": Qwen2VLProcessor, "qwen2_5_vl": Qwen2_5_VLProcessor}
