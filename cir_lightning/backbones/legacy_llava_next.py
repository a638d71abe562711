"""transformers 4.41.2's LLaVA-NeXT, bugs included, for numbers that were made with it (E5-V).

E5-V pins transformers 4.41.2, whose LLaVA-NeXT had two bugs that later releases fixed:

1. **Transposed grids.** ``get_anyres_image_grid_shape`` returns the anyres grid as (rows, columns), and
   4.41.2's ``pack_image_features`` read it as (columns, rows). For a non-square grid (e.g. 1 x 2 crops)
   the crops' features were viewed as a columns x rows grid, so the feature map was laid out transposed
   and then unpadded (and given its newline column) with those swapped dimensions. 4.41.2 also truncated
   the unpadded size in float32 tensor arithmetic (``int(h * scale)``) where later releases round first.
2. **Odd padding.** Before cutting an image into crops, 4.41.2 padded the resized image with
   ``(target - new) // 2`` pixels on BOTH sides, one pixel short of the target when the difference was
   odd; the short crops were then resized and centre-cropped like any other. Later releases put the
   remaining pixel after.

Our transformers has both fixes, so our embeddings of such images differ from E5-V's published ones
(by more than 1e-2 on the golden's tiny checkpoint). ``HFMultimodalBackbone(legacy_llava_next=True)``
calls ``use_legacy_llava_next``, which brings back both behaviours for that one backbone: it changes the
class of three objects it owns (the model's inner ``LlavaNextModel``, the processor and its PIL image
processor) to the subclasses below. Nothing in transformers' modules is patched, so other models in the
process are untouched; the classes live at module level, so the collator pickles to DataLoader workers
with them (a method bound into an instance's ``__dict__`` would come back unpickled as the ordinary one).
The processor's ``<image>`` count follows the legacy layout: 4.41.2 expanded ``<image>`` inside the
model, transformers 5 expands it in the processor, and the two must agree.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers.image_processing_utils import select_best_resolution
from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil
from transformers.models.llava_next.modeling_llava_next import LlavaNextModel, get_anyres_image_grid_shape
from transformers.models.llava_next.processing_llava_next import LlavaNextProcessor

from cir_lightning.errors import CIRConfigError, CIRModelError


def legacy_unpad(height: int, width: int, map_height: int, map_width: int) -> tuple[int, int]:
    """Rows and columns 4.41.2's ``unpad_image`` cut from EACH side of a ``map_height x map_width`` feature
    map of an image of ``height x width`` pixels: the padding of the longer-ratio axis, with the unpadded
    size truncated from the float32 product of int64 tensors, as 4.41.2 computed it from ``image_sizes``.

    Example: a 117 x 45 (height x width) image on a 3 x 1 grid of 4 x 4-feature crops; 4.41.2 laid the
    map out as 4 x 12 instead of 12 x 4, and unpadded it to 4 x 2 (12 x 4 would have become 10 x 4):

        >>> legacy_unpad(117, 45, 4, 12), legacy_unpad(117, 45, 12, 4)
        ((0, 5), (1, 0))
    """
    h, w = torch.tensor(height), torch.tensor(width)
    if bool(w / h > map_width / map_height):
        return (map_height - int(h * (map_width / w))) // 2, 0
    return 0, (map_width - int(w * (map_height / h))) // 2


class LegacyLlavaNextModel(LlavaNextModel):
    """``LlavaNextModel`` packing the crops' features as 4.41.2 did (bug 1: grid read as columns x rows)."""

    def pack_image_features(self, image_features: Any, image_sizes: Any, vision_feature_select_strategy: Any = None,
                            image_newline: Any = None) -> tuple[list[torch.Tensor], torch.Tensor]:
        side = self.config.vision_config.image_size // self.config.vision_config.patch_size
        packed = []
        for feature, size in zip(image_features, image_sizes, strict=True):
            if feature.shape[0] > 1:  # the base image, then the anyres crops row by row
                base, crops = feature[0], feature[1:]
                rows, cols = get_anyres_image_grid_shape(size, self.config.image_grid_pinpoints,
                                                         self.config.vision_config.image_size)
                # 4.41.2: a grid of `cols` rows of `rows` crops -> a (dim, cols * side, rows * side) map
                fmap = crops.view(cols, rows, side, side, -1).permute(4, 0, 2, 1, 3).flatten(1, 2).flatten(2, 3)
                top, left = legacy_unpad(int(size[0]), int(size[1]), fmap.shape[1], fmap.shape[2])
                fmap = fmap[:, top:fmap.shape[1] - top, left:fmap.shape[2] - left]
                if image_newline is not None:  # one newline column on the right of every row
                    column = image_newline[:, None, None].expand(*fmap.shape[:-1], 1)
                    fmap = torch.cat((fmap, column.to(fmap.device, fmap.dtype)), dim=-1)
                feature = torch.cat((base, fmap.flatten(1, 2).transpose(0, 1)), dim=0)
            else:
                feature = feature[0]
                if image_newline is not None:
                    feature = torch.cat((feature, image_newline[None].to(feature)), dim=0)
            packed.append(feature)
        lengths = torch.tensor([f.shape[0] for f in packed], dtype=torch.long, device=image_features[0].device)
        return packed, lengths


