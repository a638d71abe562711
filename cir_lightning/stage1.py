"""FiRE stage 1 ("fine-grained context reasoning"): learn to DESCRIBE the target image.

Input: the reference image and the modification inside an instruction; output: the target image's
fine-grained caption. The loss is next-token cross-entropy on the caption tokens only (prompt, image and
padding positions are labelled -100; ``cir_lightning.losses.caption_loss``). The LoRA adapter trained
this way is where stage 2 starts (``lora.init_adapter``).

``CIRModule(objective="caption")`` hands the DataModule a ``CaptionBatches``: training batches become
``{"index", "caption", "caption_labels"}``; evaluation batches are the backbone's usual ones, so the
retrieval metrics of the model being trained are still measured at every validation.
"""

from __future__ import annotations

import inspect
import string
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from PIL import Image
from torch import Tensor

from cir_lightning.backbones.batches import sample_index
from cir_lightning.backbones.prompts import IMAGE
from cir_lightning.errors import CIRConfigError, CIRDataError
from cir_lightning.losses import caption_loss
from cir_lightning.messages import first_few
from cir_lightning.placeholders import refuse_placeholders

if TYPE_CHECKING:
    from cir_lightning.backbones.base import Backbone
    from cir_lightning.data.base import CIRDataModule

FIRE_STAGE1_INSTRUCTION = "<image> but modified with {modification}. Please describe the new image."
"""The paper's stage-1 instruction ("<reference image> but modified with <modification>. Please
describe the new image"); the target caption follows it."""


def check_instruction(instruction: str) -> str:
    """``instruction`` if it holds ``<image>`` and ``{modification}`` and no other field.

    Example:
        >>> check_instruction("<image> {caption}")
        Traceback (most recent call last):
        ...
        cir_lightning.errors.CIRConfigError: `caption_instruction` needs <image> and {modification} and no other field: '<image> {caption}'
    """
    try:
        fields = {f for _, f, _, _ in string.Formatter().parse(instruction) if f is not None}
    except ValueError as err:
        raise CIRConfigError(f"`caption_instruction` is not a valid template ({err}): {instruction!r}") from None
    if IMAGE not in instruction or fields != {"modification"}:
        raise CIRConfigError("`caption_instruction` needs <image> and {modification} and no other field: "
                             f"{instruction!r}")
    return instruction


@runtime_checkable
class CaptionCollator(Protocol):
    """A backbone's collator that builds stage 1's generative batches (``MLLMCollator`` does; its backbone's
    ``Backbone.caption_logits`` scores them): the reference images inside ``prompts``, then the captions."""

    placeholders: Sequence[str]
    def caption_inputs(self, images: Sequence[Image.Image], prompts: Sequence[str], captions: Sequence[str],
                       max_caption_tokens: int | None = None) -> tuple[Any, Tensor]: ...
    def queries(self, samples: list[dict[str, Any]]) -> Any: ...
    def gallery(self, samples: list[dict[str, Any]]) -> Any: ...
    def for_subset(self, name: str) -> Any: ...


class CaptionBatches:
    """The collator of stage 1: generative training batches from the backbone collator's
    ``caption_inputs``; queries and gallery batches unchanged.

    Args:
        collator: the backbone's collator, a ``CaptionCollator`` (multimodal LLMs' are; refused otherwise).
        instruction: the prompt before the caption, with ``<image>`` and ``{modification}``.
        max_caption_tokens: cut captions to this many tokens (the EOS after them is always kept); ``CIRModule``
            checks it.
    """

    def __init__(self, collator: Any, instruction: str = FIRE_STAGE1_INSTRUCTION,
                 max_caption_tokens: int | None = None) -> None:
        if not isinstance(collator, CaptionCollator):
            raise CIRConfigError(f"{type(collator).__name__} cannot build generative batches: stage 1 "
                                 "(`objective: caption`) needs a multimodal LLM backbone")
        self.collator: CaptionCollator = collator
        self.instruction = check_instruction(instruction)
        self.max_caption_tokens = max_caption_tokens

    def triplets(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        missing = [s["index"] for s in samples if not s.get("target_caption")]
        if missing:
            raise CIRDataError(
                f"`objective: caption` (FiRE stage 1) learns to generate the target caption, but training "
                f"sample(s) at dataset row(s) {first_few([str(i) for i in missing], ', ', ' ...')} have none: set "
                "`with_captions: true` on the data and "
                "give every training line a non-empty `target_caption` (FashionIQ and CIRR have no target captions)")
        # the modification goes into the instruction, whose `<image>` becomes the image's tokens
        refuse_placeholders([s["modification"] for s in samples], self.collator.placeholders, "modification")
        inputs, labels = self.collator.caption_inputs(
            [s["reference_image"] for s in samples],
            [self.instruction.format(modification=s["modification"]) for s in samples],
            [s["target_caption"] for s in samples], self.max_caption_tokens)
        return {"index": sample_index(samples), "caption": inputs, "caption_labels": labels}

    @property
    def placeholders(self) -> Any:
        return self.collator.placeholders

    def queries(self, samples: list[dict[str, Any]]) -> Any:
        return self.collator.queries(samples)

    def gallery(self, samples: list[dict[str, Any]]) -> Any:
        return self.collator.gallery(samples)

    def for_subset(self, name: str) -> Any:
        return self.collator.for_subset(name)


def check_caption_data(datamodule: CIRDataModule, option: str = "`objective: caption` (FiRE stage 1)") -> None:
    """Refuse, before training, a cir_lightning DataModule that will not give ``option`` (stage 1, or
    ``target_side: caption``) the target captions it trains on."""
    if datamodule.with_captions:
        return
    if "with_captions" in inspect.signature(type(datamodule)).parameters:  # an option of its class
        raise CIRConfigError(f"{option} trains on target captions: set `data.init_args.with_captions: true` "
                             "(every training line needs a `target_caption`)")
    raise CIRConfigError(f"{option} trains on target captions, which {type(datamodule).__name__} does not have: "
                         "use JSONL data with `target_caption`")


def caption_step(backbone: Backbone, batch: dict[str, Any]) -> tuple[Tensor, int]:
    """Stage 1's loss on a ``CaptionBatches.triplets`` batch (under DDP the global token mean, see
    ``caption_loss``) and the number of caption tokens it was computed on (this rank's)."""
    if "caption_labels" not in batch:
        raise CIRConfigError("`objective: caption` got a batch without `caption_labels`: the DataModule must "
                             "be connected to the module's collator (a cir_lightning DataModule is)")
    logits, targets = backbone.caption_logits(batch["caption"], batch["caption_labels"])
    return caption_loss(logits, targets), targets.numel()
