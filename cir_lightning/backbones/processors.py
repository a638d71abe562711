"""Loading a checkpoint's processor, with an image-only fallback for Qwen2-VL-family checkpoints.

Qwen2-VL's processor also holds a video processor, which needs torchvision. Retrieval never feeds video,
so without torchvision ``load_processor`` builds an image-only processor of the same class: images, text
and the ``image_grid_thw`` / ``mm_token_type_ids`` outputs are the same either way; videos are refused.
"""

from __future__ import annotations

from typing import Any

from cir_lightning.errors import CIRModelError

_IMAGE_ONLY: dict[Any, Any] = {}


def load_processor(name: str, **kwargs: Any) -> Any:
    """``AutoProcessor.from_pretrained``, falling back to an image-only processor for Qwen2-VL-family
    checkpoints when torchvision (needed by their video processor) is not installed.

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


def _image_only_classes() -> dict[str, Any]:
    from transformers import Qwen2_5_VLProcessor, Qwen2VLProcessor

    return {"qwen2_vl": Qwen2VLProcessor, "qwen2_5_vl": Qwen2_5_VLProcessor}