class LegacyLlavaNextImageProcessorPil(LlavaNextImageProcessorPil):
    """The PIL LLaVA-NeXT image processor padding as 4.41.2 did (bug 2: half the difference, floored, on
    each side); saved, it names the ordinary class."""

    def _get_padding_size(self, original_resolution: tuple, target_resolution: tuple) -> tuple:
        (height, width), (target_height, target_width) = original_resolution, target_resolution
        top, left = (target_height - height) // 2, (target_width - width) // 2
        return (top, top), (left, left)

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "image_processor_type": LlavaNextImageProcessorPil.__name__}


class LegacyLlavaNextProcessor(LlavaNextProcessor):
    """The LLaVA-NeXT processor counting one ``<image>`` token per feature of ``LegacyLlavaNextModel``'s
    layout (the crops' map transposed, 4.41.2's unpadding); saved, it names the ordinary class."""

    def _get_number_of_features(self, orig_height: int, orig_width: int, height: int, width: int) -> int:
        best_height, best_width = select_best_resolution([orig_height, orig_width],
                                                         self.image_processor.image_grid_pinpoints)
        rows, cols = best_height // height, best_width // width
        per_height, per_width = height // self.patch_size, width // self.patch_size
        map_height, map_width = cols * per_height, rows * per_width  # transposed, as the model lays it out
        top, left = legacy_unpad(orig_height, orig_width, map_height, map_width)
        map_height, map_width = map_height - 2 * top, map_width - 2 * left
        newlines = map_height
        return map_height * map_width + newlines + per_height * per_width + self.num_additional_image_tokens

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "processor_class": LlavaNextProcessor.__name__}


_LEGACY = {LlavaNextModel: LegacyLlavaNextModel, LlavaNextProcessor: LegacyLlavaNextProcessor,
           LlavaNextImageProcessorPil: LegacyLlavaNextImageProcessorPil}


def use_legacy_llava_next(model: Any, processor: Any, name: str) -> None:
    """Give ``model`` (a ``LlavaNextForConditionalGeneration``) and ``processor`` transformers 4.41.2's
    LLaVA-NeXT behaviour (see the module docstring); ``name`` is the checkpoint, for messages.

    Raises:
        CIRConfigError: the model is no LLaVA-NeXT model.
        CIRModelError: a LLaVA-NeXT checkpoint whose model or processor classes are not transformers' own.
    """
    model_type = model.config.model_type
    if model_type != "llava_next":
        raise CIRConfigError(f"`legacy_llava_next: true` reproduces transformers 4.41.2's LLaVA-NeXT (E5-V's "
                             f"numbers), but `{name}` is a `{model_type}` model: remove the option")
    for owner in (getattr(model, "model", None), processor, getattr(processor, "image_processor", None)):
        legacy = _LEGACY.get(type(owner))
        if legacy is None:
            raise CIRModelError(f"`legacy_llava_next: true` needs transformers' own LLaVA-NeXT classes "
                                f"({', '.join(c.__name__ for c in _LEGACY)}); `{name}` has a "
                                f"{type(owner).__name__}")
    for owner in (model.model, processor, processor.image_processor):
        owner.__class__ = _LEGACY[type(owner)]
